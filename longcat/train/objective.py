"""Flow matching as LongCat samples it: x_t = (1-σ)·x0 + σ·ε, timestep 1000·σ, target x0 - ε."""

from __future__ import annotations

from dataclasses import dataclass

import torch

SIGMA_BUCKETS = (0.0, 0.25, 0.5, 0.75, 1.0)


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The same shift the sampler applies to its schedule, so training sees the σ it will be asked for."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sample_sigmas(
    batch_size: int,
    generator: torch.Generator,
    kind: str = "logit_normal",
    shift: float = 1.0,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    if kind == "logit_normal":
        normal = torch.randn(batch_size, generator=generator, device=device)
        sigmas = torch.sigmoid(logit_mean + logit_std * normal)
    elif kind == "uniform":
        sigmas = torch.rand(batch_size, generator=generator, device=device)
    else:
        raise ValueError(f"sigma sampling: expected 'logit_normal' or 'uniform', found {kind!r}")
    return shift_sigmas(sigmas, shift)


@dataclass
class FlowBatch:
    noisy: torch.Tensor  # [B, C, T, H, W]
    timestep: torch.Tensor  # [B] or [B, T], 1000·σ
    target: torch.Tensor  # x0 - ε
    loss_mask: torch.Tensor  # [B, 1, T, 1, 1]: 1 where the loss counts
    sigmas: torch.Tensor  # [B]
    num_cond_latents: int


def make_flow_batch(
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    num_cond_latents: int = 0,
) -> FlowBatch:
    """Noise `latents` to `sigmas`; the first `num_cond_latents` frames stay clean and out of the loss."""
    frames = latents.shape[2]
    if not 0 <= num_cond_latents < frames:
        raise ValueError(
            f"conditioning: expected 0 <= num_cond_latents < latent frames ({frames}), "
            f"found {num_cond_latents}"
        )
    sigma = sigmas.view(-1, 1, 1, 1, 1).to(latents.dtype)
    noisy = (1 - sigma) * latents + sigma * noise
    target = latents - noise
    loss_mask = torch.ones(latents.shape[0], 1, frames, 1, 1, device=latents.device, dtype=latents.dtype)
    timestep = 1000 * sigmas
    if num_cond_latents:
        noisy[:, :, :num_cond_latents] = latents[:, :, :num_cond_latents]
        loss_mask[:, :, :num_cond_latents] = 0
        timestep = timestep[:, None].repeat(1, frames)
        timestep[:, :num_cond_latents] = 0
    return FlowBatch(noisy, timestep, target, loss_mask, sigmas, num_cond_latents)


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
