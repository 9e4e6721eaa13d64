"""Validation videos while training: mp4 in `validation/step-N/` and in TensorBoard, fixed seeds.

Two kinds, both at a length the run trains:
- `video-NN.mp4`: the configured prompts (text-to-video) at the latent shape most samples have;
- `heldout-<task>.mp4`: one held-out clip (never trained on) rendered as text-to-video from its caption,
  as image-to-video from its first frame and as a continuation of its first frames, at the clip's own
  length; `heldout-clip.mp4` is the clip itself as the VAE gives it back from its cached latents, what
  the conditioned videos start from.

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

from longcat.flow import denormalize_latents, pad_captions
from longcat.train.objective import cond_latents_for
from longcat.train.tasks import TASKS
from longcat.vae_frames import video_frames

if TYPE_CHECKING:
    from longcat.train.data import CacheSource
    from longcat.train.metrics import Metrics

log = logging.getLogger(__name__)

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
    """Renders the validation videos of one run: `prompts` with seeds `seed + index` at `latent_shape`
    (`[C, F, H, W]`), and the task videos of `heldout_clip` of `source` (None: none), sampled with the
    base model's text encoder, VAE and a scheduler at `flow_shift`, written at `fps` (frames.fps)."""

    prompts: tuple[str, ...]
    num_inference_steps: int
    guidance_scale: float
    seed: int
    flow_shift: float
    out_dir: Path
    base_model: Path
    latent_shape: tuple[int, ...]
    max_tokens: int
    fps: float
    source: CacheSource
    heldout_clip: str | None
    continuation_latents: tuple[int, ...]
    device: torch.device
    dtype: torch.dtype
    rank: int

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, step: int, metrics: Metrics) -> None:
        from longcat.basemodel.loader import load_components
        from longcat.pipeline import LongCatVideoPipeline

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
        pipeline = LongCatVideoPipeline(dit=model, **parts, max_sequence_length=self.max_tokens)
        pipeline.set_progress_bar_config(disable=True)
        model.eval()
        try:
            for index, prompt in enumerate(self.prompts):
                video = self.render(pipeline, self.latent_shape, self.seed + index, prompt=prompt)
                self.write(video, step, f"video-{index:02d}", prompt, metrics)
            if self.heldout_clip is not None:
                self.heldout_videos(pipeline, step, metrics)
        finally:
            model.train()
            del pipeline, parts
        dist.barrier()

    def render(self, pipeline, latent_shape: Sequence[int], seed: int, **inputs) -> torch.Tensor:
        """One video `[F, 3, H, W]` in [0, 1] at `latent_shape`, seed `seed`."""
        _, frames, height, width = latent_shape
        temporal, spatial = pipeline.vae_scale_factor_temporal, pipeline.vae_scale_factor_spatial
        return pipeline(
            num_frames=video_frames(frames, temporal),
            height=height * spatial,
            width=width * spatial,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            generator=torch.Generator(device=self.device).manual_seed(seed),
            output_type="pt",
            **inputs,
        ).frames[0]

    def heldout_videos(self, pipeline, step: int, metrics: Metrics) -> None:
        """The held-out clip through the VAE, then one video per task from its caption (and its first
        latents, which the conditioned ones keep as they are)."""
        clip = self.heldout_clip
        latents = self.source.latent(clip).float().to(self.device)[None]
        text, mask = pad_captions([self.source.text(clip).float()], self.max_tokens)
        negative, negative_mask = pad_captions([self.source.empty_text().float()], self.max_tokens)
        captions = {
            "prompt_embeds": text.to(self.device),
            "prompt_attention_mask": mask.to(self.device),
            "negative_prompt_embeds": negative.to(self.device),
            "negative_prompt_attention_mask": negative_mask.to(self.device),
        }
        vae = pipeline.vae
        decoded = vae.decode(denormalize_latents(latents, vae.config).to(vae.dtype)).sample
        clip_video = pipeline.video_processor.postprocess_video(decoded.float(), output_type="pt")[0]
        self.write(clip_video, step, "heldout-clip", f"held-out clip {clip} as the VAE decodes it", metrics)
        for task in TASKS:  # one seed for the three: they differ by their conditioning alone
            counts = cond_latents_for(task, latents.shape[2], self.continuation_latents)
            if not counts:
                continue
            num_cond = counts[-1]
            cond = {"cond_latents": latents[:, :, :num_cond]} if num_cond else {}
            video = self.render(pipeline, latents.shape[1:], self.seed, **captions, **cond)
            what = f"held-out clip {clip}, {task.replace('_', ' ')}"
            if num_cond:
                frames = video_frames(num_cond, pipeline.vae_scale_factor_temporal)
                what += f" from its first {frames} frames" if frames > 1 else " from its first frame"
            self.write(video, step, f"heldout-{task}", what, metrics)

    def write(self, video: torch.Tensor, step: int, name: str, caption: str, metrics: Metrics) -> None:
        """`video` `[F, 3, H, W]` as `step-N/<name>.mp4` at the run's fps, and its frames in TensorBoard."""
        if self.rank != 0:
            return
        from longcat.video_io import write_mp4

        path = self.out_dir / f"step-{step}" / f"{name}.mp4"
        write_mp4(video.permute(0, 2, 3, 1), path, fps=self.fps)
        keep = torch.linspace(0, video.shape[0] - 1, min(TB_FRAMES, video.shape[0])).long()
        metrics.images(step, f"validation/{name}", video[keep].float().clamp(0, 1))
        metrics.text(step, f"validation/{name}/prompt", f"{caption} ({path.name})")
        log.info("validation video: %s", path)
