# Samples: one mp4 per configured prompt from the trained model in {runs_dir}/{run}/final.


rule sample:
    input:
        str(RUN.done),
    output:
        directory(str(RUN.samples)),
    log:
        str(RUN.log("sample")),
    conda:
        "../envs/gpu.yaml"
    resources:
        gpu=1,
    params:
        model=str(RUN.final),
        settings=sample_params,
    script:
        "../scripts/sample.py"
