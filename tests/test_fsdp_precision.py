"""bf16 FSDP2 keeps the model's float32 parts float32: timestep embeddings and RoPE reach every block as
the model computed them, so the sharded model equals the same weights in bf16 without FSDP."""

from __future__ import annotations

import copy

import torch
import torch.multiprocessing as mp
from conftest import TINY_MODEL, free_port

from longcat.basemodel.tiny import tiny_dit_config
from longcat.model import LongCatVideoTransformer3DModel
from longcat.settings import TinyModel


def tiny_inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    mask = torch.ones(1, 8, dtype=torch.long)
    mask[:, 5:] = 0
    return {
        "hidden_states": torch.randn(1, 16, 3, 8, 8, generator=generator),
        "timestep": torch.tensor([[731.0, 402.5, 88.25]]),
        "encoder_hidden_states": torch.randn(1, 1, 8, TINY_MODEL["text_dim"], generator=generator),
        "encoder_attention_mask": mask,
    }


def dtypes(value):
    """Dtypes of the tensors in a (nested) input, None for anything else."""
    if isinstance(value, torch.Tensor):
        return value.dtype
    if isinstance(value, tuple | list):
        return tuple(dtypes(item) for item in value)
    if isinstance(value, dict):
        return {key: dtypes(item) for key, item in value.items()}
    return None


def record_inputs(model: torch.nn.Module) -> tuple[dict, list]:
    """Forward pre-hooks, registered after FSDP's own, that see what the root and each block receive."""
    root: dict = {}
    blocks: list = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: root.update(dtypes(kwargs)), with_kwargs=True
    )
    for block in model.blocks:
        block.register_forward_pre_hook(lambda module, args: blocks.append(dtypes(args)))
    return root, blocks


def _worker(rank: int, world_size: int, port: int) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from longcat.train.parallelize import apply_fsdp

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(TINY_MODEL["seed"])
        model = LongCatVideoTransformer3DModel.from_config(tiny_dit_config(TinyModel(**TINY_MODEL))).eval()
        reference = copy.deepcopy(model).to(torch.bfloat16)
        apply_fsdp(model, init_device_mesh("cpu", (world_size,)), param_dtype=torch.bfloat16)
        root, blocks = record_inputs(model)
        with torch.no_grad():
            sharded = model(**tiny_inputs())
            expected = reference(**tiny_inputs())

        # The root gets the caller's tensors as they are: the model casts them itself.
        assert root == {
            "hidden_states": torch.float32,
            "timestep": torch.float32,
            "encoder_hidden_states": torch.float32,
            "encoder_attention_mask": torch.long,
        }
        # Each block: x and text in bf16, t and both RoPE tables in float32, no key mask (zero-padded
        # captions), num_cond_tokens.
        float32 = torch.float32
        block_inputs = (torch.bfloat16, torch.bfloat16, float32, (float32, float32), None, None)
        assert blocks == [block_inputs] * TINY_MODEL["depth"]
        assert sharded.dtype == torch.float32
        torch.testing.assert_close(sharded, expected, rtol=0, atol=0)
    finally:
        dist.destroy_process_group()


def test_bf16_fsdp2_blocks_get_float32_timestep_embeddings_and_rope_on_two_ranks():
    mp.spawn(_worker, args=(2, free_port()), nprocs=2, join=True)
