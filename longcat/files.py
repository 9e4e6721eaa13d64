"""Atomic writes, the one way the library writes a file or a directory that others read, and what a
failed write says.

A reader (another job, a resumed run, Snakemake) sees the old content or the new, never half of it:
content goes into a temp name beside the target, is flushed to disk, then renamed over the target.
A write that fails names its path and, when its disk is full, says so (`write_failed`).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

# A write that fails with less than this left on its filesystem failed for want of space, whatever the
# error says: PyTorch's zip writer reports a short write as "unexpected pos N vs M", without an errno.
LOW_SPACE_BYTES = 16 * 1024 * 1024
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


class WriteFailed(RuntimeError):
    """A write that failed; the message names the path and why ("no space left on device" for a full disk)."""


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error`, what caused it, and the per-rank failures a distributed checkpoint gathers, depth first."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        cause = todo.pop()
        if id(cause) in seen:
            continue
        seen.add(id(cause))
        yield cause
        failures = getattr(cause, "failures", None)
        for failure in failures.values() if isinstance(failures, dict) else ():
            todo += [
                item
                for item in (failure if isinstance(failure, tuple) else (failure,))
                if isinstance(item, BaseException)
            ]
        todo += [linked for linked in (cause.__context__, cause.__cause__) if linked is not None]


def free_bytes(path: str | Path) -> int | None:
    """Bytes free on the filesystem of `path` (of its nearest existing parent); None when unknown."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def write_failed(path: str | Path, what: str, error: BaseException) -> WriteFailed:
    """The WriteFailed for `error`, raised writing `what` to `path`: "no space left on device" with the
    space free when the disk is full, else the error that stopped the write."""
    causes = list(_causes(error))
    os_error = next((cause for cause in causes if isinstance(cause, OSError) and cause.errno), None)
    free = free_bytes(path)
    left = "" if free is None else f" ({free:,} bytes free)"
    if os_error is not None and os_error.errno in NO_SPACE:
        why = os.strerror(os_error.errno).lower() + left
    elif os_error is None and free is not None and free < LOW_SPACE_BYTES:
        why = f"no space left on device{left}: {type(causes[-1]).__name__}: {causes[-1]}"
    else:
        cause = os_error or causes[-1]
        why = f"{type(cause).__name__}: {cause}"
    return WriteFailed(f"writing {what} to {path} failed: {why}")


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
