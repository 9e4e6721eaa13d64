"""Cache read: in-memory index build over many shards, and random-access sample reads (warm and cold).

Writes a synthetic cache in the real format (longcat.cache.ShardWriter): `--index-shards` shards of
`--shard-size` index rows (tensors only in the first `--data-shards`, to keep the disk small), with
bf16 latents of `--latent` shape and text embeddings of `--text-len` x `--text-dim`. Reads samples in
random order through CacheReader (latent + text per sample). Cold reads drop each shard from the page
cache with posix_fadvise(DONTNEED) first. Prints one JSON line.

    python bench/bench_cache_read.py             # real sizes: [16,24,60,104] latents, 4096-wide text
    python bench/bench_cache_read.py --latent 16 5 8 14 --text-dim 32 --shard-size 50   # quick
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from longcat.cache.format import TEXT_INDEX_SCHEMA, VAE_INDEX_SCHEMA
from longcat.cache.reader import CacheReader
from longcat.cache.writer import ShardWriter, write_empty_text, write_index
from longcat.paths import CacheLayout


def build(root: Path, shards: int, rows: int, with_tensors: bool, args) -> tuple[Path, Path]:
    """A cache of `shards` shards of `rows` samples; index files only unless `with_tensors`."""
    vae_dir, text_dir = root / "vae" / "bench", root / "text" / "bench"
    generator = torch.Generator().manual_seed(0)
    latent_shape = tuple(args.latent)
    for shard in range(shards):
        name = f"shard-{shard:05d}"
        ids = [f"clips/{shard:05d}/{index:06d}.mp4" for index in range(rows)]
        vae_rows = [
            {
                "sample_id": sample_id,
                "status": "ok",
                "reason": None,
                "num_frames": 4 * (latent_shape[1] - 1) + 1,
                "fps": 15.0,
                "bucket_height": latent_shape[2] * 8,
                "bucket_width": latent_shape[3] * 8,
                "latent_shape": list(latent_shape),
            }
            for sample_id in ids
        ]
        text_rows = [{"sample_id": i, "status": "ok", "reason": None, "text_len": args.text_len} for i in ids]
        if with_tensors:
            vae = ShardWriter(CacheLayout(vae_dir), f"{shard:05d}", VAE_INDEX_SCHEMA, {})
            text = ShardWriter(CacheLayout(text_dir), f"{shard:05d}", TEXT_INDEX_SCHEMA, {})
            for vae_index_row, text_index_row in zip(vae_rows, text_rows, strict=True):
                vae.add(vae_index_row, torch.randn(latent_shape, generator=generator).to(torch.bfloat16))
                text.add(
                    text_index_row, torch.randn(args.text_len, args.text_dim, generator=generator).bfloat16()
                )
            vae.finish(ids)
            text.finish(ids)
        else:
            write_index(vae_dir / f"{name}.index.parquet", vae_rows, VAE_INDEX_SCHEMA)
            write_index(text_dir / f"{name}.index.parquet", text_rows, TEXT_INDEX_SCHEMA)
    write_empty_text(text_dir / "empty.safetensors", torch.zeros(1, args.text_dim, dtype=torch.bfloat16), {})
    return vae_dir, text_dir


def drop_page_cache(directory: Path) -> None:
    for path in directory.glob("*.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_all(reader: CacheReader, sample_ids: list[str]) -> float:
    start = time.perf_counter()
    for sample_id in sample_ids:
        # A copy touches every byte: safetensors may hand out memory-mapped tensors that read nothing yet.
        reader.latent(sample_id).clone()
        reader.text(sample_id).clone()
    return len(sample_ids) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index-shards", type=int, default=100)
    parser.add_argument("--data-shards", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--data-samples", type=int, default=64, help="samples per data shard")
    parser.add_argument("--latent", type=int, nargs=4, default=[16, 24, 60, 104])
    parser.add_argument("--text-len", type=int, default=128)
    parser.add_argument("--text-dim", type=int, default=4096)
    parser.add_argument("--dir", default=None, help="where to write the cache (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        # The index is timed at full scale; reads use a few smaller shards with tensors, to spare the disk.
        index_vae, index_text = build(Path(scratch, "index"), args.index_shards, args.shard_size, False, args)
        vae_dir, text_dir = build(Path(scratch, "data"), args.data_shards, args.data_samples, True, args)

        start, start_cpu = time.perf_counter(), time.process_time()
        index_reader = CacheReader(index_vae, index_text)
        index_seconds, index_cpu = time.perf_counter() - start, time.process_time() - start_cpu

        reader = CacheReader(vae_dir, text_dir)
        sample_ids = [sample.sample_id for sample in reader.samples]
        random.Random(0).shuffle(sample_ids)
        read_all(reader, sample_ids[:4])  # open the shards once
        warm = read_all(reader, sample_ids)
        drop_page_cache(vae_dir)
        drop_page_cache(text_dir)
        cold = read_all(CacheReader(vae_dir, text_dir), sample_ids)
        sample_bytes = sum(p.stat().st_size for p in vae_dir.glob("*.safetensors")) / len(sample_ids)

    result = {
        "bench": "cache_read",
        "index_shards": args.index_shards,
        "index_rows": len(index_reader.samples),
        "index_build_s": round(index_seconds, 3),
        "index_build_cpu_s": round(index_cpu, 3),
        "latent_shape": args.latent,
        "text_shape": [args.text_len, args.text_dim],
        "latent_mb_per_sample": round(sample_bytes / 1e6, 3),
        "warm_samples_per_s": round(warm, 1),
        "cold_samples_per_s": round(cold, 1),
        "samples_read": len(sample_ids),
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
