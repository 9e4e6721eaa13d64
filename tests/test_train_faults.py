"""Faults and background work of training: asynchronous checkpoints, and a rank that dies mid-run.

Real gloo process groups, FSDP2, DCP and the real launcher (`accelerate launch`, torchrun underneath)
over a real on-disk cache; the one rank is killed with a real SIGKILL, as the kernel's OOM killer would.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from conftest import free_port, workflow_settings
from test_train_loop import MemoryCache, train_config

REPO = Path(__file__).resolve().parents[1]


def _async_worker(rank: int, world_size: int, port: int, root: str) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from longcat.paths import checkpoint_dirs
    from longcat.train.checkpoint import Checkpointer, load_model_weights_offline

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Linear(256, 64))
    fully_shard(model, mesh=init_device_mesh("cpu", (world_size,)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    checkpointer = Checkpointer(root, keep_last=2, asynchronous=True, timeout=datetime.timedelta(seconds=60))
    assert checkpointer.asynchronous

    saved = {}
    for step in (1, 2, 3):
        model(torch.randn(8, 64)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        saved[step] = {name: value.full_tensor().clone() for name, value in model.state_dict().items()}
        checkpointer.save(step, model, optimizer, {"step": step})
        # Training goes on while the checkpoint is written: the weights change in place and the
        # default group carries collectives beside the checkpoint's own group.
        assert checkpointer.pending is not None
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(1.0)
        for _ in range(20):
            dist.all_reduce(torch.ones(1000))
    checkpointer.wait()
    assert checkpointer.pending is None

    if rank == 0:
        root = Path(root)
        assert [path.name for path in checkpoint_dirs(root)] == ["step-2", "step-3"]
        assert not list(root.glob("*.partial")), "a finished save leaves no .partial directory"
        for step in (2, 3):
            plain = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Linear(256, 64))
            load_model_weights_offline(root / f"step-{step}", plain)
            for name, value in plain.state_dict().items():
                torch.testing.assert_close(value, saved[step][name], rtol=0, atol=0)
    dist.destroy_process_group()


def test_async_checkpoints_hold_the_state_of_their_step_and_prune(tmp_path):
    """The staged copy is the step's state, not what training changes while the write goes on."""
    mp.spawn(_async_worker, args=(2, free_port(), str(tmp_path / "checkpoints")), nprocs=2, join=True)


def write_cache(root: Path) -> tuple[Path, Path]:
    """The MemoryCache samples as an on-disk VAE and text cache, as `snakemake cache` lays them out."""
    from longcat.cache.format import TEXT_INDEX_SCHEMA, VAE_INDEX_SCHEMA
    from longcat.cache.spec import cache_key, write_spec
    from longcat.cache.writer import ShardWriter, write_empty_text
    from longcat.paths import CacheLayout

    memory = MemoryCache()
    dirs = []
    for kind, schema in (("vae", VAE_INDEX_SCHEMA), ("text", TEXT_INDEX_SCHEMA)):
        spec = {"kind": kind, "test": "faults"} | (
            {"max_tokens": memory.max_tokens} if kind == "text" else {}
        )
        directory = root / kind / cache_key(spec)
        directory.mkdir(parents=True)
        write_spec(directory / "spec.json", spec)
        metadata = {"cache_key": directory.name}
        writer = ShardWriter(CacheLayout(directory), "00000", schema, metadata)
        for sample in memory.samples:
            row = {"sample_id": sample.sample_id, "status": "ok", "reason": ""}
            if kind == "vae":
                row.update(num_frames=5, fps=8.0, bucket_height=32, bucket_width=48)
                row["latent_shape"] = list(sample.latent_shape)
                writer.add(row, memory.latent(sample.sample_id))
            else:
                writer.add(row | {"text_len": sample.text_len}, memory.text(sample.sample_id))
        writer.finish(sample.sample_id for sample in memory.samples)
        if kind == "text":
            write_empty_text(directory / "empty.safetensors", memory.empty_text(), metadata)
        dirs.append(directory)
    return dirs[0], dirs[1]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def training_process(launcher: int, rank: int) -> int | None:
    """The training process of `rank` (not one of its loader workers, which share its environment)."""
    tagged = set()
    for pid in descendants(launcher):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            tagged.add(pid)
    ranks = [pid for pid in tagged if int(Path(f"/proc/{pid}/stat").read_text().split()[3]) not in tagged]
    return ranks[0] if len(ranks) == 1 else None


def launch(work: Path, base_model: Path, vae: Path, text: Path, **train) -> subprocess.Popen:
    import dataclasses

    from longcat.train.launch import launch_command
    from longcat.train.record import run_config

    cfg = train_config(**train)
    config = run_config(dataclasses.replace(workflow_settings(), train=cfg))
    config_file = work / f"train-{cfg.max_train_steps}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    command = launch_command(cfg, sys.executable)
    command += (
        f" --config {config_file} --run-dir {work / 'run'} --base-model {base_model}"
        f" --vae-cache {vae} --text-cache {text}"
    )
    log = open(work / "train.log", "a")  # noqa: SIM115 - the process owns it until it ends
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, shell=True, stdout=log, stderr=subprocess.STDOUT, cwd=work, env=env)


def test_a_dead_rank_fails_the_launcher_fast_and_the_rerun_resumes(tmp_path, train_base_model):
    from longcat.paths import latest_checkpoint

    vae, text = write_cache(tmp_path / "cache")
    checkpoints = tmp_path / "run" / "checkpoints"
    job = launch(tmp_path, train_base_model, vae, text, max_train_steps=100_000, checkpointing_steps=3)
    try:
        deadline = time.monotonic() + 120
        while (checkpoints / "step-3").is_dir() is False:
            assert job.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.2)
        victim, survivor = training_process(job.pid, rank=1), training_process(job.pid, rank=0)
        assert victim is not None and survivor is not None, "training processes not found"
        os.kill(victim, 9)
        killed = time.monotonic()
        code = job.wait(timeout=90)
        took = time.monotonic() - killed
    finally:
        if job.poll() is None:
            for pid in [*descendants(job.pid), job.pid]:
                os.kill(pid, 9)
    log = (tmp_path / "train.log").read_text()
    assert code != 0, log[-3000:]
    assert took < 60, f"the launcher took {took:.0f} s to fail after rank 1 died"
    assert not Path(f"/proc/{survivor}").exists(), "rank 0 outlived the launcher"

    last = latest_checkpoint(checkpoints)
    resumed_at = int(last.name.removeprefix("step-"))
    assert resumed_at >= 3
    rerun = launch(
        tmp_path, train_base_model, vae, text, max_train_steps=resumed_at + 2, checkpointing_steps=3
    )
    assert rerun.wait(timeout=300) == 0, (tmp_path / "train.log").read_text()[-3000:]
    log = (tmp_path / "train.log").read_text()
    assert f"resumed from {last} at step {resumed_at}" in log
    assert (tmp_path / "run" / "train.done").read_text() == f"step {resumed_at + 2}\n"
    assert not list(checkpoints.glob("*.partial")), "the rerun removes the dead run's partial checkpoint"


class BrokenCache(MemoryCache):
    def latent(self, sample_id):
        raise ValueError(f"{sample_id}: truncated latent")


def test_a_loader_error_reaches_the_step_and_positions_count_only_batches_handed_over():
    from longcat.train.data import TrainLoader

    loader = TrainLoader(MemoryCache(), 1, 1, 0, seed=3, num_workers=1, prefetch_batches=2)
    batches = iter(loader)
    first = [next(batches)["sample_ids"] for _ in range(3)]
    assert loader.state_dict()["position"] == 3, "batches taken in ahead are not consumed"
    again = TrainLoader(MemoryCache(), 1, 1, 0, seed=3, num_workers=0)
    again.load_state_dict({"epoch": 0, "position": 2, "num_samples": 8})
    assert next(iter(again))["sample_ids"] == first[2]

    with pytest.raises(ValueError, match="truncated latent"):
        next(iter(TrainLoader(BrokenCache(), 1, 1, 0, seed=3, num_workers=1)))


def test_loader_workers_outlive_a_sigterm_sent_to_the_whole_job():
    # Slurm's hard preemption (`scontrol requeue`, a time limit without `--signal`) sends SIGTERM to
    # every process of the job step, loader workers included. The training process saves a checkpoint
    # at the end of its step (its own handler stands in here); its workers must still be serving it.
    import signal

    import psutil

    from longcat.train.data import TrainLoader

    before = {child.pid for child in psutil.Process().children()}
    batches = iter(TrainLoader(MemoryCache(), 1, 1, 0, seed=3, num_workers=2, prefetch_batches=2))
    for _ in range(4):  # batches alternate between the workers: both have started
        next(batches)
    workers = [child for child in psutil.Process().children() if child.pid not in before]
    assert len(workers) == 2, workers
    trainer_handler = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        # From another process, as Slurm's: a SIGTERM from the training process itself ends a worker.
        subprocess.run(["kill", "-TERM", *(str(worker.pid) for worker in workers)], check=True)
        time.sleep(1)
        assert all(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE for worker in workers)
        assert len([next(batches) for _ in range(12)]) == 12
    finally:
        signal.signal(signal.SIGTERM, trainer_handler)


LEFT_OPEN = """
import sys
sys.path.insert(0, sys.argv[1])
from test_train_faults import BrokenCache
from longcat.train.data import TrainLoader

try:
    next(iter(TrainLoader(BrokenCache(), 1, 1, 0, seed=3, num_workers=2)))
except ValueError as error:
    kept = error  # its traceback keeps the loader, hence its workers, alive until exit
print("exiting", flush=True)
"""


def test_a_process_that_leaves_a_loader_open_still_exits():
    # Workers that ignore SIGTERM must not keep their training process from exiting after an error:
    # multiprocessing's exit handler stops them with SIGTERM, then waits for them.
    result = subprocess.run(
        [sys.executable, "-c", LEFT_OPEN, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "exiting" in result.stdout, result.stderr[-2000:]


# ---------------------------------------------------------------- a full disk


@contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of `size` mounted at `path`, unmounted after: a disk that fills up for real. Mounting needs
    root (as in CI); elsewhere the test is skipped with the reason."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({mounted.stderr.strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill(directory: Path) -> None:
    """Take every byte left on the filesystem of `directory`."""
    with open(directory / "filler", "wb", buffering=0) as filler:
        try:
            while filler.write(bytes(4096)):
                pass
        except OSError:
            pass


@pytest.fixture(scope="module")
def small_run(train_base_model, tmp_path_factory):
    """The tiny base model and on-disk caches of one-process runs (read-only for the tests using them)."""
    return train_base_model, *write_cache(tmp_path_factory.mktemp("small-run"))


def test_a_full_checkpoint_disk_stops_the_run_at_the_next_step_naming_the_last_checkpoint(
    tmp_path, small_run
):
    """A tiny model's checkpoint takes 3.1 MB (without a weight average): a 4.5 MB disk holds the one of
    step 4, not the one of step 8 beside it. Written in the background, the save of step 8 fails while
    training goes on: the run stops at the first step after, not at the next save (step 12), naming the
    path, the missing space and the checkpoint to resume from."""
    checkpoints = tmp_path / "run" / "checkpoints"
    with small_disk(checkpoints, "4500k"):
        job = launch(
            tmp_path,
            *small_run,
            num_processes=1,
            max_train_steps=16,
            checkpointing_steps=4,
            checkpoints_total_limit=1,
            async_checkpoint=True,
            ema_decay=None,
        )
        code = job.wait(timeout=300)
    log = (tmp_path / "train.log").read_text()
    assert code != 0 and "(exitcode: 74)" in log, log[-3000:]
    stopped = re.search(
        rf"training stopped at step (\d+): writing checkpoint step-8 to {checkpoints}/step-8.partial "
        rf"failed: no space left on device \([\d,]+ bytes free.*\)\. the last complete checkpoint is "
        rf"{checkpoints}/step-4: make room",
        log,
    )
    assert stopped, log[-3000:]
    assert int(stopped[1]) in (9, 10, 11), stopped[0]
    assert "unexpected pos" not in log.split("training stopped")[0]


def test_a_full_runs_disk_stops_the_run_naming_tensorboards_path(tmp_path, small_run):
    """runs_dir's disk fills while training: the next step's TensorBoard events cannot be written, and the
    run stops at that step naming the event directory and the missing space."""
    tb = tmp_path / "run" / "tb"
    with small_disk(tb, "1m"):
        job = launch(
            tmp_path, *small_run, num_processes=1, max_train_steps=100_000, checkpointing_steps=100_000
        )
        try:
            deadline = time.monotonic() + 120
            while not any(tb.glob("events.out.tfevents.*")):
                assert job.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "train.log"
                ).read_text()
                time.sleep(0.2)
            fill(tb)
            code = job.wait(timeout=120)
        finally:
            if job.poll() is None:
                for pid in [*descendants(job.pid), job.pid]:
                    os.kill(pid, 9)
    log = (tmp_path / "train.log").read_text()
    assert code != 0 and "(exitcode: 74)" in log, log[-3000:]
    assert re.search(
        rf"training stopped at step \d+: writing TensorBoard events at step \d+ to {tb} failed: no space "
        rf"left on device \([\d,]+ bytes free\)\. there is no complete checkpoint yet: make room",
        log,
    ), log[-3000:]


def test_a_log_on_a_full_disk_fails_the_call_that_logged_naming_the_file(tmp_path):
    from longcat.files import WriteFailed
    from longcat.train.metrics import LogHandler

    with small_disk(tmp_path / "logs", "64k") as logs:
        stream = open(logs / "train.log", "w")  # noqa: SIM115 - closed below, where its flush fails too
        logger = logging.getLogger("longcat.test.full_disk")
        logger.addHandler(LogHandler(stream))
        try:
            fill(logs)
            with pytest.raises(WriteFailed) as raised:
                logger.error("a line that does not fit")
        finally:
            logger.handlers.clear()
            with suppress(OSError):
                stream.close()
    assert str(raised.value).startswith(
        f"writing the log to {logs}/train.log failed: no space left on device"
    )
