"""Write the pre-launch estimate from the metadata and the config, and show it (rule estimate)."""

import logging
import sys

from longcat.params import from_leaf_params
from longcat.report.estimate import run_estimate
from longcat.settings import BaseModel, Cache, Estimate, Train, build

smk = snakemake  # noqa: F821 (set by Snakemake's script directive)
settings = from_leaf_params(smk.params)
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
text = run_estimate(
    smk.input.metadata,
    smk.input.rejected,
    build(Cache, settings["cache"]),
    build(Train, settings["train"]),
    build(Estimate, settings["estimate"]),
    build(BaseModel, settings["base_model"]),
    smk.params.base_model_dir,
    smk.output.json,
    smk.output.text,
)
# The job's output is what the user sees at the end of `snakemake estimate`: the estimate itself.
sys.stdout.write(f"\n{text}(written to {smk.output.text} and {smk.output.json})\n\n")
