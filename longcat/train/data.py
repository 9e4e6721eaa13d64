"""A distributed, deterministic, stateful loader over the shard caches.

Batches never mix latent shapes. The order of an epoch is a pure function of (seed, epoch), every rank
takes every world_size-th batch, and the state is (epoch, batches consumed), so a run resumed from a
checkpoint sees exactly the batches it would have seen without the interruption.

Worker processes read and collate ahead; a thread of the training process takes their batches in
(unpickling, mapping the shared memory the tensors travel in, pinning them on CUDA) while the step
runs, so the step itself only takes a ready batch from a queue.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from longcat.flow import pad_captions
from longcat.train.workers import leave_stopping_to_the_trainer

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 60


class CacheSample(Protocol):
    sample_id: str
    shard: Any
    latent_shape: Sequence[int]
    text_len: int


class CacheSource(Protocol):
    """What training needs from the cache reader (`longcat.cache.reader.CacheReader`)."""

    samples: Sequence[CacheSample]
    shards: Sequence[str]  # the shard ids the caches hold, usable samples or not
    max_tokens: int  # the text cache's token limit: captions are padded to it, as sampling pads them
    fps: float  # the rate the latents' frames were sampled at (frames.fps): videos are written at it

    def latent(self, sample_id: str) -> torch.Tensor: ...

    def text(self, sample_id: str) -> torch.Tensor: ...

    def empty_text(self) -> torch.Tensor: ...


@dataclass(frozen=True)
class BatchItem:
    index: int
    drop_caption: bool


class BucketedSampler:
    """The per-rank batch order of each epoch: shape buckets, seeded shuffles, whole batches only."""

    def __init__(
        self,
        latent_shapes: Sequence[Sequence[int]],
        batch_size: int,
        world_size: int,
        rank: int,
        seed: int,
        caption_dropout: float = 0.0,
    ):
        self.shapes = [tuple(int(d) for d in shape) for shape in latent_shapes]
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.caption_dropout = caption_dropout
        self.batches_per_rank = self.batches_in(None)

    def bucket_sizes(self) -> dict[tuple[int, ...], int]:
        return dict(sorted(Counter(self.shapes).items()))

    def batches_in(self, members: Sequence[int] | None) -> int:
        """Batches per rank in an epoch over `members` (sample indices; None: every sample)."""
        return len(self._epoch_batches(0, members)) // self.world_size

    def _epoch_batches(self, epoch: int, members: Sequence[int] | None = None) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{epoch}")
        buckets: dict[tuple[int, ...], list[int]] = {}
        for index in range(len(self.shapes)) if members is None else members:
            buckets.setdefault(self.shapes[index], []).append(index)
        batches = []
        for shape in sorted(buckets):
            members = buckets[shape]
            rng.shuffle(members)
            whole = len(members) - len(members) % self.batch_size
            batches += [members[i : i + self.batch_size] for i in range(0, whole, self.batch_size)]
        rng.shuffle(batches)
        # Every rank must run the same number of steps, or a collective waits forever.
        return batches[: len(batches) - len(batches) % self.world_size]

    def epoch(
        self, epoch: int, start: int = 0, members: Sequence[int] | None = None
    ) -> list[list[BatchItem]]:
        """This rank's batches of `epoch` over `members` (None: every sample), from its `start`-th on."""
        mine = self._epoch_batches(epoch, members)[self.rank :: self.world_size]
        rng = random.Random(f"{self.seed}:{epoch}:captions:{self.rank}")
        flagged = [[BatchItem(i, rng.random() < self.caption_dropout) for i in batch] for batch in mine]
        return flagged[start:]


class CacheBatches(Dataset):
    """Turns a batch of indices into `samples` (those of `source` by default) into model inputs. Runs in
    the loader's worker processes.

    Captions reach the DiT exactly as the pipeline hands them over at sampling: padded to the text
    cache's `max_tokens` by `longcat.flow.pad_captions`, and a dropped caption is the empty prompt (the
    pipeline's unconditional input), padded the same way.
    """

    def __init__(self, source: CacheSource, samples: Sequence[CacheSample] | None = None):
        self.source = source
        self.samples = list(source.samples if samples is None else samples)
        self.max_tokens = int(source.max_tokens)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, batch: list[BatchItem]) -> dict[str, Any]:
        latents, texts = [], []
        for item in batch:
            sample = self.samples[item.index]
            latents.append(self.source.latent(sample.sample_id).float())
            text = self.source.empty_text() if item.drop_caption else self.source.text(sample.sample_id)
            texts.append(text.float())
        text_states, text_mask = pad_captions(texts, self.max_tokens)
        return {
            "latents": torch.stack(latents),
            "text_states": text_states,
            "text_mask": text_mask,
            "sample_ids": [self.samples[item.index].sample_id for item in batch],
            "dropped_captions": sum(item.drop_caption for item in batch),
        }


class TrainLoader:
    """Endless iteration over epochs with worker prefetch and an exact, checkpointable position.

    An epoch draws from the samples there were when it began: samples added to the caches while a run
    is stopped join at the next epoch (`resume_epoch`).
    """

    def __init__(
        self,
        source: CacheSource,
        batch_size: int,
        world_size: int,
        rank: int,
        seed: int,
        caption_dropout: float = 0.0,
        num_workers: int = 2,
        prefetch_batches: int = 4,
        samples: Sequence[CacheSample] | None = None,
    ):
        self.dataset = CacheBatches(source, samples)
        self.shards = list(source.shards)
        self.sampler = BucketedSampler(
            [sample.latent_shape for sample in self.dataset.samples],
            batch_size,
            world_size,
            rank,
            seed,
            caption_dropout,
        )
        if self.sampler.batches_per_rank == 0:
            raise ValueError(
                f"training data: {len(self.dataset)} cached samples in buckets {self.sampler.bucket_sizes()} "
                f"give no whole batch for each of {world_size} ranks at batch size {batch_size}; "
                "expected at least batch_size x world_size samples of one latent shape"
            )
        self.num_workers = num_workers
        self.prefetch_batches = prefetch_batches
        self.epoch = 0
        self.position = 0
        self.members: list[int] | None = None  # the samples the current epoch draws from; None: all
        self.epoch_batches = self.sampler.batches_per_rank

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "num_samples": len(self.dataset)}

    def load_state_dict(self, state: dict[str, int], world_size_then: int | None = None) -> None:
        """The position of a checkpoint, written by `world_size_then` ranks (None: this many).

        Ranks take an epoch's batches in turn, so after P batches on each of W ranks the first P x W of
        the epoch are done, whatever the world size that goes on from there.
        """
        self.epoch = int(state["epoch"])
        done = int(state["position"]) * (world_size_then or self.sampler.world_size)
        self.position = done // self.sampler.world_size

    def data_state(self) -> dict[str, Any]:
        """What the run trains on, for its record: every shard the caches hold, the training samples, the
        current epoch's samples per shard (what a resumed run needs to go on with the same epoch) and per
        latent frame count (the sample rule renders the largest)."""
        samples = self.dataset.samples
        members = range(len(samples)) if self.members is None else self.members
        return {
            "samples": len(self.dataset),
            "shards": self.shards,
            "epoch": self.epoch,
            "epoch_samples": dict(sorted(Counter(samples[i].shard for i in members).items())),
            "latent_frames": dict(sorted(Counter(int(sample.latent_shape[1]) for sample in samples).items())),
        }

    def resume_epoch(self, epoch_samples: dict[str, int]) -> str | None:
        """Go on with the checkpoint's epoch over the samples it began with (`epoch_samples`, per shard).

        Samples added since (new shards) join at the next epoch. When samples the epoch began with are
        gone or changed, it cannot go on in its order: the next epoch starts now, over every sample.
        Returns what was done, for the log, or None when the data is as it was.
        """
        samples = self.dataset.samples
        now = Counter(sample.shard for sample in samples)
        if now == Counter(epoch_samples):
            return None
        changed = sorted(shard for shard, count in epoch_samples.items() if now.get(shard) != count)
        if not changed:
            self.members = [index for index, sample in enumerate(samples) if sample.shard in epoch_samples]
            self.epoch_batches = self.sampler.batches_in(self.members)
            new = sorted(set(now) - set(epoch_samples))
            return (
                f"the caches hold {len(samples) - len(self.members)} samples more than when epoch "
                f"{self.epoch} began (new shards: {', '.join(new)}): epoch {self.epoch} goes on over its "
                f"{len(self.members)} samples, all {len(samples)} train from epoch {self.epoch + 1} on"
            )
        counts = ", ".join(f"{shard}: {epoch_samples[shard]} -> {now.get(shard, 0)}" for shard in changed)
        epoch = self.epoch
        self.epoch, self.position = epoch + 1, 0
        return (
            f"the samples of {len(changed)} shards changed since epoch {epoch} began ({counts}): it cannot "
            f"go on in its order, so epoch {self.epoch} starts now over all {len(samples)} samples"
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.position >= self.epoch_batches:  # fewer batches per rank than when the position was taken
            self.epoch, self.position, self.members = self.epoch + 1, 0, None
            self.epoch_batches = self.sampler.batches_per_rank
        # One loader for the whole run: worker processes start once, not at every epoch.
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            sampler=_EpochsFrom(self.sampler, self.epoch, self.position, self.members),
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch_batches if self.num_workers else None,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=leave_stopping_to_the_trainer,
        )
        # The position counts batches handed to the step, not those taken in ahead of it.
        for batch in _in_background(iter(loader), self.prefetch_batches):
            self.position += 1
            if self.position == self.epoch_batches:
                self.epoch, self.position, self.members = self.epoch + 1, 0, None
                self.epoch_batches = self.sampler.batches_per_rank
            yield batch


class _EpochsFrom:
    """Batches of every epoch from (epoch, position) on, without end; the first epoch over `members`."""

    def __init__(self, sampler: BucketedSampler, epoch: int, position: int, members: list[int] | None):
        self.sampler = sampler
        self.epoch = epoch
        self.position = position
        self.members = members

    def __iter__(self) -> Iterator[list[BatchItem]]:
        epoch, start, members = self.epoch, self.position, self.members
        while True:
            yield from self.sampler.epoch(epoch, start, members)
            epoch, start, members = epoch + 1, 0, None


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


def _in_background(batches: Iterator[Any], depth: int) -> Iterator[Any]:
    """The items of `batches`, taken `depth` ahead by a thread; its errors are raised here.

    The iterator is made by the caller, in the main thread: a DataLoader sets its signal handlers then.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def fill() -> None:
        try:
            for batch in batches:
                put(batch)
                if stop.is_set():
                    return
            put(_END)
        except BaseException as error:  # handed to the consumer, which raises it
            put(_Failed(error))

    filler = threading.Thread(target=fill, name="batch-prefetch", daemon=True)
    filler.start()
    try:
        while (item := ready.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        # The thread ends after the batch it is reading and closes the loader with it; left running,
        # it would be stopped inside torch's C++ code at interpreter exit, which aborts the process.
        stop.set()
        filler.join(timeout=STOP_TIMEOUT_S)
        if filler.is_alive():
            log.warning("the batch prefetch thread did not stop within %d s", STOP_TIMEOUT_S)
