"""Training step time and MFU of a depth-reduced, full-width LongCat-Video DiT on one GPU.

`--gpu`: 4 blocks at hidden 4096 (the published width), latent [16, 24, 60, 104] (93x480x832, 37,440
tokens) and 512 text tokens, bf16 compute with fp32 master weights and AdamW through FSDP2 at world size 1,
every block activation-checkpointed, random weights. Reports the measured step time, model-FLOPs MFU, peak
memory, and the 48-block step time this extrapolates to on 8 GPUs at batch 1 per GPU (per-block time x 48
plus the embedders; FSDP communication assumed overlapped). `--cpu`: the same code at a tiny size.
One JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from longcat.train.estimate import CARDS, dit_parameter_counts, train_flops_per_sample, video_tokens
from longcat.train.objective import make_flow_batch, per_sample_loss, sample_sigmas
from longcat.train.parallelize import apply_activation_checkpointing, apply_fsdp

GPU_SIZE = {"hidden_size": 4096, "num_heads": 32, "caption_channels": 4096, "adaln_tembed_dim": 512}
GPU_LATENT, GPU_TEXT = (16, 24, 60, 104), 512
CPU_SIZE = {"hidden_size": 128, "num_heads": 4, "caption_channels": 64, "adaln_tembed_dim": 64}
CPU_LATENT, CPU_TEXT = (16, 3, 8, 8), 16
FULL_DEPTH = 48


def card_for(name: str) -> str:
    name = name.lower()
    for key in ("h200", "h100", "a100"):
        if key in name:
            return key
    return "h100"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--gpu", action="store_true")
    mode.add_argument("--cpu", action="store_true")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4, help="timed steps after 2 warm-up steps")
    args = parser.parse_args()

    from longcat.model import LongCatVideoTransformer3DModel

    on_gpu = args.gpu
    device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
    size, latent_shape, text_len = (
        (GPU_SIZE, GPU_LATENT, GPU_TEXT) if on_gpu else (CPU_SIZE, CPU_LATENT, CPU_TEXT)
    )
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29512")
    if on_gpu:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    dist.init_process_group("nccl" if on_gpu else "gloo", rank=0, world_size=1)

    config = {**size, "depth": args.depth, "mlp_ratio": 4, "text_tokens_zero_pad": True}
    torch.manual_seed(0)
    with torch.device(device):
        model = LongCatVideoTransformer3DModel(**config)
    apply_activation_checkpointing(model, "all")
    apply_fsdp(model, init_device_mesh(device.type, (1,)), torch.bfloat16 if on_gpu else None)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)

    generator = torch.Generator(device=device).manual_seed(0)
    latents = torch.randn(1, *latent_shape, device=device, generator=generator)
    text = torch.randn(1, 1, text_len, size["caption_channels"], device=device, generator=generator)
    mask = torch.ones(1, text_len, dtype=torch.long, device=device)

    def step() -> float:
        sigmas = sample_sigmas(1, generator, "logit_normal", 12.0, device=device)
        noise = torch.randn(latents.shape, generator=generator, device=device)
        batch = make_flow_batch(latents, sigmas, noise)
        prediction = model(
            hidden_states=batch.noisy,
            timestep=batch.timestep,
            encoder_hidden_states=text,
            encoder_attention_mask=mask,
        )
        loss = per_sample_loss(prediction, batch).mean()
        loss.backward()
        loss = loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(2):
        step()
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if on_gpu:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / args.steps

    counts = dit_parameter_counts({**config, "frequency_embedding_size": 256, "patch_size": [1, 2, 2]})
    tokens = video_tokens(latent_shape)
    flops = train_flops_per_sample(counts["total"], tokens, config["hidden_size"], args.depth)
    result = {
        "bench": "train_gpu" if on_gpu else "train_gpu_cpu_mode",
        "device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
        "depth": args.depth,
        "hidden_size": config["hidden_size"],
        "latent_shape": list(latent_shape),
        "tokens": tokens,
        "text_tokens": text_len,
        "attention_backend": model.attention_backend,
        "activation_checkpointing": "all",
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
                "extrapolated_48_block_step_seconds_8gpu": round(seconds * FULL_DEPTH / args.depth, 2),
                "full_model_pflop_per_sample": round(full_flops / 1e15, 3),
            }
        )
    dist.destroy_process_group()
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
