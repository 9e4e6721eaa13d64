"""Steps per second of the demo training on 2 CPU processes (gloo, FSDP2), and the data-wait fraction.

Builds the demo's caches and tiny base model with Snakemake in `--directory` (kept between runs), then
trains from them with the real launcher and reads the per-step timings back from TensorBoard. The first
steps (worker start, first all-gathers) are left out. Goal: data wait < 5% of step time.
One JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from longcat.config import load_config
from longcat.files import atomic_write_text
from longcat.paths import Layout
from longcat.settings import load_settings
from longcat.train.launch import launch_command
from longcat.train.record import run_config

REPO = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--directory", type=Path, default=Path(tempfile.gettempdir()) / "longcat-bench-train")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    work = args.directory.resolve()
    work.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    subprocess.run(
        [
            python,
            "-m",
            "snakemake",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(work),
            "cache",
            "base_model",
        ]
        + ["--cores", "2", "--quiet"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    # The schema's defaults take part in the cache keys, as they do in the workflow.
    config = load_config()
    for key in ("results", "cache_dir", "runs_dir"):
        config[key] = str(work / config[key])
    config["train"].update(
        run="bench",
        max_train_steps=args.steps,
        checkpointing_steps=10 * args.steps,
        validation_every_n_steps=0,
    )
    settings = load_settings(config)
    cfg = settings.train
    paths = Layout.from_settings(settings).train_run
    shutil.rmtree(paths.run_dir, ignore_errors=True)
    atomic_write_text(paths.train_config, yaml.safe_dump(run_config(settings), sort_keys=False))
    command = f"{launch_command(cfg, python)} --config {paths.train_config}"
    log = paths.run_dir / "train.log"
    with open(log, "w") as handle:
        subprocess.run(command, shell=True, check=True, stdout=handle, stderr=subprocess.STDOUT, cwd=work)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(paths.tensorboard), size_guidance={"scalars": 0})
    events.Reload()
    step_seconds = [event.value for event in events.Scalars("perf/step_seconds")][WARMUP_STEPS:]
    waits = [event.value for event in events.Scalars("perf/data_wait_fraction")][WARMUP_STEPS:]
    result = {
        "bench": "train_cpu",
        "processes": cfg.world_size,
        "steps_timed": len(step_seconds),
        "steps_per_second": round(1 / statistics.median(step_seconds), 2),
        "mean_step_seconds": round(statistics.mean(step_seconds), 4),
        "data_wait_fraction": round(statistics.mean(waits), 4),
        "data_wait_goal": 0.05,
    }
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
