"""Selective activation checkpointing and compiled blocks: plain autograd's gradients, less recompute."""

from __future__ import annotations

import copy

import torch
import torch.multiprocessing as mp
from conftest import free_port
from torch.utils._python_dispatch import TorchDispatchMode

from longcat.model import LongCatVideoTransformer3DModel
from longcat.train.parallelize import (
    apply_activation_checkpointing,
    apply_compile,
    keeps_attention_output,
    published_name,
)

# 48 video tokens against width 32: self-attention is kept, cross-attention to 8 text tokens recomputed.
TINY = {
    "hidden_size": 32,
    "num_heads": 2,
    "caption_channels": 16,
    "adaln_tembed_dim": 16,
    "depth": 2,
    "mlp_ratio": 4,
    "text_tokens_zero_pad": True,
}
CPU_ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default


class AttentionCalls(TorchDispatchMode):
    """Counts CPU attention kernels run while active (in backward: the recomputed ones)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func == CPU_ATTENTION:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def tiny_inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(1, 16, 3, 8, 8, generator=generator),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": torch.randn(1, 1, 8, 16, generator=generator),
        "encoder_attention_mask": torch.ones(1, 8, dtype=torch.long),
    }


def tiny_model() -> LongCatVideoTransformer3DModel:
    torch.manual_seed(0)
    return LongCatVideoTransformer3DModel(**TINY)


def loss_and_grads(model: torch.nn.Module, count: bool = False) -> tuple[torch.Tensor, dict, int]:
    loss = model(**tiny_inputs()).square().mean()
    counter = AttentionCalls()
    if count:
        with counter:
            loss.backward()
    else:
        loss.backward()
    grads = {}
    for name, param in model.named_parameters():
        grad = param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad
        grads[published_name(name)] = grad
    return loss.detach(), grads, counter.calls


def assert_same_grads(grads: dict, reference: dict) -> None:
    assert grads.keys() == reference.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], rtol=1e-5, atol=1e-6, msg=name)


def test_selective_checkpointing_recomputes_only_cross_attention_with_the_same_gradients():
    reference = tiny_model()
    plain_loss, plain_grads, plain_calls = loss_and_grads(reference, count=True)
    assert plain_calls == 0
    recomputed = {}
    for mode in ("all", "selective"):
        model = copy.deepcopy(reference)
        model.zero_grad(set_to_none=True)
        apply_activation_checkpointing(model, mode)
        loss, grads, recomputed[mode] = loss_and_grads(model, count=True)
        torch.testing.assert_close(loss, plain_loss)
        assert_same_grads(grads, plain_grads)
    # Per block: full checkpointing reruns self- and cross-attention, selective only the cross-attention.
    assert recomputed == {"all": 2 * TINY["depth"], "selective": TINY["depth"]}


def test_policy_keeps_long_key_attention_in_either_layout():
    heads_first = (torch.empty(1, 2, 48, 16), torch.empty(1, 2, 48, 16))
    assert keeps_attention_output(CPU_ATTENTION, heads_first, {})
    short_keys = (torch.empty(1, 2, 48, 16), torch.empty(1, 2, 8, 16))
    assert not keeps_attention_output(CPU_ATTENTION, short_keys, {})
    tokens_first = (torch.empty(1, 48, 2, 16), torch.empty(1, 48, 2, 16))
    assert keeps_attention_output(torch.ops.aten._flash_attention_forward.default, tokens_first, {})
    assert not keeps_attention_output(torch.ops.aten.mm.default, tokens_first, {})


def test_compiled_selective_blocks_give_the_same_gradients():
    # aot_eager traces the checkpointed block and its policy as Inductor would, without building C++.
    reference = tiny_model()
    plain_loss, plain_grads, _ = loss_and_grads(reference)
    model = copy.deepcopy(reference)
    model.zero_grad(set_to_none=True)
    apply_activation_checkpointing(model, "selective")
    apply_compile(model, backend="aot_eager")
    loss, grads, _ = loss_and_grads(model)
    torch.testing.assert_close(loss, plain_loss)
    assert_same_grads(grads, plain_grads)
    torch._dynamo.reset()


def _fsdp_worker(rank: int, world_size: int, port: int) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from longcat.train.parallelize import apply_fsdp

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        reference = tiny_model()
        plain_loss, plain_grads, _ = loss_and_grads(reference)
        model = tiny_model()
        apply_activation_checkpointing(model, "selective")
        apply_fsdp(model, init_device_mesh("cpu", (world_size,)))
        # Every rank sees the same sample, so the averaged sharded gradients equal one process's.
        loss, grads, recomputed = loss_and_grads(model, count=True)
        torch.testing.assert_close(loss, plain_loss)
        assert_same_grads(grads, plain_grads)
        assert recomputed == TINY["depth"]
    finally:
        dist.destroy_process_group()


def test_selective_checkpointing_under_fsdp2_on_two_ranks():
    mp.spawn(_fsdp_worker, args=(2, free_port()), nprocs=2, join=True)
