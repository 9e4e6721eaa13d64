"""Figures and tables of the data stage for the report (rule report_data)."""

import logging

from longcat.params import from_leaf_params
from longcat.report.data import DATA_OUTPUTS, write_data_report
from longcat.settings import Frames, build

smk = snakemake  # noqa: F821 (set by Snakemake's script directive)
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
write_data_report(
    smk.input.metadata,
    smk.input.rejected,
    build(Frames, from_leaf_params(smk.params)["frames"]),
    {name: smk.output[name] for name in DATA_OUTPUTS},
)
