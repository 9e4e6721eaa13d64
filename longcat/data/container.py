"""The fallback probe of clips that are not ISO-BMFF (Matroska/WebM, AVI, MPEG-TS, ...), whatever their name.

These containers have no index that states every fact up front, so FFmpeg's demuxer (PyAV, in this
process) reads them as it would a file: through a view of the object whose reads go to the source on
demand, READ_AHEAD_BYTES at a time. The view ends once FALLBACK_PROBE_BYTES have been read in all (the
head and tail reads of `longcat.data.probe` included): past that the demuxer sees the end of the file,
so a probe never reads more, however large the object. Stream facts come from the demuxer's headers
and its look at the first packets; with the decode check on, the first picture is decoded.
"""

from __future__ import annotations

from fractions import Fraction

import av

from longcat.data.fetched import FetchedBytes, ObjectFile
from longcat.data.rejects import Reject

# The most bytes one fallback probe reads from an object.
FALLBACK_PROBE_BYTES = 4 * 1024 * 1024
# Each read of the source while the demuxer reads: larger than FFmpeg's own 32 KiB reads, so the
# header and first packets arrive in a few round trips.
READ_AHEAD_BYTES = 256 * 1024
# How much the demuxer may read to recognise the format, and then to find the streams' parameters;
# together they leave room for the tail read that MPEG-TS needs for its duration.
FORMAT_PROBE_BYTES = 256 * 1024
STREAM_PROBE_BYTES = 2 * 1024 * 1024
# Containers of video that this probe accepts (FFmpeg's demuxer names; "mov,..." is ISO-BMFF whose first
# box the MP4 path's walk does not know). FFmpeg also recognises audio, image, subtitle and text formats
# from a few bytes; none of those is a training clip.
FALLBACK_FORMATS = frozenset(
    {"matroska,webm", "avi", "mpegts", "mpeg", "flv", "asf", "ogg", "mxf", "nut", "ivf", "rm"}
    | {"mov,mp4,m4a,3gp,3g2,mj2"}
)


class BoundedObject(ObjectFile):
    """Reads the source on demand until `budget` bytes have been read from the object in all."""

    def __init__(self, fetched: FetchedBytes, budget: int):
        super().__init__(fetched)
        self.budget = budget
        self.exhausted = False

    def _held(self, start: int, count: int) -> bytes:
        for offset, data in self.fetched.pieces.items():
            if offset <= start < offset + len(data):
                return data[start - offset : start - offset + count]
        return b""

    def readinto(self, buffer) -> int:
        start = self.position
        count = min(len(buffer), self.fetched.size - start)
        if count <= 0:
            return 0
        allowed = self.budget - self.fetched.bytes_read
        data = self._held(start, count)
        if len(data) < count and allowed > 0:
            data = self.fetched.read(start, start + min(count, allowed), min(READ_AHEAD_BYTES, allowed))
        if len(data) < count:
            self.exhausted = True
        memoryview(buffer)[: len(data)] = data
        self.position += len(data)
        return len(data)


def _open(view: BoundedObject):
    options = {"formatprobesize": str(FORMAT_PROBE_BYTES), "probesize": str(STREAM_PROBE_BYTES)}
    try:
        return av.open(view, options=options)
    except av.error.InvalidDataError:
        raise Reject("not_a_video", "neither an ISO-BMFF box walk nor any FFmpeg demuxer reads it") from None
    except av.FFmpegError as error:
        raise Reject("undecodable", f"FFmpeg could not open the container: {error}") from None


def _first_frame(container, stream):
    try:
        for packet in container.demux(stream):
            frames = packet.decode()
            if frames:
                return frames[0]
    except av.FFmpegError as error:
        raise Reject("undecodable", f"FFmpeg could not decode the first video frame: {error}") from None
    return None


def _duration(container, stream) -> float | None:
    """Seconds of video: the stream's own duration, else the container's (which FFmpeg may estimate from
    the bit rate and the object's size)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def probe_container(fetched: FetchedBytes, decode_check: bool = True) -> dict:
    """The probe record's video columns of a non-ISO-BMFF object, read by FFmpeg's demuxer; raises Reject.

    The rotation is the first decoded frame's display matrix (0 without `decode_check`); the duration is
    the demuxer's, and a probe whose demuxer wanted more than the bound is rejected rather than trusted.
    """
    view = BoundedObject(fetched, FALLBACK_PROBE_BYTES)
    with _open(view) as container:
        name = container.format.name
        if name not in FALLBACK_FORMATS:
            raise Reject(
                "not_a_video", f"FFmpeg reads it as {container.format.long_name} ({name}), not video"
            )
        if not container.streams.video:
            raise Reject("no_video_stream", f"the {name} container holds no video stream")
        if view.exhausted:
            # The demuxer wanted bytes past the bound (a tail read for the timestamps, say): what it found
            # from a cut-off read, a duration above all, cannot be trusted.
            raise Reject(
                "undecodable", f"{name}: FFmpeg's demuxer needs more than the first {view.budget} bytes"
            )
        stream = container.streams.video[0]
        context = stream.codec_context
        codec = context.codec.canonical_name
        if context.width <= 0 or context.height <= 0:
            raise Reject("undecodable", f"{name}: no {codec} frame size found")
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise Reject("undecodable", f"{name}: no frame rate found")
        duration = _duration(container, stream)
        if not duration or duration <= 0:
            raise Reject("undecodable", f"{name}: no duration in the container's headers or timestamps")
        pix_fmt, rotation = context.format.name if context.format else None, 0
        if decode_check:
            context.thread_count = 1  # one frame; the probe pool already runs clips in parallel
            frame = _first_frame(container, stream)
            if frame is None:
                within = f"in the first {view.budget} bytes" if view.exhausted else "in the object"
                raise Reject("undecodable", f"the first {codec} frame did not decode {within}")
            pix_fmt, rotation = frame.format.name, int(round(frame.rotation or 0)) % 360
        sample_aspect = stream.sample_aspect_ratio or Fraction(1)
        display_aspect = context.width * float(sample_aspect) / context.height
        fps = float(rate)
        return {
            "container": name,
            "width": context.width,
            "height": context.height,
            "display_aspect": display_aspect,
            "aspect_ratio": 1.0 / display_aspect if rotation in (90, 270) else display_aspect,
            "fps": fps,
            "fps_real": float(stream.base_rate or rate),
            "num_frames": stream.frames or round(duration * fps),
            "duration": duration,
            "codec": codec,
            "pix_fmt": pix_fmt,
            "rotation": rotation,
        }
