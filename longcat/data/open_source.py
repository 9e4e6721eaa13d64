"""The clip source that the config's `source` section names."""

from __future__ import annotations

from longcat import settings
from longcat.data.local import LocalSource
from longcat.data.s3 import S3Source
from longcat.data.sources import Source, SourceError


def open_source(source: settings.Source, readers: int = 8) -> Source:
    """A LocalSource for `kind: local` (the demo's clips included), an S3Source for `kind: s3` whose
    connection pool serves `readers` threads reading at once (the probe or decode workers)."""
    if source.kind == "s3":
        if not source.bucket:
            raise SourceError("source.bucket: expected a bucket name for source.kind s3, found none")
        return S3Source(
            bucket=source.bucket,
            prefix=source.prefix,
            region=source.region,
            endpoint_url=source.endpoint_url,
            inventory=source.inventory,
            list_workers=source.list_workers,
            readers=readers,
        )
    if source.kind == "local":
        if not source.path:
            raise SourceError("source.path: expected a directory for source.kind local, found none")
        return LocalSource(source.path, follow_symlinks=source.follow_symlinks)
    raise SourceError(f"source.kind: expected one of s3, local, found {source.kind!r}")
