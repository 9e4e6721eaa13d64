"""Training step time and MFU of a depth-reduced, full-width LongCat-Video DiT on one GPU.

`--gpu`: 4 blocks at hidden 4096 (the published width), latent [16, 24, 60, 104] (93x480x832, 37,440
tokens; `--latent-frames 19` for 73 frames, what a 5 s clip holds at 15 fps: 29,640 tokens) and 512 text
tokens, bf16 compute with fp32 master weights and AdamW through FSDP2 at world size 1, random weights.
`--ac` picks the activation checkpointing (all, selective: all but the self-attention outputs, off) and
`--compile` compiles each block. `--matrix` runs (all, eager), (selective, eager), (all, compile),
(selective, compile) in one process. One JSON line per case: measured step time,
model-FLOPs MFU (recomputation not counted), peak memory, the warm-up time (compilation included) and the
48-block step time this extrapolates to on 8 GPUs at batch 1 per GPU (per-block time x 48; FSDP
communication assumed overlapped). `--cpu`: the same code at a tiny size.

`--attention` sets the DiT's attention kernel as `train.attention_backend` does (`sdpa_cudnn`: SDPA held to
cuDNN's fused attention); `--case FRAMES:ATTENTION` (repeatable) runs several latent-frame counts and
kernels in one process, the first being the baseline of the others' ratios. `--attention-kernels` times
the self-attention alone, forward and backward, through each SDPA processor at the 93- and 73-frame token
counts, and names the kernel SDPA picks by itself. `--profile FILE` writes the first case's kernels by
GPU time over one more step.

    python bench/bench_train_gpu.py --gpu --matrix
    python bench/bench_train_gpu.py --gpu --ac selective --compile --case 24:sdpa --case 24:sdpa_cudnn
    python bench/bench_train_gpu.py --gpu --attention-kernels
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from longcat.flow import noise_latents, training_sigmas
from longcat.model.attention import ATTENTION_BACKENDS, make_processor
from longcat.train.estimate import CARDS, dit_parameter_counts, train_flops_per_sample, video_tokens
from longcat.train.objective import per_sample_loss
from longcat.train.parallelize import apply_activation_checkpointing, apply_compile, apply_fsdp

GPU_SIZE = {"hidden_size": 4096, "num_heads": 32, "caption_channels": 4096, "adaln_tembed_dim": 512}
GPU_LATENT, GPU_TEXT = (16, 24, 60, 104), 512
# Enough video tokens (192) against the width (128) that the selective policy keeps self-attention.
CPU_SIZE = {"hidden_size": 128, "num_heads": 4, "caption_channels": 64, "adaln_tembed_dim": 64}
CPU_LATENT, CPU_TEXT = (16, 3, 16, 16), 16
FULL_DEPTH = 48
MATRIX = (("all", False), ("selective", False), ("all", True), ("selective", True))


def card_for(name: str) -> str:
    name = name.lower()
    for key in ("h200", "h100", "a100"):
        if key in name:
            return key
    return "h100"


def measure(
    activation_checkpointing: str,
    compile_blocks: bool,
    depth: int,
    steps: int,
    warmup: int,
    on_gpu: bool,
    latent_frames: int | None = None,
    attention: str | None = None,
    profile: Path | None = None,
) -> dict:
    """Build a fresh model for one case, run `warmup` then `steps` timed training steps (and one more
    under the profiler when `profile` names a file for its table)."""
    from longcat.model import LongCatVideoTransformer3DModel

    device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
    size, latent_shape, text_len = (
        (GPU_SIZE, GPU_LATENT, GPU_TEXT) if on_gpu else (CPU_SIZE, CPU_LATENT, CPU_TEXT)
    )
    if latent_frames is not None:
        latent_shape = (latent_shape[0], latent_frames, *latent_shape[2:])
    config = {**size, "depth": depth, "mlp_ratio": 4, "text_tokens_zero_pad": True}
    torch.manual_seed(0)
    with torch.device(device):
        model = LongCatVideoTransformer3DModel(**config)
    if attention is not None:
        model.set_attention_backend(attention)
    apply_activation_checkpointing(model, activation_checkpointing)
    if compile_blocks:
        apply_compile(model)
    apply_fsdp(model, init_device_mesh(device.type, (1,)), torch.bfloat16 if on_gpu else None)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)

    generator = torch.Generator(device=device).manual_seed(0)
    latents = torch.randn(1, *latent_shape, device=device, generator=generator)
    text = torch.randn(1, 1, text_len, size["caption_channels"], device=device, generator=generator)
    mask = torch.ones(1, text_len, dtype=torch.long, device=device)

    def step() -> float:
        sigmas = training_sigmas(1, generator, "uniform", 12.0, device=device)
        noise = torch.randn(latents.shape, generator=generator, device=device)
        batch = noise_latents(latents, sigmas, noise)
        prediction = model(
            hidden_states=batch.noisy,
            timestep=batch.timestep,
            encoder_hidden_states=text,
            encoder_attention_mask=mask,
        )
        loss = per_sample_loss(prediction, batch).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    started = time.perf_counter()
    for _ in range(warmup):
        step()
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warmup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    if on_gpu:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    if profile is not None:
        write_profile(step, profile, on_gpu)

    # The model's own config holds every key of `dit/config.json`, its defaults included.
    counts = dit_parameter_counts(dict(model.config))
    tokens = video_tokens(latent_shape)
    flops = train_flops_per_sample(counts["total"], tokens, config["hidden_size"], depth)
    result = {
        "bench": "train_gpu" if on_gpu else "train_gpu_cpu_mode",
        "device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
        "torch": torch.__version__,
        "depth": depth,
        "hidden_size": config["hidden_size"],
        "latent_shape": list(latent_shape),
        "tokens": tokens,
        "text_tokens": text_len,
        "attention_backend": model.attention_backend,
        "activation_checkpointing": activation_checkpointing,
        "compile": compile_blocks,
        "warmup_steps": warmup,
        "warmup_seconds": round(warmup_seconds, 2),
        "timed_steps": steps,
        "step_seconds": round(seconds, 4),
        "loss": round(loss, 4),
        "model_tflop_per_step": round(flops / 1e12, 2),
        "achieved_tflops": float(f"{flops / seconds / 1e12:.4g}"),
    }
    if on_gpu:
        card = CARDS[card_for(result["device"])]
        # Embedders and final layer cost next to nothing at this size; the blocks scale linearly with depth.
        full_counts = dit_parameter_counts({**model.config, "depth": FULL_DEPTH})
        full_flops = train_flops_per_sample(full_counts["total"], tokens, config["hidden_size"], FULL_DEPTH)
        result.update(
            {
                "card": card.name,
                "mfu": round(flops / seconds / (card.bf16_tflops * 1e12), 4),
                "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 1024**3, 2),
                "extrapolated_48_block_step_seconds_8gpu": round(seconds * FULL_DEPTH / depth, 2),
                "full_model_pflop_per_sample": round(full_flops / 1e15, 3),
            }
        )
    return result


def write_profile(step, path: Path, on_gpu: bool) -> None:
    """The kernels of one step, most time first, as the profiler tabulates them."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as profiler:
        step()
        if on_gpu:
            torch.cuda.synchronize()
    sort_by = "device_time_total" if on_gpu else "cpu_time_total"
    path.write_text(profiler.key_averages().table(sort_by=sort_by, row_limit=40, max_name_column_width=90))


# Self-attention of the 93- and 73-frame buckets at 480x832 (video tokens), or a small CPU stand-in.
ATTENTION_TOKENS = {True: (37_440, 29_640), False: (768, 512)}
ATTENTION_HEADS = {True: (32, 128), False: (4, 32)}


def attention_kernel(tokens: int, backend: str, on_gpu: bool, iters: int = 5) -> dict:
    """Forward and backward of one self-attention through the DiT's processor `backend`, inputs laid out
    as SelfAttention makes them (a view of the fused qkv projection)."""
    device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    heads, head_dim = ATTENTION_HEADS[on_gpu]
    generator = torch.Generator(device=device).manual_seed(0)
    qkv = torch.randn(1, tokens, 3, heads, head_dim, device=device, dtype=dtype, generator=generator)
    qkv.requires_grad_(True)
    processor = make_processor(backend)

    def step() -> None:
        query, key, value = qkv.unbind(2)
        processor(query, key, value).sum().backward()

    for _ in range(2):
        step()
    if on_gpu:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(iters):
        step()
    if on_gpu:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / iters
    # Model FLOPs as the MFU counts them: 4·s²·d forward (q k^T and p v), three times that with backward.
    flops = 3 * 4 * tokens**2 * heads * head_dim
    query, key, value = (tensor.transpose(1, 2) for tensor in qkv.detach().unbind(2))
    chosen = torch._fused_sdp_choice(query, key, value)
    result = {
        "bench": "attention_kernel" if on_gpu else "attention_kernel_cpu_mode",
        "device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
        "tokens": tokens,
        "heads": heads,
        "head_dim": head_dim,
        "backend": backend,
        "sdpa_default_kernel": torch.nn.attention.SDPBackend(chosen).name,
        "ms_fwd_bwd": round(seconds * 1000, 2),
        "tflops": round(flops / seconds / 1e12, 1),
    }
    if on_gpu:
        result["mfu"] = round(flops / seconds / (CARDS[card_for(result["device"])].bf16_tflops * 1e12), 4)
    return result


def release(on_gpu: bool) -> None:
    """Drop one case's compiled graphs and memory before the next."""
    torch._dynamo.reset()
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()


def parse_case(text: str) -> tuple[int, str]:
    frames, _, attention = text.partition(":")
    return int(frames), attention


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--gpu", action="store_true")
    mode.add_argument("--cpu", action="store_true")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--ac", choices=("all", "selective", "off"), default="all")
    parser.add_argument("--compile", action="store_true", help="torch.compile each block")
    parser.add_argument("--matrix", action="store_true", help="all and selective, each eager and compiled")
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed steps first (compilation happens here)"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument(
        "--latent-frames", type=int, help="latent frames (default 24 = 93 frames; 19 = 73, a 5 s clip)"
    )
    parser.add_argument("--attention", choices=ATTENTION_BACKENDS, help="attention kernel (the model's own)")
    parser.add_argument(
        "--case",
        type=parse_case,
        action="append",
        metavar="LATENT_FRAMES:ATTENTION",
        help="one case of latent frames and attention kernel; repeat for more (the first is the baseline)",
    )
    parser.add_argument(
        "--attention-kernels", action="store_true", help="time self-attention alone through each kernel"
    )
    parser.add_argument("--profile", type=Path, help="write the first case's kernel table to this file")
    parser.add_argument(
        "--time-limit", type=float, default=None, help="seconds after which no new case starts"
    )
    args = parser.parse_args()

    on_gpu = args.gpu
    if args.attention_kernels:
        for tokens in ATTENTION_TOKENS[on_gpu]:
            for backend in ("sdpa", "sdpa_cudnn", "sdpa_flash"):
                try:
                    result = attention_kernel(tokens, backend, on_gpu)
                except Exception as err:  # a kernel that refuses these inputs must not hide the others
                    result = {"bench": "attention_kernel", "tokens": tokens, "backend": backend}
                    result["error"] = f"{type(err).__name__}: {err}"[:2000]
                sys.stdout.write(json.dumps(result) + "\n")
                sys.stdout.flush()
        return 0

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29512")
    if on_gpu:
        torch.cuda.set_device(0)
        torch.backends.cuda.matmul.allow_tf32 = True
    dist.init_process_group("nccl" if on_gpu else "gloo", rank=0, world_size=1)

    if args.matrix:
        cases = [(ac, compiled, args.latent_frames, args.attention) for ac, compiled in MATRIX]
    else:
        pairs = args.case or [(args.latent_frames, args.attention)]
        cases = [(args.ac, args.compile, frames, attention) for frames, attention in pairs]
    started = time.perf_counter()
    failed = 0
    baseline = None
    for index, (activation_checkpointing, compile_blocks, frames, attention) in enumerate(cases):
        labels = {
            "bench": "train_gpu" if on_gpu else "train_gpu_cpu_mode",
            "activation_checkpointing": activation_checkpointing,
            "compile": compile_blocks,
            "latent_frames": frames,
            "attention": attention,
        }
        if args.time_limit is not None and time.perf_counter() - started > args.time_limit:
            result = labels | {"skipped": f"--time-limit {args.time_limit:.0f} s reached"}
        else:
            try:
                result = labels | measure(
                    activation_checkpointing,
                    compile_blocks,
                    args.depth,
                    args.steps,
                    args.warmup,
                    on_gpu,
                    frames,
                    attention,
                    args.profile if index == 0 else None,
                )
            except Exception as err:  # one failing case (e.g. out of memory) must not hide the others
                failed += 1
                result = labels | {"error": f"{type(err).__name__}: {err}"[:2000]}
        if "step_seconds" in result:
            baseline = baseline or result
            # Against the first case: model FLOPs per second, which compares cases of other lengths too.
            result["speed_vs_first_case"] = round(result["achieved_tflops"] / baseline["achieved_tflops"], 3)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        release(on_gpu)
    dist.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
