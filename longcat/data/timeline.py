"""When the samples of an MP4 video track play, and which of them a player shows.

A sample's decode time comes from the sample table (`stts`) or, in a fragmented MP4, from each fragment
(`tfdt`, `trun`); its presentation time adds its composition offset (`ctts`, or the `trun`'s). An edit
list (`edts/elst`) says which span of presentation times plays, and FFmpeg honours it: a clip trimmed
with `ffmpeg -ss ... -c copy` keeps the samples before its cut, which never show, and a stream remuxed
with a decoder delay starts at its first presented sample. The probe reports what plays: the span's
duration and the samples in it. An edit list that plays more than one span, or at another rate, is
rejected (`edit_list`): no single duration says what such a clip holds.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from longcat.data.boxes import child, children, u32
from longcat.data.rejects import Reject

# More samples than this in one track is no training clip (46 hours at 60 fps), and would cost memory.
MAX_SAMPLES = 10_000_000
# trun flags: which fields each sample's entry holds, in this order.
TRUN_DATA_OFFSET, TRUN_FIRST_SAMPLE_FLAGS = 0x01, 0x04
TRUN_DURATION, TRUN_SIZE, TRUN_FLAGS, TRUN_COMPOSITION = 0x100, 0x200, 0x400, 0x800
# tfhd flags: the optional fields present, in this order (default sample flags, 0x20, come last: unread).
TFHD_BASE_OFFSET, TFHD_DESCRIPTION, TFHD_DURATION, TFHD_SIZE = 0x01, 0x02, 0x08, 0x10


@dataclass(frozen=True)
class Samples:
    """Decode times, durations and composition offsets of a track's samples (timescale units), and where
    the first one is stored: (file offset, bytes)."""

    dts: np.ndarray
    durations: np.ndarray
    offsets: np.ndarray
    first: tuple[int, int] | None

    @property
    def count(self) -> int:
        return len(self.dts)

    @property
    def end(self) -> int:
        """The decode time after the last sample."""
        return int(self.dts[-1] + self.durations[-1]) if self.count else 0

    def followed_by(self, later: Samples) -> Samples:
        return Samples(
            np.concatenate([self.dts, later.dts]),
            np.concatenate([self.durations, later.durations]),
            np.concatenate([self.offsets, later.offsets]),
            self.first or later.first,
        )

    @property
    def common_duration(self) -> int:
        if not self.count:
            return 0
        values, counts = np.unique(self.durations, return_counts=True)
        return int(values[np.argmax(counts)])

    def played(self, edit: tuple[int, int | None] | None, media_duration: int) -> tuple[int, int]:
        """(duration, samples) that play: those whose presentation time lies in the edit's span
        (media time, length or None for "to the end"), or every sample and `media_duration` without one."""
        if edit is None or not self.count:
            return media_duration, self.count
        start, length = edit
        presented = self.dts + self.offsets
        end_of_media = int((presented + self.durations).max()) if self.count else 0
        end = end_of_media if length is None else min(start + length, end_of_media)
        shown = int(np.count_nonzero((presented >= start) & (presented < end)))
        if end <= start or not shown:
            raise Reject("edit_list", f"the edit list plays from media time {start}, where no sample is")
        return end - start, shown


def _expanded(data: bytes, body: int, count: int, signed: bool) -> np.ndarray:
    """The per-sample values of a run-length table (`stts`, `ctts`: entries of count and value), `count`
    long: runs past it are cut, a table that ends early repeats its last value."""
    entries = u32(data, body + 4)
    table = np.frombuffer(data, dtype=">u4", count=2 * entries, offset=body + 8).reshape(entries, 2)
    values = table[:, 1].astype(np.uint32)
    values = values.view(np.int32).astype(np.int64) if signed else values.astype(np.int64)
    ends = np.minimum(np.cumsum(table[:, 0], dtype=np.int64), count)
    runs = np.diff(ends, prepend=0)
    expanded = np.repeat(values, runs)
    if len(expanded) < count:
        expanded = np.concatenate([expanded, np.full(count - len(expanded), values[-1] if entries else 0)])
    return expanded


def _starts(durations: np.ndarray, first: int) -> np.ndarray:
    """Decode times of consecutive samples of `durations`, the first at `first`."""
    return first + np.cumsum(durations, dtype=np.int64) - durations


def table_samples(moov: bytes, stts, ctts, count: int, first: tuple[int, int] | None) -> Samples:
    """The samples of a sample table: `stts` and `ctts` are (body, end) of those boxes or None."""
    if count > MAX_SAMPLES:
        raise Reject("undecodable", f"{count} samples in the index, more than {MAX_SAMPLES}")
    durations = _expanded(moov, stts[0], count, False) if stts else np.zeros(count, np.int64)
    offsets = _expanded(moov, ctts[0], count, True) if ctts else np.zeros(count, np.int64)
    return Samples(_starts(durations, 0), durations, offsets, first)


def track_defaults(moov: bytes, mvex: tuple[int, int] | None, track_id: int) -> tuple[int, int]:
    """(sample duration, sample size) that the movie's `trex` sets for the fragments of `track_id`."""
    for box_type, body, _ in children(moov, *mvex) if mvex else ():
        if box_type == b"trex" and u32(moov, body + 4) == track_id:
            return u32(moov, body + 12), u32(moov, body + 16)
    return 0, 0


def _trun(data: bytes, body: int, durations: int, sizes: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(durations, composition offsets, data offset, first sample's size) of a `trun` box; `durations`
    and `sizes` are the defaults for fields it leaves out."""
    flags = int.from_bytes(data[body + 1 : body + 4], "big")
    count = u32(data, body + 4)
    at, data_offset = body + 8, 0
    if flags & TRUN_DATA_OFFSET:
        data_offset = struct.unpack(">i", data[at : at + 4])[0]
        at += 4
    if flags & TRUN_FIRST_SAMPLE_FLAGS:
        at += 4
    fields = [bit for bit in (TRUN_DURATION, TRUN_SIZE, TRUN_FLAGS, TRUN_COMPOSITION) if flags & bit]
    table = np.frombuffer(data, dtype=">u4", count=count * len(fields), offset=at).reshape(count, len(fields))

    def column(bit: int, default: int, signed: bool = False) -> np.ndarray:
        if bit not in fields:
            return np.full(count, default, np.int64)
        values = table[:, fields.index(bit)].astype(np.uint32)
        return values.view(np.int32).astype(np.int64) if signed else values.astype(np.int64)

    first_size = int(column(TRUN_SIZE, sizes)[0]) if count else 0
    return column(TRUN_DURATION, durations), column(TRUN_COMPOSITION, 0, signed=True), data_offset, first_size


def fragment_samples(
    fragments: Sequence[tuple[int, bytes]], track_id: int, defaults: tuple[int, int], start: int
) -> Samples:
    """The samples of `track_id` in movie fragments (each (file offset, `moof` box), in file order), the
    first decoded at `start` unless a fragment's `tfdt` says when."""
    dts, durations, offsets, first = [], [], [], None
    next_dts = start
    for moof_offset, moof in fragments:
        body = child(moof, 0, len(moof), b"moof")
        for traf_type, traf, traf_end in children(moof, *body) if body else ():
            tfhd = child(moof, traf, traf_end, b"tfhd") if traf_type == b"traf" else None
            if tfhd is None or u32(moof, tfhd[0] + 4) != track_id:
                continue
            flags, at = int.from_bytes(moof[tfhd[0] + 1 : tfhd[0] + 4], "big"), tfhd[0] + 8
            base, duration, size = moof_offset, *defaults
            if flags & TFHD_BASE_OFFSET:
                base, at = struct.unpack(">Q", moof[at : at + 8])[0], at + 8
            at += 4 if flags & TFHD_DESCRIPTION else 0
            if flags & TFHD_DURATION:
                duration, at = u32(moof, at), at + 4
            if flags & TFHD_SIZE:
                size = u32(moof, at)
            tfdt = child(moof, traf, traf_end, b"tfdt")
            if tfdt is not None:
                wide = moof[tfdt[0]] == 1
                next_dts = struct.unpack(
                    ">Q" if wide else ">I", moof[tfdt[0] + 4 : tfdt[0] + (12 if wide else 8)]
                )[0]
            for box_type, trun, _ in children(moof, traf, traf_end):
                if box_type != b"trun":
                    continue
                run_durations, run_offsets, data_offset, first_size = _trun(moof, trun, duration, size)
                if first is None and len(run_durations):
                    first = (base + data_offset, first_size)
                    if moof_offset <= first[0] < moof_offset + len(moof):
                        # Inside the moof itself: a base offset written before a `sidx` moved the moof
                        # (FFmpeg's global_sidx). The data follows the moof, as counted from it.
                        first = (moof_offset + data_offset, first_size)
                dts.append(_starts(run_durations, next_dts))
                durations.append(run_durations)
                offsets.append(run_offsets)
                next_dts += int(run_durations.sum())
                if sum(map(len, dts)) > MAX_SAMPLES:
                    raise Reject("undecodable", f"more than {MAX_SAMPLES} samples in the movie fragments")
    if not dts:
        return Samples(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), None)
    return Samples(np.concatenate(dts), np.concatenate(durations), np.concatenate(offsets), first)


def edit_span(
    moov: bytes, trak: tuple[int, int], movie_timescale: int, timescale: int
) -> tuple[int, int | None] | None:
    """(media time, length or None for "to the end") that the track's edit list plays, in the track's
    timescale; None without an edit list. Empty edits (a delay before the video) play none of it."""
    edts = child(moov, *trak, b"edts")
    elst = edts and child(moov, *edts, b"elst")
    if not elst:
        return None
    wide, entries = moov[elst[0]] == 1, u32(moov, elst[0] + 4)
    layout, size = (">QqhH", 20) if wide else (">IihH", 12)
    edits = [
        struct.unpack(layout, moov[elst[0] + 8 + size * i : elst[0] + 8 + size * (i + 1)])
        for i in range(entries)
    ]
    played = [edit for edit in edits if edit[1] != -1]
    if not played:
        return None
    if len(played) > 1:
        raise Reject(
            "edit_list",
            f"the edit list plays {len(played)} separate segments of the video; only a clip that plays one "
            "continuous span is taken",
        )
    length, media_time, rate, fraction = played[0]
    if (rate, fraction) != (1, 0):
        raise Reject("edit_list", f"the edit list plays the video at rate {rate + fraction / 65536:g}")
    if media_time < 0:
        raise Reject("edit_list", f"the edit list starts at media time {media_time}")
    if not length or not movie_timescale:
        return media_time, None
    return media_time, round(length * timescale / movie_timescale)
