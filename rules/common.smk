"""Config checks, paths and input functions shared by the stage files.

Runs at parse time in every job (locally and once per cluster job): keep it cheap. Nothing here
lists S3 or reads a big table; shard ids are read only after the shard_index checkpoint has run.
"""

import functools
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from longcat.config import ConfigError, check_config

# One line naming the bad key (and never an AWS secret) before any job runs; then Snakemake's
# validate fills the schema's defaults into `config`.
try:
    check_config(config, Path(workflow.basedir, "config", "schema.yaml"))
except ConfigError as error:
    raise WorkflowError(str(error)) from None
validate(config, schema="../config/schema.yaml")


RESULTS = config["results"]
CACHE_DIR = config["cache_dir"]
RUNS_DIR = config["runs_dir"]
RUN = config["train"]["run"]


wildcard_constraints:
    shard=r"\d{5,9}",


@functools.cache
def _read_shard_ids(path, mtime_ns, size):
    from longcat.shards import shard_ids as read_shard_ids

    return read_shard_ids(path)


def shard_ids():
    """Shard ids ("00000", ...) from the shard_index checkpoint's table (key -> shard, append-only)."""
    assignments = checkpoints.shard_index.get().output[0]
    stat = Path(assignments).stat()
    return _read_shard_ids(assignments, stat.st_mtime_ns, stat.st_size)


def shard_list_path(shard):
    return f"{RESULTS}/shards/shard-{shard}.parquet"


@functools.cache
def vae_cache_key():
    from longcat.cache import cache_key, vae_cache_spec

    return cache_key(vae_cache_spec(config))


@functools.cache
def text_cache_key():
    from longcat.cache import cache_key, text_cache_spec

    return cache_key(text_cache_spec(config))


def vae_cache_dir():
    return f"{CACHE_DIR}/vae/{vae_cache_key()}"


def text_cache_dir():
    return f"{CACHE_DIR}/text/{text_cache_key()}"


def all_shard_lists(wildcards):
    return [shard_list_path(shard) for shard in shard_ids()]


def all_vae_shards(wildcards):
    return [f"{vae_cache_dir()}/shard-{shard}.safetensors" for shard in shard_ids()]


def all_text_shards(wildcards):
    return [f"{text_cache_dir()}/shard-{shard}.safetensors" for shard in shard_ids()]


def all_cache_files(wildcards):
    """Every file training reads: all shards of both caches and the empty-caption embedding."""
    return [
        *all_vae_shards(wildcards),
        *all_text_shards(wildcards),
        f"{text_cache_dir()}/empty.safetensors",
    ]


def shard_assignments(wildcards):
    # Depending on the checkpoint's output itself makes Snakemake re-read the shard ids after the
    # checkpoint reruns in the same invocation (new videos); otherwise the old list would be used.
    return checkpoints.shard_index.get().output[0]


def sample_settings(wildcards):
    # Imported here: the pipeline module loads torch and diffusers, too slow for every parse.
    from longcat.pipeline import sample_settings as settings_from_config

    return settings_from_config(config)


def get_final_output():
    """What `snakemake all` builds: samples from the finetuned model, hence every stage before them."""
    return [f"{RUNS_DIR}/{RUN}/samples"]
