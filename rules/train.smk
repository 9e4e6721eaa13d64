# Full finetuning with FSDP2 (longcat.train) and export of any checkpoint to the published layout.
# Checkpoints under {runs_dir}/{run}/checkpoints/ are a param, never an output: Snakemake deletes the
# outputs of a failed job, and a preempted run must find its checkpoints when it starts again.

from longcat.train.config import TrainConfig, run_config, write_run_config
from longcat.train.launch import launch_command

TRAIN = TrainConfig.from_dict(config["train"], where="config train")
RUN_DIR = f"{RUNS_DIR}/{RUN}"


def latest_export(wildcards):
    from longcat.train.checkpoint import latest_checkpoint

    latest = latest_checkpoint(f"{RUN_DIR}/checkpoints")
    if latest is None:
        raise WorkflowError(
            f"export: no checkpoint under {RUN_DIR}/checkpoints; train first"
        )
    return f"{RUN_DIR}/exports/{latest.name}"


rule train_config:
    output:
        f"{RUN_DIR}/train_config.yaml",
    localrule: True
    params:
        config=run_config(config),
        paths=lambda wildcards: {
            "run_dir": RUN_DIR,
            "base_model": f"{RESULTS}/base_model",
            "vae_cache": vae_cache_dir(),
            "text_cache": text_cache_dir(),
        },
    run:
        write_run_config(params.config, output[0], params.paths)


rule train:
    input:
        config=f"{RUN_DIR}/train_config.yaml",
        cache=all_cache_files,
        base_model=f"{RESULTS}/base_model",
    output:
        final=directory(f"{RUN_DIR}/final"),
        done=f"{RUN_DIR}/train.done",
    log:
        f"{RUN_DIR}/logs/train.log",
    threads: TRAIN.num_processes * (1 + TRAIN.dataloader_num_workers)
    resources:
        gpu=TRAIN.gpus * TRAIN.nodes,
        nodes=TRAIN.nodes,
    params:
        launch=launch_command(TRAIN),
        checkpoints=f"{RUN_DIR}/checkpoints",
        vae_cache=vae_cache_dir(),
        text_cache=text_cache_dir(),
    shell:
        "{params.launch} --config {input.config} --run-dir {RUN_DIR} --base-model {input.base_model}"
        " --vae-cache {params.vae_cache} --text-cache {params.text_cache} > {log} 2>&1"


rule export_checkpoint:
    input:
        checkpoint=f"{RUN_DIR}/checkpoints/step-{{step}}/.metadata",
        base_model=f"{RESULTS}/base_model",
    output:
        directory(f"{RUN_DIR}/exports/step-{{step}}"),
    log:
        f"{RUN_DIR}/logs/export-step-{{step}}.log",
    wildcard_constraints:
        step=r"\d+",
    shell:
        "python -m longcat.train.export --checkpoint {RUN_DIR}/checkpoints/step-{wildcards.step}"
        " --base-model {input.base_model} --out {output} > {log} 2>&1"


rule export:
    input:
        latest_export,
