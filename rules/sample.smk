# Samples: one mp4 per configured prompt from the trained model in {runs_dir}/{run}/final.


rule sample:
    input:
        str(RUN.done),
    output:
        report(
            directory(str(RUN.samples)),
            patterns=["{name}.mp4"],
            category="Training",
            subcategory="Samples",
            caption="../report/training/samples.rst",
            labels={"sample": "{name}"},
        ),
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
