"""What a training process sets up before its first step: the process group, the sharded DiT, AdamW,
and the per-micro-batch random generator."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from longcat.settings import Train
from longcat.train.parallelize import (
    apply_activation_checkpointing,
    apply_compile,
    apply_fsdp,
    load_sharded_from_rank0,
)


def init_distributed(cfg: Train) -> tuple[int, int, torch.device]:
    timeout = datetime.timedelta(seconds=cfg.collective_timeout_s)
    if cfg.on_gpu:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout, device_id=device if cfg.on_gpu else None)
    return dist.get_rank(), dist.get_world_size(), device


def build_model(
    base_model: Path, cfg: Train, device: torch.device, weights: Path | None = None
) -> torch.nn.Module:
    """The DiT on the meta device, checkpointed and sharded, then filled from rank 0's copy of the weights:
    the base model's, or those of the model at `weights` (a directory in the published layout)."""
    from longcat.model import LongCatVideoTransformer3DModel
    from longcat.model.loading import load_dit

    dit_dir = Path(base_model) / "dit"
    weights_dir = Path(weights) / "dit" if weights is not None else dit_dir
    with torch.device("meta"):
        model = LongCatVideoTransformer3DModel.from_config(
            LongCatVideoTransformer3DModel.load_config(dit_dir)
        )
    if cfg.attention_backend != "auto":
        model.set_attention_backend(cfg.attention_backend)
    apply_activation_checkpointing(model, cfg.activation_checkpointing, cfg.activation_checkpointing_every)
    if cfg.compile:
        apply_compile(model)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    param_dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else None
    apply_fsdp(model, mesh, param_dtype, cfg.reshard_after_forward, cfg.cpu_offload)
    home = torch.device("cpu") if cfg.cpu_offload else device
    load_sharded_from_rank0(model, lambda: load_dit(weights_dir, dtype=torch.float32, device="cpu"), home)
    model.train()
    return model


def optimizer_settings(cfg: Train) -> dict[str, Any]:
    """AdamW's hyperparameters from the config (the peak learning rate; the schedule scales it)."""
    return {
        "lr": cfg.learning_rate,
        "betas": (cfg.adam_beta1, cfg.adam_beta2),
        "weight_decay": cfg.adam_weight_decay,
        "eps": cfg.adam_epsilon,
    }


def make_optimizer(model: torch.nn.Module, cfg: Train) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), **optimizer_settings(cfg), foreach=True)


def apply_optimizer_settings(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, cfg: Train
) -> None:
    """The config's hyperparameters and schedule in place of those a checkpoint brought back (loading
    an optimizer's state restores its hyperparameters too); AdamW's moments are kept."""
    settings = optimizer_settings(cfg)
    scheduler.base_lrs = [cfg.learning_rate] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group.update(settings, initial_lr=cfg.learning_rate)
        group["lr"] = cfg.learning_rate * factor(scheduler.last_epoch)


def micro_batch_generator(seed: int, rank: int, micro_index: int, device: torch.device) -> torch.Generator:
    """Noise, σ and conditioning for a micro-batch depend only on (seed, rank, index): resume repeats them."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + rank) * 1_000_000_007 + micro_index)
    return generator
