"""Make the demo clips into the demo's source directory (rule demo_clips)."""

import logging

from longcat.data.demo import make_demo_clips
from longcat.params import from_leaf_params
from longcat.settings import Demo, build

smk = snakemake  # noqa: F821 (set by Snakemake's script directive)
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
make_demo_clips(smk.output[0], build(Demo, from_leaf_params(smk.params)["demo"]))
