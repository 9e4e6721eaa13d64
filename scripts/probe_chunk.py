"""Probe one chunk of the manifest, reusing stored records by etag (rule probe_chunk)."""

import logging

from longcat.data.metadata import probe_chunk
from longcat.data.open_source import open_source
from longcat.params import from_leaf_params
from longcat.settings import Source, build

smk = snakemake  # noqa: F821 (set by Snakemake's script directive)
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
probe_chunk(
    open_source(build(Source, from_leaf_params(smk.params)["source"])),
    smk.input.manifest,
    smk.wildcards.chunk,
    smk.params.chunks,
    smk.output[0],
    smk.params.store,
    workers=smk.params.workers,
    decode_check=smk.params.decode_check,
    max_caption_bytes=smk.params.max_caption_bytes,
)
