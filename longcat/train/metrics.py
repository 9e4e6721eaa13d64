"""What a run reports: TensorBoard scalars and videos, a progress bar with ETA, and log lines (rank 0).

A report that cannot be written stops the run at the step that wrote it, with a WriteFailed naming the
path (and "no space left on device" when its disk is full): TensorBoard's events are written out at
every step, and the log's own writes fail the call that logged (`LogHandler`).
"""

from __future__ import annotations

import logging
import os
import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from longcat.files import write_failed
from longcat.train.objective import sigma_bucket
from longcat.train.tasks import TASKS

log = logging.getLogger(__name__)


def stream_path(stream) -> str:
    """The file a stream writes to (the training log, when standard error is redirected), for messages."""
    try:
        return os.readlink(f"/proc/self/fd/{stream.fileno()}")
    except (OSError, ValueError, AttributeError):
        return getattr(stream, "name", "the log stream")


class LogHandler(logging.StreamHandler):
    """A log stream whose failed write stops the caller with a WriteFailed naming the file, instead of
    logging's "--- Logging error ---" to the same full disk and going on without a log."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            super().handleError(record)
            return
        raise write_failed(stream_path(self.stream), "the log", error) from error


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3
    # ru_maxrss is in KiB on Linux: the process's resident peak stands in for device memory on CPU.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def per_sample_scalars(rows: list[list[float]]) -> dict[str, float]:
    """From a step's (σ, loss, task index) of every sample: the loss per σ bucket and per task, and the
    share of each task (what the step trained, beside the configured mix)."""
    by_sigma: dict[str, list[float]] = {}
    by_task: dict[str, list[float]] = {}
    for sigma, loss, task in rows:
        by_sigma.setdefault(sigma_bucket(sigma), []).append(loss)
        by_task.setdefault(TASKS[int(task)], []).append(loss)
    scalars = {f"loss_by_sigma/{name}": sum(values) / len(values) for name, values in by_sigma.items()}
    scalars |= {f"loss_by_task/{name}": sum(values) / len(values) for name, values in by_task.items()}
    return scalars | {f"train/tasks/{task}": len(by_task.get(task, ())) / len(rows) for task in TASKS}


class Metrics:
    """Writes only on rank 0; every other rank holds a no-op."""

    def __init__(self, log_dir: Path, enabled: bool, start_step: int, total_steps: int):
        self.enabled = enabled
        self.writer = None
        self.progress = None
        self.failed = False
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        with self.writing("TensorBoard's event file", start_step):
            log_dir.mkdir(parents=True, exist_ok=True)
            # A resumed run logs again the steps after its checkpoint that an earlier attempt logged
            # before it stopped: the purge step makes TensorBoard drop those, so each step shows once.
            purge_step = start_step + 1 if start_step else None
            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        self.progress = tqdm(
            total=total_steps,
            initial=start_step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            # In a log file a bar redrawn every second is noise; twice a minute shows progress and ETA.
            mininterval=1 if sys.stderr.isatty() else 30,
            file=sys.stderr,
        )

    @contextmanager
    def writing(self, what: str, step: int) -> Iterator[None]:
        """TensorBoard writes of `step` inside are written out at once; a failure is a WriteFailed."""
        try:
            yield
            if self.writer is not None:
                self.writer.flush()
        except OSError as error:
            self.failed = True
            raise write_failed(self.log_dir, f"{what} at step {step}", error) from error

    def step(self, step: int, scalars: dict[str, float | torch.Tensor]) -> None:
        """Scalars, and tensors as histograms (e.g. the step's σ across all ranks)."""
        if not self.enabled:
            return
        with self.writing("TensorBoard events", step):
            for name, value in scalars.items():
                if isinstance(value, torch.Tensor):
                    self.writer.add_histogram(name, value, step)
                else:
                    self.writer.add_scalar(name, value, step)
        try:
            self.progress.update(1)
            self.progress.set_postfix(loss=f"{scalars.get('train/loss', float('nan')):.4f}", refresh=False)
        except OSError as error:
            self.failed = True
            raise write_failed(stream_path(sys.stderr), f"the progress of step {step}", error) from error

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Scalars at `step` outside a training step (the held-out loss)."""
        if self.enabled:
            with self.writing("TensorBoard events", step):
                for name, value in values.items():
                    self.writer.add_scalar(name, value, step)

    def images(self, step: int, tag: str, frames: torch.Tensor) -> None:
        """Frames [N, C, H, W] in [0, 1], shown as an image strip (videos in TensorBoard need moviepy)."""
        if self.enabled:
            with self.writing("TensorBoard images", step):
                self.writer.add_images(tag, frames, step, dataformats="NCHW")

    def text(self, step: int, tag: str, value: str) -> None:
        if self.enabled:
            with self.writing("TensorBoard text", step):
                self.writer.add_text(tag, value, step)

    def hparams(self, values: dict[str, Any], step: int = 0) -> None:
        """The settings a start trains with, at its first step (a resumed run's may have changed)."""
        if self.enabled:
            lines = "\n".join(f"| {key} | {value} |" for key, value in sorted(values.items()))
            with self.writing("TensorBoard text", step):
                self.writer.add_text("config/train", "| key | value |\n|---|---|\n" + lines, step)

    def close(self) -> None:
        """Write out and close; once a write has failed (the run stops for it), a failure here is not
        raised again over the first."""
        if not self.enabled:
            return
        try:
            self.progress.close()
            self.writer.close()
        except OSError as error:
            if not self.failed:
                raise write_failed(self.log_dir, "TensorBoard events", error) from error
