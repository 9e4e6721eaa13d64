"""Validation videos while training: fixed prompts and seeds, mp4 in `validation/step-N/` and in TensorBoard.

Every rank runs the same sampling in lockstep because the sharded DiT gathers its weights in each forward;
rank 0 writes the files.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from longcat.train.loop import Trainer
    from longcat.train.metrics import Metrics

log = logging.getLogger(__name__)

FPS = 15
TB_FRAMES = 8


def validation_prompts(configured: list[str], workflow_config: dict, count: int) -> list[str]:
    prompts = list(configured) or list((workflow_config.get("sample") or {}).get("prompts") or [])
    if not prompts:
        raise ValueError(
            "train.validation_prompts: expected at least one prompt for validation videos, found none"
        )
    return [prompts[i % len(prompts)] for i in range(count)]


def validation_size(trainer: Trainer, temporal: int, spatial: int) -> tuple[int, int, int]:
    """Frames, height and width of the most common training shape."""
    shapes = Counter(tuple(sample.latent_shape) for sample in trainer.loader.dataset.samples)
    _, frames, height, width = shapes.most_common(1)[0][0]
    return (frames - 1) * temporal + 1, height * spatial, width * spatial


@torch.no_grad()
def render_validation_videos(trainer: Trainer, metrics: Metrics) -> None:
    from longcat.basemodel import load_components
    from longcat.pipeline import LongCatVideoPipeline
    from longcat.video_io import write_mp4

    cfg = trainer.cfg
    step = trainer.progress.step
    dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float32
    parts = load_components(
        trainer.paths.base_model,
        device=trainer.device,
        dtype=dtype,
        components=("tokenizer", "text_encoder", "vae", "scheduler"),
    )
    # Sampled as the exported model will be: with the shift the run trains with.
    parts["scheduler"] = type(parts["scheduler"]).from_config(
        parts["scheduler"].config, shift=trainer.flow_shift
    )
    pipeline = LongCatVideoPipeline(dit=trainer.model, **parts)
    pipeline.set_progress_bar_config(disable=True)
    num_frames, height, width = validation_size(
        trainer, pipeline.vae_scale_factor_temporal, pipeline.vae_scale_factor_spatial
    )
    out_dir = trainer.paths.validation / f"step-{step}"
    trainer.model.eval()
    try:
        for index, prompt in enumerate(
            validation_prompts(cfg.validation_prompts, trainer.workflow_config, cfg.num_validation_videos)
        ):
            generator = torch.Generator(device=trainer.device).manual_seed(cfg.seed + index)
            frames = pipeline(
                prompt,
                num_frames=num_frames,
                height=height,
                width=width,
                num_inference_steps=cfg.validation_inference_steps,
                guidance_scale=cfg.validation_guidance_scale,
                generator=generator,
                max_sequence_length=trainer.loader.dataset.max_tokens,
                output_type="pt",
            ).frames[0]
            if trainer.rank == 0:
                path = write_mp4(frames.permute(0, 2, 3, 1), out_dir / f"video-{index:02d}.mp4", fps=FPS)
                keep = torch.linspace(0, frames.shape[0] - 1, min(TB_FRAMES, frames.shape[0])).long()
                metrics.images(step, f"validation/{index:02d}", frames[keep].float().clamp(0, 1))
                metrics.text(step, f"validation/{index:02d}/prompt", f"{prompt} ({path.name})")
                log.info("validation video: %s", path)
    finally:
        trainer.model.train()
        del pipeline, parts
    dist.barrier()
