"""Header-only probing of MP4/MOV clips through bounded range reads.

ffprobe pointed at a URL reads open-ended ranges and the server streams far more than the header.
Instead the object's head and tail are read at once (two ranged GETs in flight, so the `moov` index
arrives in one round trip whether it sits at the start or the end), and the top-level ISO-BMFF boxes
are walked from there; a larger index is read where the walk finds it. Size, rate, frame count,
duration, codec and rotation come from its sample tables, exactly and without decoding. The decode
check hands FFmpeg's decoder (PyAV, in this process: no ffprobe to start per clip) the start of the
first picture: the codec configuration, the first sample's leading NAL units and up to
DECODE_CHECK_BYTES of its first slice, which the head read already holds in the usual layouts.

Each object ends as one record: probed facts, or a reject with one of REJECT_REASONS and a detail.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import av
import pyarrow as pa

from longcat.captions import decode_caption
from longcat.source import Source, SourceError, sanitize

log = logging.getLogger(__name__)

# The first reads, at once: a short clip's whole index sits in one of them, at the start or at the end.
HEAD_BYTES = 16 * 1024
TAIL_BYTES = 16 * 1024
BOX_READ_BYTES = 64 * 1024
# The first slice's leading bytes that the decode check decodes: its header and first macroblock rows.
# A broken configuration or slice header fails there; damage further in is concealed by FFmpeg's decoder
# whether it gets these bytes or the whole picture, so reading the rest would cost bytes, not rejects.
DECODE_CHECK_BYTES = 8 * 1024
MAX_TOP_LEVEL_BOXES = 64
MAX_INDEX_BYTES = 256 * 1024 * 1024
CONTAINER_BOXES = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pdin", b"uuid", b"meta"}
CONTAINER_BOXES |= {b"moof", b"mfra", b"sidx", b"prft", b"emsg", b"ssix", b"junk", b"pnot", b"PICT"}

REJECT_REASONS = (
    "zero_bytes",
    "not_a_video",
    "no_video_stream",
    "truncated",
    "undecodable",
    "too_short",
    "too_small",
    "missing_caption",
    "empty_caption",
    "read_error",
)
# Reasons that depend on the network, not on the object: never kept for reuse.
TRANSIENT_REASONS = frozenset({"read_error"})

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
        ("pix_fmt", pa.string()),
        ("rotation", pa.int32()),
        ("caption", pa.string()),
        ("caption_encoding", pa.string()),
        ("caption_fixups", pa.string()),
        ("probe_bytes", pa.int64()),
    ]
)


class Reject(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# Caption reads in flight beside the video's own.
_caption_reads = ThreadPoolExecutor(max_workers=64, thread_name_prefix="probe-caption")


@dataclass
class FetchedBytes:
    """Pieces of one object, by offset (disjoint, merged where they touch), and the bytes reads returned."""

    source: Source
    key: str
    size: int
    pieces: dict[int, bytes] = field(default_factory=dict)
    bytes_read: int = 0

    def _get(self, start: int, end: int) -> bytes:
        data = self.source.read_range(self.key, start, end)
        self.bytes_read += len(data)
        return data

    def _add(self, start: int, data: bytes) -> None:
        self.pieces[start] = data
        merged: dict[int, bytes] = {}
        for offset, piece in sorted(self.pieces.items()):
            last = max(merged, default=None)
            if last is not None and last + len(merged[last]) >= offset:
                merged[last] += piece[last + len(merged[last]) - offset :]
            else:
                merged[offset] = piece
        self.pieces = merged

    def read_ends(self, head: int, tail: int) -> None:
        """Reads the first `head` and the last `tail` bytes at once: one round trip for both ends."""
        if self.size <= head + tail:
            self.read(0, self.size)
            return
        tail_start = self.size - tail
        head_data, tail_data = self.source.read_ranges(self.key, [(0, head), (tail_start, self.size)])
        self.bytes_read += len(head_data) + len(tail_data)
        self._add(0, head_data)
        self._add(tail_start, tail_data)

    def read(self, start: int, end: int, read_ahead: int = 0) -> bytes:
        """Bytes [start, end); missing ones are read, the last gap with up to `read_ahead` bytes more."""
        end = min(end, self.size)
        cursor = start
        for offset, data in sorted(self.pieces.items()):
            if offset >= end:
                break
            if offset > cursor:
                self._add(cursor, self._get(cursor, offset))
            cursor = max(cursor, offset + len(data))
        if cursor < end:
            next_piece = min((offset for offset in self.pieces if offset >= end), default=self.size)
            self._add(cursor, self._get(cursor, min(next_piece, max(end, start + read_ahead))))
        for offset, data in self.pieces.items():
            if offset <= start and end <= offset + len(data):
                return data[start - offset : end - offset]
        raise Reject("truncated", f"the object returned fewer bytes than its size ({self.size}) promises")


def _box_header(data: bytes, size_left: int) -> tuple[bytes, int, int]:
    """(type, header length, box length) of the box at the start of `data`."""
    length, box_type = struct.unpack(">I4s", data[:8])
    header = 8
    if length == 1:
        if len(data) < 16:
            raise ValueError("64-bit box size cut off")
        length = struct.unpack(">Q", data[8:16])[0]
        header = 16
    elif length == 0:
        length = size_left
    return box_type, header, length


def _looks_like_box_type(box_type: bytes) -> bool:
    return all(32 <= byte < 127 for byte in box_type)


def fetch_index(fetched: FetchedBytes) -> tuple[int, int]:
    """Walk the top-level boxes with bounded reads; returns the (offset, length) of `moov`."""
    size = fetched.size
    head = fetched.read(0, min(size, 8))
    if len(head) < 8:
        raise Reject("not_a_video", f"only {len(head)} bytes, too few for an MP4 box")
    first_type = struct.unpack(">4s", head[4:8])[0]
    if first_type not in CONTAINER_BOXES:
        raise Reject("not_a_video", f"no ISO-BMFF box at the start (found {head[:8]!r})")
    offset, moov = 0, None
    for _ in range(MAX_TOP_LEVEL_BOXES):
        if offset >= size:
            break
        if size - offset < 8:
            raise Reject("truncated", f"{size - offset} stray bytes after the last box at offset {offset}")
        # Until moov is found, the next box is likely it (at the end of the file): read it in one go.
        header_bytes = fetched.read(offset, offset + 16, 0 if moov else BOX_READ_BYTES)
        try:
            box_type, header, length = _box_header(header_bytes, size - offset)
        except ValueError as error:
            raise Reject("truncated", f"box header at offset {offset}: {error}") from None
        if not _looks_like_box_type(box_type) or length < header:
            raise Reject("undecodable", f"corrupt box header at offset {offset} ({header_bytes[:8]!r})")
        if offset + length > size:
            raise Reject(
                "truncated",
                f"{box_type.decode('latin-1')} box at offset {offset} needs {length} bytes, "
                f"the object ends after {size - offset}",
            )
        if box_type == b"moov":
            if length > MAX_INDEX_BYTES:
                raise Reject("undecodable", f"moov box of {length} bytes is larger than {MAX_INDEX_BYTES}")
            fetched.read(offset, offset + length)
            moov = (offset, length)
        offset += length
    if moov is None:
        raise Reject("truncated", "no moov box (the index): the file was cut off or never finished")
    return moov


def _children(data: bytes, start: int, end: int):
    offset = start
    while offset + 8 <= end:
        box_type, header, length = _box_header(data[offset : offset + 16], end - offset)
        if length < header or offset + length > end:
            return
        yield box_type, offset + header, offset + length
        offset += length


def _child(data: bytes, start: int, end: int, name: bytes) -> tuple[int, int] | None:
    for box_type, body, box_end in _children(data, start, end):
        if box_type == name:
            return body, box_end
    return None


CODEC_NAMES = {
    b"avc1": "h264",
    b"avc3": "h264",
    b"hvc1": "hevc",
    b"hev1": "hevc",
    b"av01": "av1",
    b"vp09": "vp9",
    b"vp08": "vp8",
    b"mp4v": "mpeg4",
    b"apcn": "prores",
    b"apch": "prores",
    b"mjpa": "mjpeg",
}
# The common codecs, whose first sample decodes with the sample entry's configuration box as FFmpeg's
# extradata (as its MP4 demuxer passes it). Others go through FFmpeg's demuxer, which picks the decoder.
DIRECT_DECODE_CONFIG = {"h264": b"avcC", "hevc": b"hvcC"}


@dataclass(frozen=True)
class VideoTrack:
    """What the sample tables of the first video track say, without touching the media data."""

    codec: str
    width: int
    height: int
    sample_aspect: float
    rotation: int
    timescale: int
    media_duration: int
    sample_count: int
    common_delta: int
    first_sample: tuple[int, int] | None
    codec_config: bytes | None = None

    @property
    def duration(self) -> float:
        return self.media_duration / self.timescale

    @property
    def fps(self) -> float | None:
        return self.sample_count / self.duration if self.media_duration else None

    @property
    def fps_real(self) -> float | None:
        return self.timescale / self.common_delta if self.common_delta else None


def _u32(data: bytes, offset: int) -> int:
    return struct.unpack(">I", data[offset : offset + 4])[0]


def _rotation_from_matrix(tkhd: bytes, start: int) -> int:
    matrix_at = start + (52 if tkhd[start] == 1 else 40)
    a, b = struct.unpack(">ii", tkhd[matrix_at : matrix_at + 8])
    # The same convention as ffprobe's "rotation" of the display matrix (counter-clockwise degrees).
    return int(round(-math.degrees(math.atan2(b, a)))) % 360


def _video_track(moov: bytes, start: int, end: int) -> VideoTrack | None:
    mdia = _child(moov, start, end, b"mdia")
    hdlr = mdia and _child(moov, *mdia, b"hdlr")
    if not hdlr or moov[hdlr[0] + 8 : hdlr[0] + 12] != b"vide":
        return None
    tkhd, mdhd = _child(moov, start, end, b"tkhd"), _child(moov, *mdia, b"mdhd")
    minf = _child(moov, *mdia, b"minf")
    stbl = minf and _child(moov, *minf, b"stbl")
    boxes = {
        name: stbl and _child(moov, *stbl, name) for name in (b"stsd", b"stts", b"stsz", b"stco", b"co64")
    }
    if not (tkhd and mdhd and boxes[b"stsd"] and boxes[b"stsz"]):
        raise Reject("undecodable", "the video track has no complete sample table")
    if moov[mdhd[0]] == 1:
        timescale, media_duration = struct.unpack(">IQ", moov[mdhd[0] + 20 : mdhd[0] + 32])
    else:
        timescale, media_duration = struct.unpack(">II", moov[mdhd[0] + 12 : mdhd[0] + 20])
    entry = boxes[b"stsd"][0] + 8  # version/flags and entry count, then the first sample entry
    codec_tag = moov[entry + 4 : entry + 8]
    width, height = struct.unpack(">HH", moov[entry + 32 : entry + 36])
    entry_end = entry + _u32(moov, entry)
    codec = CODEC_NAMES.get(codec_tag, codec_tag.decode("latin-1").strip())
    pasp = _child(moov, entry + 86, entry_end, b"pasp")
    config_box = DIRECT_DECODE_CONFIG.get(codec)
    config = config_box and _child(moov, entry + 86, entry_end, config_box)
    sample_aspect = 1.0
    if pasp:
        h_spacing, v_spacing = struct.unpack(">II", moov[pasp[0] : pasp[0] + 8])
        sample_aspect = h_spacing / v_spacing if h_spacing and v_spacing else 1.0
    sample_size, sample_count = struct.unpack(">II", moov[boxes[b"stsz"][0] + 4 : boxes[b"stsz"][0] + 12])
    common_delta = 0
    if boxes[b"stts"]:
        stts = boxes[b"stts"][0]
        runs = [
            struct.unpack(">II", moov[stts + 8 + 8 * i : stts + 16 + 8 * i])
            for i in range(_u32(moov, stts + 4))
        ]
        common_delta = max(runs, key=lambda run: run[0])[1] if runs else 0
    first_sample = None
    chunk_offsets = boxes[b"stco"] or boxes[b"co64"]
    if sample_count and chunk_offsets:
        first_size = sample_size or _u32(moov, boxes[b"stsz"][0] + 12)
        if boxes[b"stco"]:
            first_offset = _u32(moov, chunk_offsets[0] + 8)
        else:
            first_offset = struct.unpack(">Q", moov[chunk_offsets[0] + 8 : chunk_offsets[0] + 16])[0]
        first_sample = (first_offset, first_size)
    return VideoTrack(
        codec=codec,
        width=width,
        height=height,
        sample_aspect=sample_aspect,
        rotation=_rotation_from_matrix(moov, tkhd[0]),
        timescale=timescale,
        media_duration=media_duration,
        sample_count=sample_count,
        common_delta=common_delta,
        first_sample=first_sample,
        codec_config=moov[config[0] : config[1]] if config else None,
    )


def parse_video_track(moov: bytes) -> VideoTrack:
    """The first video track of a `moov` box (the whole box, header included)."""
    body = _child(moov, 0, len(moov), b"moov")
    if body is None:
        raise Reject("undecodable", "the moov box could not be parsed")
    try:
        for box_type, start, end in _children(moov, *body):
            if box_type == b"trak":
                track = _video_track(moov, start, end)
                if track is not None:
                    return track
    except (struct.error, IndexError, ValueError) as error:
        raise Reject("undecodable", f"corrupt sample table in moov: {error}") from None
    raise Reject("no_video_stream", "the file holds no video track (audio or data only)")


def first_video_sample(moov: bytes) -> tuple[int, int] | None:
    """(file offset, byte length) of the first sample of the first video track, from its sample tables."""
    return parse_video_track(moov).first_sample


def track_columns(track: VideoTrack) -> dict:
    """The probe record's video columns. `width`/`height` are the stored frame's; `rotation` turns it."""
    if track.width <= 0 or track.height <= 0:
        raise Reject("undecodable", f"{track.codec} track with no frame size ({track.width}x{track.height})")
    if not track.sample_count or not track.media_duration or not track.timescale:
        raise Reject("undecodable", "no samples in the index (fragmented MP4 or an empty track)")
    # Aspect of the stored (unrotated) frame with its pixel aspect; `aspect_ratio` is what a player shows.
    display_aspect = track.width * track.sample_aspect / track.height
    fps = track.sample_count * track.timescale / track.media_duration
    return {
        "width": track.width,
        "height": track.height,
        "display_aspect": display_aspect,
        "aspect_ratio": 1.0 / display_aspect if track.rotation in (90, 270) else display_aspect,
        "fps": fps,
        "fps_real": track.fps_real or fps,
        "num_frames": track.sample_count,
        "duration": track.duration,
        "codec": track.codec,
        "pix_fmt": None,
        "rotation": track.rotation,
    }


class SparseObject(io.RawIOBase):
    """A read-only file of the object's size: the fetched pieces at their offsets, zeros elsewhere."""

    def __init__(self, fetched: FetchedBytes):
        super().__init__()
        self.pieces = sorted(fetched.pieces.items())
        self.size = fetched.size
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self.size - self.position))
        view = memoryview(buffer)
        view[:count] = bytes(count)
        for offset, data in self.pieces:
            start, end = max(offset, self.position), min(offset + len(data), self.position + count)
            if start < end:
                view[start - self.position : end - self.position] = data[start - offset : end - offset]
        self.position += count
        return count


def _first_frames(frames_of_packets) -> list:
    try:
        return frames_of_packets()
    except av.FFmpegError as error:
        raise Reject("undecodable", f"FFmpeg could not decode the first video frame: {error}") from None


def _nal_length_size(track: VideoTrack) -> int:
    """Bytes of the length prefix before each NAL unit in a sample, from the avcC/hvcC configuration."""
    at = 4 if track.codec == "h264" else 21
    if len(track.codec_config) <= at:
        raise Reject(
            "undecodable", f"{track.codec} configuration of {len(track.codec_config)} bytes is cut off"
        )
    return (track.codec_config[at] & 3) + 1


def _is_picture_nal(codec: str, first_byte: int) -> bool:
    if codec == "h264":
        return 1 <= first_byte & 0x1F <= 5
    return (first_byte >> 1) & 0x3F < 32  # HEVC: NAL unit types 0-31 carry slice data


def first_picture_bytes(fetched: FetchedBytes, track: VideoTrack, budget: int = DECODE_CHECK_BYTES) -> bytes:
    """The first sample's NAL units up to its first slice, that slice cut to `budget` bytes (its length
    prefix rewritten to match): a packet FFmpeg decodes into the first frame's leading macroblocks."""
    start, length = track.first_sample
    prefix = _nal_length_size(track)
    packet, offset = [], 0
    while offset + prefix < length:
        header = fetched.read(start + offset, start + offset + prefix + 1)
        nal_length = int.from_bytes(header[:prefix], "big")
        if nal_length == 0 or offset + prefix + nal_length > length:
            raise Reject(
                "undecodable",
                f"NAL unit at byte {offset} of the first {track.codec} sample claims {nal_length} bytes "
                f"of the {length - offset - prefix} left",
            )
        picture = _is_picture_nal(track.codec, header[prefix])
        keep = min(nal_length, budget) if picture else nal_length
        body_at = start + offset + prefix
        packet += [keep.to_bytes(prefix, "big"), fetched.read(body_at, body_at + keep)]
        if picture:
            return b"".join(packet)
        offset += prefix + nal_length
    raise Reject("undecodable", f"the first {track.codec} sample holds no picture (slice) NAL unit")


def decoded_pixel_format(fetched: FetchedBytes, track: VideoTrack) -> tuple[str, str]:
    """Decode the first video frame from the fetched pieces: (pixel format, codec).

    H.264 and HEVC decode the start of the first picture straight from the index's codec configuration,
    with error concealment off (it would fill in the rest of the frame, which costs more than the
    decode). Others are opened with FFmpeg's demuxer over the sparse view of the index and the whole
    first sample, which also names their codec from the descriptors (`mp4v` holds MPEG-4 Part 2 or
    MJPEG). Either way nothing outside the fetched pieces is read.
    """
    codec = track.codec
    if track.codec_config is not None:
        packet = av.Packet(first_picture_bytes(fetched, track))

        def decode():
            decoder = av.CodecContext.create(track.codec, "r")
            decoder.extradata = track.codec_config
            decoder.thread_count = 1  # one small frame; the probe pool already runs clips in parallel
            decoder.options = {"ec": "0"}
            return decoder.decode(packet) or decoder.decode(None)

        frames = _first_frames(decode)
    else:
        start, length = track.first_sample
        fetched.read(start, start + length)

        def demux_and_decode():
            options = {"probesize": "32", "analyzeduration": "0"}
            with av.open(SparseObject(fetched), options=options) as container:
                if not container.streams.video:
                    return []
                nonlocal codec
                stream = container.streams.video[0]
                codec = stream.codec_context.codec.canonical_name
                stream.codec_context.thread_count = 1
                for packet in container.demux(stream):
                    return packet.decode() or stream.codec_context.decode(None)
            return []

        frames = _first_frames(demux_and_decode)
    if not frames:
        raise Reject("undecodable", f"the first {codec} frame did not decode")
    return frames[0].format.name, codec


def probe_video(source: Source, key: str, size: int, decode_check: bool = True) -> tuple[dict, int]:
    """Probe one object from its index (and first picture); returns (columns, bytes read) or raises Reject.

    Facts come from the sample tables; with `decode_check`, FFmpeg also decodes the start of the first
    frame, which rejects undecodable streams and fills in the pixel format.
    """
    if size == 0:
        raise Reject("zero_bytes", "the object is empty")
    fetched = FetchedBytes(source, key, size)
    try:
        # In the usual layouts the head holds the first picture's start too: after a short `ftyp` when
        # the index is at the end, after the index when it is at the start.
        fetched.read_ends(HEAD_BYTES + (DECODE_CHECK_BYTES if decode_check else 0), TAIL_BYTES)
        moov_offset, moov_length = fetch_index(fetched)
        track = parse_video_track(fetched.read(moov_offset, moov_offset + moov_length))
        columns = track_columns(track)
        if decode_check:
            if track.first_sample is None:
                raise Reject("undecodable", "the video track has no chunk offsets")
            start, length = track.first_sample
            if start + length > size:
                raise Reject("truncated", f"the first video sample ends at {start + length}, past {size}")
            columns["pix_fmt"], columns["codec"] = decoded_pixel_format(fetched, track)
    except Reject as reject:
        reject.bytes_read = fetched.bytes_read
        raise
    return columns, fetched.bytes_read


def _empty_record(row: Mapping) -> dict:
    record = dict.fromkeys(PROBE_SCHEMA.names)
    for name in ("key", "caption_key", "etag", "size", "caption_etag"):
        record[name] = row.get(name)
    record["probe_bytes"] = 0
    return record


def probe_object(source: Source, row: Mapping, decode_check: bool = True) -> dict:
    """The probe record of one manifest row: facts and caption, or a reason it is rejected."""
    record = _empty_record(row)
    key = row["key"]
    try:
        if row["size"] == 0:
            raise Reject("zero_bytes", "the object is empty")
        if not row.get("caption_key"):
            stem = os.path.splitext(key)[0]
            raise Reject("missing_caption", f"no caption {stem}.txt beside the video")
        # The caption is read beside the video's first reads; its rejects come first.
        caption_read = _caption_reads.submit(source.read_all, row["caption_key"])
        try:
            video, video_reject = probe_video(source, key, int(row["size"]), decode_check), None
        except Reject as reject:
            video, video_reject = None, reject
        caption = decode_caption(caption_read.result())
        if not caption.text:
            raise Reject("empty_caption", f"{row['caption_key']} holds no text")
        record.update(
            caption=caption.text, caption_encoding=caption.encoding, caption_fixups=caption.fixups_text
        )
        if video_reject is not None:
            raise video_reject
        columns, bytes_read = video
        record.update(columns)
        record["probe_bytes"] = bytes_read
    except Reject as reject:
        record.update(
            reason=reject.reason, detail=reject.detail, probe_bytes=getattr(reject, "bytes_read", 0)
        )
    except (SourceError, OSError) as error:
        record.update(reason="read_error", detail=sanitize(error))
    except (struct.error, ValueError, IndexError) as error:
        # Malformed boxes the walk did not foresee: a reject of this object, not a failed chunk.
        log.warning("%s: malformed container (%s: %s)", key, type(error).__name__, error)
        record.update(reason="undecodable", detail=f"malformed container: {type(error).__name__}: {error}")
    return record


def reuse_key(row: Mapping) -> tuple:
    return (row["key"], row["etag"], row["size"], row["caption_etag"])


def probe_rows(
    source: Source,
    rows: Iterable[Mapping],
    previous: Iterable[Mapping] = (),
    workers: int = 8,
    decode_check: bool = True,
) -> tuple[list[dict], int]:
    """Probe records for `rows`, reusing previous records whose key, etag, size and caption etag match.

    Returns the records in the order of `rows` and how many were probed afresh.
    """
    rows = list(rows)
    known = {
        reuse_key(record): record for record in previous if record.get("reason") not in TRANSIENT_REASONS
    }
    todo = [row for row in rows if reuse_key(row) not in known]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        probed = pool.map(lambda row: probe_object(source, row, decode_check), todo)
        fresh = {reuse_key(row): record for row, record in zip(todo, probed, strict=True)}
    records = []
    for row in rows:
        record = dict(known.get(reuse_key(row)) or fresh[reuse_key(row)])
        record["caption_key"] = row.get("caption_key")
        records.append(record)
    return records, len(todo)
