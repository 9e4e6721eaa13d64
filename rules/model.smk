# The base model in the published layout at {results}/base_model/<key>: a tiny random model written
# there, or links to a local directory or a Hugging Face snapshot (never a copy of the 30+ GB weights).
# The key is a hash of what decides its bytes (the configured kind's settings only), so editing another
# kind's keys rebuilds nothing, and two configs in one checkout each have their own. Under the Slurm
# profile it is a job on the CPU partition like the others: with kind hf that node downloads (or, with
# HF_HUB_OFFLINE=1, finds the snapshot in HF_HOME); see the README on getting the weights in place.


from longcat.params import leaf_params


rule base_model:
    output:
        directory(str(PATHS.base_model)),
    log:
        str(PATHS.log("base_model")),
    conda:
        "../envs/gpu.yaml"
    params:
        **leaf_params(base_model=SETTINGS.base_model.identity()),
    script:
        "../scripts/base_model.py"
