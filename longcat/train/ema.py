"""An exponential moving average (EMA) of the trained weights, sharded like them.

Each rank keeps the average of its own shards only, in float32 beside the float32 master weights (FSDP2
DTensors of the same placements), and updates it after every optimizer step with one fused lerp; nothing
is gathered but at export. The average goes into the DCP checkpoint under `ema`, so a resumed run goes on
with exactly the average it stopped with.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from longcat.train.parallelize import published_name


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The rank's own part of a sharded tensor (a view of its storage); a plain tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def reshard(model: nn.Module) -> None:
    """Drop every gathered copy of the weights, so that the next forward gathers them anew (the root
    keeps its weights gathered after a forward without backward)."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


class WeightAverage:
    """`average = decay * average + (1 - decay) * weights` after each step, from the weights at creation."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        # Published names: the checkpoint's keys do not depend on checkpointing or compile wrappers.
        self.parameters = [(published_name(name), parameter) for name, parameter in model.named_parameters()]
        with torch.no_grad():
            self.average = {name: parameter.detach().clone().float() for name, parameter in self.parameters}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The average's tensors themselves, by published parameter name: DCP saves them and loads into
        them in place."""
        return self.average

    @torch.no_grad()
    def update(self) -> None:
        averages = [_local(self.average[name]) for name, _ in self.parameters]
        weights = [_local(parameter.detach()) for _, parameter in self.parameters]
        torch._foreach_lerp_(averages, weights, 1 - self.decay)

    @torch.no_grad()
    def _swap(self, model: nn.Module) -> None:
        reshard(model)
        for name, parameter in self.parameters:
            weight, average = _local(parameter.detach()), _local(self.average[name])
            held = weight.clone()
            weight.copy_(average)
            average.copy_(held)

    @contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """The model holds the average inside the block and its own weights again after it (bit for bit),
        one parameter's shard of extra memory at a time."""
        self._swap(model)
        try:
            yield
        finally:
            self._swap(model)
            reshard(model)

    def full_state_dict(self, rank: int) -> dict[str, torch.Tensor]:
        """The whole average on rank 0's CPU, float32 (empty elsewhere); collective."""
        full = {}
        for name, tensor in self.average.items():
            gathered = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
            if rank == 0:
                full[name] = gathered.cpu()
        return full
