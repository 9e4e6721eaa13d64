"""Probe one chunk of the manifest, reusing stored records by etag (rule probe_chunk)."""

import logging

from longcat.metadata import probe_chunk
from longcat.source import open_source

smk = snakemake  # noqa: F821 (set by Snakemake's script directive)
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
probe_chunk(
    open_source(smk.params.source, smk.input.demo or None),
    smk.input.manifest,
    smk.wildcards.chunk,
    int(smk.params.chunks),
    smk.output[0],
    smk.params.store,
    workers=int(smk.params.workers),
    decode_check=bool(smk.params.decode_check),
)
