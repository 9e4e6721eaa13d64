"""Sharded training checkpoints with torch.distributed.checkpoint (DCP).

A checkpoint is written to `step-N.partial/` by every rank and renamed to `step-N/` by rank 0 once all
ranks are done, so a directory named `step-N` is always complete. Removing one works the other way
round: it is renamed to `.deleting-step-N/` first and deleted after, so a deletion cut short leaves only
a `.deleting-` directory, which is never taken for a checkpoint and is removed later. DCP reshards on
load: a checkpoint written by 8 ranks resumes on 4, or on 1.

Asynchronous checkpoints (`dcp.async_save`) copy the state to host memory during the step that saves,
then write it from a background thread while training goes on; the rename and the pruning of old
checkpoints follow once every rank's write is done.

A save that cannot be written (a full disk above all) stops the run with a WriteFailed naming the
checkpoint, its path and the cause: a synchronous save at its own step, an asynchronous one at the first
step after its write failed (`Checkpointer.check`), not at the next save.
"""

from __future__ import annotations

import datetime
import logging
import random
import shutil
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from longcat.files import WriteFailed, write_failed
from longcat.paths import checkpoint_dirs
from longcat.train.record import write_record

log = logging.getLogger(__name__)

DELETING = ".deleting-"
AVERAGE = "ema"  # the weight average's key in a checkpoint


def remove_checkpoint(path: Path) -> None:
    """Delete checkpoint `path`, renaming it out of the way first.

    The rename is atomic, so a process killed part way never leaves a half-deleted directory under the
    `step-N` name that resuming would pick; the `.deleting-step-N` remains go at the next cleanup.
    """
    doomed = path.with_name(DELETING + path.name)
    if doomed.exists():
        shutil.rmtree(doomed)
    path.rename(doomed)
    shutil.rmtree(doomed)


def remove_deletion_leftovers(root: Path) -> None:
    """Finish the deletions of checkpoints that a killed process left as `.deleting-*` directories."""
    for doomed in root.glob(DELETING + "*"):
        shutil.rmtree(doomed)


def prune_checkpoints(root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints, and any deletion leftovers."""
    remove_deletion_leftovers(root)
    for old in checkpoint_dirs(root)[:-keep_last]:
        remove_checkpoint(old)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    """Saves checkpoints under `root`, keeping the last `keep_last`; every method is collective.

    With `asynchronous`, `save` returns once the state is staged in host memory and DCP writes it in a
    background thread over a gloo group of its own, so its collectives never interleave with the
    training's. At most one save is in flight: the next `save` waits for it, and so must the caller
    before it exports or exits (`wait`).
    """

    def __init__(self, root: str | Path, keep_last: int, asynchronous: bool, timeout: datetime.timedelta):
        self.root = Path(root)
        self.keep_last = keep_last
        self.asynchronous = asynchronous and hasattr(dcp, "async_save")
        self.rank = dist.get_rank()
        self.group = dist.new_group(backend="gloo", timeout=timeout) if self.asynchronous else None
        self.pending: Future | None = None
        self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-finish")

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        trainer_state: dict[str, Any],
        record: dict[str, Any] | None = None,
        average: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Save model, optimiser and trainer state (step, scheduler, loader) as `step-N`, with the run's
        `record` of the steps it holds (`longcat.train.record`) and the weight average when the run keeps
        one (`longcat.train.ema`, under `ema`)."""
        self.wait()
        final = self.root / f"step-{step}"
        partial = self.root / f"step-{step}.partial"
        if self.rank == 0:
            with self._writing(partial):
                # With no save in flight, any partial or half-deleted directory is the remains of a run
                # that died.
                for stale in self.root.glob("step-*.partial"):
                    shutil.rmtree(stale)
                remove_deletion_leftovers(self.root)
                partial.mkdir(parents=True)
                if record is not None:
                    write_record(partial, record)
        dist.barrier()
        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optim_state, "trainer": trainer_state}
        if average is not None:
            state[AVERAGE] = average
        with self._writing(partial):
            # Per-rank RNG streams are not sharded state; each rank keeps its own file. Written before
            # DCP's final gather, so rank 0's completed save implies every rank's file is there.
            torch.save(rng_state(), partial / f"rng-rank{self.rank}.pt")
            if self.asynchronous:
                written = dcp.async_save(state, checkpoint_id=partial, process_group=self.group)
                self.pending = self._finisher.submit(self._finish, written, partial, final)
            else:
                dcp.save(state, checkpoint_id=partial)
                self._finish(None, partial, final)
        if not self.asynchronous:
            dist.barrier()
        return final

    @contextmanager
    def _writing(self, partial: Path) -> Iterator[None]:
        """A checkpoint write inside that fails is a WriteFailed naming the checkpoint and its path."""
        try:
            yield
        except WriteFailed:
            raise
        except (OSError, RuntimeError, CheckpointException) as error:
            raise write_failed(
                partial, f"checkpoint {partial.name.removesuffix('.partial')}", error
            ) from error

    def check(self) -> None:
        """Raise the WriteFailed of an asynchronous save whose write has failed; nothing while it is being
        written or once it is done. Called at every step, so a failed save stops the run at the next one."""
        if self.pending is not None and self.pending.done() and self.pending.exception() is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def wait(self) -> None:
        """Block until the save in flight, if any, is complete and renamed; collective."""
        if self.pending is None:
            return
        pending, self.pending = self.pending, None
        pending.result()
        dist.barrier()

    def _finish(self, written: Future | None, partial: Path, final: Path) -> None:
        with self._writing(partial):
            if written is not None:
                written.result()
            if self.rank != 0:
                return
            if final.exists():
                remove_checkpoint(final)
            partial.rename(final)
            prune_checkpoints(self.root, self.keep_last)
        log.info("checkpoint saved: %s", final)


def holds_average(path: str | Path) -> bool:
    """Whether a checkpoint holds a weight average (written by a run with train.ema_decay)."""
    metadata = dcp.FileSystemReader(str(path)).read_metadata()
    return any(key.startswith(f"{AVERAGE}.") for key in metadata.state_dict_metadata)


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    average: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Load into the (sharded) model, optimiser and weight average (when given) in place; returns the
    saved trainer state. A checkpoint without an average loads when none is asked for."""
    path = Path(path)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"checkpoint {path}: no DCP '.metadata' file; expected a step-N directory")
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state, "trainer": trainer_state}
    if average is not None:
        if not holds_average(path):
            raise FileNotFoundError(
                f"checkpoint {path}: expected a weight average (train.ema_decay is set), found none: the run "
                "was trained without one; resume it without train.ema_decay, or start a new run"
            )
        state[AVERAGE] = average
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng_file = path / f"rng-rank{dist.get_rank()}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:
        log.warning(
            "checkpoint %s has no RNG state for rank %d (written by fewer ranks)", path, dist.get_rank()
        )
    return state["trainer"]


def full_model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole unsharded state dict on rank 0's CPU (empty elsewhere); collective."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def load_model_weights_offline(path: str | Path, model: nn.Module, average: bool = False) -> nn.Module:
    """Read only the model weights of a checkpoint into an unsharded model, in one process: the trained
    weights, or with `average` the weight average the checkpoint holds."""
    path = Path(path)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"checkpoint {path}: no DCP '.metadata' file; expected a step-N directory")
    if average and not holds_average(path):
        raise FileNotFoundError(
            f"checkpoint {path}: expected a weight average, found none (its run had no train.ema_decay)"
        )
    key = AVERAGE if average else "model"
    state = {key: model.state_dict()}
    dcp.load(state, checkpoint_id=path, no_dist=True)
    model.load_state_dict(state[key], strict=True)
    return model
