"""The training loss on top of `longcat.flow`: squared error per sample, and σ buckets to report it by."""

from __future__ import annotations

import torch

from longcat.flow import FlowBatch

SIGMA_BUCKETS = (0.0, 0.25, 0.5, 0.75, 1.0)


def per_sample_loss(prediction: torch.Tensor, batch: FlowBatch) -> torch.Tensor:
    """Mean squared error per sample over the frames that count, in float32."""
    error = (prediction.float() - batch.target.float()) ** 2 * batch.loss_mask.float()
    counted = batch.loss_mask.float().expand_as(error).sum(dim=(1, 2, 3, 4))
    return error.sum(dim=(1, 2, 3, 4)) / counted


def sigma_bucket(sigma: float) -> str:
    for low, high in zip(SIGMA_BUCKETS, SIGMA_BUCKETS[1:], strict=False):
        if sigma < high or high == SIGMA_BUCKETS[-1]:
            return f"{low:.2f}-{high:.2f}"
    raise AssertionError("unreachable")
