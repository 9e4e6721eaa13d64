"""The cache jobs (cache_vae_shard, cache_text_shard, cache_text_empty): the job's log, its GPU slot, then
the job's function in longcat.encoders."""

import logging
import sys


def main(snakemake):
    sys.stderr = open(snakemake.log[0], "w")  # the job's log, also for tqdm and warnings
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from longcat.gpu import job_device

    device = job_device()  # sets CUDA_VISIBLE_DEVICES before torch touches CUDA

    import torch

    from longcat import encoders

    torch.set_num_threads(max(1, snakemake.threads))
    common = dict(spec_path=snakemake.input.spec, base_model=snakemake.input.base_model, device=device)
    if snakemake.rule == "cache_text_empty":
        encoders.run_empty_text(snakemake.config, output=snakemake.output[0], **common)
        return
    shard = dict(
        shard_list=snakemake.input.shard,
        tensors_path=snakemake.output.tensors,
        index_path=snakemake.output.index,
        **common,
    )
    if snakemake.rule == "cache_vae_shard":
        encoders.run_vae_shard(
            snakemake.config, demo_dir=snakemake.params.demo_dir, threads=snakemake.threads, **shard
        )
    else:
        encoders.run_text_shard(snakemake.config, **shard)


main(snakemake)  # noqa: F821
