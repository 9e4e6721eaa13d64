"""Validation videos while training: fixed prompts and seeds, mp4 in `validation/step-N/` and in TensorBoard.

Every rank runs the same sampling in lockstep because the sharded DiT gathers its weights in each forward;
rank 0 writes the files. The `Validator` holds what the videos need besides the model being trained, so
the training loop hands it only the model, the step and its metrics.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from longcat.train.metrics import Metrics

log = logging.getLogger(__name__)

FPS = 15
TB_FRAMES = 8


def validation_prompts(configured: Sequence[str], fallback: Sequence[str], count: int) -> list[str]:
    """`count` prompts cycling through `configured` (train.validation_prompts), else `fallback`."""
    prompts = list(configured) or list(fallback)
    if not prompts:
        raise ValueError(
            "train.validation_prompts: expected at least one prompt for validation videos, found none"
        )
    return [prompts[i % len(prompts)] for i in range(count)]


def most_common_shape(latent_shapes: Iterable[Sequence[int]]) -> tuple[int, ...]:
    """The latent shape most training samples have: validation videos are rendered at it."""
    return Counter(tuple(shape) for shape in latent_shapes).most_common(1)[0][0]


@dataclass(frozen=True)
class Validator:
    """Renders the validation videos of one run: `prompts` with seeds `seed + index`, at `latent_shape`
    (`[C, F, H, W]`), sampled with the base model's text encoder, VAE and a scheduler at `flow_shift`."""

    prompts: tuple[str, ...]
    num_inference_steps: int
    guidance_scale: float
    seed: int
    flow_shift: float
    out_dir: Path
    base_model: Path
    latent_shape: tuple[int, ...]
    max_tokens: int
    device: torch.device
    dtype: torch.dtype
    rank: int

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, step: int, metrics: Metrics) -> None:
        from longcat.basemodel.loader import load_components
        from longcat.pipeline import LongCatVideoPipeline
        from longcat.video_io import write_mp4

        parts = load_components(
            self.base_model,
            device=self.device,
            dtype=self.dtype,
            components=("tokenizer", "text_encoder", "vae", "scheduler"),
        )
        # Sampled as the exported model will be: with the shift the run trains with.
        parts["scheduler"] = type(parts["scheduler"]).from_config(
            parts["scheduler"].config, shift=self.flow_shift
        )
        pipeline = LongCatVideoPipeline(dit=model, **parts)
        pipeline.set_progress_bar_config(disable=True)
        _, frames, height, width = self.latent_shape
        temporal, spatial = pipeline.vae_scale_factor_temporal, pipeline.vae_scale_factor_spatial
        out_dir = self.out_dir / f"step-{step}"
        model.eval()
        try:
            for index, prompt in enumerate(self.prompts):
                generator = torch.Generator(device=self.device).manual_seed(self.seed + index)
                video = pipeline(
                    prompt,
                    num_frames=(frames - 1) * temporal + 1,
                    height=height * spatial,
                    width=width * spatial,
                    num_inference_steps=self.num_inference_steps,
                    guidance_scale=self.guidance_scale,
                    generator=generator,
                    max_sequence_length=self.max_tokens,
                    output_type="pt",
                ).frames[0]
                if self.rank == 0:
                    path = write_mp4(video.permute(0, 2, 3, 1), out_dir / f"video-{index:02d}.mp4", fps=FPS)
                    keep = torch.linspace(0, video.shape[0] - 1, min(TB_FRAMES, video.shape[0])).long()
                    metrics.images(step, f"validation/{index:02d}", video[keep].float().clamp(0, 1))
                    metrics.text(step, f"validation/{index:02d}/prompt", f"{prompt} ({path.name})")
                    log.info("validation video: %s", path)
        finally:
            model.train()
            del pipeline, parts
        dist.barrier()
