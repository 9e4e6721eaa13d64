"""Header-only probing of clips through bounded range reads: MP4/MOV by their index, others by FFmpeg.

ffprobe pointed at a URL reads open-ended ranges and the server streams far more than the header.
Instead the object's head and tail are read at once (two ranged GETs in flight, so the `moov` index
arrives in one round trip whether it sits at the start or the end), and the index is read from there
(`longcat.data.mp4`). The decode check (`longcat.data.decode_check`) hands FFmpeg's decoder the start
of the first picture, which the head read already holds in the usual layouts. An object whose head is
no ISO-BMFF box (WebM/Matroska, AVI, MPEG-TS, ... whatever its name) is read by FFmpeg's demuxer
over a bounded read instead (`longcat.data.container`).

Each object ends as one record: probed facts, or a reject with one of REJECT_REASONS and a detail.
`probe_rows` makes each object's decode check on a thread of its own, so that its workers go on to the
next object's reads.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache

import pyarrow as pa
from tqdm import tqdm

from longcat.data.captions import Caption, decode_caption, is_blank
from longcat.data.container import probe_container
from longcat.data.decode_check import DECODE_CHECK_BYTES, decoded_pixel_format
from longcat.data.fetched import FetchedBytes
from longcat.data.mp4 import VideoTrack, fetch_index, is_iso_bmff, parse_video_track, track_columns
from longcat.data.rejects import TRANSIENT_REASONS, Reject
from longcat.data.sources import Source, SourceError, TransientSourceError, sanitize

log = logging.getLogger(__name__)

# The first reads, at once: a short clip's whole index sits in one of them, at the start or at the end.
HEAD_BYTES = 16 * 1024
TAIL_BYTES = 16 * 1024
CAPTION_READ_THREADS = 64
# Objects read and waiting for their decode check, per probe worker.
CHECK_BACKLOG_PER_WORKER = 4

PROBE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("caption_key", pa.string()),
        ("etag", pa.string()),
        ("size", pa.int64()),
        ("caption_etag", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("display_aspect", pa.float64()),
        ("aspect_ratio", pa.float64()),
        ("fps", pa.float64()),
        ("fps_real", pa.float64()),
        ("num_frames", pa.int64()),
        ("duration", pa.float64()),
        ("codec", pa.string()),
        ("container", pa.string()),  # "mp4" (ISO-BMFF: MP4/MOV), else FFmpeg's demuxer name
        ("pix_fmt", pa.string()),
        ("rotation", pa.int32()),
        ("caption", pa.string()),
        ("caption_encoding", pa.string()),
        ("caption_fixups", pa.string()),
        ("probe_bytes", pa.int64()),
    ]
)


# Clips done (records reused by etag count as done), clips/s and the time left: a log line every 10 s.
PROGRESS_FORMAT = "probed {n}/{total} clips in {elapsed}, {rate_fmt}, {remaining} left"


class LogLines:
    """A file for tqdm that makes each progress update one line of the job's log."""

    def write(self, text: str) -> None:
        line = text.strip("\r\n ")
        if line:
            log.info("%s", line)

    def flush(self) -> None:
        pass


@cache
def _caption_reads() -> ThreadPoolExecutor:
    """Caption reads in flight beside the video's own: one pool, started by the first probe."""
    return ThreadPoolExecutor(max_workers=CAPTION_READ_THREADS, thread_name_prefix="probe-caption")


def caption_cut(size: int | None, limit: int) -> str | None:
    """The fixup of a caption of `size` bytes read up to `limit` bytes; None when it is read whole."""
    return f"truncated from {size} to {limit} bytes" if size is not None and size > limit else None


def read_caption(source: Source, key: str, size: int | None, limit: int) -> Caption:
    """The caption's first `limit` bytes at most, decoded: one bounded read, whatever the object's size.

    A longer caption is cut at `limit` bytes (at a character boundary), with the fixup `caption_cut`.
    `size` is the manifest's `caption_size`; without it, one byte more is read to tell whether the
    caption goes on.
    """
    if size is None:
        raw = source.read_range(key, 0, limit + 1)
        truncated = f"truncated from more than {limit} bytes" if len(raw) > limit else None
        return decode_caption(raw[:limit], truncated)
    return decode_caption(source.read_range(key, 0, min(size, limit)), caption_cut(size, limit))


def _caption_fits(record: Mapping, row: Mapping, limit: int) -> bool:
    """Whether a stored record's caption is what `limit` reads now: cut the same way, or whole."""
    if record.get("caption") is None:
        return True
    cuts = [fixup for fixup in (record.get("caption_fixups") or "").split(",") if fixup.startswith("trunc")]
    return (cuts[0] if cuts else None) == caption_cut(row.get("caption_size"), limit)


def read_first(fetched: FetchedBytes, decode_check: bool) -> None:
    """A probe's first reads of an object: its head and tail at once, the head long enough for the
    start of the first picture when `decode_check` asks for it."""
    # In the usual layouts the head holds the first picture's start too: after a short `ftyp` when the
    # index is at the end, after the index when it is at the start.
    fetched.read_ends(HEAD_BYTES + (DECODE_CHECK_BYTES if decode_check else 0), TAIL_BYTES)


@contextmanager
def _charged(fetched: FetchedBytes):
    """A Reject raised inside carries the bytes its object has cost so far (`bytes_read`)."""
    try:
        yield
    except Reject as reject:
        reject.bytes_read = fetched.bytes_read
        raise


def read_video(
    source: Source, key: str, size: int, decode_check: bool
) -> tuple[dict, FetchedBytes, VideoTrack | None]:
    """A probe's reads of one object and the facts of its index, or a Reject.

    Returns (columns, the fetched pieces, the track whose first picture the decode check still has to
    decode, or None when nothing is left to do): `check_first_picture` finishes it, on this thread or on
    another one. Objects that are not ISO-BMFF go to the fallback probe (`probe_container`), which reads
    at most FALLBACK_PROBE_BYTES and makes its decode check itself.
    """
    if size == 0:
        raise Reject("zero_bytes", "the object is empty")
    fetched = FetchedBytes(source, key, size)
    with _charged(fetched):
        read_first(fetched, decode_check)
        if not is_iso_bmff(fetched.read(0, min(size, 8))):
            return probe_container(fetched, decode_check), fetched, None
        track = parse_video_track(fetch_index(fetched))
        columns = track_columns(track)
        if not decode_check:
            return columns, fetched, None
        if track.first_sample is None:
            raise Reject("undecodable", "the video track has no chunk offsets")
        start, length = track.first_sample
        if start + length > size:
            raise Reject("truncated", f"the first video sample ends at {start + length}, past {size}")
    return columns, fetched, track


def check_first_picture(columns: dict, fetched: FetchedBytes, track: VideoTrack | None) -> tuple[dict, int]:
    """The decode check of a `read_video` result, which fills in the pixel format (FFmpeg decodes the
    start of the first frame, read beforehand except in unusual layouts); returns (columns, bytes read)
    or raises Reject."""
    if track is not None:
        with _charged(fetched):
            columns["pix_fmt"], columns["codec"] = decoded_pixel_format(fetched, track)
    return columns, fetched.bytes_read


def probe_video(source: Source, key: str, size: int, decode_check: bool) -> tuple[dict, int]:
    """Probe one object from its index (and first picture); returns (columns, bytes read) or raises Reject.

    Facts come from the sample tables; with `decode_check`, FFmpeg also decodes the start of the first
    frame, which rejects undecodable streams and fills in the pixel format.
    """
    return check_first_picture(*read_video(source, key, size, decode_check))


def _empty_record(row: Mapping) -> dict:
    record = dict.fromkeys(PROBE_SCHEMA.names)
    for name in ("key", "caption_key", "etag", "size", "caption_etag"):
        record[name] = row.get(name)
    record["probe_bytes"] = 0
    return record


@contextmanager
def _recorded(record: dict):
    """A failure inside becomes the record's reason and detail; TransientSourceError goes on up."""
    try:
        yield
    except Reject as reject:
        record.update(
            reason=reject.reason, detail=reject.detail, probe_bytes=getattr(reject, "bytes_read", 0)
        )
    except TransientSourceError:
        raise  # the source did not answer: no fact about the object, so no record the run would keep
    except (SourceError, OSError) as error:
        record.update(reason="read_error", detail=sanitize(error))
    except (struct.error, ValueError, IndexError) as error:
        # Malformed boxes the walk did not foresee: a reject of this object, not a failed chunk.
        log.warning("%s: malformed container (%s: %s)", record["key"], type(error).__name__, error)
        record.update(reason="undecodable", detail=f"malformed container: {type(error).__name__}: {error}")


def read_object(
    source: Source, row: Mapping, *, decode_check: bool, max_caption_bytes: int
) -> Callable[[], dict]:
    """The reads of one manifest row's probe (`read_video` and the caption); returns the step that
    finishes its record, the decode check (`check_first_picture`), to run on this thread or another.

    The caption is read up to `max_caption_bytes` (`read_caption`), so a huge caption costs no more
    memory here, in the metadata or in the text cache than a long one.
    """
    record = _empty_record(row)
    key = row["key"]
    with _recorded(record):
        if row.get("name_conflict"):
            raise Reject("ambiguous_name", row["name_conflict"])
        if row["size"] == 0:
            raise Reject("zero_bytes", "the object is empty")
        if not row.get("caption_key"):
            stem = os.path.splitext(key)[0]
            raise Reject("missing_caption", f"no caption {stem}.txt beside the video")
        # The caption is read beside the video's first reads; its rejects come first.
        caption_size = row.get("caption_size")
        caption_read = _caption_reads().submit(
            read_caption, source, row["caption_key"], caption_size, max_caption_bytes
        )
        try:
            video, video_reject = read_video(source, key, int(row["size"]), decode_check), None
        except Reject as reject:
            video, video_reject = None, reject
        caption = caption_read.result()
        if is_blank(caption.text):
            shown = f" (only {caption.text!r})" if caption.text else ""
            raise Reject("empty_caption", f"{row['caption_key']} holds no visible text{shown}")
        record.update(
            caption=caption.text, caption_encoding=caption.encoding, caption_fixups=caption.fixups_text
        )
        if video_reject is not None:
            raise video_reject
        return functools.partial(_finish_record, record, video)
    return lambda: record


def _finish_record(record: dict, video: tuple) -> dict:
    """The record of a `read_video` result once its decode check is done."""
    with _recorded(record):
        columns, bytes_read = check_first_picture(*video)
        record.update(columns)
        record["probe_bytes"] = bytes_read
    return record


def probe_object(source: Source, row: Mapping, *, decode_check: bool, max_caption_bytes: int) -> dict:
    """The probe record of one manifest row: facts and caption, or a reason it is rejected."""
    return read_object(source, row, decode_check=decode_check, max_caption_bytes=max_caption_bytes)()


def reuse_key(row: Mapping) -> tuple:
    return (row["key"], row["etag"], row["size"], row["caption_etag"])


def probe_rows(
    source: Source,
    rows: Iterable[Mapping],
    previous: Iterable[Mapping] = (),
    *,
    workers: int,
    decode_check: bool,
    max_caption_bytes: int,
) -> tuple[list[dict], int, list[TransientSourceError]]:
    """Probe records for `rows`, reusing previous records whose key, etag, size and caption etag match.

    An object the source did not answer for (after the client's retries) gets no record: its error is
    returned instead, so that the records of the others can be kept and it alone is read again later.
    Returns the records in the order of `rows`, how many were probed afresh, and those errors.
    """
    rows = list(rows)
    stored = {
        reuse_key(record): record for record in previous if record.get("reason") not in TRANSIENT_REASONS
    }
    # A record whose caption was read under another `max_caption_bytes` is probed again.
    known = {}
    for row in rows:
        if row.get("name_conflict"):
            continue  # a verdict on the listing, not on the bytes: the record of another listing is no use
        record = stored.get(reuse_key(row))
        if record is not None and _caption_fits(record, row, max_caption_bytes):
            known[reuse_key(row)] = record
    todo = [row for row in rows if reuse_key(row) not in known]
    fresh, unanswered = {}, []
    progress = tqdm(
        total=len(rows),
        initial=len(rows) - len(todo),
        unit=" clips",
        file=LogLines(),
        mininterval=10,
        bar_format=PROGRESS_FORMAT,
    )
    # The decode checks run on a thread of their own, so that each worker goes on to its next object's
    # reads: `workers` objects' reads stay in flight. Objects read but not yet checked are held to a few
    # per worker.
    backlog = threading.BoundedSemaphore(CHECK_BACKLOG_PER_WORKER * max(1, workers))

    def probe(row: Mapping) -> Future:
        finish = read_object(source, row, decode_check=decode_check, max_caption_bytes=max_caption_bytes)
        backlog.acquire()
        checked = checks.submit(finish)
        checked.add_done_callback(lambda _: backlog.release())
        return checked

    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe-check") as checks,
    ):
        futures = [pool.submit(probe, row) for row in todo]
        for row, future in zip(todo, futures, strict=True):
            try:
                fresh[reuse_key(row)] = future.result().result()
            except TransientSourceError as error:
                unanswered.append(error)
            progress.update()
    progress.close()
    records = []
    for row in rows:
        record = known.get(reuse_key(row)) or fresh.get(reuse_key(row))
        if record is not None:
            records.append({**record, "caption_key": row.get("caption_key")})
    return records, len(todo) - len(unanswered), unanswered
