"""The decode check: FFmpeg's decoder (PyAV, in this process) decodes the start of the first picture.

It gets the codec configuration, the first sample's leading NAL units and up to DECODE_CHECK_BYTES of
its first slice, which the probe's head read already holds in the usual layouts. A broken configuration
or slice header fails there; damage further in is concealed by FFmpeg's decoder whether it gets these
bytes or the whole picture, so reading the rest would cost bytes, not rejects.
"""

from __future__ import annotations

import av

from longcat.data.fetched import FetchedBytes, ObjectFile
from longcat.data.mp4 import VideoTrack
from longcat.data.rejects import Reject

# The first slice's leading bytes that the decode check decodes: its header and first macroblock rows.
DECODE_CHECK_BYTES = 8 * 1024


class SparseObject(ObjectFile):
    """The fetched pieces at their offsets, zeros elsewhere: nothing is read from the source."""

    def __init__(self, fetched: FetchedBytes):
        super().__init__(fetched)
        self.pieces = sorted(fetched.pieces.items())

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self.fetched.size - self.position))
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
