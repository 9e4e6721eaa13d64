"""Config checks, paths and input functions shared by the stage files.

Runs at parse time in every job (locally and once per cluster job): keep it cheap. Nothing here
lists S3 or reads a big table; shard ids are read only after the shard_index checkpoint has run.
"""

import functools
from pathlib import Path

from snakemake.exceptions import WorkflowError

from longcat.cache.ownership import claim
from longcat.cache.spec import CacheError
from longcat.config import ConfigError
from longcat.paths import Layout
from longcat.settings import load_settings

# One line naming the bad key (and never an AWS secret) before any job runs; then the typed settings,
# with the schema's defaults, and every path the rules name.
try:
    SETTINGS = load_settings(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None
PATHS = Layout.from_settings(SETTINGS)
RUN = PATHS.train_run

# A cache directory holds one workflow's shards: another workflow stops here, before any of its jobs
# could rebuild or delete them (longcat.cache.ownership).
try:
    for cache in (PATHS.vae_cache, PATHS.text_cache):
        claim(cache.root, PATHS.workflow_id)
except CacheError as error:
    raise WorkflowError(str(error)) from None


wildcard_constraints:
    shard=r"\d{5,9}",


@functools.cache
def _read_shard_ids(path, mtime_ns, size):
    from longcat.data.shards import shard_ids as read_shard_ids

    return read_shard_ids(path)


def shard_ids():
    """Shard ids ("00000", ...) from the shard_index checkpoint's table (key -> shard, append-only)."""
    assignments = checkpoints.shard_index.get().output[0]
    stat = Path(assignments).stat()
    return _read_shard_ids(assignments, stat.st_mtime_ns, stat.st_size)


def all_shard_lists(wildcards):
    return [PATHS.shard_list(shard) for shard in shard_ids()]


def all_vae_shards(wildcards):
    return [PATHS.vae_cache.tensors(shard) for shard in shard_ids()]


def all_text_shards(wildcards):
    return [PATHS.text_cache.tensors(shard) for shard in shard_ids()]


def all_cache_files(wildcards):
    """Every file training reads: all shards of both caches and the empty-caption embedding."""
    return [
        *all_vae_shards(wildcards),
        *all_text_shards(wildcards),
        PATHS.text_cache.empty_text,
    ]


def shard_assignments(wildcards):
    # Depending on the checkpoint's output itself makes Snakemake re-read the shard ids after the
    # checkpoint reruns in the same invocation (new videos); otherwise the old list would be used.
    return checkpoints.shard_index.get().output[0]


def latest_export(wildcards):
    """`exports/step-N` for the run's latest checkpoint step-N (what the `export` target builds)."""
    from longcat.paths import latest_checkpoint

    latest = latest_checkpoint(RUN.checkpoints)
    if latest is None:
        raise WorkflowError(
            f"export: no checkpoint under {RUN.checkpoints}; train first"
        )
    return str(RUN.export(latest.name.removeprefix("step-")))


def checked_run(wildcards):
    """No file: the rule of longcat.train.changes for a changed config, applied to the record of the run's
    latest checkpoint, so that a change the run cannot take stops Snakemake here, before any job, with
    the message the train job would give."""
    from longcat.paths import latest_checkpoint
    from longcat.train.changes import RunRefused, check_start
    from longcat.train.record import read_record, run_identity

    latest = latest_checkpoint(RUN.checkpoints)
    record = read_record(latest) if latest is not None else None
    if record is not None:
        try:
            check_start(
                record, run_identity(SETTINGS), SETTINGS.train, str(latest), shard_ids
            )
        except RunRefused as error:
            raise WorkflowError(str(error)) from None
    return []


def init_from_model(wildcards):
    """The model train.init_from names, for a run that has not started: a finished run's train.done, or
    a model directory. Ancient: a run started from it does not train again when that one changes.
    """
    from longcat.paths import latest_checkpoint

    if PATHS.init_from_model is None or latest_checkpoint(RUN.checkpoints) is not None:
        return []
    if PATHS.init_from_run is None:
        return ancient(str(PATHS.init_from_model))
    other = PATHS.other_run(PATHS.init_from_run)
    if not other.done.is_file():
        raise WorkflowError(
            f"train.init_from: run {PATHS.init_from_run} has not finished ({other.done} is missing); "
            f"finish it first, or name a model directory such as {other.export('N')} (`snakemake export` "
            "writes one of a run's latest checkpoint)"
        )
    return ancient(str(other.done))


def sample_params(wildcards):
    """The sample rule's settings as plain values, in one JSON text without < > & (Snakemake's report
    shows the job's params inside a <script> element, and the prompts are free text)."""
    from longcat.report.figures import script_safe_json
    from longcat.samples import sample_settings

    return script_safe_json(
        sample_settings(SETTINGS.sample, SETTINGS.frames, SETTINGS.train.seed)
    )


def get_final_output():
    """What `snakemake all` builds: samples from the finetuned model, hence every stage before them,
    and what `snakemake all --report` shows (REPORT_FILES in rules/report.smk)."""
    return [RUN.samples, *REPORT_FILES]


# ---- the report (rules/report.smk)


def report_item(path, category, subcategory, caption, **labels):
    """An output shown in the report under category/subcategory, described by report/<caption>.rst."""
    return report(
        str(path),
        category=category,
        subcategory=subcategory,
        caption=f"../report/{caption}.rst",
        labels=labels or None,
    )


def data_figure(name):
    return report_item(
        PATHS.data_report(f"{name}.svg"), "Data", "Figures", f"data/{name}"
    )


def training_figure(name):
    return report_item(
        RUN.report(f"{name}.svg"), "Training", "Figures", f"training/{name}"
    )


def report_cache_indexes(wildcards):
    """The index of every shard of both caches: what the caches' table counts."""
    return [
        str(cache.index(shard))
        for cache in (PATHS.vae_cache, PATHS.text_cache)
        for shard in shard_ids()
    ]
