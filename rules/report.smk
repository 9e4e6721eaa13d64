# Look before you spend: the pre-launch estimate (needs only metadata and the config) and the
# figures and tables that `snakemake --report` shows for the data, the caches and the training.

from longcat.params import leaf_params
from longcat.train.estimate import estimate_settings

# --- estimate ---------------------------------------------------------------------------------


# What the configured run will cost (clips, disk, cache and training GPU-hours), from the metadata
# and the config only: `snakemake estimate` before committing GPUs (`all` builds it too, for the
# report). The settings it reads are its params (estimate_settings): a change of one re-estimates, a
# change of another does not. The job prints the text.
rule estimate:
    input:
        metadata=str(PATHS.metadata),
        rejected=str(PATHS.rejected),
    output:
        json=str(PATHS.estimate),
        text=str(PATHS.estimate_text),
    log:
        str(PATHS.log("estimate")),
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        **leaf_params(**estimate_settings(SETTINGS)),
        base_model_dir=str(PATHS.base_model),
    script:
        "../scripts/estimate.py"


# --- report -----------------------------------------------------------------------------------


# The figures and tables of `snakemake all --report report.zip` (or .html): the data, the caches and
# the training, each a file of its own under {results}/report/ or {runs_dir}/<run>/report/ that also
# opens alone. Every rule is cheap and local; `all` builds them, so the report finds them.
from longcat.report.training import TRAINING_FIGURES


report: "../report/workflow.rst"


REPORT_FILES = [
    str(PATHS.data_report("summary.html")),
    str(PATHS.data_report("estimate.html")),
    str(PATHS.cache_report("shards.html")),
    str(RUN.report("videos.html")),
    str(RUN.report("record.html")),
]


rule report_data:
    input:
        metadata=str(PATHS.metadata),
        rejected=str(PATHS.rejected),
    output:
        summary=report_item(
            PATHS.data_report("summary.html"), "Data", "Clips", "data/summary"
        ),
        rejects=report_item(
            PATHS.data_report("rejects.csv"), "Data", "Clips", "data/rejects"
        ),
        duration=data_figure("duration"),
        fps=data_figure("fps"),
        aspect=data_figure("aspect"),
        buckets=data_figure("buckets"),
        caption_words=data_figure("caption_words"),
    log:
        str(PATHS.log("report_data")),
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        **leaf_params(frames=SETTINGS.frames),
    script:
        "../scripts/report_data.py"


rule report_estimate:
    input:
        str(PATHS.estimate_text),
    output:
        report_item(
            PATHS.data_report("estimate.html"), "Data", "Clips", "data/estimate"
        ),
    log:
        str(PATHS.log("report_estimate")),
    localrule: True
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/report_estimate.py"


rule report_caches:
    input:
        shard_lists=all_shard_lists,
        indexes=report_cache_indexes,
        # Beside the caches' failures: the probe's rejects, and which failures a later shard supersedes.
        rejected=str(PATHS.rejected),
        assignments=shard_assignments,
    output:
        shards=report_item(
            PATHS.cache_report("shards.html"), "Caches", "Shards", "caches/shards"
        ),
        throughput=report_item(
            PATHS.cache_report("throughput.svg"),
            "Caches",
            "Shards",
            "caches/throughput",
        ),
        caption_tokens=report_item(
            PATHS.cache_report("caption_tokens.svg"),
            "Caches",
            "Shards",
            "caches/caption_tokens",
        ),
    log:
        str(PATHS.log("report_caches")),
    localrule: True
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/report_caches.py"


rule report_training:
    input:
        done=str(RUN.done),
        samples=str(RUN.samples),
    output:
        **{name: training_figure(name) for name in TRAINING_FIGURES},
        videos=report_item(
            RUN.report("videos.html"), "Training", "Videos", "training/videos"
        ),
        record=report_item(
            RUN.report("record.html"), "Training", "Run", "training/record"
        ),
        validation=report(
            directory(str(RUN.report("validation"))),
            patterns=["step-{step}/{video}.mp4"],
            category="Training",
            subcategory="Validation videos",
            caption="../report/training/validation.rst",
            # One label (two would show as a toggle); steps padded so that they sort.
            labels=lambda w: {"video": f"step {int(w.step):07d} {w.video}"},
        ),
    log:
        str(RUN.log("report_training")),
    localrule: True
    conda:
        "../envs/gpu.yaml"
    params:
        tensorboard=str(RUN.tensorboard),
        validation=str(RUN.validation),
        final=str(RUN.final),
    script:
        "../scripts/report_training.py"
