"""What a clip source is: a flat set of objects (key, size, etag, last-modified) read by byte range.

Sources are a local tree (`longcat.data.local`) or an S3 bucket or S3 Inventory (`longcat.data.s3`);
`longcat.data.open_source` opens the one the config names. Reading is by byte range only, so probing
never needs a whole object. Error messages name the bucket and key but never a credential or a
presigned signature: `sanitize` blanks them out of any text that reaches a log or a table.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime


class SourceError(RuntimeError):
    """The source cannot be listed or read; the message names the location, never a secret."""


@dataclass(frozen=True)
class SourceObject:
    key: str
    size: int
    etag: str
    last_modified: datetime


# Query strings of presigned URLs carry the signature and the access key id.
_SECRET_PATTERNS = [
    re.compile(r"(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s'\"]+", re.IGNORECASE),
    re.compile(r"((?:Signature|AWSAccessKeyId|x-amz-security-token)=)[^&\s'\"]+", re.IGNORECASE),
    re.compile(r"\b(A(?:KIA|SIA))[A-Z0-9]{16}\b"),
]


def sanitize(message: object) -> str:
    """The text of an error with signatures, tokens and access key ids blanked out."""
    text = str(message)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + "***", text)
    return text


class Source:
    """Lists objects and reads byte ranges of one of them."""

    description = "source"

    def list_objects(self) -> Iterator[SourceObject]:
        raise NotImplementedError

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object (fewer at the end of the object)."""
        raise NotImplementedError

    def read_ranges(self, key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Several ranges of one object; sources with a round trip per read have them in flight at once."""
        return [self.read_range(key, start, end) for start, end in ranges]

    def read_all(self, key: str) -> bytes:
        raise NotImplementedError
