"""Text cache throughput on one GPU: captions/s through the real text shard encoder.

Runs longcat.encoders.text.cache_text_shard (cleaning, tokenising to config/longcat-13b.yaml's
cache.max_tokens, 512, the umT5 encoder over the padded batch with its mask, unpadded bf16 parts written
per caption, the final shard) with a randomly initialised full-size umT5-XXL encoder (`UMT5EncoderModel`:
d_model 4096, 24 layers, 64 heads, d_ff 10240, vocabulary 256,384; nothing is downloaded) in bf16, over
captions of 60-200 words.
The tokenizer is the demo's (longcat.basemodel.tiny): every caption is padded to 512 tokens, so the
encoder's work does not depend on it. Batch 1 is the reference way (the official pipeline encodes the
prompts it is given in one call; one caption per call when it samples); the cache job's batch is
`cache_text_shard`'s default. One JSON line per batch size, with the encoder alone timed beside the whole
job.

    python bench/bench_text_gpu.py --gpu        # batch sizes 1, 8, 16, 32, 64; about 3 minutes on an H200
    python bench/bench_text_gpu.py              # CPU smoke run: a tiny umT5, the same code
"""

import argparse
import inspect
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_train_gpu import card_for
from transformers import UMT5Config, UMT5EncoderModel

from longcat.basemodel.tiny import train_tiny_tokenizer
from longcat.cache.format import TEXT_INDEX_SCHEMA
from longcat.cache.writer import FailureLimit, ShardWriter
from longcat.config import REPO_ROOT, load_config
from longcat.data.demo import DEMO_CAPTIONS
from longcat.encoders.dtypes import compute_dtype
from longcat.encoders.text import cache_text_shard, encode_prompts
from longcat.paths import CacheLayout
from longcat.settings import load_settings
from longcat.train.estimate import CARDS

# umT5-XXL's encoder (google/umt5-xxl; ../shared/research/longcat-model.md, "Text encoder").
UMT5_XXL = {
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "vocab_size": 256_384,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
}
UMT5_TINY = UMT5_XXL | {
    "d_model": 64,
    "d_kv": 16,
    "d_ff": 128,
    "num_layers": 2,
    "num_heads": 4,
    "vocab_size": 256,
}
MAX_TOKENS = load_settings(load_config(REPO_ROOT / "config" / "longcat-13b.yaml")).cache.max_tokens
CAPTIONS_IN_RECIPE = 523_325
CACHE_BATCH = inspect.signature(cache_text_shard).parameters["batch_size"].default


def build_encoder(config: dict, device: torch.device) -> UMT5EncoderModel:
    """A randomly initialised encoder, made directly on `device` in the compute dtype."""
    dtype = compute_dtype(device)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = UMT5EncoderModel(UMT5Config(**config, is_encoder_decoder=False))
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def make_captions(count: int, seed: int = 0) -> list[str]:
    """Captions of 60-200 words drawn from the demo's caption words (long recaptioned-style text)."""
    words = " ".join(DEMO_CAPTIONS).split()
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=rng.randint(60, 200))) for _ in range(count)]


def encoder_flops(config: dict, tokens: int) -> float:
    """Forward FLOPs of one caption: 2 x matmul parameters x tokens, plus attention scores and values."""
    d, inner, ff, layers = (
        config["d_model"],
        config["num_heads"] * config["d_kv"],
        config["d_ff"],
        config["num_layers"],
    )
    matmul_params = layers * (4 * d * inner + 3 * d * ff)  # q, k, v, o; gated-GELU wi_0, wi_1, wo
    return 2 * matmul_params * tokens + layers * 4 * tokens * tokens * inner


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(tokenizer, encoder, captions: list[str], batch_size: int, scratch: Path, device) -> dict:
    """Encoder-only captions/s over the captions, then captions/s of the whole shard job over them."""
    encode_prompts(tokenizer, encoder, captions[:batch_size], MAX_TOKENS)  # warm-up: kernels, allocator
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for first in range(0, len(captions), batch_size):
        encode_prompts(tokenizer, encoder, captions[first : first + batch_size], MAX_TOKENS)
    synchronize(device)
    encode_only = len(captions) / (time.perf_counter() - start)

    rows = [{"key": f"clip-{index:05d}.mp4", "caption": caption} for index, caption in enumerate(captions)]
    out = Path(tempfile.mkdtemp(prefix="shard-", dir=scratch))
    writer = ShardWriter(CacheLayout(out), "00000", TEXT_INDEX_SCHEMA, {})
    start = time.perf_counter()
    cache_text_shard(
        rows, tokenizer, encoder, MAX_TOKENS, writer, torch.bfloat16, FailureLimit(0.0), batch_size=batch_size
    )
    synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "captions_per_s": round(len(captions) / seconds, 1),
        "encode_only_captions_per_s": round(encode_only, 1),
        "mb_per_caption": round(writer.tensors_path.stat().st_size / len(rows) / 1e6, 3),
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1)
        if device.type == "cuda"
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="full-size umT5-XXL encoder on cuda in bf16")
    parser.add_argument(
        "--captions", type=int, default=None, help="captions per batch size (GPU 512, CPU 32)"
    )
    parser.add_argument(
        "--batch-sizes", default="1,8,16,32,64", help="comma-separated; 1 is the reference way"
    )
    args = parser.parse_args()
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device visible")

    device = torch.device("cuda" if args.gpu else "cpu")
    config = UMT5_XXL if args.gpu else UMT5_TINY
    captions = make_captions(args.captions or (512 if args.gpu else 32))
    started = time.perf_counter()
    encoder = build_encoder(config, device)
    tokenizer = train_tiny_tokenizer()
    setup_s = time.perf_counter() - started
    flops = encoder_flops(config, MAX_TOKENS)
    card = CARDS[card_for(torch.cuda.get_device_name())] if args.gpu else None
    run = {
        "bench": "text_gpu" if args.gpu else "text_cpu_smoke",
        "device": torch.cuda.get_device_name() if args.gpu else "cpu",
        "torch": torch.__version__,
        "attention": encoder.config._attn_implementation,
        "encoder_params_b": round(sum(p.numel() for p in encoder.parameters()) / 1e9, 2),
        "max_tokens": MAX_TOKENS,
        "captions": len(captions),
    }
    with tempfile.TemporaryDirectory() as scratch:
        for batch_size in [int(size) for size in args.batch_sizes.split(",")]:
            result = {
                **run,
                "batch_size": batch_size,
                "reference_way": batch_size == 1,
                "cache_job_default": batch_size == CACHE_BATCH,
                "setup_s": round(setup_s, 1),
            }
            try:
                result |= measure(tokenizer, encoder, captions, batch_size, Path(scratch), device)
            except torch.OutOfMemoryError as error:
                result["error"] = f"out of memory: {str(error).splitlines()[0]}"
                torch.cuda.empty_cache()
            if "captions_per_s" in result:
                result["tflop_per_caption"] = round(flops / 1e12, 2)
                if card is not None:
                    result["mfu"] = round(
                        result["encode_only_captions_per_s"] * flops / (card.bf16_tflops * 1e12), 3
                    )
                rate = result["captions_per_s"]
                result["hours_for_523k_on_8"] = round(CAPTIONS_IN_RECIPE / (8 * rate) / 3600, 2)
            json.dump(result, sys.stdout)
            sys.stdout.write("\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
