"""GPU slot assignment across concurrent job processes (no GPU needed: the ids are what is assigned)."""

import os
import subprocess
import sys
import time

from longcat.gpu import acquire_gpu, candidate_gpus

# One job process: take a slot, report it, hold it until told to finish.
JOB = """
import pathlib, sys, time
from longcat.gpu import acquire_gpu
lock_dir, report, release = sys.argv[1:4]
gpu = acquire_gpu(lock_dir, poll_seconds=0.05)
pathlib.Path(report).write_text(f"{gpu},{__import__('os').environ['CUDA_VISIBLE_DEVICES']}")
while not pathlib.Path(release).exists():
    time.sleep(0.02)
"""


def start_job(tmp_path, name, env):
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            JOB,
            str(tmp_path / "locks"),
            str(tmp_path / f"{name}.txt"),
            str(tmp_path / "go"),
        ],
        env=env,
    )


def wait_for(paths, timeout=60):
    deadline = time.monotonic() + timeout
    while not all(path.exists() for path in paths):
        assert time.monotonic() < deadline, (
            f"jobs did not report: {[p.name for p in paths if not p.exists()]}"
        )
        time.sleep(0.05)


def test_eight_concurrent_jobs_get_eight_distinct_gpus_and_a_ninth_waits(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
    env.pop("SLURM_JOB_ID", None)
    jobs = [start_job(tmp_path, f"job{i}", env) for i in range(8)]
    try:
        reports = [tmp_path / f"job{i}.txt" for i in range(8)]
        wait_for(reports)
        assigned = [report.read_text().split(",") for report in reports]
        assert sorted(gpu for gpu, _ in assigned) == [str(i) for i in range(8)]
        # Each job then sees only its own GPU.
        assert all(gpu == visible for gpu, visible in assigned)

        ninth = start_job(tmp_path, "job8", env)
        time.sleep(1.0)
        assert not (tmp_path / "job8.txt").exists(), "a ninth job must wait while all 8 slots are held"
        jobs[3].kill()  # a killed job frees its slot: the kernel drops its lock
        jobs[3].wait()
        wait_for([tmp_path / "job8.txt"])
        assert (tmp_path / "job8.txt").read_text().split(",")[0] == assigned[3][0]
        jobs.append(ninth)
    finally:
        (tmp_path / "go").touch()
        for job in jobs:
            job.wait(timeout=60)


def test_preset_ids_are_the_candidates_and_no_gpu_means_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-a, GPU-b")
    assert candidate_gpus() == ["GPU-a", "GPU-b"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert acquire_gpu(tmp_path) is None


def test_jobs_of_different_slurm_allocations_keep_their_own_gpu(tmp_path):
    # Slurm gives each job its own GPU, numbered 0 inside the job: two jobs on one node must both keep it.
    jobs = []
    for allocation in ("101", "102"):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0", "SLURM_JOB_ID": allocation, "TMPDIR": str(tmp_path)}
        jobs.append(
            subprocess.Popen(
                [sys.executable, "-c", JOB.replace("acquire_gpu(lock_dir,", "acquire_gpu(None,"), "unused"]
                + [str(tmp_path / f"slurm{allocation}.txt"), str(tmp_path / "go")],
                env=env,
            )
        )
    try:
        reports = [tmp_path / "slurm101.txt", tmp_path / "slurm102.txt"]
        wait_for(reports)
        assert [report.read_text() for report in reports] == ["0,0", "0,0"]
    finally:
        (tmp_path / "go").touch()
        for job in jobs:
            job.wait(timeout=60)
