"""The empty caption's embedding in the text cache (rule cache_text_empty), on the job's own GPU slot."""

from longcat.gpu import start_gpu_job

smk = snakemake  # noqa: F821 (set by Snakemake's script directive)
device = start_gpu_job(smk.log[0], smk.threads)

from longcat.encoders.text import run_empty_text  # noqa: E402 (torch only after the GPU slot is taken)
from longcat.paths import Layout  # noqa: E402
from longcat.settings import load_settings  # noqa: E402

settings = load_settings(smk.config)
run_empty_text(settings, Layout.from_settings(settings).text_cache, smk.input.base_model, device)
