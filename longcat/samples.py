"""The `sample` rule: what it renders (`sample_settings`, plain values for its params) and rendering it
with the finetuned model (`render_samples`, through `longcat.pipeline.LongCatVideoPipeline`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from longcat.files import write_dir_atomically
from longcat.settings import Frames, Sample
from longcat.vae_frames import video_frames

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def sample_settings(sample: Sample, frames: Frames, seed: int) -> dict:
    """What the `sample` rule renders: `sample`'s prompts at the first resolution bucket and `frames`'
    frame rate, `sample.num_frames` frames (None: the largest count the run trained, see
    `trained_num_frames`), prompt i with seed `seed + i` (train.seed). Plain values, so that Snakemake
    reruns the rule when one changes. Captions are padded to the length the model records."""
    from longcat.data.buckets import resolution_buckets

    height, width = resolution_buckets(frames)[0]
    return {
        "prompts": list(sample.prompts),
        "num_frames": sample.num_frames,
        "height": height,
        "width": width,
        "fps": frames.fps,
        "num_inference_steps": sample.num_inference_steps,
        "guidance_scale": sample.guidance_scale,
        "seed": seed,
    }


def trained_num_frames(model_dir: str | Path, temporal: int) -> int:
    """The largest frame count a finetuned model trained on: its record (`training.yaml`) counts the
    training samples per latent frame count, `temporal` frames per latent frame after the first."""
    from longcat.train.record import EXPORTED_RECORD_FILE, read_record

    record = read_record(model_dir, EXPORTED_RECORD_FILE)
    trained_counts = ((record or {}).get("data") or {}).get("latent_frames")
    if not trained_counts:
        raise ValueError(
            f"sample.num_frames: expected a frame count, or a model whose {EXPORTED_RECORD_FILE} counts the "
            f"samples it trained per latent frame count; {Path(model_dir)} has none: set sample.num_frames"
        )
    return video_frames(max(int(count) for count in trained_counts), temporal)


def render_samples(
    model_dir: str | Path,
    out_dir: str | Path,
    settings: Mapping,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> list[Path]:
    """Write one mp4 per prompt of `settings` (see `sample_settings`) into `out_dir`, plus `prompts.json`,
    with the model in `dtype` (float32 by default).

    Prompt i uses seed `settings["seed"] + i`. `out_dir` appears complete or not at all.
    """
    import torch

    from longcat.pipeline import LongCatVideoPipeline
    from longcat.video_io import write_mp4

    pipe = LongCatVideoPipeline.from_pretrained(model_dir, torch_dtype=dtype or torch.float32, device=device)
    num_frames = settings["num_frames"] or trained_num_frames(model_dir, pipe.vae_scale_factor_temporal)
    written = {}

    def fill(tmp: Path) -> None:
        for index, prompt in enumerate(settings["prompts"]):
            generator = torch.Generator(device=device).manual_seed(settings["seed"] + index)
            frames = pipe(
                prompt,
                num_frames=num_frames,
                height=settings["height"],
                width=settings["width"],
                num_inference_steps=settings["num_inference_steps"],
                guidance_scale=settings["guidance_scale"],
                generator=generator,
            ).frames[0]
            name = f"sample-{index:02d}.mp4"
            write_mp4(frames, tmp / name, fps=settings["fps"])
            written[name] = prompt
            logger.info("%s: %s (%d frames)", name, prompt, num_frames)
        (tmp / "prompts.json").write_text(json.dumps(written, indent=2, ensure_ascii=False) + "\n")

    out_dir = write_dir_atomically(Path(out_dir), fill)
    return [out_dir / name for name in written]
