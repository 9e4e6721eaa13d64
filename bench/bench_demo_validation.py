"""What a finished demo run shows: its held-out loss at the first and the last evaluation, and how close the
conditioned validation videos' first frames are to their held-out clip's.

Run in the demo's directory after `snakemake train` (or `make demo`), with the configs the run used:

    python bench/bench_demo_validation.py [--config FILE ...]

Prints one JSON line: per task, the held-out loss (mean over the σ of train.heldout_sigmas) at the first and
the last evaluation; for the last validation step, the PSNR (dB, 8-bit frames) of the first frame of each
held-out video against the clip as the VAE gives it back from its cached latents (`heldout-clip.mp4`),
the conditioned videos' clean leading frames likewise (null: identical), and the clip through the VAE
against the clip itself (its frames decoded from the source at the frame plan the metadata stored).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from longcat.config import load_config
from longcat.data.frames import decode_clip
from longcat.data.metadata import stored_plan
from longcat.paths import Layout
from longcat.report.training import read_tensorboard, validation_steps
from longcat.settings import load_settings
from longcat.train.tasks import TASKS
from longcat.vae_frames import video_frames


def read_video(path: Path) -> np.ndarray:
    """The frames of an mp4, uint8 [F, H, W, 3]."""
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """PSNR in dB of 8-bit frames; None for identical frames."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return None if mse == 0 else round(10 * math.log10(255**2 / mse), 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="*", default=[], help="config files over the embedded one")
    args = parser.parse_args(argv)
    settings = load_settings(load_config(*args.config))
    run = Layout.from_settings(settings).train_run

    scalars, captions = read_tensorboard(run.tensorboard)
    heldout = {}
    for task in TASKS:
        steps, values = scalars[f"heldout_loss/{task}/mean"]
        heldout[task] = {
            "first": {"step": int(steps[0]), "loss": round(float(values[0]), 4)},
            "last": {"step": int(steps[-1]), "loss": round(float(values[-1]), 4)},
        }

    step, videos = validation_steps(run.validation)[-1]
    folder = {video.stem: video for video in videos}
    clip_id = re.match(r"held-out clip (\S+)", captions[(step, "heldout-clip.mp4")]).group(1)
    through_vae = read_video(folder["heldout-clip"])
    rendered = {task: read_video(folder[f"heldout-{task}"]) for task in TASKS}
    metadata = {row["key"]: row for row in pq.read_table(Layout.from_settings(settings).metadata).to_pylist()}
    plan = stored_plan(metadata[clip_id], settings.frames)
    source = decode_clip(str(Path(settings.source.path, clip_id)), plan)
    clean = {"image_to_video": 1, "continuation": video_frames(max(settings.train.continuation_latents))}
    print(
        json.dumps(
            {
                "bench": "demo_validation",
                "heldout_loss": heldout,
                "validation_step": step,
                "clip": clip_id,
                "first_frame_psnr_db_to_the_clip_through_the_vae": {
                    task: psnr(video[0], through_vae[0]) for task, video in rendered.items()
                },
                "clean_frames_psnr_db_to_the_clip_through_the_vae": {
                    task: psnr(rendered[task][:count], through_vae[:count]) for task, count in clean.items()
                },
                "clip_through_the_vae_psnr_db_to_the_clip": psnr(through_vae, source),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
