# The base model in the published layout at {results}/base_model: a tiny random model written there,
# or links to a local directory or a Hugging Face snapshot (never a copy of the 30+ GB weights).
# Samples: one mp4 per configured prompt from the trained model in {runs_dir}/{run}/final.

from longcat.basemodel import base_model_params


rule base_model:
    output:
        directory(f"{RESULTS}/base_model"),
    log:
        f"{RESULTS}/logs/base_model.log",
    localrule: True
    conda:
        "../envs/gpu.yaml"
    params:
        base_model=base_model_params(config),
    script:
        "../scripts/base_model.py"


rule sample:
    input:
        f"{RUNS_DIR}/{RUN}/train.done",
    output:
        directory(f"{RUNS_DIR}/{RUN}/samples"),
    log:
        f"{RUNS_DIR}/{RUN}/logs/sample.log",
    conda:
        "../envs/gpu.yaml"
    resources:
        gpu=1,
    params:
        model=f"{RUNS_DIR}/{RUN}/final",
        settings=sample_settings,
    script:
        "../scripts/sample.py"
