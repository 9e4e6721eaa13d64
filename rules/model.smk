# The base model in the published layout at {results}/base_model: a tiny random model written there,
# or links to a local directory or a Hugging Face snapshot (never a copy of the 30+ GB weights).
# Its params are what decides its bytes (the configured kind's settings only), so editing another
# kind's keys rebuilds nothing.


rule base_model:
    output:
        directory(str(PATHS.base_model)),
    log:
        str(PATHS.log("base_model")),
    localrule: True
    conda:
        "../envs/gpu.yaml"
    params:
        base_model=SETTINGS.base_model.identity(),
    script:
        "../scripts/base_model.py"
