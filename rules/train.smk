# Full finetuning with FSDP2 (longcat.train) and export of any checkpoint to the published layout.
# Checkpoints under {runs_dir}/{run}/checkpoints/ are a param, never an output: Snakemake deletes the
# outputs of a failed job, and a preempted run must find its checkpoints when it starts again.

import os

from longcat.train.config import TrainConfig, run_config, write_run_config
from longcat.train.launch import ignore_usr1, launch_command
from longcat.train.targets import latest_export_dir

TRAIN = TrainConfig.from_dict(config["train"], where="config train")
RUN_DIR = f"{RUNS_DIR}/{RUN}"

# Slurm's preemption warning (USR1) reaches this process too when it runs the train job; see ignore_usr1.
ignore_usr1()


rule train_config:
    output:
        f"{RUN_DIR}/train_config.yaml",
    log:
        f"{RUN_DIR}/logs/train_config.log",
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
    conda:
        "../envs/gpu.yaml"
    threads: TRAIN.num_processes * (1 + TRAIN.dataloader_num_workers)
    resources:
        gpu=TRAIN.gpus * TRAIN.nodes,
        nodes=TRAIN.nodes,
    params:
        launch=launch_command(TRAIN),
        run_dir=lambda wildcards, output: os.path.dirname(output.done),
        vae_cache=vae_cache_dir(),
        text_cache=text_cache_dir(),
    # The shell ignores SIGTERM (Slurm's preemption and time limit send it to every process of the
    # job): it waits for the launcher, which passes the signal on and waits for the training
    # processes to save a checkpoint and exit.
    shell:
        "trap '' TERM; {params.launch} --config {input.config} --run-dir {params.run_dir}"
        " --base-model {input.base_model} --vae-cache {params.vae_cache} --text-cache {params.text_cache}"
        " > {log} 2>&1"


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
    conda:
        "../envs/gpu.yaml"
    params:
        checkpoint=lambda wildcards, input: os.path.dirname(input.checkpoint),
        flow_shift=(
            "" if TRAIN.flow_shift is None else f"--flow-shift {TRAIN.flow_shift}"
        ),
    shell:
        "python -m longcat.train.export --checkpoint {params.checkpoint}"
        " --base-model {input.base_model} --out {output} {params.flow_shift} > {log} 2>&1"


rule export:
    input:
        lambda wildcards: latest_export_dir(RUN_DIR),
