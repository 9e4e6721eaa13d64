"""A local directory tree as a clip source (the demo writes its clips into one)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from longcat.data.sources import Source, SourceError, SourceObject


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
                    etag=f"{stat.st_size:x}-{stat.st_mtime_ns:x}",
                    last_modified=datetime.fromtimestamp(stat.st_mtime, UTC),
                )

    def _path(self, key: str) -> Path:
        return self.root / key

    def read_range(self, key: str, start: int, end: int) -> bytes:
        with open(self._path(key), "rb") as handle:
            handle.seek(start)
            return handle.read(max(0, end - start))

    def read_all(self, key: str) -> bytes:
        return self._path(key).read_bytes()
