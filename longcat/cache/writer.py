"""Writing a cache shard so that a killed job resumes where it stopped and still gives the same bytes.

Each finished sample goes to its own part file under `.partial-shard-NNNNN/` first; `finish` assembles
the shard from the parts in shard-list order, with no timestamps, so the result is byte-identical to an
uninterrupted run's. A shard with more failed samples than its FailureLimit allows is not assembled.
A writer holds the shard's lock from its start to its end (`longcat.cache.ownership.ShardLock`): a second
job of the shard waits, then finds it finished (`ShardWriter.finished`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from longcat.cache.format import (
    CHECKSUM_KEY,
    EMPTY_TEXT_TENSOR,
    STATUS_FAILED,
    STATUS_OK,
    nonfinite_count,
    read_safetensors_header,
    safetensors_header,
    tensor_bytes,
    write_safetensors,
)
from longcat.cache.ownership import LOCK_STALE_S, ShardLock
from longcat.cache.spec import CacheError, canonical_json
from longcat.data.rejects import cache_failure, count_reasons, reasons_text, split_cache_failure
from longcat.files import atomic_write
from longcat.paths import CacheLayout, Layout
from longcat.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FailureLimit:
    """A shard is not written when more than `max_fraction` of its samples failed; the failures of the
    `superseded` keys (a newer version of them is in a later shard) do not count."""

    max_fraction: float
    superseded: frozenset[str] = frozenset()


def failure_limit(settings: Settings, shard: str) -> FailureLimit:
    """A shard job's limit: `cache.max_failed_fraction`, not counting the keys the assignment table
    holds a newer version of in a later shard."""
    from longcat.data.shards import superseded_keys  # not at the top: it brings the whole data stage along

    superseded = superseded_keys(Layout.from_settings(settings).assignments).get(shard, frozenset())
    return FailureLimit(settings.cache.max_failed_fraction, superseded)


def write_index(path: str | Path, rows: list[dict], schema: pa.Schema) -> None:
    """An index file, with parquet's page checksums (`format.read_index` verifies them)."""
    table = pa.Table.from_pylist(rows, schema=schema)
    atomic_write(
        path, lambda handle: pq.write_table(table, handle, compression="zstd", write_page_checksum=True)
    )


def write_empty_text(path: str | Path, embedding, metadata: Mapping) -> None:
    """The empty caption's embedding, the one tensor of `empty.safetensors`, with its checksum."""
    bad = nonfinite_count(embedding)
    if bad:
        raise CacheError(f"{path}: the empty caption's embedding has {bad} non-finite values; not written")
    data = tensor_bytes(embedding)
    write_safetensors(path, [(EMPTY_TEXT_TENSOR, data)], {**metadata, CHECKSUM_KEY: str(data.checksum)})


def _part_row(path: Path) -> dict:
    """The index row a per-sample part file carries (its header is checked against its size)."""
    header, _ = read_safetensors_header(path)
    return json.loads(header["__metadata__"]["row"])


class ShardWriter:
    """Builds one shard's safetensors and index from per-sample parts that survive a crash.

    `done` holds the rows of samples finished by earlier attempts; `add` records a new one; `finish`
    assembles the shard in the order given, writes the index and removes the parts. `scratch_dir` is
    the job's own place for temp files (clips streamed from the source): emptied at each start, so
    a killed job leaves nothing behind once its shard runs again, and removed with the parts.
    """

    def __init__(self, cache: CacheLayout, shard: str, schema: pa.Schema, metadata: Mapping):
        self.tensors_path = cache.tensors(shard)
        self.index_path = cache.index(shard)
        self.partial_dir = cache.partial(shard)
        self.schema = schema
        self.metadata = dict(metadata)
        self.scratch_dir = self.partial_dir / "tmp"
        # Nothing of the shard is touched before its lock is held: another job may be writing it.
        self.lock = ShardLock(cache.lock(shard))
        self.lock.acquire()
        try:
            self._start()
        except BaseException:
            # No `with` block holds a writer whose start failed: its lock would outlive the job.
            self.lock.release()
            raise

    def _start(self) -> None:
        """Clear what a killed job left, and take in the parts of earlier attempts (the lock held)."""
        shutil.rmtree(self.scratch_dir, ignore_errors=True)
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        for path in (self.tensors_path, self.index_path):
            # A temp file (longcat.files names them `.NAME.*.tmp`) of a job killed while writing.
            for stale in path.parent.glob(f".{path.name}.*.tmp"):
                stale.unlink(missing_ok=True)
        self.done: dict[str, dict] = {}
        for part in sorted(self.partial_dir.glob("*.safetensors")):
            try:
                row = _part_row(part)
            except (CacheError, KeyError, ValueError):
                log.warning("%s: unreadable part from an earlier attempt, encoding that sample again", part)
                part.unlink()
                continue
            self.done[row["sample_id"]] = row
        if self.done:
            log.info("%s: resuming, %d samples already done", self.tensors_path.name, len(self.done))

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Release the shard's lock (`finish` does too); the parts stay for the next job of the shard."""
        self.lock.release()

    def finished(self, sample_ids: Iterable[str]) -> bool:
        """Whether the shard is already written, for these samples and this cache key: by another job of
        the shard, which held the lock while this one waited. Then nothing is to be done, and the parts
        directory this writer's start made goes."""
        if not (self.tensors_path.is_file() and self.index_path.is_file()):
            return False
        try:
            header, _ = read_safetensors_header(self.tensors_path)
            written = pq.read_table(self.index_path, columns=["sample_id"]).column("sample_id").to_pylist()
        except (CacheError, OSError, pa.ArrowException):
            return False
        key = self.metadata.get("cache_key")
        if header.get("__metadata__", {}).get("cache_key") != key or written != list(sample_ids):
            return False
        shutil.rmtree(self.partial_dir, ignore_errors=True)
        return True

    def _part_path(self, sample_id: str) -> Path:
        return self.partial_dir / (hashlib.sha1(sample_id.encode("utf-8")).hexdigest() + ".safetensors")

    def add(self, row: dict, tensor=None) -> None:
        """Record one sample: its index row (with `sample_id` and `status`) and its tensor when it has one.

        The row gets the tensor's checksum. A tensor with NaN or infinite values is not kept: the sample
        is recorded as failed, with the count in its reason, and training never sees it.
        """
        tensors = []
        if tensor is not None:
            bad = nonfinite_count(tensor)
            if bad:
                reason = cache_failure(
                    "nonfinite", f"{bad} of {tensor.numel()} values of the encoded tensor are NaN or infinite"
                )
                log.warning("%s: %s: %s", self.tensors_path.name, row["sample_id"], reason)
                row = {**row, "status": STATUS_FAILED, "reason": reason}
            else:
                data = tensor_bytes(tensor)
                row = {**row, "checksum": data.checksum}
                tensors = [(row["sample_id"], data)]
        write_safetensors(self._part_path(row["sample_id"]), tensors, {"row": canonical_json(row)})
        self.done[row["sample_id"]] = row

    def finish(self, sample_ids: Iterable[str], limit: FailureLimit | None = None) -> None:
        """Assemble the shard from the parts, in `sample_ids` order, then drop the parts.

        With a `limit` that the failed samples exceed, CacheError instead (see `check_failures`).
        """
        sample_ids = list(sample_ids)
        missing = [sample_id for sample_id in sample_ids if sample_id not in self.done]
        if missing:
            raise CacheError(
                f"{self.tensors_path}: {len(missing)} samples not encoded yet, e.g. {missing[0]!r}"
            )
        if limit is not None:
            self.check_failures(sample_ids, limit)
        rows, entries, sources = [], [], []
        for sample_id in sample_ids:
            part = self._part_path(sample_id)
            header, data_start = read_safetensors_header(part)
            rows.append(json.loads(header["__metadata__"]["row"]))
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                begin, end = entry["data_offsets"]
                entries.append((name, entry["dtype"], tuple(entry["shape"]), end - begin))
                sources.append((part, data_start + begin, end - begin))

        def write(handle):
            handle.write(safetensors_header(entries, self.metadata))
            for part, offset, nbytes in sources:
                with open(part, "rb") as source:
                    source.seek(offset)
                    shutil.copyfileobj(_Limited(source, nbytes), handle, length=1 << 22)

        if not self.lock.held():
            raise CacheError(
                f"{self.tensors_path}: not written: the shard's lock {self.lock.path} was taken over by "
                f"another job while this one held it (not refreshed for {LOCK_STALE_S:.0f} s: a frozen node "
                "or a suspended process); that job writes the shard"
            )
        atomic_write(self.tensors_path, write)
        write_index(self.index_path, rows, self.schema)
        shutil.rmtree(self.partial_dir)
        self.lock.release()

    def check_failures(self, sample_ids: list[str], limit: FailureLimit) -> None:
        """Raise CacheError, counting the failures by reason with an example and the fix of each, when
        more of the shard's samples failed than `limit` allows. The failed samples' parts are removed
        then, so that a rerun tries them again; the others stay for it."""
        failed = [
            self.done[sample_id] for sample_id in sample_ids if self.done[sample_id]["status"] != STATUS_OK
        ]
        counted = [row for row in failed if row["sample_id"] not in limit.superseded]
        superseded = len(failed) - len(counted)
        if superseded:
            log.info(
                "%s: %d failed samples are superseded (a newer version is in a later shard), not counted: %s",
                self.tensors_path.name,
                superseded,
                ", ".join(row["sample_id"] for row in failed if row["sample_id"] in limit.superseded),
            )
        if len(counted) <= limit.max_fraction * len(sample_ids):
            return
        for row in failed:
            self._part_path(row["sample_id"]).unlink()
            del self.done[row["sample_id"]]
        reasons = count_reasons((row["sample_id"], *split_cache_failure(row["reason"])) for row in counted)
        ignored = (
            f" ({superseded:,} more are superseded by a later shard and do not count)" if superseded else ""
        )
        succeeded = len(sample_ids) - len(failed)
        resume = (
            f"The {succeeded:,} samples that succeeded are kept in {self.partial_dir}: a rerun encodes only "
            "the failed ones again."
            if succeeded
            else "A rerun encodes them all again."
        )
        raise CacheError(
            f"{self.tensors_path}: {len(counted):,} of {len(sample_ids):,} samples failed "
            f"({len(counted) / len(sample_ids):.1%}), more than cache.max_failed_fraction "
            f"({limit.max_fraction:g}){ignored}; the shard is not written:\n{reasons_text(reasons)}\n"
            f"{resume} A higher cache.max_failed_fraction writes the shard with these failures (training "
            "leaves them out)."
        )


class _Limited:
    """A reader of at most `remaining` bytes of `handle`, for copyfileobj."""

    def __init__(self, handle, remaining: int):
        self.handle = handle
        self.remaining = remaining

    def read(self, size: int = -1) -> bytes:
        size = self.remaining if size < 0 else min(size, self.remaining)
        data = self.handle.read(size)
        self.remaining -= len(data)
        return data
