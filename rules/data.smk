"""Data stage: source -> manifest -> probe chunks -> metadata + rejects -> append-only shard lists.

Relisting the source is explicit: `snakemake --forcerun manifest` (the manifest has no inputs for
s3/local sources, so nothing else makes it stale). Probe chunks and the shard assignment keep their
history under `{RESULTS}/store/`, outside the rules' outputs, because Snakemake deletes outputs before
a job runs; that history is what makes a relist re-probe only new or changed objects and keeps old
shard lists untouched.
"""

from longcat import shards as shard_tables

DATA_SOURCE = config["source"]
DEMO_CLIPS_DIR = f"{RESULTS}/demo"
DATA_STORE = f"{RESULTS}/store"
PROBE_CHUNKS = [f"{index:03d}" for index in range(int(config["probe"]["chunks"]))]
SHARD_EXCLUDE = config["shards"].get("exclude") or ""


localrules:
    manifest,
    metadata,
    shard_index,
    shard_list,
    shards,


wildcard_constraints:
    chunk=r"\d{3}",


rule demo_clips:
    output:
        directory(DEMO_CLIPS_DIR),
    log:
        f"{RESULTS}/logs/demo_clips.log",
    conda:
        "../envs/data.yaml"
    params:
        demo=DATA_SOURCE.get("demo", {}),
    script:
        "../scripts/demo_clips.py"


rule manifest:
    input:
        demo=DEMO_CLIPS_DIR if DATA_SOURCE["kind"] == "demo" else [],
    output:
        f"{RESULTS}/manifest.parquet",
    log:
        f"{RESULTS}/logs/manifest.log",
    conda:
        "../envs/data.yaml"
    params:
        source=DATA_SOURCE,
    script:
        "../scripts/manifest.py"


rule probe_chunk:
    input:
        manifest=f"{RESULTS}/manifest.parquet",
        demo=DEMO_CLIPS_DIR if DATA_SOURCE["kind"] == "demo" else [],
    output:
        f"{RESULTS}/metadata/part-{{chunk}}.parquet",
    log:
        f"{RESULTS}/logs/probe_chunk/{{chunk}}.log",
    conda:
        "../envs/data.yaml"
    threads: 2
    params:
        source=DATA_SOURCE,
        chunks=len(PROBE_CHUNKS),
        store=f"{DATA_STORE}/probe/part-{{chunk}}.parquet",
        workers=config["probe"]["workers"],
        decode_check=config["probe"].get("decode_check", True),
    script:
        "../scripts/probe_chunk.py"


rule metadata:
    input:
        manifest=f"{RESULTS}/manifest.parquet",
        parts=expand(f"{RESULTS}/metadata/part-{{chunk}}.parquet", chunk=PROBE_CHUNKS),
    output:
        metadata=f"{RESULTS}/metadata.parquet",
        rejected=f"{RESULTS}/rejected.parquet",
    log:
        f"{RESULTS}/logs/metadata.log",
    conda:
        "../envs/data.yaml"
    params:
        probe=config["probe"],
        frames=config["frames"],
    script:
        "../scripts/metadata.py"


checkpoint shard_index:
    input:
        metadata=f"{RESULTS}/metadata.parquet",
        exclude=SHARD_EXCLUDE or [],
    output:
        f"{RESULTS}/shards/assignments.parquet",
    log:
        f"{RESULTS}/logs/shard_index.log",
    conda:
        "../envs/data.yaml"
    params:
        store=f"{DATA_STORE}/assignments.parquet",
        size=config["shards"]["size"],
        exclude=SHARD_EXCLUDE,
    script:
        "../scripts/shard_index.py"


# Both inputs are ancient: the assignment table and the metadata grow when new videos arrive, but the
# rows of an existing shard never change, so its list (and the caches built from it) must not rerun.
# Settings that change rows (frames, probe limits) and the shard's excluded keys are params instead.
rule shard_list:
    input:
        assignments=ancient(f"{RESULTS}/shards/assignments.parquet"),
        metadata=ancient(f"{RESULTS}/metadata.parquet"),
    output:
        f"{RESULTS}/shards/shard-{{shard}}.parquet",
    log:
        f"{RESULTS}/logs/shard_list/{{shard}}.log",
    wildcard_constraints:
        shard=r"\d{5,9}",
    conda:
        "../envs/data.yaml"
    params:
        frames=config["frames"],
        probe={key: config["probe"][key] for key in ("min_width", "min_height")},
        # A function of the wildcards only: Snakemake ignores params derived from input for reruns.
        excluded=lambda wildcards: shard_tables.excluded_in_shard(
            f"{RESULTS}/shards/assignments.parquet", SHARD_EXCLUDE, wildcards.shard
        ),
    script:
        "../scripts/shard_list.py"


rule shards:
    input:
        all_shard_lists,
