"""LongCat-Video full finetuning: clips -> metadata -> shards -> VAE/text caches -> FSDP2 training -> samples."""

from snakemake.utils import min_version

min_version("9.0")


# Relative to the Snakefile, so that `--directory DIR` runs the embedded default anywhere.
configfile: f"{workflow.basedir}/config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/model.smk"
include: "rules/cache.smk"
include: "rules/train.smk"
include: "rules/sample.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
