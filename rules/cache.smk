# Per-shard VAE-latent and text-embedding caches, in directories keyed by what made them
# (longcat.cache.vae_cache_spec / text_cache_spec). Snakemake's own bookkeeping decides what is missing:
# one job and one pair of files per shard. Each job takes a GPU slot of its own (longcat.gpu) or runs on
# the CPU, and resumes inside its shard from `.partial-shard-NNNNN/` (not an output: Snakemake would
# delete it).
#
# The spec and the base model are `ancient` inputs: the cache key already names the model (kind, id,
# revision, tiny shape), so a rewritten spec.json or a re-materialised base model directory must not
# re-encode every shard; a different model gets a different key, hence new files.

import longcat.cache


rule cache:
    input:
        shard_assignments,
        all_cache_files,


rule cache_vae:
    input:
        shard_assignments,
        all_vae_shards,


rule cache_text:
    input:
        shard_assignments,
        all_text_shards,
        f"{text_cache_dir()}/empty.safetensors",


rule cache_vae_spec:
    output:
        f"{vae_cache_dir()}/spec.json",
    log:
        f"{RESULTS}/logs/cache_vae/{vae_cache_key()}/spec.log",
    localrule: True
    params:
        spec=lambda wildcards: longcat.cache.vae_cache_spec(config),
    run:
        longcat.cache.write_spec(output[0], params.spec)


rule cache_text_spec:
    output:
        f"{text_cache_dir()}/spec.json",
    log:
        f"{RESULTS}/logs/cache_text/{text_cache_key()}/spec.log",
    localrule: True
    params:
        spec=lambda wildcards: longcat.cache.text_cache_spec(config),
    run:
        longcat.cache.write_spec(output[0], params.spec)


rule cache_vae_shard:
    input:
        shard=f"{RESULTS}/shards/shard-{{shard}}.parquet",
        spec=ancient(f"{vae_cache_dir()}/spec.json"),
        base_model=ancient(f"{RESULTS}/base_model"),
    output:
        tensors=f"{vae_cache_dir()}/shard-{{shard}}.safetensors",
        index=f"{vae_cache_dir()}/shard-{{shard}}.index.parquet",
    log:
        f"{RESULTS}/logs/cache_vae/{vae_cache_key()}/shard-{{shard}}.log",
    wildcard_constraints:
        shard=r"\d+",
    conda:
        "../envs/gpu.yaml"
    threads: config["cache"]["decode_workers"]
    resources:
        gpu=1,
    params:
        demo_dir=DEMO_CLIPS_DIR,
    script:
        "../scripts/cache_job.py"


rule cache_text_shard:
    input:
        shard=f"{RESULTS}/shards/shard-{{shard}}.parquet",
        spec=ancient(f"{text_cache_dir()}/spec.json"),
        base_model=ancient(f"{RESULTS}/base_model"),
    output:
        tensors=f"{text_cache_dir()}/shard-{{shard}}.safetensors",
        index=f"{text_cache_dir()}/shard-{{shard}}.index.parquet",
    log:
        f"{RESULTS}/logs/cache_text/{text_cache_key()}/shard-{{shard}}.log",
    wildcard_constraints:
        shard=r"\d+",
    conda:
        "../envs/gpu.yaml"
    threads: 1
    resources:
        gpu=1,
    script:
        "../scripts/cache_job.py"


rule cache_text_empty:
    input:
        spec=ancient(f"{text_cache_dir()}/spec.json"),
        base_model=ancient(f"{RESULTS}/base_model"),
    output:
        f"{text_cache_dir()}/empty.safetensors",
    log:
        f"{RESULTS}/logs/cache_text/{text_cache_key()}/empty.log",
    conda:
        "../envs/gpu.yaml"
    threads: 1
    resources:
        gpu=1,
    script:
        "../scripts/cache_job.py"
