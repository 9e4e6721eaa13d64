"""The sample job: one mp4 per prompt from the trained model (longcat.pipeline.render_samples)."""

import logging
import sys


def main(snakemake):
    sys.stderr = open(snakemake.log[0], "w")  # the job's log, also for tqdm and warnings
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from longcat.gpu import job_device

    device = job_device()

    import torch

    from longcat.pipeline import render_samples

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    render_samples(snakemake.params.model, snakemake.output[0], snakemake.params.settings, device, dtype)


main(snakemake)  # noqa: F821
