"""Reading an MP4/MOV index (the `moov` box, and the `moof` boxes of a fragmented MP4) with bounded reads,
and the facts its sample tables hold.

The top-level ISO-BMFF boxes are walked from the object's head; the index is read where the walk finds
it, and in a fragmented MP4 (a `moov` with `mvex`, as streaming and capture tools write) the walk reads
every fragment's `moof` on its way, small reads that skip the media data between them. Size, rate, frame
count, duration, codec and rotation come from the first video track's sample tables (or fragments) and
its edit list (`longcat.data.timeline`), exactly and without decoding.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from longcat.data.boxes import box_header, child, children, u32
from longcat.data.fetched import FetchedBytes
from longcat.data.rejects import Reject
from longcat.data.timeline import edit_span, fragment_samples, table_samples, track_defaults

BOX_READ_BYTES = 64 * 1024
# What the walk may read for box headers, the index aside: 16 reads of BOX_READ_BYTES. Bounded by bytes,
# not boxes, so many small boxes before the index are fine; each header read brings BOX_READ_BYTES
# ahead, so the budget bounds the round trips too. A walk that needs more stops there.
MAX_WALK_BYTES = 16 * BOX_READ_BYTES
# In a fragmented MP4 each fragment's `moof` (with the next `mdat` header) is read with this much ahead,
# and the walk may read this much in all: 256 fragments. A moof lists its samples in 8-16 bytes each.
FRAGMENT_READ_BYTES = 16 * 1024
MAX_FRAGMENT_WALK_BYTES = 256 * FRAGMENT_READ_BYTES
MAX_INDEX_BYTES = 256 * 1024 * 1024
CONTAINER_BOXES = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pdin", b"uuid", b"meta"}
CONTAINER_BOXES |= {b"moof", b"mfra", b"sidx", b"prft", b"emsg", b"ssix", b"junk", b"pnot", b"PICT"}


@dataclass(frozen=True)
class Movie:
    """The index of an MP4: its `moov` box and, when fragmented, each `moof` box with its file offset."""

    moov: bytes
    fragments: tuple[tuple[int, bytes], ...] = ()


def _looks_like_box_type(box_type: bytes) -> bool:
    return all(32 <= byte < 127 for byte in box_type)


def is_iso_bmff(head: bytes) -> bool:
    """Whether the object's first 8 bytes are the header of a top-level ISO-BMFF (MP4/MOV) box."""
    return len(head) >= 8 and head[4:8] in CONTAINER_BOXES


def fetch_index(fetched: FetchedBytes) -> Movie:
    """Walk the top-level boxes with bounded reads; returns the `moov` box and, in a fragmented MP4,
    every `moof` box.

    The header reads stop after MAX_WALK_BYTES (MAX_FRAGMENT_WALK_BYTES once the index says the movie is
    fragmented): no moov by then is a truncated file, as is none at all, and a fragmented movie whose
    fragments were not all read is refused rather than measured short.
    """
    size = fetched.size
    head = fetched.read(0, min(size, 8))
    if len(head) < 8:
        raise Reject("not_a_video", f"only {len(head)} bytes, too few for an MP4 box")
    if not is_iso_bmff(head):
        raise Reject("not_a_video", f"no ISO-BMFF box at the start (found {head[:8]!r})")
    offset, moov, walk_bytes, budget, read_ahead = 0, None, 0, MAX_WALK_BYTES, BOX_READ_BYTES
    fragments: list[tuple[int, bytes]] | None = None  # a list once the index says the movie is fragmented
    while offset < size and walk_bytes <= budget:
        if size - offset < 8:
            raise Reject("truncated", f"{size - offset} stray bytes after the last box at offset {offset}")
        # Until moov is found, the next box is likely it (at the end of the file): read it in one go.
        # After it, headers are read with as much ahead, so that many small boxes cost few reads.
        before = fetched.bytes_read
        header_bytes = fetched.read(offset, offset + 16, read_ahead)
        walk_bytes += fetched.bytes_read - before
        try:
            box_type, header, length = box_header(header_bytes, size - offset)
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
        if box_type in (b"moov", b"moof") and length > MAX_INDEX_BYTES:
            raise Reject(
                "undecodable", f"{box_type.decode()} box of {length} bytes is larger than {MAX_INDEX_BYTES}"
            )
        if box_type == b"moov":
            moov = fetched.read(offset, offset + length)
            if _is_fragmented(moov):
                fragments, budget, read_ahead = [], MAX_FRAGMENT_WALK_BYTES, FRAGMENT_READ_BYTES
        elif box_type == b"moof" and fragments is not None:
            before = fetched.bytes_read
            fragments.append((offset, fetched.read(offset, offset + length, read_ahead)))
            walk_bytes += fetched.bytes_read - before
        offset += length
    if moov is None:
        raise Reject("truncated", "no moov box (the index): the file was cut off or never finished")
    if fragments is not None and offset < size:
        raise Reject(
            "undecodable",
            f"fragmented MP4 whose fragments take more than {budget} bytes of reads to list "
            f"(the walk stopped at offset {offset} of {size}, after {len(fragments)} fragments)",
        )
    return Movie(moov, tuple(fragments or ()))


def _is_fragmented(moov: bytes) -> bool:
    body = child(moov, 0, len(moov), b"moov")
    return body is not None and child(moov, *body, b"mvex") is not None


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
    """What the sample tables (or fragments) and edit list of the first video track say, without touching
    the media data. Durations are in the track's timescale."""

    codec: str
    width: int
    height: int
    sample_aspect: float
    rotation: int
    timescale: int
    media_duration: int  # of every stored sample
    sample_count: int
    common_delta: int
    first_sample: tuple[int, int] | None
    codec_config: bytes | None = None
    played_duration: int = 0  # what plays: the edit list's span, else the media
    played_count: int = 0  # the samples shown in it

    @property
    def fps_real(self) -> float | None:
        return self.timescale / self.common_delta if self.common_delta else None


def _rotation_from_matrix(tkhd: bytes, start: int) -> int:
    matrix_at = start + (52 if tkhd[start] == 1 else 40)
    a, b = struct.unpack(">ii", tkhd[matrix_at : matrix_at + 8])
    # The same convention as ffprobe's "rotation" of the display matrix (counter-clockwise degrees).
    return int(round(-math.degrees(math.atan2(b, a)))) % 360


def _first_stored_sample(moov: bytes, boxes: dict, sample_size: int) -> tuple[int, int] | None:
    """(file offset, bytes) of the first sample in a sample table."""
    chunk_offsets = boxes[b"stco"] or boxes[b"co64"]
    if not chunk_offsets:
        return None
    first_size = sample_size or u32(moov, boxes[b"stsz"][0] + 12)
    if boxes[b"stco"]:
        return u32(moov, chunk_offsets[0] + 8), first_size
    return struct.unpack(">Q", moov[chunk_offsets[0] + 8 : chunk_offsets[0] + 16])[0], first_size


def _video_track(movie: Movie, movie_timescale: int, start: int, end: int) -> VideoTrack | None:
    moov = movie.moov
    mdia = child(moov, start, end, b"mdia")
    hdlr = mdia and child(moov, *mdia, b"hdlr")
    if not hdlr or moov[hdlr[0] + 8 : hdlr[0] + 12] != b"vide":
        return None
    tkhd, mdhd = child(moov, start, end, b"tkhd"), child(moov, *mdia, b"mdhd")
    minf = child(moov, *mdia, b"minf")
    stbl = minf and child(moov, *minf, b"stbl")
    names = (b"stsd", b"stts", b"ctts", b"stsz", b"stco", b"co64")
    boxes = {name: stbl and child(moov, *stbl, name) for name in names}
    if not (tkhd and mdhd and boxes[b"stsd"] and boxes[b"stsz"]):
        raise Reject("undecodable", "the video track has no complete sample table")
    if moov[mdhd[0]] == 1:
        timescale, media_duration = struct.unpack(">IQ", moov[mdhd[0] + 20 : mdhd[0] + 32])
    else:
        timescale, media_duration = struct.unpack(">II", moov[mdhd[0] + 12 : mdhd[0] + 20])
    entry = boxes[b"stsd"][0] + 8  # version/flags and entry count, then the first sample entry
    codec_tag = moov[entry + 4 : entry + 8]
    width, height = struct.unpack(">HH", moov[entry + 32 : entry + 36])
    entry_end = entry + u32(moov, entry)
    codec = CODEC_NAMES.get(codec_tag, codec_tag.decode("latin-1").strip())
    pasp = child(moov, entry + 86, entry_end, b"pasp")
    config_box = DIRECT_DECODE_CONFIG.get(codec)
    config = config_box and child(moov, entry + 86, entry_end, config_box)
    sample_aspect = 1.0
    if pasp:
        h_spacing, v_spacing = struct.unpack(">II", moov[pasp[0] : pasp[0] + 8])
        sample_aspect = h_spacing / v_spacing if h_spacing and v_spacing else 1.0
    sample_size, sample_count = struct.unpack(">II", moov[boxes[b"stsz"][0] + 4 : boxes[b"stsz"][0] + 12])
    first = _first_stored_sample(moov, boxes, sample_size) if sample_count else None
    samples = table_samples(moov, boxes[b"stts"], boxes[b"ctts"], sample_count, first)
    if movie.fragments:
        # The fragments' samples follow those of the sample table (none, with an empty moov).
        track_id = u32(moov, tkhd[0] + (20 if moov[tkhd[0]] == 1 else 12))
        mvex = child(moov, *child(moov, 0, len(moov), b"moov"), b"mvex")
        fragments = fragment_samples(
            movie.fragments, track_id, track_defaults(moov, mvex, track_id), samples.end
        )
        samples = samples.followed_by(fragments)
        media_duration = int(samples.durations.sum())
    played_duration, played_count = samples.played(
        edit_span(moov, (start, end), movie_timescale, timescale), media_duration
    )
    return VideoTrack(
        codec=codec,
        width=width,
        height=height,
        sample_aspect=sample_aspect,
        rotation=_rotation_from_matrix(moov, tkhd[0]),
        timescale=timescale,
        media_duration=media_duration,
        sample_count=samples.count,
        common_delta=samples.common_duration,
        first_sample=samples.first,
        codec_config=moov[config[0] : config[1]] if config else None,
        played_duration=played_duration,
        played_count=played_count,
    )


def _movie_timescale(moov: bytes, body: tuple[int, int]) -> int:
    mvhd = child(moov, *body, b"mvhd")
    if mvhd is None:
        return 0
    return u32(moov, mvhd[0] + (20 if moov[mvhd[0]] == 1 else 12))


def parse_video_track(movie: Movie) -> VideoTrack:
    """The first video track of a movie: its `moov` box (the whole box, header included) and fragments."""
    moov = movie.moov
    body = child(moov, 0, len(moov), b"moov")
    if body is None:
        raise Reject("undecodable", "the moov box could not be parsed")
    try:
        movie_timescale = _movie_timescale(moov, body)
        for box_type, start, end in children(moov, *body):
            if box_type == b"trak":
                track = _video_track(movie, movie_timescale, start, end)
                if track is not None:
                    return track
    except (struct.error, IndexError, ValueError) as error:
        raise Reject("undecodable", f"corrupt sample table in moov: {error}") from None
    raise Reject("no_video_stream", "the file holds no video track (audio or data only)")


def first_video_sample(movie: Movie) -> tuple[int, int] | None:
    """(file offset, byte length) of the first sample of the first video track, from its sample tables."""
    return parse_video_track(movie).first_sample


def track_columns(track: VideoTrack) -> dict:
    """The probe record's video columns. `width`/`height` are the stored frame's; `rotation` turns it.
    `duration` and `num_frames` are what plays (the edit list's span); `fps` is the stored samples' rate."""
    if track.width <= 0 or track.height <= 0:
        raise Reject("undecodable", f"{track.codec} track with no frame size ({track.width}x{track.height})")
    if not track.sample_count or not track.media_duration or not track.timescale:
        raise Reject("undecodable", "no samples in the index or its fragments (an empty track)")
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
        "num_frames": track.played_count,
        "duration": track.played_duration / track.timescale,
        "codec": track.codec,
        "container": "mp4",
        "pix_fmt": None,
        "rotation": track.rotation,
    }
