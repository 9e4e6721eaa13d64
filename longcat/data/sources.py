"""What a clip source is: a flat set of objects (key, size, etag, last-modified) read by byte range.

Sources are a local tree (`longcat.data.local`) or an S3 bucket or S3 Inventory (`longcat.data.s3`);
`longcat.data.open_source` opens the one the config names. Probing reads byte ranges only, so it never
needs a whole object; cache jobs stream an object into a file (`download`) at the version the probe saw.

Failures come in four kinds, because callers treat them differently: `SourceError` is a permanent
answer (missing object, refused access) that may become a reject; `TransientSourceError` means the
source did not answer after the client's retries, so the job must fail and a rerun try again;
`ChangedSinceProbe` means the object is no longer the version that was probed; `OutsideSource` means a
local key resolves outside the source's root, and nothing was opened. Error messages name the
bucket and key but never a credential: `sanitize` blanks secrets out of any text that reaches a log or
a table.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from longcat.data.rejects import Reject


class SourceError(RuntimeError):
    """A permanent failure to list or read (missing object, refused access, bad request); the message
    names the location, never a secret."""


class TransientSourceError(SourceError):
    """The source did not answer after the client's retries (connection refused or reset, timeouts,
    throttling, 5xx): nothing may be recorded as final from it; a rerun tries again."""


class ChangedSinceProbe(SourceError):
    """The object is not the version that was probed (its etag differs)."""


class OutsideSource(SourceError, Reject):
    """A key whose path resolves outside the source's root (a symlink leading out, or `..`), refused
    before anything is opened. It is also a Reject, so the probe records the clip as `outside_source`
    rather than as a read error; to the cache jobs it is a permanent SourceError like any other."""

    def __init__(self, key: str, root: object, target: object):
        Reject.__init__(
            self,
            "outside_source",
            f"{key} links outside {root} (to {target}); source.follow_symlinks: true would read it",
        )


def changed_since_probe(location: str, probed: str, current: str | None) -> ChangedSinceProbe:
    """The error for an object at `location` whose etag was `probed` and is now `current`."""
    now = current if current else "unknown (the source refused the probed version)"
    return ChangedSinceProbe(f"{location} changed since it was probed: etag {probed} then, {now} now")


@dataclass(frozen=True)
class SourceObject:
    key: str
    size: int
    etag: str
    last_modified: datetime


# Query strings of presigned URLs carry the signature and the access key id; URLs can carry user:password.
_SECRET_PATTERNS = [
    re.compile(r"(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s'\"]+", re.IGNORECASE),
    re.compile(r"((?:Signature|AWSAccessKeyId|x-amz-security-token)=)[^&\s'\"]+", re.IGNORECASE),
    re.compile(r"\b(A(?:KIA|SIA))[A-Z0-9]{16}\b"),
    re.compile(r"([a-z][a-z0-9+.-]*://)[^\s'\"]*@", re.IGNORECASE),
]


def sanitize(message: object) -> str:
    """The text of an error with signatures, tokens, access key ids and URL userinfo blanked out."""
    text = str(message)
    for pattern in _SECRET_PATTERNS[:3]:
        text = pattern.sub(lambda m: m.group(1) + "***", text)
    return _SECRET_PATTERNS[3].sub(lambda m: m.group(1) + "***@", text)


class Source:
    """Lists objects, reads byte ranges of one of them, streams one into a file."""

    description = "source"
    # The config keys that say where the objects are, for a listing that finds none.
    location_keys = "the source settings"

    def list_objects(self) -> Iterator[SourceObject]:
        raise NotImplementedError

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object (fewer at the end of the object)."""
        raise NotImplementedError

    def read_ranges(self, key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Several ranges of one object; sources with a round trip per read have them in flight at once."""
        return [self.read_range(key, start, end) for start, end in ranges]

    def read_all(self, key: str) -> bytes:
        """A whole object in memory: for small ones only (captions, inventory files)."""
        raise NotImplementedError

    def download(self, key: str, handle: BinaryIO, etag: str | None = None) -> int:
        """Streams the object into the open binary file `handle` in bounded chunks, at version `etag`
        when given (ChangedSinceProbe otherwise); returns the number of bytes written."""
        raise NotImplementedError

    def local_path(self, key: str, etag: str | None = None) -> str | None:
        """A path to read the object from in place (after checking `etag` when given), or None when it
        must be downloaded."""
        return None
