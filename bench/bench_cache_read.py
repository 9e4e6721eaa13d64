"""Cache read: in-memory index build over many shards, and random-access sample reads (warm and cold).

Writes a synthetic cache in the real format (longcat.cache.ShardWriter): `--index-shards` shards of
`--shard-size` index rows (tensors only in the first `--data-shards`, to keep the disk small), with
bf16 latents of `--latent` shape and text embeddings of `--text-len` x `--text-dim`. Reads samples in
random order through CacheReader (latent + text per sample), with the per-read verification training
uses (checksum and finite values) and without it (`verify=False`), on one torch thread as in a loader
worker; warm rates are the best of `--repeats` passes. Cold reads drop each shard from the page cache
with posix_fadvise(DONTNEED) first. Prints one JSON line.

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
from longcat.vae_frames import video_frames

WAYS = ("unverified", "verified")


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
                "num_frames": video_frames(latent_shape[1]),
                "fps": 15.0,
                "bucket_height": latent_shape[2] * 8,
                "bucket_width": latent_shape[3] * 8,
                "latent_shape": list(latent_shape),
                "checksum": 0,  # index-only shards: never read
            }
            for sample_id in ids
        ]
        text_rows = [
            {"sample_id": i, "status": "ok", "reason": None, "text_len": args.text_len, "checksum": 0}
            for i in ids
        ]
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


def read_all(reader: "CacheReader | MappedReads", sample_ids: list[str]) -> float:
    start = time.perf_counter()
    for sample_id in sample_ids:
        # The reader reads every byte into memory of its own (no memory map), as the loader gets it.
        reader.latent(sample_id)
        reader.text(sample_id)
    return len(sample_ids) / (time.perf_counter() - start)


class MappedReads:
    """The reads before per-read verification: safetensors' memory-mapped `get_tensor`, then a copy that
    touches every byte (a mapped tensor reads nothing yet)."""

    def __init__(self, reader: CacheReader):
        from safetensors import safe_open

        self.shard_of = {sample.sample_id: sample.shard for sample in reader.samples}
        self.handles = {
            (kind, path.name.removeprefix("shard-").removesuffix(".safetensors")): safe_open(str(path), "pt")
            for kind, directory in (("vae", reader.vae_dir), ("text", reader.text_dir))
            for path in directory.glob("shard-*.safetensors")
        }

    def latent(self, sample_id: str):
        return self.handles["vae", self.shard_of[sample_id]].get_tensor(sample_id).clone()

    def text(self, sample_id: str):
        return self.handles["text", self.shard_of[sample_id]].get_tensor(sample_id).clone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index-shards", type=int, default=100)
    parser.add_argument("--data-shards", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--data-samples", type=int, default=64, help="samples per data shard")
    parser.add_argument("--latent", type=int, nargs=4, default=[16, 24, 60, 104])
    parser.add_argument("--text-len", type=int, default=128)
    parser.add_argument("--text-dim", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3, help="warm passes of each way (the best counts)")
    parser.add_argument("--dir", default=None, help="where to write the cache (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        # The index is timed at full scale; reads use a few smaller shards with tensors, to spare the disk.
        index_vae, index_text = build(Path(scratch, "index"), args.index_shards, args.shard_size, False, args)
        vae_dir, text_dir = build(Path(scratch, "data"), args.data_shards, args.data_samples, True, args)

        start, start_cpu = time.perf_counter(), time.process_time()
        index_reader = CacheReader(index_vae, index_text)
        index_seconds, index_cpu = time.perf_counter() - start, time.process_time() - start_cpu

        readers = {way: CacheReader(vae_dir, text_dir, verify=way == "verified") for way in WAYS}
        sample_ids = [sample.sample_id for sample in readers["verified"].samples]
        random.Random(0).shuffle(sample_ids)
        readers["mapped"] = MappedReads(readers["unverified"])
        warm = dict.fromkeys(readers, 0.0)
        for reader in readers.values():
            read_all(reader, sample_ids[:4])  # open the shards once
        for _ in range(args.repeats):  # the ways alternate, so all see the same machine load
            for way, reader in readers.items():
                warm[way] = max(warm[way], read_all(reader, sample_ids))
        cold = {}
        for way in WAYS:
            drop_page_cache(vae_dir)
            drop_page_cache(text_dir)
            cold[way] = read_all(CacheReader(vae_dir, text_dir, verify=way == "verified"), sample_ids)
        sample_bytes = sum(p.stat().st_size for p in vae_dir.glob("*.safetensors")) / len(sample_ids)

    result = {
        "bench": "cache_read",
        "checksum": "xxh3_64",
        "index_shards": args.index_shards,
        "index_rows": len(index_reader.samples),
        "index_build_s": round(index_seconds, 3),
        "index_build_cpu_s": round(index_cpu, 3),
        "latent_shape": args.latent,
        "text_shape": [args.text_len, args.text_dim],
        "latent_mb_per_sample": round(sample_bytes / 1e6, 3),
        "warm_samples_per_s": round(warm["verified"], 1),
        "warm_unverified_samples_per_s": round(warm["unverified"], 1),
        "warm_verified_ratio": round(warm["verified"] / warm["unverified"], 3),
        "verify_ms_per_sample": round(1e3 / warm["verified"] - 1e3 / warm["unverified"], 2),
        "warm_mapped_samples_per_s": round(warm["mapped"], 1),
        "cold_samples_per_s": round(cold["verified"], 1),
        "cold_unverified_samples_per_s": round(cold["unverified"], 1),
        "cold_verified_ratio": round(cold["verified"] / cold["unverified"], 3),
        "samples_read": len(sample_ids),
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
