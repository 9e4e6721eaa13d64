"""Materialise the base model in the published layout at {results}/base_model (rule base_model)."""

import logging
import sys

from longcat.basemodel.prepare import prepare_base_model
from longcat.params import from_leaf_params
from longcat.settings import BaseModel, build

smk = snakemake  # noqa: F821 (set by Snakemake's script directive)
sys.stderr = open(smk.log[0], "w")  # the job's log, also for tqdm and warnings
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
prepare_base_model(build(BaseModel, from_leaf_params(smk.params)["base_model"]), smk.output[0])
