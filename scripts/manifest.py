"""List the source into the manifest (rule manifest)."""

import logging

from longcat.data.manifest import write_manifest
from longcat.data.open_source import open_source
from longcat.params import from_leaf_params
from longcat.settings import Source, build

smk = snakemake  # noqa: F821 (set by Snakemake's script directive)
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
write_manifest(
    open_source(build(Source, from_leaf_params(smk.params)["source"])),
    smk.output.manifest,
    smk.output.unpaired,
)
