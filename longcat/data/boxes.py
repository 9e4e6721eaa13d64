"""ISO-BMFF (MP4/MOV) boxes: headers and the children of a box, within bytes already read."""

from __future__ import annotations

import struct
from collections.abc import Iterator


def box_header(data: bytes, size_left: int) -> tuple[bytes, int, int]:
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


def children(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, body start, end) of each box in data[start:end]; stops at the first one cut off."""
    offset = start
    while offset + 8 <= end:
        box_type, header, length = box_header(data[offset : offset + 16], end - offset)
        if length < header or offset + length > end:
            return
        yield box_type, offset + header, offset + length
        offset += length


def child(data: bytes, start: int, end: int, name: bytes) -> tuple[int, int] | None:
    """(body start, end) of the first box `name` in data[start:end]."""
    for box_type, body, box_end in children(data, start, end):
        if box_type == name:
            return body, box_end
    return None


def u32(data: bytes, offset: int) -> int:
    return struct.unpack(">I", data[offset : offset + 4])[0]
