"""Activation checkpointing, torch.compile and FSDP2 applied to a built model from outside, step by step."""

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
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

log = logging.getLogger(__name__)

# Attention kernels whose outputs selective checkpointing can keep, with the dimension of their inputs
# that counts key tokens: SDPA takes [batch, heads, tokens, head_dim], the raw kernels [batch, tokens,
# heads, head_dim]. CPU SDPA is here too, so that CPU runs exercise the same policy.
ATTENTION_KERNELS = {
    "aten::_scaled_dot_product_flash_attention": 2,
    "aten::_scaled_dot_product_cudnn_attention": 2,
    "aten::_scaled_dot_product_efficient_attention": 2,
    "aten::_scaled_dot_product_flash_attention_for_cpu": 2,
    "aten::_flash_attention_forward": 1,
    "aten::_efficient_attention_forward": 1,
    "flash_attn::_flash_attn_forward": 1,
    "flash_attn_3::fwd": 1,
}

# Wrapper prefixes that `named_buffers` shows and the published names do not have.
WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.")


def published_name(name: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def checkpointed_block_indices(depth: int, mode: str, every: int) -> list[int]:
    """Blocks whose activations are recomputed in backward: all (or all, selectively), every k-th, none."""
    if mode in ("all", "selective"):
        return list(range(depth))
    if mode == "every":
        return list(range(0, depth, every))
    if mode == "off":
        return []
    raise ValueError(
        f"activation_checkpointing: expected 'all', 'selective', 'every' or 'off', found {mode!r}"
    )


def keeps_attention_output(op: Any, args: tuple, kwargs: dict) -> bool:
    """Whether selective checkpointing keeps this op's outputs instead of recomputing them.

    Attention kernels only, and only those with more key tokens than half the attention width: an output
    element costs about 4 x key-tokens FLOPs to recompute, against 2 x width for a linear layer of the
    block, so self-attention over the video (tens of thousands of keys) is kept and cross-attention to
    a few hundred text tokens is recomputed, for the same memory as one more block input.
    """
    name = op.name() if hasattr(op, "name") else ""
    token_dim = ATTENTION_KERNELS.get(name)
    if token_dim is None:
        return False
    query = args[0] if args else kwargs.get("q", kwargs.get("query"))
    key = args[1] if len(args) > 1 else kwargs.get("k", kwargs.get("key"))
    if not isinstance(query, torch.Tensor) or not isinstance(key, torch.Tensor) or key.dim() != 4:
        return True
    heads = query.shape[1 if token_dim == 2 else 2]
    return 2 * int(key.shape[token_dim]) > int(heads * query.shape[-1])


def _selective_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    if keeps_attention_output(op, args, kwargs):
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def selective_checkpoint_context() -> tuple[Any, Any]:
    """Forward and recompute contexts of op-level selective activation checkpointing."""
    return create_selective_checkpoint_contexts(_selective_policy)


def apply_activation_checkpointing(model: nn.Module, mode: str, every: int = 1) -> list[int]:
    """Wrap blocks so that backward recomputes them: whole, or (selective) all but the kept attention."""
    indices = checkpointed_block_indices(len(model.blocks), mode, every)
    options: dict[str, Any] = {}
    if mode == "selective":
        options["context_fn"] = selective_checkpoint_context
    for index in indices:
        model.blocks[index] = checkpoint_wrapper(
            model.blocks[index],
            checkpoint_impl=CheckpointImpl.NO_REENTRANT,
            preserve_rng_state=False,
            **options,
        )
    return indices


def apply_compile(model: nn.Module, backend: str = "inductor") -> None:
    """`torch.compile` each block, checkpointing included, before `fully_shard` (FSDP hooks stay eager).

    Blocks share one code path, so one compiled graph serves them all; the checkpointed region is compiled
    with its recomputation (and the selective policy), which fuses the fp32 norms and AdaLN modulations
    that dominate the non-matmul time. Not `fullgraph`: a kernel Dynamo cannot trace (a flash-attn build
    without torch custom ops) splits the graph rather than stopping the run.
    """
    for index, block in enumerate(model.blocks):
        model.blocks[index] = torch.compile(block, backend=backend)


def apply_fsdp(
    model: nn.Module,
    mesh: DeviceMesh,
    param_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
    cpu_offload: bool = False,
) -> nn.Module:
    """`fully_shard` each block, then the root (embedders, final layer); fp32 master weights and reduce.

    Forward inputs are never cast: the model casts its own inputs to the weights' dtype and hands every
    block float32 timestep embeddings and RoPE tables, as the reference computes them (fp32 AdaLN and
    RoPE). FSDP's default cast would round those to bf16 at each block's entry.
    """
    mp_policy = MixedPrecisionPolicy(
        param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False
    )
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
        if rank == 0:
            buffer.copy_(reference_buffers[published_name(name)].to(buffer.device, buffer.dtype))
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
