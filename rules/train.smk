# Full finetuning with FSDP2 (longcat.train) and export of any checkpoint to the published layout.
# Checkpoints under {runs_dir}/{run}/checkpoints/ are a param, never an output: Snakemake deletes the
# outputs of a failed job, and a preempted run must find its checkpoints when it starts again.

import os

import yaml

from longcat.files import atomic_write_text
from longcat.params import from_leaf_params, leaf_params
from longcat.train.record import run_config
from longcat.train.launch import (
    ignore_usr1,
    launch_command,
    slurm_resources,
    train_threads,
)

TRAIN = SETTINGS.train

# Slurm's preemption warning (USR1) reaches this process too when it runs the train job; see ignore_usr1.
ignore_usr1()


rule train_config:
    output:
        str(RUN.train_config),
    log:
        str(RUN.log("train_config")),
    localrule: True
    params:
        **leaf_params(**run_config(SETTINGS)),
    run:
        atomic_write_text(
            output[0], yaml.safe_dump(from_leaf_params(params), sort_keys=False)
        )


# Where the shell keeps a failed attempt's log; not a param, which would make finished runs stale.
FAILED_TRAIN_LOG = str(
    RUN.failed_log("train", "$(date -u +%Y%m%dT%H%M%SZ).exit-$status")
)


rule train:
    input:
        checked_run,
        config=str(RUN.train_config),
        cache=all_cache_files,
        base_model=str(PATHS.base_model),
        init_from=init_from_model,
    output:
        final=directory(str(RUN.final)),
        done=str(RUN.done),
    log:
        str(RUN.log("train")),
    conda:
        "../envs/gpu.yaml"
    threads: train_threads(TRAIN)
    resources:
        **slurm_resources(TRAIN),
        gpu=TRAIN.gpus * TRAIN.nodes,
        nodes=TRAIN.nodes,
    params:
        launch=launch_command(TRAIN),
        run_dir=lambda wildcards, output: os.path.dirname(output.done),
        vae_cache=str(PATHS.vae_cache.root),
        text_cache=str(PATHS.text_cache.root),
    # The shell ignores SIGTERM (Slurm's preemption and time limit send it to every process of the
    # job): it waits for the launcher, which passes the signal on and waits for the training
    # processes to save a checkpoint and exit. A failed attempt's log is kept beside the log, which
    # the next attempt starts anew.
    shell:
        "trap '' TERM; {params.launch} --config {input.config} --run-dir {params.run_dir}"
        " --base-model {input.base_model} --vae-cache {params.vae_cache} --text-cache {params.text_cache}"
        " > {log} 2>&1 || {{ status=$?; cp {log} "
        + FAILED_TRAIN_LOG
        + "; exit $status; }}"


rule export_checkpoint:
    input:
        checkpoint=str(RUN.checkpoint("{step}") / ".metadata"),
        base_model=str(PATHS.base_model),
    output:
        directory(str(RUN.export("{step}"))),
    log:
        str(RUN.log("export-step-{step}")),
    wildcard_constraints:
        step=r"\d+",
    conda:
        "../envs/gpu.yaml"
    params:
        checkpoint=lambda wildcards: str(RUN.checkpoint(wildcards.step)),
        flow_shift=(
            "" if TRAIN.flow_shift is None else f"--flow-shift {TRAIN.flow_shift}"
        ),
        max_sequence_length=SETTINGS.cache.max_tokens,
        weights=TRAIN.exported_weights,
    shell:
        "python -m longcat.train.export --checkpoint {params.checkpoint}"
        " --base-model {input.base_model} --out {output} {params.flow_shift}"
        " --max-sequence-length {params.max_sequence_length} --weights {params.weights} > {log} 2>&1"


rule export:
    input:
        latest_export,
