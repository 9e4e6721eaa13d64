"""Reading an MP4/MOV index (the `moov` box) with bounded reads, and the facts its sample tables hold.

The top-level ISO-BMFF boxes are walked from the object's head; the index is read where the walk finds
it. Size, rate, frame count, duration, codec and rotation come from the first video track's sample
tables, exactly and without decoding.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from longcat.data.fetched import FetchedBytes
from longcat.data.rejects import Reject

BOX_READ_BYTES = 64 * 1024
# What the walk may read for box headers, the index aside: 16 reads of BOX_READ_BYTES. Bounded by bytes,
# not boxes, so many small boxes before the index are fine; each header read brings BOX_READ_BYTES
# ahead, so the budget bounds the round trips too. A walk that needs more stops there.
MAX_WALK_BYTES = 16 * BOX_READ_BYTES
MAX_INDEX_BYTES = 256 * 1024 * 1024
CONTAINER_BOXES = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pdin", b"uuid", b"meta"}
CONTAINER_BOXES |= {b"moof", b"mfra", b"sidx", b"prft", b"emsg", b"ssix", b"junk", b"pnot", b"PICT"}


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


def is_iso_bmff(head: bytes) -> bool:
    """Whether the object's first 8 bytes are the header of a top-level ISO-BMFF (MP4/MOV) box."""
    return len(head) >= 8 and head[4:8] in CONTAINER_BOXES


def fetch_index(fetched: FetchedBytes) -> tuple[int, int]:
    """Walk the top-level boxes with bounded reads; returns the (offset, length) of `moov`.

    The header reads stop after MAX_WALK_BYTES: no moov by then is a truncated file, as is none at all.
    """
    size = fetched.size
    head = fetched.read(0, min(size, 8))
    if len(head) < 8:
        raise Reject("not_a_video", f"only {len(head)} bytes, too few for an MP4 box")
    if not is_iso_bmff(head):
        raise Reject("not_a_video", f"no ISO-BMFF box at the start (found {head[:8]!r})")
    offset, moov, walk_bytes = 0, None, 0
    while offset < size and walk_bytes <= MAX_WALK_BYTES:
        if size - offset < 8:
            raise Reject("truncated", f"{size - offset} stray bytes after the last box at offset {offset}")
        # Until moov is found, the next box is likely it (at the end of the file): read it in one go.
        # After it, headers are read with as much ahead, so that many small boxes cost few reads.
        before = fetched.bytes_read
        header_bytes = fetched.read(offset, offset + 16, BOX_READ_BYTES)
        walk_bytes += fetched.bytes_read - before
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
        "container": "mp4",
        "pix_fmt": None,
        "rotation": track.rotation,
    }
