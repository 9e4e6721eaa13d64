"""`snakemake train -c 2` on the demo from a clean directory: data stage, caches, FSDP2 on 2 gloo processes,
checkpoints, TensorBoard, validation video, export; then the `export` target, a dry run and bad caches."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PYTHON_BIN = str(Path(sys.executable).parent)

pytestmark = pytest.mark.slow


def snakemake(directory: Path, *targets: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{PYTHON_BIN}{os.pathsep}{os.environ['PATH']}"}
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(directory),
    ]
    return subprocess.run(
        [*command, *targets, "--cores", "2"],
        env=env,
        check=check,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def demo(trained_demo) -> Path:
    """The demo after `snakemake train` (conftest's session fixture, shared with tests/test_report.py)."""
    return trained_demo


def test_demo_trains_checkpoints_logs_validates_and_exports(demo):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = demo / "runs" / "demo"
    assert (run / "train.done").is_file()
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    losses = [event.value for event in events.Scalars("train/loss")]
    assert len(losses) == 160
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert last <= 0.5 * first, f"loss fell from {first:.3f} to {last:.3f}, less than 50%"
    for tag in ("train/lr", "train/grad_norm", "perf/tokens_per_second", "perf/data_wait_fraction"):
        assert events.Scalars(tag)
    assert events.Tags()["images"]

    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["step-120", "step-160"]
    assert all((run / "checkpoints" / name / ".metadata").is_file() for name in checkpoints)

    video = run / "validation" / "step-160" / "video-00.mp4"
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(video), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    )
    assert len(decoded.stdout) > 0 and not decoded.stderr

    from longcat.pipeline import LongCatVideoPipeline

    pipeline = LongCatVideoPipeline.from_pretrained(run / "final")
    frames = pipeline(
        "a red square moving across a blue background",
        num_frames=9,
        height=64,
        width=112,
        num_inference_steps=2,
        output_type="pt",
    ).frames
    assert frames.shape == (1, 9, 3, 64, 112) and torch.isfinite(frames).all()


def test_export_target_writes_the_latest_checkpoint_and_nothing_reruns(demo):
    from safetensors.torch import load_file

    snakemake(demo, "export")
    run = demo / "runs" / "demo"
    exported = load_file(run / "exports" / "step-160" / "dit" / "diffusion_pytorch_model.safetensors")
    final = load_file(run / "final" / "dit" / "diffusion_pytorch_model.safetensors")
    assert exported.keys() == final.keys()
    for name in final:
        torch.testing.assert_close(exported[name], final[name], rtol=0, atol=0)
    assert "Nothing to be done" in snakemake(demo, "train", "-n").stdout


def run_cli(demo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "longcat.train", "--config", "runs/demo/train_config.yaml", *args],
        cwd=demo,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dry_run_counts_buckets_and_estimates(demo):
    result = run_cli(demo, "--dry-run")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["data"]["ready"] and report["data"]["samples"] == sum(report["data"]["buckets"].values())
    assert report["estimates"]["h100"]["fits"]
    assert "s/step" in result.stdout


def test_truncated_cache_shard_fails_before_training_naming_the_file(demo, tmp_path):
    vae = next((demo / "cache" / "vae").iterdir())
    broken = tmp_path / vae.name
    shutil.copytree(vae, broken)
    shard = sorted(broken.glob("shard-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    result = run_cli(demo, "--vae-cache", str(broken), "--run-dir", str(tmp_path / "run"))
    assert result.returncode != 0
    assert shard.name in result.stderr
    assert not (tmp_path / "run" / "tb").exists()


def test_usr1_to_the_launcher_saves_a_checkpoint_and_stops_every_process(demo, tmp_path):
    import shlex
    import signal
    import time

    import yaml

    from longcat.paths import latest_checkpoint
    from longcat.settings import load_run_settings
    from longcat.train.launch import launch_command

    config = yaml.safe_load((demo / "runs" / "demo" / "train_config.yaml").read_text())
    config["train"].update(max_train_steps=100_000, validation_every_n_steps=0)
    config_file = tmp_path / "train_config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    command = launch_command(load_run_settings(config).train, sys.executable)
    command += f" --config {config_file} --run-dir {run}"
    env = {**os.environ, "PATH": f"{PYTHON_BIN}{os.pathsep}{os.environ['PATH']}"}
    with open(tmp_path / "train.log", "w") as log:
        launcher = subprocess.Popen(
            shlex.split(command), cwd=demo, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 180
        while not (run / "tb").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3)
        # Slurm's `--signal=USR1@N` reaches the launcher; it must reach the training processes too.
        launcher.send_signal(signal.SIGUSR1)
        assert launcher.wait(timeout=300) != 0
    text = (tmp_path / "train.log").read_text()
    assert "stopped by signal" in text
    assert latest_checkpoint(run / "checkpoints") is not None
    leftovers = [
        path for path in Path("/proc").glob("[0-9]*/cmdline") if str(run).encode() in _read_or_empty(path)
    ]
    assert not leftovers, "training processes outlived their launcher"


def _read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
