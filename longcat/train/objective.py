"""What one training micro-batch feeds the DiT, and its loss, on top of `longcat.flow`.

A micro-batch is one of three tasks, as the official pipeline runs them (github meituan-longcat/
LongCat-Video, `longcat_video/pipeline_longcat_video.py`): text-to-video (`generate_t2v`), image-to-video
(`generate_i2v`: one clean leading latent, the image encoded alone, l. 752-797) and video continuation
(`generate_vc`: the latents of the last `num_cond_frames` frames lead, 13 frames by default, 4 latents,
l. 1016-1050). The conditioning latents stay clean with timestep 0 and only the frames after them are
denoised, so they are out of the loss. The Wan VAE is causal in time: the first N latents of a clip
encode its first 4(N-1)+1 frames exactly as those frames encoded alone, so a cached clip's leading
latents are what the pipeline computes from an image or a video's frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from longcat.flow import FlowBatch, noise_latents, training_sigmas
from longcat.settings import Train
from longcat.train.tasks import CONTINUATION, IMAGE_TO_VIDEO, TEXT_TO_VIDEO

SIGMA_BUCKETS = (0.0, 0.25, 0.5, 0.75, 1.0)


def cond_latents_for(task: str, latent_frames: int, continuation_latents: Sequence[int]) -> list[int]:
    """The clean leading latent counts `task` may take on a clip of `latent_frames` (at least one latent
    frame is left to denoise); empty when the clip is too short for it."""
    if task == TEXT_TO_VIDEO:
        return [0]
    counts = [1] if task == IMAGE_TO_VIDEO else sorted(set(continuation_latents))
    return [count for count in counts if count < latent_frames]


@dataclass(frozen=True)
class MicroBatchDraw:
    """The random part of a micro-batch: σ per sample, the noise, the task and its conditioning."""

    sigmas: torch.Tensor  # [B]
    noise: torch.Tensor  # like the latents
    task: str
    num_cond_latents: int


def draw_micro_batch(
    latent_shape: Sequence[int],
    generator: torch.Generator,
    cfg: Train,
    flow_shift: float,
    device: torch.device | str = "cpu",
) -> MicroBatchDraw:
    """σ, noise and task of a micro-batch of latents `[B, C, T, H, W]`, all from `generator`, in this
    order (a resumed run draws the same). The task: image-to-video with probability
    train.image_to_video_fraction, continuation with train.continuation_fraction (N clean latents drawn
    from train.continuation_latents), else text-to-video; a clip too short for its task trains
    text-to-video."""
    sigmas = training_sigmas(
        latent_shape[0], generator, cfg.sigma_sampling, flow_shift, cfg.logit_mean, cfg.logit_std, device
    )
    noise = torch.randn(tuple(latent_shape), generator=generator, device=device)
    draw = torch.rand(1, generator=generator, device=device).item()
    if draw < cfg.image_to_video_fraction:
        task = IMAGE_TO_VIDEO
    elif draw < cfg.image_to_video_fraction + cfg.continuation_fraction:
        task = CONTINUATION
    else:
        task = TEXT_TO_VIDEO
    counts = cond_latents_for(task, latent_shape[2], cfg.continuation_latents)
    if not counts:
        return MicroBatchDraw(sigmas, noise, TEXT_TO_VIDEO, 0)
    pick = int(torch.randint(len(counts), (1,), generator=generator, device=device).item())
    return MicroBatchDraw(sigmas, noise, task, counts[pick])


def dit_inputs(
    latents: torch.Tensor,
    text_states: torch.Tensor,
    text_mask: torch.Tensor,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    num_cond_latents: int = 0,
) -> tuple[FlowBatch, dict[str, Any]]:
    """The flow batch of clean `latents` at `sigmas` with `noise`, and the DiT's keyword arguments for
    it: what training feeds the DiT (the training step, the held-out loss, the gates' tests)."""
    flow = noise_latents(latents, sigmas, noise, num_cond_latents)
    inputs = {
        "hidden_states": flow.noisy,
        "timestep": flow.timestep,
        "encoder_hidden_states": text_states,
        "encoder_attention_mask": text_mask,
        "num_cond_latents": num_cond_latents,
    }
    return flow, inputs


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
