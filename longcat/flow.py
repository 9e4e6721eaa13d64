"""Flow matching as LongCat-Video defines it, one definition for training and sampling.

Everything that decides what the DiT sees lives here, and the trainer, validation and the pipeline all
call it: the σ schedule and its shift, noising and the target, the timestep scale, the pixels the VAE
encodes and the latent normalisation, and the caption padding and mask. Following the official code
(github meituan-longcat/LongCat-Video, `longcat_video/pipeline_longcat_video.py`):
- sampling sigmas are `linspace(1, 0.001, N)` (`get_timesteps_sigmas`, l. 313-325) shifted by the
  scheduler's `shift`, then 0; the DiT's timestep is `1000·σ`;
- `x_σ = (1 − σ)·x0 + σ·ε` and the DiT predicts `x0 − ε`, negated into the velocity before each Euler
  step (l. 586-590);
- CFG-Zero* scales the unconditional prediction by `<cond, uncond> / ||uncond||²` per sample, over the
  whole latent (l. 576-584, l. 1055-1063);
- latents are `(z − mean) · (1 / std)` with the VAE's statistics (`normalize_latents`, l. 379-399);
- captions are umT5 embeddings padded to `max_sequence_length` with zeros and a 0/1 mask
  (`padding="max_length"`, l. 104-112). With `text_tokens_zero_pad` the DiT attends to the zero pads
  (`longcat_video/modules/longcat_video_dit.py` l. 317-319), so its output depends on the pad count:
  training must pad exactly as sampling does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

NUM_TRAIN_TIMESTEPS = 1000
SIGMA_MIN = 0.001
SIGMA_SAMPLERS = ("uniform", "logit_normal")


# ---------------------------------------------------------------- σ schedule


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The time shift `shift·σ / (1 + (shift − 1)·σ)`; 0 and 1 stay where they are."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sampling_sigmas(num_steps: int, shift: float) -> torch.Tensor:
    """The sampler's `num_steps` shifted sigmas from 1 down to shift(0.001), plus the terminal 0 (float32)."""
    if num_steps < 1:
        raise ValueError(f"num_inference_steps: expected at least 1, found {num_steps}")
    sigmas = shift_sigmas(torch.linspace(1.0, SIGMA_MIN, num_steps, dtype=torch.float32), shift)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def training_sigmas(
    batch_size: int,
    generator: torch.Generator,
    kind: str = "uniform",
    shift: float = 1.0,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """σ for `batch_size` training samples, shifted as the sampler shifts its schedule.

    `uniform` draws the unshifted σ uniformly over the sampler's range [0.001, 1]: training then visits
    σ with the density of the sampler's steps. `logit_normal` draws `sigmoid(N(mean, std))` instead,
    which under a large shift leaves the low σ the sampler ends on almost untrained.
    """
    if kind == "uniform":
        unshifted = SIGMA_MIN + (1 - SIGMA_MIN) * torch.rand(batch_size, generator=generator, device=device)
    elif kind == "logit_normal":
        normal = torch.randn(batch_size, generator=generator, device=device)
        unshifted = torch.sigmoid(logit_mean + logit_std * normal)
    else:
        raise ValueError(f"sigma sampling: expected one of {SIGMA_SAMPLERS}, found {kind!r}")
    return shift_sigmas(unshifted, shift)


def timesteps(sigmas: torch.Tensor) -> torch.Tensor:
    """The DiT's timestep for noise level σ."""
    return NUM_TRAIN_TIMESTEPS * sigmas


def scheduler_shift(base_model: str | Path) -> float:
    """The flow shift a published-layout model samples with: `scheduler/scheduler_config.json`'s `shift`."""
    path = Path(base_model) / "scheduler" / "scheduler_config.json"
    try:
        shift = json.loads(path.read_text())["shift"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path}: expected a scheduler config with a 'shift', found {error!r}") from None
    if not isinstance(shift, int | float) or isinstance(shift, bool) or shift <= 0:
        raise ValueError(f"{path}: shift: expected a number > 0, found {shift!r}")
    return float(shift)


# ---------------------------------------------------------------- noising and sampling steps


@dataclass
class FlowBatch:
    noisy: torch.Tensor  # [B, C, T, H, W]
    timestep: torch.Tensor  # [B] or [B, T], 1000·σ
    target: torch.Tensor  # x0 − ε
    loss_mask: torch.Tensor  # [B, 1, T, 1, 1]: 1 where the loss counts
    sigmas: torch.Tensor  # [B]
    num_cond_latents: int


def noise_latents(
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    num_cond_latents: int = 0,
) -> FlowBatch:
    """Noise `latents` to `sigmas`; the first `num_cond_latents` frames stay clean (timestep 0) and out of
    the loss, as the pipeline keeps its conditioning frames."""
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
    timestep = timesteps(sigmas)
    if num_cond_latents:
        noisy[:, :, :num_cond_latents] = latents[:, :, :num_cond_latents]
        loss_mask[:, :, :num_cond_latents] = 0
        timestep = timestep[:, None].repeat(1, frames)
        timestep[:, :num_cond_latents] = 0
    return FlowBatch(noisy, timestep, target, loss_mask, sigmas, num_cond_latents)


def cfg_zero_star(cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """CFG-Zero*: scale the unconditional prediction by `st = <cond, uncond> / ||uncond||²` per sample."""
    batch = cond.shape[0]
    cond_flat = cond.reshape(batch, -1).float()
    uncond_flat = uncond.reshape(batch, -1).float()
    st = (cond_flat * uncond_flat).sum(dim=1) / (uncond_flat.square().sum(dim=1) + 1e-8)
    st = st.view(batch, *([1] * (cond.ndim - 1)))
    uncond_scaled = uncond.float() * st
    return uncond_scaled + guidance_scale * (cond.float() - uncond_scaled)


def euler_step(latents: torch.Tensor, model_output: torch.Tensor, sigma: float, sigma_next: float):
    """One Euler step of the flow ODE; the DiT's `x0 − ε` output is negated into the velocity."""
    return latents + (sigma_next - sigma) * (-model_output)


# ---------------------------------------------------------------- latents and captions


def vae_pixels(video: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Pixels as the VAE takes them: `video` (uint8, or float in [0, 1]) to [-1, 1], scaled in float32
    and rounded to `dtype` once. A frame given to the pipeline as `u / 255` scales exactly as the cache
    scaled its uint8 `u`."""
    unit = video.float() / 255 if video.dtype == torch.uint8 else video.float().clamp(0, 1)
    return (unit * 2 - 1).to(dtype)


def encode_latents(vae, pixels: torch.Tensor) -> torch.Tensor:
    """The DiT's latents of `pixels` (`vae_pixels`): the mode of the VAE's posterior, normalised. The
    caches encode the clips so, and the pipeline its conditioning frames, so that a conditioning video
    reaches the DiT as the finetune's conditioning frames did."""
    return normalize_latents(vae.encode(pixels).latent_dist.mode(), vae.config)


def _latent_stats(vae_config, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(vae_config.latents_mean, dtype=torch.float32, device=like.device).view(shape)
    inverse_std = 1.0 / torch.tensor(vae_config.latents_std, dtype=torch.float32, device=like.device)
    return mean, inverse_std.view(shape)


def normalize_latents(latents: torch.Tensor, vae_config) -> torch.Tensor:
    """VAE latents to the DiT's space, `(z − mean) · (1 / std)` per channel, in float32."""
    mean, inverse_std = _latent_stats(vae_config, latents)
    return (latents.float() - mean) * inverse_std


def denormalize_latents(latents: torch.Tensor, vae_config) -> torch.Tensor:
    """The DiT's latents back to the VAE's space, `z / (1 / std) + mean` per channel, in float32."""
    mean, inverse_std = _latent_stats(vae_config, latents)
    return latents.float() / inverse_std + mean


def pad_captions(unpadded: Sequence[torch.Tensor], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The DiT's caption input: `[L_i, C]` embeddings zero-padded to `[B, 1, max_tokens, C]`, and the
    `[B, max_tokens]` mask (1 = real token). Sampling and training both pad to the same `max_tokens`."""
    if not unpadded:
        raise ValueError("pad_captions: expected at least one embedding, found none")
    channels = unpadded[0].shape[-1]
    padded = unpadded[0].new_zeros(len(unpadded), 1, max_tokens, channels)
    mask = torch.zeros(len(unpadded), max_tokens, dtype=torch.long, device=unpadded[0].device)
    for row, embedding in enumerate(unpadded):
        if embedding.ndim != 2 or embedding.shape[-1] != channels:
            raise ValueError(
                f"pad_captions: row {row}: expected an embedding [L, {channels}], "
                f"found {list(embedding.shape)}"
            )
        if embedding.shape[0] > max_tokens:
            raise ValueError(
                f"pad_captions: row {row}: {embedding.shape[0]} tokens exceed max_tokens={max_tokens}"
            )
        padded[row, 0, : embedding.shape[0]] = embedding
        mask[row, : embedding.shape[0]] = 1
    return padded, mask
