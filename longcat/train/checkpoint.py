"""Sharded training checkpoints with torch.distributed.checkpoint (DCP).

A checkpoint is written to `step-N.partial/` by every rank and renamed to `step-N/` by rank 0 once all
ranks are done, so a directory named `step-N` is always complete. DCP reshards on load: a checkpoint
written by 8 ranks resumes on 4, or on 1.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [path for _, path in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    found = checkpoint_dirs(root)
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(
    root: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Save model, optimiser and trainer state (step, scheduler, loader) for every rank; collective."""
    root = Path(root)
    final = root / f"step-{step}"
    partial = root / f"step-{step}.partial"
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state, "trainer": trainer_state}, checkpoint_id=partial)
    # Per-rank RNG streams are not sharded state; each rank keeps its own file.
    torch.save(rng_state(), partial / f"rng-rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        for old in checkpoint_dirs(root)[:-keep_last]:
            shutil.rmtree(old)
        log.info("checkpoint saved: %s", final)
    dist.barrier()
    return final


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
) -> dict[str, Any]:
    """Load into the (sharded) model and optimiser in place; returns the saved trainer state."""
    path = Path(path)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"checkpoint {path}: no DCP '.metadata' file; expected a step-N directory")
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state, "trainer": trainer_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng_file = path / f"rng-rank{dist.get_rank()}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:
        log.warning(
            "checkpoint %s has no RNG state for rank %d (written by fewer ranks)", path, dist.get_rank()
        )
    return state["trainer"]


def full_model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole unsharded state dict on rank 0's CPU (empty elsewhere); collective."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def load_model_weights_offline(path: str | Path, model: nn.Module) -> nn.Module:
    """Read only the model weights of a checkpoint into an unsharded model, in one process."""
    path = Path(path)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"checkpoint {path}: no DCP '.metadata' file; expected a step-N directory")
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=path, no_dist=True)
    model.load_state_dict(state["model"], strict=True)
    return model
