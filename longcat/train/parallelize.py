"""Activation checkpointing and FSDP2 applied to a built model from outside, as separate small steps."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

log = logging.getLogger(__name__)


def checkpointed_block_indices(depth: int, mode: str, every: int) -> list[int]:
    """Blocks whose activations are recomputed in backward: all, every k-th (from the first), or none."""
    if mode == "all":
        return list(range(depth))
    if mode == "every":
        return list(range(0, depth, every))
    if mode == "off":
        return []
    raise ValueError(f"activation_checkpointing: expected 'all', 'every' or 'off', found {mode!r}")


def apply_activation_checkpointing(model: nn.Module, mode: str, every: int = 1) -> list[int]:
    indices = checkpointed_block_indices(len(model.blocks), mode, every)
    for index in indices:
        model.blocks[index] = checkpoint_wrapper(
            model.blocks[index], checkpoint_impl=CheckpointImpl.NO_REENTRANT, preserve_rng_state=False
        )
    return indices


def apply_fsdp(
    model: nn.Module,
    mesh: DeviceMesh,
    param_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
    cpu_offload: bool = False,
) -> nn.Module:
    """`fully_shard` each block, then the root (embedders, final layer); fp32 master weights and reduce."""
    mp_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    offload_policy = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    for block in model.blocks:
        fully_shard(
            block,
            mesh=mesh,
            mp_policy=mp_policy,
            offload_policy=offload_policy,
            reshard_after_forward=reshard_after_forward,
        )
    # The root's parameters are needed again right after forward (final layer first in backward).
    fully_shard(
        model, mesh=mesh, mp_policy=mp_policy, offload_policy=offload_policy, reshard_after_forward=False
    )
    return model


def load_sharded_from_rank0(
    model: nn.Module,
    full_model: Callable[[], nn.Module] | None,
    device: torch.device,
) -> None:
    """Fill a sharded meta-device model from the full model that only rank 0 loads.

    Only rank 0 holds the full weights in host memory; the others receive their shards by broadcast,
    one tensor at a time, so an 8-GPU node does not hold eight copies of a 54 GB model.
    """
    rank = dist.get_rank()
    reference = full_model() if rank == 0 else None
    model.to_empty(device=device)
    full_state: dict[str, Any] = reference.state_dict() if reference is not None else {}
    set_model_state_dict(
        model,
        full_state,
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True),
    )
    # Buffers that are not in the state dict (position tables) come from rank 0 as well.
    reference_buffers = dict(reference.named_buffers()) if reference is not None else {}
    for name, buffer in model.named_buffers():
        clean = name.replace("_checkpoint_wrapped_module.", "")
        if rank == 0:
            buffer.copy_(reference_buffers[clean].to(buffer.device, buffer.dtype))
        dist.broadcast(buffer, src=0)
    del reference, full_state


def shard_rows(rows: int, world_size: int, rank: int) -> int:
    """Rows of a dim-0 length `rows` that `fully_shard` gives `rank` (torch.chunk semantics)."""
    chunk = -(-rows // world_size)
    return max(0, min(rows, (rank + 1) * chunk) - rank * chunk)


def shard_numel(shape: tuple[int, ...] | torch.Size, world_size: int, rank: int) -> int:
    if len(shape) == 0:
        return 1 if rank == 0 else 0
    inner = 1
    for dim in shape[1:]:
        inner *= dim
    return shard_rows(shape[0], world_size, rank) * inner


def analytic_rank_numel(shapes: dict[str, tuple[int, ...]], world_size: int, rank: int) -> int:
    """Parameters `rank` holds after per-parameter dim-0 sharding across `world_size` ranks."""
    return sum(shard_numel(tuple(shape), world_size, rank) for shape in shapes.values())
