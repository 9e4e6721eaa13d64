"""The cache_text_empty job: the embedding of the empty caption (longcat.encoders.run_empty_text)."""

import logging
import sys


def main(snakemake):
    sys.stderr = open(snakemake.log[0], "w")  # the job's log, also for tqdm and warnings
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from longcat.gpu import job_device

    device = job_device()  # the same device and precision as the shard jobs

    from longcat.encoders import run_empty_text

    run_empty_text(
        snakemake.config,
        spec_path=snakemake.input.spec,
        base_model=snakemake.input.base_model,
        output=snakemake.output[0],
        device=device,
    )


main(snakemake)  # noqa: F821
