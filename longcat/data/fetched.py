"""The bytes of one object read so far: pieces by offset, read on demand with bounded range reads."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from longcat.data.rejects import Reject
from longcat.data.sources import Source


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


class ObjectFile(io.RawIOBase):
    """A read-only, seekable file of one object's size over its fetched bytes, for FFmpeg (PyAV) to
    read; subclasses say what `readinto` returns where nothing was fetched."""

    def __init__(self, fetched: FetchedBytes):
        super().__init__()
        self.fetched = fetched
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.fetched.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position
