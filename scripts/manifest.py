"""List the source into the manifest (rule manifest)."""

import logging

from longcat.metadata import write_manifest
from longcat.source import open_source

smk = snakemake  # noqa: F821 (set by Snakemake's script directive)
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
write_manifest(open_source(smk.params.source, smk.input.demo or None), smk.output[0])
