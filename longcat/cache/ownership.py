"""Who may write a cache directory, and which job writes a shard.

A cache directory (`{cache_dir}/vae/<key>/`, `{cache_dir}/text/<key>/`) holds one workflow's shards:
shard N is that workflow's shard list N. Two workflows on one directory would rebuild each other's
shards, and Snakemake deletes a job's outputs before the job runs and after it fails: either deletes
files the other has finished. So a directory belongs to the first workflow that used it (`owner.json`,
naming the workflow by the id its results directory holds, `workflow-id`; a copy of both keeps it), and
another workflow is refused when its Snakefile is parsed, before any job runs (`claim`).

Within the workflow, a shard job holds the shard's lock (`.lock-shard-N`) while it writes (`ShardLock`).
A second job of the same shard (from a controller started again while the first job still runs on the
cluster) waits for it, then finds the shard finished and leaves it as it is: it succeeds, so no failed
job's cleanup deletes a shard another job has finished. The holder refreshes its lock every
LOCK_REFRESH_S; a lock left by a process that is gone from this host, or that nobody refreshed for
LOCK_STALE_S (a job killed on another node), is taken over.

Both files are made by link(2) of a complete temp file, which is atomic on NFS and Lustre too, where
flock(2) may not reach other nodes; on a filesystem without hard links, by an exclusive create. A
lock's age is measured on the waiter's clock (how long the file has stayed the same), so clocks that
differ between nodes do not matter.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from longcat.cache.spec import CacheError

log = logging.getLogger(__name__)

OWNER_FILE = "owner.json"
LOCK_REFRESH_S = 30.0
LOCK_STALE_S = 600.0
LOCK_POLL_S = 2.0
# What link(2) answers on a filesystem that has no hard links.
NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK})


def create_file(path: Path, content: str) -> bool:
    """Make `path` hold `content` unless it exists; True when this call made it. Others see the file
    whole or not at all, but on a filesystem without hard links (some FUSE and SMB mounts), where it is
    made by an exclusive create and may be seen empty for a moment."""
    temp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    temp.write_text(content, encoding="utf-8")
    try:
        os.link(temp, path)
        return True
    except FileExistsError:
        return False
    except OSError as error:
        # NFS may report a failed link(2) whose retry in fact made it: the temp file's link count says.
        if temp.stat().st_nlink == 2:
            return True
        if error.errno not in NO_HARD_LINKS:
            raise
        return _create_exclusively(path, content)
    finally:
        temp.unlink(missing_ok=True)


def _create_exclusively(path: Path, content: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def workflow_id(path: Path) -> str:
    """The workflow id kept at `path` (`Layout.workflow_id`), made the first time it is asked for."""
    path.parent.mkdir(parents=True, exist_ok=True)
    create_file(path, secrets.token_hex(8) + "\n")
    return path.read_text(encoding="utf-8").strip()


def claim(cache_root: str | Path, id_file: str | Path) -> None:
    """Make the workflow whose id is at `id_file` the owner of a cache directory that has none;
    CacheError when it belongs to another workflow, naming that one's results and the ways forward."""
    cache_root, id_file = Path(cache_root), Path(id_file)
    ours = workflow_id(id_file)
    owner = cache_root / OWNER_FILE
    cache_root.mkdir(parents=True, exist_ok=True)
    claimed = {"workflow": ours, "results": str(id_file.parent.resolve()), "host": socket.gethostname()}
    create_file(owner, json.dumps(claimed | {"claimed": datetime.now(UTC).isoformat()}, indent=1) + "\n")
    try:
        recorded = json.loads(owner.read_text(encoding="utf-8"))
        theirs = recorded["workflow"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CacheError(
            f"{owner}: unreadable ({error}); delete it, and this workflow takes the cache"
        ) from None
    if theirs != ours:
        raise CacheError(
            f"{cache_root} belongs to another workflow, whose results are in {recorded.get('results')} "
            f"(workflow {theirs}; this one's results are in {claimed['results']}, workflow {ours}). Two "
            "workflows must not share a cache directory: each would rebuild the other's shards, and "
            "Snakemake deletes the outputs of a job it runs. Set cache_dir to a directory of this "
            f"workflow's own; or, if the other workflow is gone for good, delete {owner} to take the cache "
            "over (every shard is then rebuilt from this workflow's shard lists)."
        )


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


class ShardLock:
    """The lock of one shard of a cache directory, held while a job writes that shard."""

    def __init__(self, path: Path):
        self.path = path
        self.holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_namespace": _pid_namespace(),
            "token": secrets.token_hex(8),
        }
        self._content = json.dumps(self.holder)
        self._stop = threading.Event()

    def acquire(self) -> None:
        """Take the lock: wait while a live job holds it; take over one that is stale."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        seen, same_since, waiting = None, time.monotonic(), False
        while not create_file(self.path, self._content):
            try:
                state = (self.path.stat().st_mtime_ns, self.path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue  # released meanwhile
            if state != seen:
                seen, same_since = state, time.monotonic()
            stale = self._stale(state[1], time.monotonic() - same_since)
            if stale:
                log.warning("%s: taking over the lock of %s", self.path, stale)
                self._remove(state[1])
                continue
            if not waiting:
                log.info("%s: the shard is being written by %s; waiting for it", self.path, state[1])
                waiting = True
            time.sleep(LOCK_POLL_S)
        threading.Thread(target=self._refresh, name=f"refresh-{self.path.name}", daemon=True).start()

    def _stale(self, content: str, unchanged_s: float) -> str | None:
        """Why the lock of `content` is stale (the holder it names, and how it is gone), or None."""
        try:
            holder = json.loads(content)
            host, pid = holder["host"], int(holder["pid"])
            namespace = holder.get("pid_namespace", self.holder["pid_namespace"])
        except (ValueError, KeyError, TypeError):
            holder, host, pid, namespace = content, None, None, None
        if unchanged_s > LOCK_STALE_S:
            return f"{holder}, not refreshed for {unchanged_s:.0f} s"
        # Process ids say something only within one pid namespace (containers on one host share its
        # name but may not share their process ids).
        if (host, namespace) != (self.holder["host"], self.holder["pid_namespace"]):
            return None
        if pid == os.getpid():
            return f"{holder}, an earlier writer of this process"
        if not Path(f"/proc/{pid}").exists():
            return f"{holder}, a process that is gone"
        return None

    def _remove(self, content: str) -> None:
        """Remove the lock file if it still holds `content` (renamed aside first: one taker wins)."""
        aside = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if aside.read_text(encoding="utf-8") != content:
            create_file(self.path, aside.read_text(encoding="utf-8"))  # a fresh lock taken meanwhile
        aside.unlink()

    def _refresh(self) -> None:
        while not self._stop.wait(LOCK_REFRESH_S):
            try:
                if self.path.read_text(encoding="utf-8") != self._content:
                    log.warning("%s: the lock was taken over by another job", self.path)
                    return
                os.utime(self.path)
            except OSError as error:
                log.warning("%s: the lock could not be refreshed (%s)", self.path, error)

    def held(self) -> bool:
        """Whether the lock is still this writer's: a job stopped for longer than LOCK_STALE_S (a frozen
        node, a suspended process) may find it taken over."""
        try:
            return self.path.read_text(encoding="utf-8") == self._content
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Remove the lock if it is still this writer's (another job may have taken it over)."""
        self._stop.set()
        try:
            if self.path.read_text(encoding="utf-8") == self._content:
                self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            log.warning(
                "%s: the lock could not be removed (%s); it is taken over once stale", self.path, error
            )
