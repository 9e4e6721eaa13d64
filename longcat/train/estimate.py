"""Before a run starts: model FLOPs, step time, per-GPU memory and checkpoint bytes for the configured
model and world size. The dry run and the `estimate` target both count with these definitions.

FLOPs per sample follow the usual model-FLOPs convention (no recomputation counted):
6·N·s for the linear layers (forward + backward) plus 12·s²·d·L for self-attention, with N parameters,
s video tokens, d the width and L blocks. Memory is an estimate with its parts named, so a user sees
which knob (batch size, activation checkpointing, CPU offload) moves which part.

A step's time has two parts of different standing. Compute: the model FLOPs at `train.assumed_mfu`, a
figure measured on one GPU (`bench/bench_train_gpu.py`: 4 full-width blocks, FSDP2 at world size 1, so no
communication in it). Communication: FSDP2's all-gathers and reduce-scatters, modelled here from the
bytes each GPU moves and a bus bandwidth, under a stated overlap (`fsdp_communication`), never measured.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longcat.settings import BaseModel, Settings, Train
from longcat.train.memory import GRADIENT_BYTES, memory_per_gpu
from longcat.vae_frames import SPATIAL_COMPRESSION, latent_frames

# The published 13.6B `dit/config.json` (architecture keys), used when no base model is on disk yet.
PUBLISHED_DIT_CONFIG = {
    "in_channels": 16,
    "out_channels": 16,
    "hidden_size": 4096,
    "depth": 48,
    "num_heads": 32,
    "caption_channels": 4096,
    "mlp_ratio": 4,
    "adaln_tembed_dim": 512,
    "frequency_embedding_size": 256,
    "patch_size": [1, 2, 2],
}


# The settings an estimate reads besides the model and the data: the estimate target's params, so that it
# reruns for a change of these alone (tests/test_estimate.py finds the same estimate with every other
# train and cache setting unset).
ESTIMATE_TRAIN_KEYS = (
    "run",
    "num_processes",
    "nodes",
    "train_batch_size",
    "gradient_accumulation_steps",
    "max_train_steps",
    "checkpoints_total_limit",
    "mixed_precision",
    "reshard_after_forward",
    "gpu_type",
    "assumed_mfu",
    "assumed_bus_bandwidth_gbps",
    "ema_decay",
    "ema_export",
)
ESTIMATE_CACHE_KEYS = ("dtype", "max_tokens")


def estimate_settings(settings: Settings) -> dict[str, Any]:
    """The sections of `settings` the estimate reads, with the keys above only."""
    return {
        "cache": {key: getattr(settings.cache, key) for key in ESTIMATE_CACHE_KEYS},
        "train": {key: getattr(settings.train, key) for key in ESTIMATE_TRAIN_KEYS},
        "estimate": settings.estimate,
        "base_model": settings.base_model,
    }


@dataclass(frozen=True)
class Card:
    name: str
    bf16_tflops: float  # dense peak
    memory_gib: float
    typical_mfu: float
    # NCCL's bus bandwidth (nccl-tests' busbw) for all-gather and reduce-scatter of messages of hundreds of
    # MB between the 8 GPUs of one node, GB/s per GPU: about 80% of NVLink's one-way rate through the
    # NVSwitch (NVLink 4: 450 GB/s on H100 and H200; NVLink 3: 300 GB/s on A100). An assumption, not a
    # measurement: set `train.assumed_bus_bandwidth_gbps` to what nccl-tests reads on your nodes.
    node_bus_gbps: float


CARDS = {
    "a100": Card("A100 80GB", 312.0, 80.0, 0.5, 230.0),
    "h100": Card("H100 80GB", 989.0, 80.0, 0.4, 360.0),
    "h200": Card("H200 141GB", 989.0, 141.0, 0.4, 360.0),
}

# Between nodes a ring runs at the network's pace: one 400 Gb/s InfiniBand or RoCE port per GPU (50 GB/s),
# of which NCCL reaches about 90%. An assumption like the cards' figures.
INTER_NODE_BUS_GBPS = 45.0


def dit_config_for(base: BaseModel, base_model: Path) -> tuple[dict[str, Any], str]:
    """The DiT's `config.json` and where it came from: the base model on disk, else what the config
    names (the tiny model's settings, or the published 13.6B architecture)."""
    config_file = base_model / "dit" / "config.json"
    if config_file.is_file():
        return json.loads(config_file.read_text()), str(config_file)
    if base.kind == "tiny":
        from longcat.basemodel.tiny import tiny_dit_config

        return tiny_dit_config(base.tiny), "config base_model.tiny"
    return dict(PUBLISHED_DIT_CONFIG), "the published 13.6B config (base model not on disk yet)"


def swiglu_hidden(hidden_size: int, mlp_ratio: float) -> int:
    return 256 * math.ceil(int(2 * hidden_size * mlp_ratio / 3) / 256)


def dit_parameter_counts(config: dict[str, Any]) -> dict[str, int]:
    """Parameters of the LongCat DiT for a `dit/config.json` (every key present, as the model saves it):
    per block, embedders, final layer, total."""
    d = config["hidden_size"]
    a = config["adaln_tembed_dim"]
    c = config["caption_channels"]
    f = config["frequency_embedding_size"]
    head = d // config["num_heads"]
    patch = math.prod(config["patch_size"])
    channels_in, channels_out = config["in_channels"], config["out_channels"]
    ff = swiglu_hidden(d, config["mlp_ratio"])
    block = (
        (a * 6 * d + 6 * d)  # adaLN modulation
        + 2 * d  # pre cross-attention norm
        + (3 * d * d + 3 * d)
        + 2 * head
        + (d * d + d)  # self-attention
        + (d * d + d)
        + (2 * d * d + 2 * d)
        + (d * d + d)
        + 2 * head  # cross-attention
        + 3 * d * ff  # SwiGLU
    )
    embedders = (channels_in * patch * d + d) + (f * a + a + a * a + a) + (c * d + d + d * d + d)
    final = (a * 2 * d + 2 * d) + (d * patch * channels_out + patch * channels_out)
    depth = config["depth"]
    return {
        "block": block,
        "embedders": embedders,
        "final": final,
        "total": block * depth + embedders + final,
    }


def video_tokens(latent_shape: tuple[int, ...], patch_size: tuple[int, int, int] = (1, 2, 2)) -> int:
    _, frames, height, width = latent_shape
    return (frames // patch_size[0]) * (height // patch_size[1]) * (width // patch_size[2])


def latent_shape_for(
    num_frames: int, height: int, width: int, channels: int = 16
) -> tuple[int, int, int, int]:
    """Wan VAE: 4x temporal (first frame alone), 8x spatial."""
    return (channels, latent_frames(num_frames), height // SPATIAL_COMPRESSION, width // SPATIAL_COMPRESSION)


def train_flops_per_sample(num_params: int, tokens: int, hidden: int, depth: int) -> float:
    return 6.0 * num_params * tokens + 12.0 * tokens**2 * hidden * depth


def sample_cost(dit_config: dict[str, Any], latent_shape: tuple[int, ...]) -> tuple[int, float]:
    """Video tokens and model FLOPs (forward and backward) of one training sample of `latent_shape`."""
    counts = dit_parameter_counts(dit_config)
    tokens = video_tokens(latent_shape, tuple(dit_config["patch_size"]))
    return tokens, train_flops_per_sample(
        counts["total"], tokens, dit_config["hidden_size"], dit_config["depth"]
    )


def card_mfu(card: Card, mfu: float | None) -> float:
    """The MFU a step-time estimate assumes: the configured one, else the card's typical value."""
    return mfu or card.typical_mfu


def bus_bandwidth(card: Card, nodes: int, configured_gbps: float | None) -> float:
    """GB/s per GPU the collectives are assumed to reach: the configured figure, else the card's within
    one node, else the network's."""
    if configured_gbps is not None:
        return configured_gbps
    return card.node_bus_gbps if nodes == 1 else INTER_NODE_BUS_GBPS


def fsdp_communication(
    counts: dict[str, int],
    depth: int,
    world_size: int,
    param_bytes: int,
    reshard_after_forward: bool,
    bus_gbps: float,
    compute_seconds: float,
) -> dict[str, float]:
    """FSDP2's traffic per GPU for one micro-batch (`longcat.train.parallelize.apply_fsdp`), and the time
    of it the step waits for.

    Each block is one unit, the root (embedders, final layer) another. Forward all-gathers every unit's
    parameters in the compute dtype; with `reshard_after_forward` backward all-gathers the blocks again
    (the root keeps its own); backward reduce-scatters every gradient in float32 (the policy's
    reduce_dtype). In a ring of W GPUs each one receives (all-gather) or sends (reduce-scatter) (W-1)/W
    of the whole tensor, at `bus_gbps`.

    Overlap: FSDP2 gathers the next unit while the current one computes and reduce-scatters a block's
    gradients during the next block's backward, so only the first all-gather of forward (root and first
    block), the first of backward (last block) and the last reduce-scatter (first block and root) wait;
    the rest is hidden unless it outlasts the compute. The collectives' own use of the GPU's cores and
    memory is not counted.
    """
    share = (world_size - 1) / world_size
    block, root = counts["block"], counts["embedders"] + counts["final"]
    regathered = depth * block if reshard_after_forward else 0
    all_gather = share * (counts["total"] + regathered) * param_bytes
    reduce_scatter = share * counts["total"] * GRADIENT_BYTES
    first_all_gather = share * ((root + block) * param_bytes + (block * param_bytes if regathered else 0))
    last_reduce_scatter = share * (block + root) * GRADIENT_BYTES
    bytes_per_second = bus_gbps * 1e9
    seconds = (all_gather + reduce_scatter) / bytes_per_second
    unhidden = (first_all_gather + last_reduce_scatter) / bytes_per_second
    return {
        "all_gather_bytes": all_gather,
        "reduce_scatter_bytes": reduce_scatter,
        "bus_gbps": bus_gbps,
        "seconds": seconds,
        "exposed_seconds": unhidden + max(0.0, seconds - unhidden - compute_seconds),
    }


def step_time(
    counts: dict[str, int], depth: int, flops_per_sample: float, cfg: Train, card_name: str
) -> dict[str, Any]:
    """One optimizer step of `cfg` on `card_name` GPUs: compute at the assumed MFU (the configured one on
    the configured card), plus FSDP2's exposed communication, per micro-batch (each one gathers and
    reduce-scatters the whole model)."""
    card = CARDS[card_name]
    configured = card_name == cfg.gpu_type
    measured_mfu = configured and cfg.assumed_mfu is not None
    mfu = card_mfu(card, cfg.assumed_mfu if configured else None)
    bus_gbps = bus_bandwidth(card, cfg.nodes, cfg.assumed_bus_bandwidth_gbps if configured else None)
    micro_compute = flops_per_sample * cfg.train_batch_size / (card.bf16_tflops * 1e12 * mfu)
    param_bytes = 2 if cfg.mixed_precision == "bf16" else 4
    micro = fsdp_communication(
        counts, depth, cfg.world_size, param_bytes, cfg.reshard_after_forward, bus_gbps, micro_compute
    )
    steps = cfg.gradient_accumulation_steps
    communication = {key: value * steps if key != "bus_gbps" else value for key, value in micro.items()}
    compute = micro_compute * steps
    return {
        "card": card.name,
        "assumed_mfu": mfu,
        "mfu_source": "train.assumed_mfu" if measured_mfu else "typical",
        "compute_seconds": compute,
        "communication": communication,
        "step_seconds": compute + communication["exposed_seconds"],
    }


def step_time_text(step: dict[str, Any]) -> list[str]:
    """What a step time is made of, saying which part rests on a measurement and which is modelled."""
    if step["mfu_source"] == "train.assumed_mfu":
        source = f"train.assumed_mfu, measured on one {step['card']}: 4 full-width blocks, no communication"
    else:
        source = "the card's typical MFU, assumed"
    comm = step["communication"]
    lines = [f"compute {step['compute_seconds']:.2f} s at {step['assumed_mfu']:.1%} MFU ({source})"]
    if comm["seconds"] == 0:
        return [*lines, "FSDP2 communication: none (one GPU)"]
    return [
        *lines,
        f"FSDP2 communication, modelled: {comm['all_gather_bytes'] / 1e9:.1f} GB all-gathered "
        f"+ {comm['reduce_scatter_bytes'] / 1e9:.1f} GB reduce-scattered per GPU per step at "
        f"{comm['bus_gbps']:g} GB/s: {comm['seconds']:.2f} s, of which {comm['exposed_seconds']:.3f} s "
        "not hidden behind compute",
    ]


def estimate_run(
    dit_config: dict[str, Any], latent_shape: tuple[int, ...], cfg: Train, card_name: str
) -> dict[str, Any]:
    """Step time and per-GPU memory of `cfg`'s run at one latent shape on `card_name` GPUs."""
    card = CARDS[card_name]
    counts = dit_parameter_counts(dit_config)
    tokens, flops = sample_cost(dit_config, latent_shape)
    memory = memory_per_gpu(
        counts,
        dit_config["hidden_size"],
        dit_config["depth"],
        tokens,
        cfg.world_size,
        cfg.train_batch_size,
        cfg.activation_checkpointing,
        cfg.activation_checkpointing_every,
        cfg.cpu_offload,
        cfg.mixed_precision == "bf16",
        cfg.ema_decay is not None,
    )
    return {
        "parameters": counts["total"],
        "latent_shape": list(latent_shape),
        "tokens_per_sample": tokens,
        "pflop_per_sample": flops / 1e15,
        **step_time(counts, dit_config["depth"], flops, cfg, card_name),
        "samples_per_step": cfg.train_batch_size * cfg.gradient_accumulation_steps * cfg.world_size,
        "memory_gib": memory,
        "fits": memory["total"] <= card.memory_gib * 0.95,
        "card_memory_gib": card.memory_gib,
    }
