"""A run does what its config says, on copies of the trained demo and real `snakemake` invocations: a
changed learning rate applies from the resumed step, a change of what shapes the weights is refused with
old -> new, a finished run continues only when its steps are raised, `train.init_from` starts a new run
from another run's weights, and the 13.6B dry run in the demo's checkout reads the 13.6B model."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_snakemake

pytestmark = pytest.mark.slow


def copy_of(trained_demo: Path, tmp_path: Path) -> Path:
    work = tmp_path / "demo"
    shutil.copytree(trained_demo, work, symlinks=True)
    return work


def scalars(run: Path, tag: str) -> dict[int, float]:
    """A TensorBoard scalar by step, as TensorBoard shows it (a resumed run's steps replace those an
    earlier attempt logged after its checkpoint)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {event.step: event.value for event in events.Scalars(tag)}


def record(run: Path) -> dict:
    return yaml.safe_load((run / "final" / "training.yaml").read_text())


def stop_after_checkpoint(run: Path, step: int) -> None:
    """The run as a job stopped after its step-`step` checkpoint leaves it (preempted, say)."""
    for path in (run / "checkpoints").iterdir():
        if int(path.name.removeprefix("step-")) > step:
            shutil.rmtree(path)
    shutil.rmtree(run / "final")
    (run / "train.done").unlink()


def test_a_changed_learning_rate_applies_from_the_resumed_step(trained_demo, tmp_path):
    work = copy_of(trained_demo, tmp_path)
    run = work / "runs" / "demo"
    stop_after_checkpoint(run, 120)
    run_snakemake(work, "train", config={"train": {"learning_rate": 1.0e-6}})

    lr = scalars(run, "train/lr")
    assert sorted(lr) == list(range(1, 161))
    assert lr[120] == pytest.approx(3e-3)
    assert all(lr[step] == pytest.approx(1e-6) for step in range(121, 161))
    segments = record(run)["segments"]
    assert [(s["from_step"], s["to_step"]) for s in segments] == [(0, 120), (120, 160)]
    assert segments[-1]["changed"] == {"train.learning_rate": [0.003, 1.0e-6]}
    log = (run / "logs" / "train.log").read_text()
    assert "applied from step 121 on: train.learning_rate 0.003 -> 1e-06" in log
    assert yaml.safe_load((run / "train_config.yaml").read_text())["train"]["learning_rate"] == 1.0e-6


def test_a_change_of_what_shapes_the_weights_is_refused_before_any_job(trained_demo, tmp_path):
    work = copy_of(trained_demo, tmp_path)
    run = work / "runs" / "demo"
    stop_after_checkpoint(run, 120)
    result = run_snakemake(work, "train", config={"train": {"seed": 7}}, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert output.count("train.seed: 42 -> 7") == 1, output[-3000:]
    assert "set train.run to a new name (e.g. demo-2)" in output
    # No job ran: the run's config is the one it trained with.
    assert yaml.safe_load((run / "train_config.yaml").read_text())["train"]["seed"] == 42

    # The train job holds to the same rule when started by hand: one message, exit status 2.
    config = yaml.safe_load((run / "train_config.yaml").read_text())
    config["train"]["seed"] = 7
    changed = tmp_path / "train_config.yaml"
    changed.write_text(yaml.safe_dump(config))
    from longcat.settings import load_run_settings
    from longcat.train.launch import launch_command

    command = launch_command(load_run_settings(config).train, sys.executable) + f" --config {changed}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    started = subprocess.run(
        shlex.split(command), cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert started.returncode != 0
    assert (started.stdout + started.stderr).count("train.seed: 42 -> 7") == 1


def test_a_finished_run_continues_when_its_steps_are_raised_and_refuses_anything_else(trained_demo, tmp_path):
    work = copy_of(trained_demo, tmp_path)
    run = work / "runs" / "demo"

    refused = run_snakemake(work, "train", config={"train": {"learning_rate": 1.0e-6}}, check=False)
    assert refused.returncode != 0
    assert "finished at step 160" in refused.stdout + refused.stderr
    assert (run / "final" / "dit").is_dir() and (run / "train.done").is_file()  # nothing was deleted

    run_snakemake(work, "train", config={"train": {"max_train_steps": 180}})
    assert max(scalars(run, "train/loss")) == 180
    assert record(run)["step"] == 180
    assert (run / "checkpoints" / "step-180").is_dir()
    assert record(run)["segments"][-1]["changed"] == {"train.max_train_steps": [160, 180]}


def test_init_from_starts_a_new_run_from_another_runs_weights(trained_demo, tmp_path):
    work = copy_of(trained_demo, tmp_path)
    new = {"run": "from-demo", "init_from": "demo", "max_train_steps": 10, "validation_every_n_steps": 0}
    run_snakemake(work, "train", config={"train": new})
    run = work / "runs" / "from-demo"
    made = record(run)
    assert made["init_from"] == {"model": "runs/demo/final", "run": "demo", "step": 160}
    assert made["segments"][0]["from_step"] == 0 and made["step"] == 10
    # Step 1 starts from weights that have learnt the clips: its loss is far below the base model's.
    first = [scalars(path, "train/loss") for path in (work / "runs" / "demo", run)]
    base, started = (sum(losses[step] for step in range(1, 6)) / 5 for losses in first)
    assert started < 0.6 * base, (base, started)


def test_the_real_jobs_dry_run_in_the_demos_checkout_reads_the_published_model(trained_demo):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "longcat.train",
            "--config",
            str(REPO / "config" / "longcat-13b.yaml"),
            "--dry-run",
        ],
        cwd=trained_demo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["dit_config"].startswith("the published 13.6B config")
    assert report["estimates"]["h100"]["parameters"] == 13_581_071_424
    assert 10 < report["estimates"]["h100"]["step_seconds"] < 20
