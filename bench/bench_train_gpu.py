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

    python bench/bench_train_gpu.py --gpu --matrix
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from longcat.flow import noise_latents, training_sigmas
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
) -> dict:
    """Build a fresh model for one case, run `warmup` then `steps` timed training steps."""
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

    counts = dit_parameter_counts({**config, "frequency_embedding_size": 256, "patch_size": [1, 2, 2]})
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
    }
    if on_gpu:
        card = CARDS[card_for(result["device"])]
        # Embedders and final layer cost next to nothing at this size; the blocks scale linearly with depth.
        full_counts = dit_parameter_counts({**config, "depth": FULL_DEPTH, "patch_size": [1, 2, 2]})
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


def release(on_gpu: bool) -> None:
    """Drop one case's compiled graphs and memory before the next."""
    torch._dynamo.reset()
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()


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
    args = parser.parse_args()

    on_gpu = args.gpu
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29512")
    if on_gpu:
        torch.cuda.set_device(0)
        torch.backends.cuda.matmul.allow_tf32 = True
    dist.init_process_group("nccl" if on_gpu else "gloo", rank=0, world_size=1)

    cases = MATRIX if args.matrix else ((args.ac, args.compile),)
    failed = 0
    for activation_checkpointing, compile_blocks in cases:
        try:
            result = measure(
                activation_checkpointing,
                compile_blocks,
                args.depth,
                args.steps,
                args.warmup,
                on_gpu,
                args.latent_frames,
            )
        except Exception as err:  # one failing case (e.g. out of memory) must not hide the others
            failed += 1
            result = {
                "bench": "train_gpu" if on_gpu else "train_gpu_cpu_mode",
                "activation_checkpointing": activation_checkpointing,
                "compile": compile_blocks,
                "error": f"{type(err).__name__}: {err}"[:2000],
            }
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        release(on_gpu)
    dist.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
