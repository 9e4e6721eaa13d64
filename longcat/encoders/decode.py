"""Reading a shard's clips for the VAE: decoded ahead of the encoder, in shard order, memory bounded.

A few threads each drive one ffmpeg process per clip (the pixel work happens in those processes) and
hand finished arrays to the encoder through a bounded window, so the accelerator never waits on ffmpeg.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from longcat.cache.spec import CacheError
from longcat.data.frames import ClipRejected, FramePlan, decode_clip
from longcat.data.metadata import stored_plan
from longcat.data.rejects import cache_failure
from longcat.data.sources import ChangedSinceProbe, Source, SourceError, TransientSourceError, sanitize
from longcat.settings import Frames


@contextmanager
def clip_file(source: Source, key: str, etag: str | None, scratch_dir: Path) -> Iterator[str]:
    """A local path to the bytes of `key` that were probed (at `etag` when given).

    A local source hands its own file after checking the etag; any other source streams the object into
    a temp file under `scratch_dir` (in the cache directory, never the system temp dir), deleted after
    use. Raises ChangedSinceProbe when the object is not the probed version any more.
    """
    path = source.local_path(key, etag=etag)
    if path is not None:
        yield path
        return
    scratch_dir.mkdir(parents=True, exist_ok=True)
    handle, path = tempfile.mkstemp(suffix=Path(key).suffix or ".mp4", prefix="clip-", dir=scratch_dir)
    try:
        with os.fdopen(handle, "wb") as output:
            source.download(key, output, etag=etag)
        yield path
    finally:
        os.unlink(path)


@dataclass
class DecodedClip:
    sample_id: str
    plan: FramePlan | None
    frames: np.ndarray | None  # [F, H, W, 3] uint8
    reason: str | None = None


def decode_row(row: Mapping, frames: Frames, source: Source, threads: int, scratch_dir: Path) -> DecodedClip:
    """Decode one metadata row at the frame plan the metadata stored (`stored_plan`: a plan that is not
    the one `frames` gives raises CacheError); a clip that cannot be used comes back with its reason
    (one of CACHE_FAILURE_REASONS, with the detail).

    The bytes are those the probe saw (the row's etag): a changed object fails with reason
    `changed_since_probe`. A source that does not answer raises TransientSourceError: an outage is the
    job's failure, never a clip's.
    """
    sample_id = row["key"]
    plan = stored_plan(row, frames)
    try:
        # Shard lists always carry the probed etag; rows made by hand may not (then nothing is checked).
        with clip_file(source, sample_id, row.get("etag"), scratch_dir) as path:
            pixels = decode_clip(path, plan, threads=threads)
    except ClipRejected as rejected:
        return DecodedClip(sample_id, None, None, cache_failure(rejected.reason, str(rejected)))
    except ChangedSinceProbe as changed:
        return DecodedClip(sample_id, None, None, cache_failure("changed_since_probe", sanitize(changed)))
    except TransientSourceError:
        raise
    except (SourceError, OSError) as error:  # this clip's failure, not the shard's
        detail = f"reading the clip failed: {sanitize(error)}"
        return DecodedClip(sample_id, None, None, cache_failure("read_error", detail))
    return DecodedClip(sample_id, plan, pixels)


def decode_ahead(
    rows: list[Mapping], decode: Callable[[Mapping], DecodedClip], workers: int, window: int | None = None
) -> Iterator[DecodedClip]:
    """Decode rows on `workers` threads, at most `window` (2 x workers) clips in flight, in row order."""
    window = max(1, window or 2 * workers)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        pending: deque = deque()
        rows_left = iter(rows)
        try:
            for row in rows_left:
                pending.append(pool.submit(decode, row))
                if len(pending) >= window:
                    break
            while pending:
                clip = pending.popleft().result()
                next_row = next(rows_left, None)
                if next_row is not None:
                    pending.append(pool.submit(decode, next_row))
                yield clip
        finally:
            # A failed decode or a consumer that stopped: the clips not started yet are not wanted.
            for future in pending:
                future.cancel()


def same_shape_batches(clips: Iterator[DecodedClip], batch_size: int) -> Iterator[list[DecodedClip]]:
    """Runs of at most `batch_size` consecutive decoded clips of one frame shape; a failed clip comes
    alone (it has no frames) and does not break the run around it.
    """
    run: list[DecodedClip] = []
    for clip in clips:
        if clip.frames is None:
            yield [clip]
            continue
        if run and clip.frames.shape != run[0].frames.shape:
            yield run
            run = []
        run.append(clip)
        if len(run) == batch_size:
            yield run
            run = []
    if run:
        yield run


def read_shard_rows(shard_list: str | Path) -> list[dict]:
    """The metadata rows of one shard list, in shard order."""
    rows = pq.read_table(shard_list).to_pylist()
    if rows and "key" not in rows[0]:
        raise CacheError(f"{shard_list}: expected a `key` column in the shard list, found {sorted(rows[0])}")
    return rows
