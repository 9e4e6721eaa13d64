"""An S3 bucket as a clip source: listed with ListObjectsV2 (or read from an S3 Inventory) and streamed
into files on one shared boto3 client; byte ranges are read on obstore (`longcat.data.obstore_reads`),
and on boto3 `get_object` calls wherever obstore fails.

The client's connection pool is sized for the threads that read at once (probe workers, each with its
head and tail reads in flight together), and botocore retries dropped connections, timeouts, throttling
and 5xx answers. What still fails after those retries is a `TransientSourceError`, never a verdict on
the object; 404 and 403 are `SourceError`; a version other than the probed one is `ChangedSinceProbe`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from typing import BinaryIO

from longcat.data import obstore_reads
from longcat.data.inventory import list_inventory, strip_etag
from longcat.data.sources import (
    Source,
    SourceError,
    SourceObject,
    TransientSourceError,
    changed_since_probe,
    sanitize,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
CONNECT_TIMEOUT_SECONDS = 10
READ_TIMEOUT_SECONDS = 60
# Connections kept open for reads in flight at once; at least botocore's own default.
MIN_POOL = 10
# Downloads are read and written in pieces of this size: never a whole object held, one piece lost to a break.
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
# Error codes that mean "try again later", whatever the status says.
TRANSIENT_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError", "ServiceUnavailable"}
)


def s3_client(
    region: str | None = None,
    endpoint_url: str | None = None,
    max_pool: int = MIN_POOL,
    max_attempts: int = MAX_ATTEMPTS,
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    read_timeout: float = READ_TIMEOUT_SECONDS,
):
    """A boto3 S3 client with adaptive retries (`max_attempts` in all) and a pool of `max_pool`
    connections; credentials come from boto3's standard chain.

    Response checksums are checked only where the request asks for them: S3-compatible servers (rclone)
    send the whole object's checksum with a ranged answer, which no range matches.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        retries={"mode": "adaptive", "total_max_attempts": max_attempts},
        max_pool_connections=max(MIN_POOL, max_pool),
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        tcp_keepalive=True,
        response_checksum_validation="when_required",
        request_checksum_calculation="when_required",
    )
    return boto3.client("s3", region_name=region, endpoint_url=endpoint_url, config=config)


def _times(count: int) -> str:
    return f"{count} attempt" if count == 1 else f"{count} attempts"


def _max_attempts(client) -> int:
    """Attempts per request of `client` (botocore's default when it was made without a retry config)."""
    retries = client.meta.config.retries or {}
    if "total_max_attempts" in retries:
        return int(retries["total_max_attempts"])
    return int(retries["max_attempts"]) + 1 if "max_attempts" in retries else MAX_ATTEMPTS


class S3Source(Source):
    """Objects under `prefix` in `bucket`, listed with ListObjectsV2 or read from an S3 Inventory.

    `readers` is how many threads read at once; the connection pool holds two connections for each
    (head and tail of a probe in flight together), or `list_workers` when that is more. Byte ranges are
    read on obstore unless `use_obstore` is false; once obstore fails where boto3 then reads, the
    source reads on boto3 alone (a server that answers ranges in a way obstore refuses, a proxy or a
    certificate that boto3 is configured for).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        inventory: str | None = None,
        list_workers: int = 8,
        readers: int = 8,
        max_attempts: int = MAX_ATTEMPTS,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        client=None,
        use_obstore: bool = True,
    ):
        self.bucket = bucket
        # The prefix is a folder: "videos" and "videos/" both mean the keys under "videos/".
        self.prefix = prefix.rstrip("/") + "/" if prefix and prefix.strip("/") else ""
        self.inventory = inventory
        self.list_workers = list_workers
        pool = max(list_workers, 2 * readers)
        self.client = client or s3_client(
            region, endpoint_url, pool, max_attempts, connect_timeout, read_timeout
        )
        self.max_attempts = _max_attempts(self.client)
        # Requests sent since the last answer, per thread (botocore's attempts at the request in flight).
        self._attempts = threading.local()
        events, unique = self.client.meta.events, f"longcat-attempts-{id(self)}"
        events.register("before-send.s3", self._sent, unique_id=unique)
        events.register("after-call.s3", lambda **_: setattr(self._attempts, "count", 0), unique_id=unique)
        self.obstore = (
            obstore_reads.obstore_store(self.client, bucket, connect_timeout, read_timeout)
            if use_obstore
            else None
        )
        # The second and later ranges of one `read_ranges` call go out from here, so that all are in flight.
        self._range_pool = ThreadPoolExecutor(max(1, pool), thread_name_prefix="s3-range")
        self.description = f"s3://{bucket}/{self.prefix}"
        self.location_keys = "source.bucket and source.prefix"
        if inventory:
            self.description += f" (inventory {inventory})"
            self.location_keys += " (and source.inventory)"

    def _sent(self, **_) -> None:
        self._attempts.count = getattr(self._attempts, "count", 0) + 1

    def _error(self, what: str, full_key: str, error: Exception) -> SourceError:
        """The SourceError (transient, changed or permanent) for a botocore failure; sanitized text."""
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, IncompleteReadError

        where = f"{what} s3://{self.bucket}/{full_key}"
        if isinstance(error, ClientError):
            status = error.response["ResponseMetadata"]["HTTPStatusCode"]
            code = error.response["Error"]["Code"] or "no error code"
            attempts = error.response["ResponseMetadata"]["RetryAttempts"] + 1
            if status == 429 or status >= 500 or code in TRANSIENT_CODES:
                return TransientSourceError(f"{where} failed after {_times(attempts)}: HTTP {status} {code}")
            # Only the status and code: S3's error bodies can echo the request.
            return SourceError(f"{where} failed: HTTP {status} {code}")
        failure = f"{type(error).__name__}: {sanitize(error)}"
        if isinstance(error, ConnectionError | HTTPClientError | IncompleteReadError | OSError):
            attempts = max(1, getattr(self._attempts, "count", 0))
            return TransientSourceError(f"{where} failed after {_times(attempts)}: {failure}")
        return SourceError(f"{where} failed: {failure}")

    def _call(self, what: str, key: str, function):
        """`function()`, with its botocore failure turned into the matching SourceError."""
        from botocore.exceptions import BotoCoreError, ClientError

        self._attempts.count = 0
        try:
            return function()
        except (BotoCoreError, ClientError) as error:
            raise self._error(what, key, error) from None

    def list_objects(self) -> Iterator[SourceObject]:
        if self.inventory:
            yield from self._list_inventory()
            return
        top_level, subprefixes = self._list_level(self.prefix)
        yield from top_level
        # Each common prefix is listed by its own paginator: big buckets are usually split by folder.
        with ThreadPoolExecutor(max_workers=max(1, self.list_workers)) as pool:
            for objects in pool.map(self._list_all, subprefixes):
                yield from objects

    def _page_objects(self, page: Mapping) -> Iterator[SourceObject]:
        for item in page.get("Contents", []):
            if item["Key"].endswith("/"):
                continue
            yield SourceObject(
                key=item["Key"][len(self.prefix) :],
                size=int(item["Size"]),
                etag=strip_etag(item.get("ETag")),
                last_modified=item["LastModified"].astimezone(UTC),
            )

    def _list_level(self, prefix: str) -> tuple[list[SourceObject], list[str]]:
        paginator = self.client.get_paginator("list_objects_v2")
        objects, subprefixes = [], []
        pages = paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/")
        for page in self._call("listing", prefix, lambda: list(pages)):
            objects.extend(self._page_objects(page))
            subprefixes.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
        return objects, subprefixes

    def _list_all(self, prefix: str) -> list[SourceObject]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=prefix)
        return [
            obj
            for page in self._call("listing", prefix, lambda: list(pages))
            for obj in self._page_objects(page)
        ]

    def _list_inventory(self) -> Iterator[SourceObject]:
        def read(what: str, bucket: str, key: str) -> bytes:
            return self._call(
                what, key, lambda: self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
            )

        return list_inventory(read, self.inventory, self.bucket, self.prefix)

    def read_range(self, key: str, start: int, end: int) -> bytes:
        return self.read_ranges(key, [(start, end)])[0]

    def read_ranges(self, key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """All ranges in flight at once, so a probe's head and tail take one round trip: on obstore, or on
        boto3 when obstore fails (boto3's answer or error stands)."""
        full_key, wanted = self.prefix + key, [(start, end) for start, end in ranges if end > start]
        store = self.obstore
        if store is None or not wanted or not obstore_reads.keeps_key(full_key):
            return self._boto3_ranges(full_key, ranges)
        try:
            parts = iter(obstore_reads.read_ranges(store, full_key, wanted))
            return [next(parts) if end > start else b"" for start, end in ranges]
        except Exception as error:  # whatever obstore raises, boto3 reads the ranges again and decides
            failure = type(error).__name__
        data = self._boto3_ranges(full_key, ranges)
        if self.obstore is not None:
            self.obstore = None
            log.warning(
                "obstore could not read s3://%s/%s (%s) where boto3 could: this source reads on boto3 alone",
                self.bucket,
                full_key,
                failure,
            )
        return data

    def _boto3_ranges(self, full_key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """`read_ranges` on boto3: the first read in this thread, the others on the range pool."""

        def read(start: int, end: int) -> bytes:
            return self._read(full_key, start, end) if end > start else b""

        later = [self._range_pool.submit(read, start, end) for start, end in ranges[1:]]
        first = [read(*ranges[0])] if ranges else []
        return first + [future.result() for future in later]

    def read_all(self, key: str) -> bytes:
        full_key = self.prefix + key
        return self._call(
            "reading",
            full_key,
            lambda: self.client.get_object(Bucket=self.bucket, Key=full_key)["Body"].read(),
        )

    def _read(self, full_key: str, start: int, end: int) -> bytes:
        def get() -> bytes:
            response = self.client.get_object(
                Bucket=self.bucket, Key=full_key, Range=f"bytes={start}-{end - 1}"
            )
            data = response["Body"].read()
            # A 200 without Content-Range is the whole object (a server that ignores ranges); some
            # S3-compatible servers answer a range with 200 and a Content-Range, which holds the range.
            if response["ResponseMetadata"]["HTTPStatusCode"] == 200 and not response.get("ContentRange"):
                return data[start:end]
            return data

        return self._call("reading", full_key, get)

    def download(self, key: str, handle: BinaryIO, etag: str | None = None) -> int:
        """Streams the object into `handle` in DOWNLOAD_CHUNK_BYTES pieces, at version `etag` (If-Match,
        and the answer's ETag checked: some servers ignore If-Match). A request that fails before an answer
        has had botocore's retries and is final; an answer that breaks mid-object is followed by a Range
        request for the rest, from the bytes written, at that version: up to `max_attempts` answers."""
        from botocore.exceptions import BotoCoreError, ClientError

        full_key = self.prefix + key
        where = f"s3://{self.bucket}/{full_key}"
        start, written, version, broken = handle.tell(), 0, etag, None
        for _ in range(self.max_attempts):
            request = {"Bucket": self.bucket, "Key": full_key}
            if version:
                request["IfMatch"] = f'"{version}"'
            if written:
                request["Range"] = f"bytes={written}-"
            self._attempts.count = 0
            try:
                response = self.client.get_object(**request)
            except (BotoCoreError, ClientError) as error:
                raise self._download_error(full_key, error, version) from None
            found = strip_etag(response.get("ETag"))
            if version and found and found != version:
                raise changed_since_probe(where, version, found)
            version = version or found
            if written and not response.get("ContentRange"):
                # The server sent the whole object again instead of the rest.
                handle.seek(start)
                handle.truncate()
            broken = self._stream(response["Body"], handle)
            written = handle.tell() - start
            if broken is None:
                return written
            log.warning("%s: broken off after %d bytes (%s); asking for the rest", where, written, broken)
        raise TransientSourceError(
            f"downloading {where} failed: the connection broke mid-object in each of "
            f"{_times(self.max_attempts)}, {written:,} bytes written (last: {broken})"
        )

    @staticmethod
    def _stream(body, handle: BinaryIO) -> str | None:
        """Copy an answer's body into `handle`: the broken connection's failure, or None once it is whole."""
        from botocore.exceptions import BotoCoreError

        while True:
            try:
                piece = body.read(DOWNLOAD_CHUNK_BYTES)
            except (BotoCoreError, OSError) as error:
                return f"{type(error).__name__}: {sanitize(error)}"
            if not piece:
                return None
            handle.write(piece)

    def _download_error(self, full_key: str, error: Exception, version: str | None) -> SourceError:
        from botocore.exceptions import ClientError

        if isinstance(error, ClientError) and (
            error.response["ResponseMetadata"]["HTTPStatusCode"] == 412
            or error.response["Error"]["Code"] == "PreconditionFailed"
        ):
            where = f"s3://{self.bucket}/{full_key}"
            return changed_since_probe(where, version or "?", self._etag_now(full_key))
        return self._error("downloading", full_key, error)

    def _etag_now(self, full_key: str) -> str | None:
        """The object's current ETag, for the message of a failed If-Match; None when it cannot be had."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return strip_etag(self.client.head_object(Bucket=self.bucket, Key=full_key).get("ETag"))
        except (BotoCoreError, ClientError):
            return None
