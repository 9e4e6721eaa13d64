"""Merge the probe chunks into metadata.parquet and rejected.parquet (rule metadata)."""

import logging

from longcat.data.metadata import merge_metadata
from longcat.params import from_leaf_params
from longcat.paths import Layout
from longcat.settings import Frames, Probe, build, load_settings

smk = snakemake  # noqa: F821 (set by Snakemake's script directive)
settings = from_leaf_params(smk.params)
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
merge_metadata(
    smk.input.manifest,
    list(smk.input.parts),
    build(Probe, settings["probe"]),
    build(Frames, settings["frames"]),
    smk.output.metadata,
    smk.output.rejected,
    unpaired_path=smk.input.unpaired,
    failed_rejected_path=Layout.from_settings(load_settings(smk.config)).failed_rejected,
)
