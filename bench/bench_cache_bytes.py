"""Bytes per cached sample: these shards against SimpleTuner's one-`.pt`-per-sample float32 layout.

Ours: one VAE shard and one text shard written by longcat.cache.ShardWriter (bf16 latent [16,24,60,104],
bf16 text [L,4096] unpadded, plus both index files), divided by the number of samples. SimpleTuner:
`torch.save` of the float32 latent, and of the text dict padded to 512 tokens ({prompt_embeds [1,512,4096]
fp32, prompt_attention_mask [1,512] int64}), one file each per sample. Caption lengths L are drawn from
`--text-len-min..--text-len-max` (umT5 tokens). Prints one JSON line.

    python bench/bench_cache_bytes.py
    python bench/bench_cache_bytes.py --samples 4 --latent 16 5 8 14 --text-dim 32 --max-tokens 64   # quick
"""

import argparse
import io
import json
import random
import sys
import tempfile
from pathlib import Path

import torch

from longcat.cache.format import TEXT_INDEX_SCHEMA, VAE_INDEX_SCHEMA
from longcat.cache.writer import ShardWriter
from longcat.paths import CacheLayout


def torch_save_size(value) -> int:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.tell()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--latent", type=int, nargs=4, default=[16, 24, 60, 104])
    parser.add_argument("--text-dim", type=int, default=4096)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--text-len-min", type=int, default=40)
    parser.add_argument("--text-len-max", type=int, default=200)
    args = parser.parse_args()

    rng = random.Random(0)
    lengths = [
        rng.randint(args.text_len_min, min(args.text_len_max, args.max_tokens)) for _ in range(args.samples)
    ]
    latent_shape = tuple(args.latent)
    ids = [f"clip-{index:06d}.mp4" for index in range(args.samples)]
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        vae_cache, text_cache = CacheLayout(root / "vae"), CacheLayout(root / "text")
        vae = ShardWriter(vae_cache, "00000", VAE_INDEX_SCHEMA, {"cache_key": "x"})
        text = ShardWriter(text_cache, "00000", TEXT_INDEX_SCHEMA, {"cache_key": "x"})
        for sample_id, length in zip(ids, lengths, strict=True):
            row = {"sample_id": sample_id, "status": "ok", "reason": None, "num_frames": 93, "fps": 15.0}
            row |= {"bucket_height": 480, "bucket_width": 832, "latent_shape": list(latent_shape)}
            vae.add(row, torch.randn(latent_shape).to(torch.bfloat16))
            text_row = {"sample_id": sample_id, "status": "ok", "reason": None, "text_len": length}
            text.add(text_row, torch.randn(length, args.text_dim).to(torch.bfloat16))
        vae.finish(ids)
        text.finish(ids)
        ours_latent = sum(
            path.stat().st_size for path in (vae_cache.tensors("00000"), vae_cache.index("00000"))
        )
        ours_text = sum(
            path.stat().st_size for path in (text_cache.tensors("00000"), text_cache.index("00000"))
        )
        ours_latent, ours_text = ours_latent / len(ids), ours_text / len(ids)

    simpletuner_latent = torch_save_size(torch.zeros(latent_shape, dtype=torch.float32))
    simpletuner_text = torch_save_size(
        {
            "prompt_embeds": torch.zeros(1, args.max_tokens, args.text_dim, dtype=torch.float32),
            "prompt_attention_mask": torch.zeros(1, args.max_tokens, dtype=torch.int64),
        }
    )
    result = {
        "bench": "cache_bytes",
        "latent_shape": args.latent,
        "text": {
            "dim": args.text_dim,
            "max_tokens": args.max_tokens,
            "mean_len": sum(lengths) / len(lengths),
        },
        "ours_latent_mb": round(ours_latent / 1e6, 3),
        "ours_text_mb": round(ours_text / 1e6, 3),
        "simpletuner_latent_mb": round(simpletuner_latent / 1e6, 3),
        "simpletuner_text_mb": round(simpletuner_text / 1e6, 3),
        "latent_ratio": round(simpletuner_latent / ours_latent, 2),
        "text_ratio": round(simpletuner_text / ours_text, 2),
        "total_ratio": round((simpletuner_latent + simpletuner_text) / (ours_latent + ours_text), 2),
        "files_per_sample": {"ours": 4 / len(ids), "simpletuner": 2},
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
