"""Atomic writes, the one way the library writes a file or a directory that others read.

A reader (another job, a resumed run, Snakemake) sees the old content or the new, never half of it:
content goes into a temp name beside the target, is flushed to disk, then renamed over the target.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, suffix: str = ""):
    """Yield a temp path beside `path` for a writer that wants a file name (ffmpeg, a library's save);
    on success it is renamed over `path`, on failure it is removed. `suffix` keeps an extension tools need."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created like open() would (mode 0666 less the umask), unlike mkstemp's 0600: others may read it.
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}")
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield temp
        with open(temp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through `write(handle)` into a temp file beside `path`, then rename it over `path`."""
    with atomic_path(path) as temp, open(temp, "wb") as handle:
        write(handle)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_dir_atomically(out_dir: str | Path, fill: Callable[[Path], object]) -> Path:
    """Build a directory beside `out_dir` with `fill(tmp)`, then swap it in: never a half-written result."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)
        fill(tmp)
        if out_dir.is_symlink() or out_dir.is_file():
            out_dir.unlink()
        elif out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
            shutil.rmtree(old)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out_dir.parent)
    return out_dir
