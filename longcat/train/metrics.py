"""What a run reports: TensorBoard scalars and videos, a progress bar with ETA, and log lines (rank 0)."""

from __future__ import annotations

import logging
import resource
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

log = logging.getLogger(__name__)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3
    # ru_maxrss is in KiB on Linux: the process's resident peak stands in for device memory on CPU.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


class Metrics:
    """Writes only on rank 0; every other rank holds a no-op."""

    def __init__(self, log_dir: Path, enabled: bool, start_step: int, total_steps: int):
        self.enabled = enabled
        self.writer = None
        self.progress = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        log_dir.mkdir(parents=True, exist_ok=True)
        # A resumed run logs again the steps after its checkpoint that an earlier attempt logged before
        # it stopped: the purge step makes TensorBoard drop those, so each step shows once.
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=start_step + 1 if start_step else None)
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

    def step(self, step: int, scalars: dict[str, float | torch.Tensor]) -> None:
        """Scalars, and tensors as histograms (e.g. the step's σ across all ranks)."""
        if not self.enabled:
            return
        for name, value in scalars.items():
            if isinstance(value, torch.Tensor):
                self.writer.add_histogram(name, value, step)
            else:
                self.writer.add_scalar(name, value, step)
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{scalars.get('train/loss', float('nan')):.4f}", refresh=False)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Scalars at `step` outside a training step (the held-out loss)."""
        if self.enabled:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def images(self, step: int, tag: str, frames: torch.Tensor) -> None:
        """Frames [N, C, H, W] in [0, 1], shown as an image strip (videos in TensorBoard need moviepy)."""
        if self.enabled:
            self.writer.add_images(tag, frames, step, dataformats="NCHW")

    def text(self, step: int, tag: str, value: str) -> None:
        if self.enabled:
            self.writer.add_text(tag, value, step)

    def hparams(self, values: dict[str, Any], step: int = 0) -> None:
        """The settings a start trains with, at its first step (a resumed run's may have changed)."""
        if self.enabled:
            lines = "\n".join(f"| {key} | {value} |" for key, value in sorted(values.items()))
            self.writer.add_text("config/train", "| key | value |\n|---|---|\n" + lines, step)

    def close(self) -> None:
        if self.enabled:
            self.progress.close()
            self.writer.flush()
            self.writer.close()
