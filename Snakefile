"""LongCat-Video full finetuning: clips -> metadata -> shards -> VAE/text caches -> FSDP2 training -> samples."""

from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


# Relative to the Snakefile, so that `--directory DIR` runs the embedded default anywhere.
configfile: f"{workflow.basedir}/config/config.yaml"


include: "rules/common.smk"


for stage in ("data", "model", "cache", "train"):
    if Path(workflow.basedir, "rules", f"{stage}.smk").exists():

        include: f"rules/{stage}.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
