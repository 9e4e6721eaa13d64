# The base model in the published layout at {results}/base_model: a tiny random model written there,
# or links to a local directory or a Hugging Face snapshot (never a copy of the 30+ GB weights).
# Samples: one mp4 per configured prompt from the trained model in {runs_dir}/{run}/final.

from longcat.basemodel import base_model_params


def sample_settings(wildcards):
    # Imported here: the pipeline module loads torch and diffusers, too slow for every parse.
    from longcat.pipeline import sample_settings

    return sample_settings(config)


rule base_model:
    output:
        directory(f"{RESULTS}/base_model"),
    log:
        f"{RESULTS}/logs/base_model.log",
    localrule: True
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
    resources:
        gpu=1,
    params:
        model=f"{RUNS_DIR}/{RUN}/final",
        settings=sample_settings,
    script:
        "../scripts/sample.py"
