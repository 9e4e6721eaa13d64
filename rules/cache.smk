# Per-shard VAE-latent and text-embedding caches, in directories keyed by what made them
# (longcat.cache.spec.vae_cache_spec / text_cache_spec). Snakemake's own bookkeeping decides what is
# missing: one job and one pair of files per shard. Each job takes a GPU slot of its own (longcat.gpu)
# or runs on the CPU, and resumes inside its shard from `.partial-shard-NNNNN/` (not an output:
# Snakemake would delete it).
#
# The spec and the base model are `ancient` inputs: the cache key already names the model (kind, id,
# revision, tiny shape), so a rewritten spec.json or a re-materialised base model directory must not
# re-encode every shard; a different model gets a different key, hence new files.
#
# The shard jobs take no settings as params: none of the settings they read changes a cached byte
# without changing the key (hence the directory), so editing one must not rerun a shard. Their scripts
# build the typed settings from the config.

from longcat.cache.spec import text_cache_spec, vae_cache_spec, write_spec

VAE_CACHE = PATHS.vae_cache
TEXT_CACHE = PATHS.text_cache


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
        str(TEXT_CACHE.empty_text),


# Reads every shard of both caches (index, checksums, shapes, finite values), removes the damaged ones
# so that the next `snakemake cache` rebuilds exactly those, and writes PATHS.cache_verify_report. It has
# no output, so it runs whenever asked and nothing waits for it: run it on its own, not beside jobs that
# write the same caches.
rule verify_cache:
    log:
        str(PATHS.log("verify_cache")),
    conda:
        "../envs/gpu.yaml"
    threads: 8
    script:
        "../scripts/verify_cache.py"


rule cache_vae_spec:
    output:
        str(VAE_CACHE.spec),
    log:
        str(PATHS.log(f"cache_vae/{PATHS.vae_key}/spec")),
    localrule: True
    params:
        spec=lambda wildcards: vae_cache_spec(SETTINGS),
    run:
        write_spec(output[0], params.spec)


rule cache_text_spec:
    output:
        str(TEXT_CACHE.spec),
    log:
        str(PATHS.log(f"cache_text/{PATHS.text_key}/spec")),
    localrule: True
    params:
        spec=lambda wildcards: text_cache_spec(SETTINGS),
    run:
        write_spec(output[0], params.spec)


rule cache_vae_shard:
    input:
        shard=str(PATHS.shard_list("{shard}")),
        spec=ancient(str(VAE_CACHE.spec)),
        base_model=ancient(str(PATHS.base_model)),
    output:
        tensors=str(VAE_CACHE.tensors("{shard}")),
        index=str(VAE_CACHE.index("{shard}")),
    log:
        str(PATHS.log(f"cache_vae/{PATHS.vae_key}/shard-{{shard}}")),
    benchmark:
        str(PATHS.cache_benchmark("vae", "{shard}"))
    wildcard_constraints:
        shard=r"\d+",
    conda:
        "../envs/gpu.yaml"
    threads: SETTINGS.cache.decode_workers
    resources:
        gpu=1,
    script:
        "../scripts/cache_vae_shard.py"


rule cache_text_shard:
    input:
        shard=str(PATHS.shard_list("{shard}")),
        spec=ancient(str(TEXT_CACHE.spec)),
        base_model=ancient(str(PATHS.base_model)),
    output:
        tensors=str(TEXT_CACHE.tensors("{shard}")),
        index=str(TEXT_CACHE.index("{shard}")),
    log:
        str(PATHS.log(f"cache_text/{PATHS.text_key}/shard-{{shard}}")),
    benchmark:
        str(PATHS.cache_benchmark("text", "{shard}"))
    wildcard_constraints:
        shard=r"\d+",
    conda:
        "../envs/gpu.yaml"
    threads: 1
    resources:
        gpu=1,
    script:
        "../scripts/cache_text_shard.py"


rule cache_text_empty:
    input:
        spec=ancient(str(TEXT_CACHE.spec)),
        base_model=ancient(str(PATHS.base_model)),
    output:
        str(TEXT_CACHE.empty_text),
    log:
        str(PATHS.log(f"cache_text/{PATHS.text_key}/empty")),
    conda:
        "../envs/gpu.yaml"
    threads: 1
    resources:
        gpu=1,
    script:
        "../scripts/cache_text_empty.py"
