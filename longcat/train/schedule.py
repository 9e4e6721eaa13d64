"""Learning-rate schedules: linear warmup, then constant or cosine decay to zero."""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, warmup_steps: int, total_steps: int, kind: str) -> float:
    """Multiplier of the base learning rate for optimiser step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind in ("constant", "constant_with_warmup"):
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(
        f"lr_scheduler: expected 'constant', 'constant_with_warmup', 'linear' or 'cosine', found {kind!r}"
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, kind: str
) -> torch.optim.lr_scheduler.LambdaLR:
    lr_factor(0, warmup_steps, total_steps, kind)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, total_steps, kind)
    )
