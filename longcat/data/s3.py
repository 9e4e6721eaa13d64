"""An S3 bucket as a clip source: listed with ListObjectsV2 (or read from an S3 Inventory), read with
ranged GETs on presigned URLs over a pool of keep-alive connections.

Listing goes through boto3. Object reads bypass botocore: many small ranged GETs per clip are sent at
once on connections of their own, so the time of a probe is one round trip, not one per read.
"""

from __future__ import annotations

import http.client
import os
import re
import ssl
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from urllib.parse import parse_qs, quote, urlsplit

from longcat.data.inventory import list_inventory, strip_etag
from longcat.data.sources import Source, SourceError, SourceObject, sanitize


def s3_client(region: str | None = None, endpoint_url: str | None = None, max_pool: int = 32):
    """A boto3 S3 client with adaptive retries; credentials come from boto3's standard chain.

    Its presigned URLs are SigV4: botocore's default for them is SigV2 where S3 still accepts it, which
    S3 refuses for SSE-KMS encrypted objects.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        retries={"mode": "adaptive", "max_attempts": 10},
        max_pool_connections=max_pool,
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.client("s3", region_name=region, endpoint_url=endpoint_url, config=config)


PRESIGNED_SECONDS = 3600
# Object reads bypass botocore: a dropped connection, throttling or a 5xx is retried, the first time at once,
# then after RETRY_BACKOFF_SECONDS doubling.
RETRY_ATTEMPTS = 8
RETRY_BACKOFF_SECONDS = 0.25
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
CONNECT_TIMEOUT_SECONDS = 10
READ_TIMEOUT_SECONDS = 60
MAX_IDLE_CONNECTIONS = 64


class Connections:
    """Keep-alive HTTP(S) connections to one host: each carries one request at a time."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
        self.idle: deque[http.client.HTTPConnection] = deque()
        self.tls = None
        if self.scheme == "https":
            self.tls = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE"))

    def take(self) -> http.client.HTTPConnection:
        try:
            return self.idle.pop()
        except IndexError:
            pass
        if self.tls is not None:
            connection = http.client.HTTPSConnection(
                self.host, self.port, timeout=CONNECT_TIMEOUT_SECONDS, context=self.tls
            )
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=CONNECT_TIMEOUT_SECONDS)
        connection.connect()
        connection.sock.settimeout(READ_TIMEOUT_SECONDS)
        return connection

    def give_back(self, connection: http.client.HTTPConnection) -> None:
        if len(self.idle) < MAX_IDLE_CONNECTIONS:
            self.idle.append(connection)
        else:
            connection.close()


class S3Source(Source):
    """Objects under `prefix` in `bucket`, listed with ListObjectsV2 or read from an S3 Inventory."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        inventory: str | None = None,
        list_workers: int = 8,
        client=None,
    ):
        self.bucket = bucket
        # The prefix is a folder: "videos" and "videos/" both mean the keys under "videos/".
        self.prefix = prefix.rstrip("/") + "/" if prefix and prefix.strip("/") else ""
        self.inventory = inventory
        self.list_workers = list_workers
        self.client = client or s3_client(region, endpoint_url)
        # The URL base of objects (the quoted key follows) and the signing region, from one presigned URL;
        # then connections to that host.
        self._endpoint: tuple[str, str] | None = None
        self._connections: Connections | None = None
        self.description = f"s3://{bucket}/{self.prefix}"

    def _call(self, what: str, key: str, function, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return function(**kwargs)
        except (BotoCoreError, ClientError) as error:
            raise SourceError(f"{what} s3://{self.bucket}/{key} failed: {sanitize(error)}") from None

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
            return self._call(what, key, self.client.get_object, Bucket=bucket, Key=key)["Body"].read()

        return list_inventory(read, self.inventory, self.bucket, self.prefix)

    def read_range(self, key: str, start: int, end: int) -> bytes:
        return self.read_ranges(key, [(start, end)])[0]

    def read_ranges(self, key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Ranged GETs in flight at once on one presigned URL: the time of one round trip for all.

        Each request goes out on its own connection before any answer is read, so no thread is needed.
        """
        full_key = self.prefix + key
        target = self._presigned_target(full_key)
        sent = [self._send_early(target, start, end) if end > start else None for start, end in ranges]
        return [
            self._get(full_key, target, start, end, connection) if end > start else b""
            for (start, end), connection in zip(ranges, sent, strict=True)
        ]

    def read_all(self, key: str) -> bytes:
        full_key = self.prefix + key
        return self._get(full_key, self._presigned_target(full_key))

    def _presigned_target(self, full_key: str) -> str:
        """Path and query of a presigned GET of the object: SigV4 query authentication, as botocore's
        generate_presigned_url makes it, without resolving the endpoint again for every key."""
        from botocore.auth import S3SigV4QueryAuth
        from botocore.awsrequest import AWSRequest

        if self._endpoint is None:
            base, region = self._learn_endpoint()
            self._connections = Connections(base)
            self._endpoint = base, region
        base, region = self._endpoint
        credentials = self.client._get_credentials()
        if credentials is None:
            raise SourceError(
                f"reading s3://{self.bucket}/{full_key}: no AWS credentials found (boto3 looks in the "
                "environment, ~/.aws and the instance role)"
            )
        request = AWSRequest("GET", base + quote(full_key, safe="/~"))
        signer = S3SigV4QueryAuth(credentials.get_frozen_credentials(), "s3", region, PRESIGNED_SECONDS)
        signer.add_auth(request)
        parts = urlsplit(request.prepare().url)
        return f"{parts.path}?{parts.query}"

    def _learn_endpoint(self) -> tuple[str, str]:
        """(URL base of the bucket's objects, signing region) from botocore's presigned URL of one key:
        the endpoint depends on the bucket, not the key."""
        sample = self.prefix + "sample"
        url = self._call(
            "presigning",
            sample,
            self.client.generate_presigned_url,
            ClientMethod="get_object",
            Params={"Bucket": self.bucket, "Key": sample},
            ExpiresIn=PRESIGNED_SECONDS,
        )
        base, _, query = url.partition("?")
        scope = parse_qs(query).get("X-Amz-Credential", [""])[0].split("/")
        if not base.endswith("/" + quote(sample, safe="/~")) or len(scope) != 5:
            raise SourceError(
                f"presigning s3://{self.bucket}/{sample}: expected a SigV4 URL ending in the key, "
                f"found {sanitize(url)}"
            )
        return base[: -len(quote(sample, safe="/~"))], scope[2]

    def _send(self, target: str, start: int | None = None, end: int | None = None):
        """A connection carrying the GET of `target` (of bytes [start, end) when given)."""
        connection = self._connections.take()
        try:
            connection.request(
                "GET", target, headers={} if start is None else {"Range": f"bytes={start}-{end - 1}"}
            )
        except (OSError, http.client.HTTPException):
            connection.close()
            raise
        return connection

    def _send_early(self, target: str, start: int, end: int):
        try:
            return self._send(target, start, end)
        except (OSError, http.client.HTTPException):
            return None  # `_get` sends it again and reports what went wrong

    def _get(self, full_key: str, target: str, start=None, end=None, connection=None) -> bytes:
        """The answer to the GET of `target` (of bytes [start, end) when given), sent on `connection`
        unless it is None; retried on dropped connections, throttling and server errors."""
        where = f"s3://{self.bucket}/{full_key}"
        for attempt in range(RETRY_ATTEMPTS):
            if attempt:
                time.sleep(RETRY_BACKOFF_SECONDS * 2 ** (attempt - 2) if attempt > 1 else 0)
            try:
                connection = connection or self._send(target, start, end)
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as error:
                if connection is not None:
                    connection.close()
                connection, failure = None, f"{type(error).__name__}: {error}"
                continue
            if response.will_close:
                connection.close()
            else:
                self._connections.give_back(connection)
            connection = None
            if response.status in (200, 206):
                # A 200 without Content-Range is the whole object (a server that ignores ranges); some
                # S3-compatible servers answer a range with 200 and a Content-Range, which holds the range.
                if start is not None and response.status == 200 and not response.getheader("Content-Range"):
                    return data[start:end]
                return data
            # Only the error code: S3's error bodies can echo the access key id and the signature.
            code = re.search(rb"<Code>([^<]{1,64})</Code>", data)
            reason = code.group(1).decode("ascii", "replace") if code else "no error code"
            failure = f"HTTP {response.status} {reason}"
            if response.status not in RETRY_STATUSES:
                raise SourceError(f"reading {where} failed: {failure}")
        raise SourceError(f"reading {where} failed after {RETRY_ATTEMPTS} attempts: {sanitize(failure)}")
