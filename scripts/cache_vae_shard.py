"""Encode one shard's clips into the VAE cache (rule cache_vae_shard), on the job's own GPU slot."""

import logging
import sys

smk = snakemake  # noqa: F821 (set by Snakemake's script directive)
sys.stderr = open(smk.log[0], "w")  # the job's log, also for tqdm and warnings
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

from longcat.gpu import job_device  # noqa: E402

device = job_device()  # sets CUDA_VISIBLE_DEVICES before torch touches CUDA

import torch  # noqa: E402

from longcat.encoders.vae import run_vae_shard  # noqa: E402
from longcat.paths import Layout  # noqa: E402
from longcat.settings import load_settings  # noqa: E402

torch.set_num_threads(max(1, smk.threads))
settings = load_settings(smk.config)
run_vae_shard(
    settings,
    smk.input.shard,
    Layout.from_settings(settings).vae_cache,
    smk.wildcards.shard,
    smk.input.base_model,
    device,
    threads=smk.threads,
)
