"""The sample job: one mp4 per prompt from the trained model (longcat.samples.render_samples)."""

from longcat.gpu import start_gpu_job

smk = snakemake  # noqa: F821 (set by Snakemake's script directive)
device = start_gpu_job(smk.log[0])

import json  # noqa: E402

import torch  # noqa: E402 (only after the GPU slot is taken)

from longcat.samples import render_samples  # noqa: E402

dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
render_samples(smk.params.model, smk.output[0], json.loads(smk.params.settings), device, dtype)
