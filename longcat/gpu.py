"""One GPU per job: a slot lock over the machine's GPU ids, since Snakemake never sets CUDA_VISIBLE_DEVICES.

A job takes the first free id among those it may use (a pre-set CUDA_VISIBLE_DEVICES, else every GPU the
driver lists) by holding an `fcntl` lock on a file named after the id, and then sees only that GPU. The
kernel drops the lock when the process dies, so a killed job never leaves a slot taken. Under Slurm each
allocation gets its own lock directory: a job that Slurm gave one GPU keeps it as it is, and jobs that
share one allocation (Snakemake run inside `salloc`) still split its GPUs between them.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Held for the life of the process: the lock is the file descriptor.
_held: dict[str, int] = {}


def candidate_gpus() -> list[str]:
    """GPU ids this process may use: a pre-set CUDA_VISIBLE_DEVICES, else what nvidia-smi lists."""
    preset = os.environ.get("CUDA_VISIBLE_DEVICES")
    if preset is not None:
        return [gpu.strip() for gpu in preset.split(",") if gpu.strip() and gpu.strip() != "-1"]
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.splitlines() if line.strip()]


def default_lock_dir() -> Path:
    allocation = os.environ.get("SLURM_JOB_ID", "local")
    return Path(tempfile.gettempdir(), f"longcat-gpu-slots-{os.getuid()}-{allocation}")


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def acquire_gpu(lock_dir: str | Path | None = None, poll_seconds: float = 2.0) -> str | None:
    """Take a free GPU slot for this process and return its id, or None when there is no GPU.

    Sets CUDA_VISIBLE_DEVICES to the chosen id, so call it before anything initialises CUDA. Waits while
    every slot is held by another job.
    """
    gpus = candidate_gpus()
    if not gpus:
        log.info("no GPU visible: running on CPU")
        return None
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for gpu in gpus:
            fd = _try_lock(lock_dir / f"gpu-{gpu}.lock")
            if fd is not None:
                _held[gpu] = fd
                os.environ["CUDA_VISIBLE_DEVICES"] = gpu
                log.info("GPU slot %s of %s (locks in %s)", gpu, ",".join(gpus), lock_dir)
                return gpu
        if not waited:
            log.info("all GPU slots (%s) are taken; waiting for one", ",".join(gpus))
            waited = True
        time.sleep(poll_seconds)


def job_device(lock_dir: str | Path | None = None):
    """The torch device of a one-GPU job: its own GPU slot, or the CPU when there is none."""
    gpu = acquire_gpu(lock_dir)
    import torch  # after CUDA_VISIBLE_DEVICES is set

    if gpu is None or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", 0)


def start_gpu_job(log_path: str, threads: int | None = None):
    """How a one-GPU job starts: stderr (tqdm, warnings, logging) into its log, its own GPU slot (before
    torch touches CUDA), and `threads` torch threads when given. Returns the job's torch device."""
    import sys

    sys.stderr = open(log_path, "w")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    device = job_device()
    if threads:
        import torch

        torch.set_num_threads(threads)
    return device
