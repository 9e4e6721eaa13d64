"""Make the demo clips (rule demo_clips)."""

import logging

from longcat.demo import make_demo_clips

smk = snakemake  # noqa: F821 (set by Snakemake's script directive)
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
make_demo_clips(smk.output[0], int(smk.params.demo["num_clips"]), int(smk.params.demo.get("seed", 0)))
