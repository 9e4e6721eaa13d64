"""Forward+backward speed of the LongCat-Video DiT. One JSON line per measurement on stdout.

CPU (default): the tiny config and a small one (4 blocks, hidden 512) end to end with SDPA; median time of
a forward+backward and the peak resident-memory growth.

    python bench/bench_dit.py

GPU (`--gpu`): one full-width block (hidden 4096, 32 heads, SwiGLU 11008) at 37,440 video tokens (latent
grid 24x30x52, i.e. 93x480x832 frames) and 512 text tokens, bf16, forward+backward with the best attention
kernel installed (flash-attn 3, then 2, else SDPA, which picks cuDNN/flash itself on H100). Reports achieved
matmul TFLOP/s and MFU against `--peak-tflops` (989: H100 SXM dense bf16).

    python bench/bench_dit.py --gpu [--compile] [--backend sdpa] [--peak-tflops 989]
"""

import argparse
import json
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from longcat.model import LongCatSingleStreamBlock, LongCatVideoTransformer3DModel
from longcat.model.attention import best_available_backend
from longcat.model.rope import rope_cos_sin

CPU_CONFIGS = {
    "tiny": dict(
        model=dict(hidden_size=64, depth=2, num_heads=4, caption_channels=32, adaln_tembed_dim=32),
        latent=(1, 16, 5, 16, 16),
        text_tokens=16,
    ),
    "small": dict(
        model=dict(hidden_size=512, depth=4, num_heads=4, caption_channels=512, adaln_tembed_dim=256),
        latent=(1, 16, 5, 16, 32),
        text_tokens=64,
    ),
}
FULL_BLOCK = dict(hidden_size=4096, num_heads=32, mlp_ratio=4, adaln_tembed_dim=512)
FULL_GRID = (24, 30, 52)
FULL_TEXT_TOKENS = 512


def block_matmul_flops(block: LongCatSingleStreamBlock, tokens: int, text_tokens: int, frames: int) -> int:
    """Matmul FLOPs of one block's forward+backward for one sample (inputs and weights both need gradients).

    Linear layers: 6 * weight elements * rows (2 forward, 4 backward); the text key/value projection runs
    on the text tokens and the AdaLN projection on one row per frame. Attention: 4 * s_q * s_k * width
    forward (q k^T and p v), three times that with the backward.
    """
    rows = {"cross_attn.kv_linear": text_tokens, "adaLN_modulation.1": frames}
    linear = sum(
        6 * module.weight.numel() * rows.get(name, tokens)
        for name, module in block.named_modules()
        if isinstance(module, torch.nn.Linear)
    )
    width = block.attn.qkv.in_features
    attention = 3 * (4 * tokens * tokens * width + 4 * tokens * text_tokens * width)
    return linear + attention


def _peak_rss_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_bytes(key: str) -> int:
    match = re.search(key + r":\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(match.group(1)) * 1024


def bench_cpu(name: str, iters: int, warmup: int) -> dict:
    spec = CPU_CONFIGS[name]
    torch.manual_seed(0)
    model = LongCatVideoTransformer3DModel(**spec["model"], text_tokens_zero_pad=True).train()
    batch, channels, frames, height, width = spec["latent"]
    latents = torch.randn(spec["latent"])
    timestep = torch.rand(batch) * 1000
    text = torch.randn(batch, 1, spec["text_tokens"], spec["model"]["caption_channels"])

    def step():
        model.zero_grad(set_to_none=True)
        model(latents, timestep, text).pow(2).mean().backward()

    for _ in range(warmup):
        step()
    can_reset = platform.system() == "Linux" and _peak_rss_reset()
    rss_before = (
        _rss_bytes("VmRSS") if can_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = _rss_bytes("VmHWM") if can_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "bench": "dit_cpu_fwd_bwd",
        "config": name,
        **{key: spec["model"][key] for key in ("hidden_size", "depth", "num_heads")},
        "params": sum(p.numel() for p in model.parameters()),
        "latent": list(spec["latent"]),
        "video_tokens": frames * (height // 2) * (width // 2),
        "text_tokens": spec["text_tokens"],
        "backend": model.attention_backend,
        "dtype": "float32",
        "iters": iters,
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "peak_rss_growth_mb": round((peak - rss_before) / 2**20, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _elapsed_seconds(device: torch.device, step, iters: int) -> float:
    """Mean seconds per call of step(); CUDA events on a GPU, wall clock elsewhere."""
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(iters):
            step()
        return (time.perf_counter() - start) / iters
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / iters


def bench_block(
    device: torch.device,
    dtype: torch.dtype,
    block_config: dict,
    grid: tuple[int, int, int],
    text_tokens: int,
    backend: str | None = None,
    compile_block: bool = False,
    iters: int = 10,
    warmup: int = 3,
    peak_tflops: float = 989.0,
) -> dict:
    """One block's forward+backward (inputs and weights need gradients, as inside the model)."""
    torch.manual_seed(0)
    block = LongCatSingleStreamBlock(**block_config).to(device, dtype)
    backend = backend or best_available_backend()
    block.set_attention_backend(backend)

    frames, height, width = grid
    tokens = frames * height * width
    hidden = block_config["hidden_size"]
    x = torch.randn(1, tokens, hidden, device=device, dtype=dtype, requires_grad=True)
    text = torch.randn(1, text_tokens, hidden, device=device, dtype=dtype, requires_grad=True)
    t = torch.randn(1, frames, block_config["adaln_tembed_dim"], device=device, requires_grad=True)
    rope = rope_cos_sin(hidden // block_config["num_heads"], grid, device=device)
    run = torch.compile(block) if compile_block else block

    def step():
        out = run(x, text, t, rope)
        out.backward(torch.ones_like(out))

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = _elapsed_seconds(device, step, iters)
    flops = block_matmul_flops(block, tokens, text_tokens, frames)
    achieved = flops / seconds / 1e12
    return {
        "bench": f"dit_block_{device.type}_fwd_bwd",
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "hidden_size": hidden,
        "num_heads": block_config["num_heads"],
        "ffn_inner": block.ffn.w1.out_features,
        "grid": list(grid),
        "video_tokens": tokens,
        "text_tokens": text_tokens,
        "dtype": str(dtype).removeprefix("torch."),
        "backend": backend,
        "compile": compile_block,
        "iters": iters,
        "ms_per_iter": round(seconds * 1000, 2),
        "tflop_per_iter": round(flops / 1e12, 6),
        "tflops": round(achieved, 3),
        "peak_tflops": peak_tflops,
        "mfu": round(achieved / peak_tflops, 4),
        "peak_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="one full-width block on CUDA in bf16")
    parser.add_argument("--compile", action="store_true", help="torch.compile the block (GPU mode)")
    parser.add_argument(
        "--backend", choices=["sdpa", "flash_attn2", "flash_attn3"], help="default: best installed"
    )
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the card")
    parser.add_argument("--configs", nargs="+", default=list(CPU_CONFIGS), choices=list(CPU_CONFIGS))
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (CPU 3, GPU 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations (CPU 1, GPU 3)")
    args = parser.parse_args(argv)

    if args.gpu:
        if not torch.cuda.is_available():
            sys.exit("--gpu needs a CUDA device")
        result = bench_block(
            torch.device("cuda"),
            torch.bfloat16,
            FULL_BLOCK,
            FULL_GRID,
            FULL_TEXT_TOKENS,
            backend=args.backend,
            compile_block=args.compile,
            iters=args.iters or 10,
            warmup=args.warmup if args.warmup is not None else 3,
            peak_tflops=args.peak_tflops,
        )
        print(json.dumps(result), flush=True)
        return
    iters, warmup = args.iters or 3, args.warmup if args.warmup is not None else 1
    for name in args.configs:
        print(json.dumps(bench_cpu(name, iters, warmup)), flush=True)


if __name__ == "__main__":
    main()
