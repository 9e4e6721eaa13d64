"""A local directory tree as a clip source (the demo writes its clips into one).

An object's etag is `{size:x}-{mtime_ns:x}`: a file rewritten or touched after it was listed no longer
matches the etag the probe recorded, and is refused as ChangedSinceProbe.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from longcat.data.sources import Source, SourceError, SourceObject, changed_since_probe

# Copies go in pieces of this size: never a whole file in memory.
COPY_CHUNK_BYTES = 8 * 1024 * 1024


def file_etag(stat: os.stat_result) -> str:
    """The etag of a local file: its size and modification time, in hex."""
    return f"{stat.st_size:x}-{stat.st_mtime_ns:x}"


class LocalSource(Source):
    """A directory tree at any depth; keys are POSIX paths relative to the root."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.description = f"local directory {self.root}"

    def list_objects(self) -> Iterator[SourceObject]:
        if not self.root.is_dir():
            raise SourceError(f"source.path: expected a directory, found nothing at {self.root}")
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath, name)
                if not path.is_file():
                    continue
                stat = path.stat()
                yield SourceObject(
                    key=path.relative_to(self.root).as_posix(),
                    size=stat.st_size,
                    etag=file_etag(stat),
                    last_modified=datetime.fromtimestamp(stat.st_mtime, UTC),
                )

    def _path(self, key: str) -> Path:
        return self.root / key

    def _checked(self, key: str, etag: str | None) -> Path:
        """The file of `key`, after checking that it exists and, when `etag` is given, is that version."""
        path = self._path(key)
        try:
            stat = path.stat()
        except OSError as error:
            raise SourceError(f"reading {path} failed: {type(error).__name__}: {error.strerror}") from None
        if etag and file_etag(stat) != etag:
            raise changed_since_probe(str(path), etag, file_etag(stat))
        return path

    def read_range(self, key: str, start: int, end: int) -> bytes:
        with open(self._path(key), "rb") as handle:
            handle.seek(start)
            return handle.read(max(0, end - start))

    def read_all(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def local_path(self, key: str, etag: str | None = None) -> str:
        return str(self._checked(key, etag))

    def download(self, key: str, handle: BinaryIO, etag: str | None = None) -> int:
        """Copies the file into `handle` in COPY_CHUNK_BYTES pieces; checks `etag` before and after, so a
        file rewritten during the copy is refused too."""
        path = self._checked(key, etag)
        start = handle.tell()
        with open(path, "rb") as source:
            shutil.copyfileobj(source, handle, COPY_CHUNK_BYTES)
        self._checked(key, etag)
        return handle.tell() - start
