"""Merge the probe chunks into metadata.parquet and rejected.parquet (rule metadata)."""

import logging

from longcat.metadata import merge_metadata

smk = snakemake  # noqa: F821 (set by Snakemake's script directive)
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
merge_metadata(
    smk.input.manifest,
    list(smk.input.parts),
    smk.params.probe,
    smk.params.frames,
    smk.output.metadata,
    smk.output.rejected,
)
