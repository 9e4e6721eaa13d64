"""The pre-launch estimate on a metadata table the size of the real job: how long it takes, what it says.

Writes a synthetic `metadata.parquet` and `rejected.parquet` of 523,325 clips shaped like the real data
(mostly 5 s clips at 720p and 1080p, 24-30 fps, landscape with some portrait and square; some longer
ones, some short or odd ones; a few percent rejects), with the frame plans of `config/longcat-13b.yaml`
made by the real `frame_plan`. Then times `longcat.report.estimate.run_estimate` against the reference
way of counting (every row to Python, then `collections.Counter`) in the same run, and prints one JSON
line with both times and the key figures.

    python bench/bench_estimate.py                 # the real size
    python bench/bench_estimate.py --rows 20000    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from longcat.config import load_config
from longcat.data.frames import ClipRejected, frame_plan
from longcat.data.metadata import METADATA_SCHEMA, REJECTED_SCHEMA
from longcat.report.estimate import run_estimate
from longcat.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
# Reasons of the clips the probe rejects (the frame plan adds too_short): 2.2% of all clips.
PROBE_REJECTS = {"read_error": 0.004, "undecodable": 0.006, "missing_caption": 0.008, "too_small": 0.004}


def synthetic_clips(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Probe facts of `rows` clips: size, rate and duration drawn as the real data falls."""
    rng = np.random.default_rng(seed)
    size = rng.choice(3, rows, p=[0.55, 0.40, 0.05])  # 720p, 1080p, 480p
    short_side = np.array([720, 1080, 480])[size]
    long_side = np.array([1280, 1920, 854])[size]
    shape = rng.choice(3, rows, p=[0.82, 0.13, 0.05])  # landscape, portrait, square
    width = np.where(shape == 0, long_side, short_side)
    height = np.where(shape == 1, long_side, short_side)
    fps = rng.choice([24.0, 25.0, 30.0, 29.97, 60.0], rows, p=[0.3, 0.2, 0.35, 0.1, 0.05])
    kind = rng.choice(4, rows, p=[0.80, 0.10, 0.06, 0.04])  # 5 s, long, short, very short
    duration = np.select(
        [kind == 0, kind == 1, kind == 2],
        [
            np.full(rows, 5.0),
            np.round(rng.uniform(6.2, 10.0, rows), 1),
            np.round(rng.uniform(3.3, 4.8, rows), 1),
        ],
        np.round(rng.uniform(0.5, 3.2, rows), 1),
    )
    return {"width": width, "height": height, "fps": fps, "duration": duration}


def write_tables(work: Path, rows: int, settings) -> tuple[Path, Path]:
    """metadata.parquet and rejected.parquet as the `metadata` rule would write them."""
    clips = synthetic_clips(rows)
    keys = np.array([f"videos/{index // 1000:04d}/clip-{index:07d}.mp4" for index in range(rows)])
    probe_reason = np.random.default_rng(1).choice(
        [*PROBE_REJECTS, ""], rows, p=[*PROBE_REJECTS.values(), 1 - sum(PROBE_REJECTS.values())]
    )
    # The real frame plan, once per distinct (width, height, fps, duration).
    facts = np.stack([clips["width"], clips["height"], clips["fps"], clips["duration"]], axis=1)
    distinct, inverse = np.unique(facts, axis=0, return_inverse=True)
    plans = []
    for width, height, fps, duration in distinct:
        row = {"width": int(width), "height": int(height), "fps": fps, "duration": duration}
        try:
            plan = frame_plan(row, settings.frames)
            plans.append((plan.num_frames, plan.fps, plan.time_stretch, plan.height, plan.width, ""))
        except ClipRejected:
            plans.append((0, 0.0, 0.0, 0, 0, "too_short"))
    plan_columns = [np.array(column)[inverse.ravel()] for column in zip(*plans, strict=True)]
    reason = np.where(probe_reason != "", probe_reason, plan_columns[5])
    accepted = reason == ""
    frame_count = np.round(clips["fps"] * clips["duration"]).astype(np.int64)
    columns = {
        "key": keys[accepted],
        "caption_key": np.char.replace(keys[accepted], ".mp4", ".txt"),
        "width": clips["width"][accepted],
        "height": clips["height"][accepted],
        "aspect_ratio": (clips["width"] / clips["height"])[accepted],
        "fps": clips["fps"][accepted],
        "num_frames": frame_count[accepted],
        "duration": clips["duration"][accepted],
        "codec": np.full(accepted.sum(), "h264"),
        "container": np.full(accepted.sum(), "mp4"),
        "caption": np.full(accepted.sum(), "A person walks along a beach at sunset while waves roll in."),
        "frame_count": frame_count[accepted],
        "plan_num_frames": plan_columns[0][accepted],
        "plan_fps": plan_columns[1][accepted],
        "plan_time_stretch": plan_columns[2][accepted],
        "plan_height": plan_columns[3][accepted],
        "plan_width": plan_columns[4][accepted],
        "filename": keys[accepted],
    }
    metadata = pa.Table.from_arrays(
        [
            pa.array(columns[field.name], type=field.type)
            if field.name in columns
            else pa.nulls(int(accepted.sum()), field.type)
            for field in METADATA_SCHEMA
        ],
        schema=METADATA_SCHEMA,
    )
    rejects = ~accepted
    rejected = pa.table(
        {
            "key": keys[rejects],
            "caption_key": np.char.replace(keys[rejects], ".mp4", ".txt"),
            "etag": pa.nulls(int(rejects.sum()), pa.string()),
            "size": pa.nulls(int(rejects.sum()), pa.int64()),
            "reason": reason[rejects],
            "detail": np.full(rejects.sum(), "synthetic"),
        },
        schema=REJECTED_SCHEMA,
    )
    pq.write_table(metadata, work / "metadata.parquet")
    pq.write_table(rejected, work / "rejected.parquet")
    return work / "metadata.parquet", work / "rejected.parquet"


def reference_counts(metadata_path: Path, rejected_path: Path) -> tuple[Counter, Counter, float]:
    """The reference way: every row to Python, then Counter."""
    rows = pq.read_table(metadata_path).to_pylist()
    plans = Counter((row["plan_num_frames"], row["plan_height"], row["plan_width"]) for row in rows)
    seconds = sum(row["duration"] for row in rows)
    reasons = Counter(row["reason"] for row in pq.read_table(rejected_path).to_pylist())
    return plans, reasons, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=523_325)
    args = parser.parse_args()
    settings = load_settings(load_config(REPO / "config" / "longcat-13b.yaml"))
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        started = time.perf_counter()
        metadata_path, rejected_path = write_tables(work, args.rows, settings)
        setup_s = time.perf_counter() - started

        started = time.perf_counter()
        reference_counts(metadata_path, rejected_path)
        reference_s = time.perf_counter() - started

        started = time.perf_counter()
        text = run_estimate(
            metadata_path,
            rejected_path,
            settings.cache,
            settings.train,
            settings.estimate,
            settings.base_model,
            work / "no-base-model",
            work / "estimate.json",
            work / "estimate.txt",
        )
        estimate_s = time.perf_counter() - started
        report = json.loads((work / "estimate.json").read_text())
    clips, disk, cache, train = report["clips"], report["disk"], report["cache_time"], report["training"]
    result = {
        "bench": "estimate",
        "rows": args.rows,
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "setup_s": round(setup_s, 2),
        "estimate_s": round(estimate_s, 3),
        "reference_count_s": round(reference_s, 3),
        "speedup_vs_reference": round(reference_s / estimate_s, 1),
        "accepted": clips["accepted"],
        "rejected_by_reason": clips["rejected_by_reason"],
        "by_frames": clips["by_frames"],
        "source_hours": round(clips["source_hours"], 1),
        "vae_cache_tb": round(disk["vae_cache_bytes"] / 1e12, 3),
        "text_cache_tb_at_most": round(disk["text_cache_bytes_at_most"] / 1e12, 3),
        "checkpoint_gb": round(disk["checkpoint_bytes"] / 1e9, 1),
        "vae_gpu_hours": round(cache["vae_gpu_hours"], 1),
        "vae_wall_hours": round(cache["vae_wall_hours"], 1),
        "text_gpu_hours": round(cache["text_gpu_hours"], 1),
        "assumed_mfu": train["assumed_mfu"],
        "mean_step_seconds": round(train["mean_step_seconds"], 2),
        "pass_hours": round(train["pass_hours"], 1),
        "run_hours": round(train["run_hours"], 1),
        "run_gpu_hours": round(train["run_gpu_hours"], 0),
        "passes": round(train["passes"], 3),
        "figures": {
            "vae_clips_per_s": cache["vae_clips_per_s"],
            "text_captions_per_s": cache["text_captions_per_s"],
            "gpus": report["gpus"],
        },
    }
    print(json.dumps(result))
    print(text, file=sys.stderr)


if __name__ == "__main__":
    main()
