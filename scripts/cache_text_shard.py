"""The cache_text_shard job: one shard's captions to umT5 embeddings (longcat.encoders.run_text_shard)."""

import logging
import sys


def main(snakemake):
    sys.stderr = open(snakemake.log[0], "w")  # the job's log, also for tqdm and warnings
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from longcat.gpu import job_device

    device = job_device()  # sets CUDA_VISIBLE_DEVICES before torch touches CUDA

    import torch

    from longcat.encoders import run_text_shard

    torch.set_num_threads(max(1, snakemake.threads))
    run_text_shard(
        snakemake.config,
        shard_list=snakemake.input.shard,
        spec_path=snakemake.input.spec,
        base_model=snakemake.input.base_model,
        tensors_path=snakemake.output.tensors,
        index_path=snakemake.output.index,
        device=device,
    )


main(snakemake)  # noqa: F821
