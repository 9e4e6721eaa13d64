"""Per-shard caches of VAE latents and text embeddings: keys, file format, resumable writer and reader.

Layout, one directory per cache key (a hash of everything that changes the bytes; `longcat.paths`):

    {cache_dir}/vae/<key>/spec.json                      what made the cache (its hash is <key>)
    {cache_dir}/vae/<key>/shard-NNNNN.safetensors        one tensor per sample, named by its source key
    {cache_dir}/vae/<key>/shard-NNNNN.index.parquet      one row per sample: status, reason, shape, ...
    {cache_dir}/text/<key>/...                           the same for text, plus empty.safetensors

`spec` decides the keys, `format` the bytes of a file (with a checksum per tensor), `writer` builds a
shard resumably (a killed job goes on from `.partial-shard-NNNNN/` and gives the same bytes), `reader`
serves training and refuses a damaged sample, `verify` checks whole caches and removes the damaged shards
for `snakemake cache` to rebuild. Only touching a tensor imports torch.
"""
