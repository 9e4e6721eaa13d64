"""A local directory tree as a clip source (the demo writes its clips into one).

An object's etag is `{size:x}-{mtime_ns:x}`: a file rewritten or touched after it was listed no longer
matches the etag the probe recorded, and is refused as ChangedSinceProbe.

Nothing outside the root is read unless `source.follow_symlinks` says so. A file reached through a
symlink is read only when its resolved path lies inside the root; reads open that resolved path without
following a link swapped in at its end, and refuse what is not a regular file. A link leading outside is
still listed (with the link's own size and time), so its clip ends in rejected.parquet as
`outside_source` instead of vanishing; a broken or looping link is listed too and fails as a read error.
What the walk does not list (directory links, sockets, FIFOs, devices, unreadable directories) is
named in `refused`, with the links refused at read, and logged with its count. A directory link
inside the root is not descended: its files are listed under their own path.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from longcat.data.sources import OutsideSource, Source, SourceError, SourceObject, changed_since_probe

log = logging.getLogger(__name__)

# Copies go in pieces of this size: never a whole file in memory.
COPY_CHUNK_BYTES = 8 * 1024 * 1024
# Refused entries named in the listing's log line; the rest are counted.
REFUSED_SHOWN = 20
_KINDS = {stat.S_IFSOCK: "socket", stat.S_IFIFO: "FIFO", stat.S_IFCHR: "device", stat.S_IFBLK: "device"}


def file_etag(stat_result: os.stat_result) -> str:
    """The etag of a local file: its size and modification time, in hex."""
    return f"{stat_result.st_size:x}-{stat_result.st_mtime_ns:x}"


def _object(key: str, stat_result: os.stat_result) -> SourceObject:
    return SourceObject(
        key=key,
        size=stat_result.st_size,
        etag=file_etag(stat_result),
        last_modified=datetime.fromtimestamp(stat_result.st_mtime, UTC),
    )


class LocalSource(Source):
    """A directory tree at any depth; keys are POSIX paths relative to the root."""

    def __init__(self, root: str | Path, follow_symlinks: bool = False):
        self.root = Path(root)
        self.follow_symlinks = follow_symlinks
        self.description = f"local directory {self.root}"
        self.location_keys = "source.path"
        # (key, why) of every entry the last listing found to be no readable file inside the root.
        self.refused: list[tuple[str, str]] = []

    @functools.cached_property
    def _real_root(self) -> Path:
        return Path(os.path.realpath(self.root))

    def _key(self, path: str | Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def _inside(self, real: Path) -> bool:
        return real.is_relative_to(self._real_root)

    def list_objects(self) -> Iterator[SourceObject]:
        if not self.root.is_dir():
            raise SourceError(f"source.path: expected a directory, found nothing at {self.root}")
        self.refused = []
        walked: dict[str, str] = {}  # real path of each directory walked -> its key

        def unreadable(error: OSError) -> None:
            self.refused.append((self._key(error.filename), f"unreadable directory: {error.strerror}"))

        for dirpath, dirnames, filenames in os.walk(
            self.root, onerror=unreadable, followlinks=self.follow_symlinks
        ):
            walked.setdefault(os.path.realpath(dirpath), self._key(dirpath))
            dirnames[:] = [name for name in sorted(dirnames) if self._descend(Path(dirpath, name), walked)]
            for name in sorted(filenames):
                listed = self._listed(Path(dirpath, name))
                if listed is not None:
                    yield listed
        if self.refused:
            shown = "; ".join(f"{key} ({why})" for key, why in self.refused[:REFUSED_SHOWN])
            more = len(self.refused) - REFUSED_SHOWN
            log.warning(
                "%s: %d entries are not readable files inside the source (clips among them are rejected when "
                "probed): %s%s",
                self.description,
                len(self.refused),
                shown,
                f"; and {more} more" if more > 0 else "",
            )

    def _descend(self, path: Path, walked: dict[str, str]) -> bool:
        """Whether the walk enters directory `path`: directory links only when they lead outside the root
        with follow_symlinks set, and no directory already walked (reached again through a link loop)."""
        real = os.path.realpath(path)
        key = self._key(path)
        if path.is_symlink() and self._inside(Path(real)):
            target = Path(real).relative_to(self._real_root).as_posix()
            self.refused.append((key, f"directory link to {target}, listed under its own path"))
        elif path.is_symlink() and not self.follow_symlinks:
            self.refused.append((key, "directory link outside the source, not followed"))
        elif real in walked:
            self.refused.append((key, f"{walked[real]} again, already walked (a link loop)"))
        else:
            return True
        return False

    def _listed(self, path: Path) -> SourceObject | None:
        """The object of a file the walk found, or None (with the reason in `refused`) for what is none.

        Links leading outside the root, broken links and link loops are listed with the link's own
        size and time: reading them fails, which rejects their clip with the reason."""
        key = self._key(path)
        try:
            link = path.lstat()
            if stat.S_ISLNK(link.st_mode):
                real = Path(os.path.realpath(path))
                if not self.follow_symlinks and not self._inside(real):
                    self.refused.append((key, "link outside the source"))
                    return _object(key, link)
                try:
                    found = path.stat()
                except OSError as error:
                    self.refused.append((key, f"link to no file: {error.strerror}"))
                    return _object(key, link)
            else:
                found = link
        except OSError as error:  # gone since the walk saw it
            self.refused.append((key, f"unreadable: {error.strerror}"))
            return None
        if not stat.S_ISREG(found.st_mode):
            self.refused.append((key, _KINDS.get(stat.S_IFMT(found.st_mode), "not a regular file")))
            return None
        return _object(key, found)

    def _open(self, key: str) -> tuple[BinaryIO, Path]:
        """The file of `key` and its resolved path, opened by that path after checking that it lies
        inside the root.

        O_NOFOLLOW refuses a link put at the end of that path after the check; O_NONBLOCK keeps a FIFO
        put there from blocking the open, and the fstat after it refuses anything but a regular file."""
        path = self.root / key
        real = Path(os.path.realpath(path))
        if not self.follow_symlinks and not self._inside(real):
            raise OutsideSource(key, self.root, real)
        try:
            descriptor = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as error:
            target = f" (a link to {os.readlink(path)})" if path.is_symlink() else ""
            raise SourceError(
                f"reading {path}{target} failed: {type(error).__name__}: {error.strerror}"
            ) from None
        handle = os.fdopen(descriptor, "rb")
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            handle.close()
            raise SourceError(f"reading {path} failed: not a regular file")
        return handle, real

    def _check_version(self, key: str, handle: BinaryIO, etag: str | None) -> None:
        """Refuses the open file of `key` unless it is version `etag` (when given)."""
        current = file_etag(os.fstat(handle.fileno()))
        if etag and current != etag:
            raise changed_since_probe(str(self.root / key), etag, current)

    def read_range(self, key: str, start: int, end: int) -> bytes:
        handle, _ = self._open(key)
        with handle:
            handle.seek(start)
            return handle.read(max(0, end - start))

    def read_all(self, key: str) -> bytes:
        handle, _ = self._open(key)
        with handle:
            return handle.read()

    def local_path(self, key: str, etag: str | None = None) -> str:
        """The resolved path of `key`, checked to lie inside the root and to be version `etag`."""
        handle, real = self._open(key)
        with handle:
            self._check_version(key, handle, etag)
        return str(real)

    def download(self, key: str, handle: BinaryIO, etag: str | None = None) -> int:
        """Copies the file into `handle` in COPY_CHUNK_BYTES pieces; checks `etag` before and after, so a
        file rewritten during the copy is refused too."""
        start = handle.tell()
        source, _ = self._open(key)
        with source:
            self._check_version(key, source, etag)
            shutil.copyfileobj(source, handle, COPY_CHUNK_BYTES)
            self._check_version(key, source, etag)
        return handle.tell() - start
