"""List and open the clip source: an S3 bucket (or an S3 Inventory), a local tree, or the demo clips.

A source is a flat set of objects (key, size, etag, last-modified). Videos pair with a caption of the
same stem (`a/b/clip.mp4` + `a/b/clip.txt`). Reading is by byte range only, so probing never needs a
whole object. Error messages name the bucket and key but never a credential or a presigned signature.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import http.client
import io
import json
import logging
import os
import re
import ssl
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote_plus, urlparse, urlsplit

import pyarrow as pa

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v")
CAPTION_SUFFIX = ".txt"

MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("caption_key", pa.string()),
        ("size", pa.int64()),
        ("etag", pa.string()),
        ("last_modified", pa.timestamp("us", tz="UTC")),
        ("caption_size", pa.int64()),
        ("caption_etag", pa.string()),
    ]
)


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


def _strip_etag(etag: str | None) -> str:
    return (etag or "").strip('"')


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
                etag=_strip_etag(item.get("ETag")),
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

    def _inventory_location(self) -> tuple[str, str]:
        parsed = urlparse(self.inventory)
        if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.endswith("manifest.json"):
            raise SourceError(
                f"source.inventory: expected s3://BUCKET/.../manifest.json, found {self.inventory!r}"
            )
        return parsed.netloc, parsed.path.lstrip("/")

    def _read_other(self, bucket: str, key: str) -> bytes:
        response = self._call("reading", key, self.client.get_object, Bucket=bucket, Key=key)
        return self._call("reading", key, response["Body"].read)

    def _list_inventory(self) -> Iterator[SourceObject]:
        bucket, manifest_key = self._inventory_location()
        body = self._call(
            "reading inventory manifest",
            manifest_key,
            self.client.get_object,
            Bucket=bucket,
            Key=manifest_key,
        )["Body"].read()
        try:
            manifest = json.loads(body)
            file_format = manifest["fileFormat"].lower()
            parts = [part["key"] for part in manifest["files"]]
        except (ValueError, KeyError, TypeError) as error:
            raise SourceError(
                f"s3://{bucket}/{manifest_key}: expected an S3 Inventory manifest with fileFormat and files, "
                f"found {type(error).__name__}: {error}"
            ) from None
        if file_format not in {"csv", "parquet"}:
            raise SourceError(
                f"s3://{bucket}/{manifest_key}: inventory fileFormat {manifest['fileFormat']!r} is not "
                "supported (expected CSV or Parquet)"
            )
        schema = [name.strip() for name in manifest.get("fileSchema", "").split(",") if name.strip()]
        for part in parts:
            data = self._call(
                "reading inventory part", part, self.client.get_object, Bucket=bucket, Key=part
            )["Body"].read()
            rows = _inventory_csv(data, schema, part) if file_format == "csv" else _inventory_parquet(data)
            for row in rows:
                if row["bucket"] != self.bucket or not row["key"].startswith(self.prefix):
                    continue
                if row["key"].endswith("/") or row.get("is_delete_marker") in (True, "true"):
                    continue
                yield SourceObject(
                    key=row["key"][len(self.prefix) :],
                    size=int(row["size"] or 0),
                    etag=_strip_etag(row["etag"]),
                    last_modified=_parse_time(row["last_modified"]),
                )

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


_INVENTORY_FIELDS = {
    "bucket": "bucket",
    "key": "key",
    "size": "size",
    "lastmodifieddate": "last_modified",
    "last_modified_date": "last_modified",
    "etag": "etag",
    "e_tag": "etag",
    "isdeletemarker": "is_delete_marker",
    "is_delete_marker": "is_delete_marker",
}


def _inventory_csv(data: bytes, schema: list[str], where: str) -> Iterator[dict]:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    columns = [_INVENTORY_FIELDS.get(name.lower(), name) for name in schema]
    if "key" not in columns:
        raise SourceError(f"{where}: inventory fileSchema has no Key column (found {schema})")
    for line_number, values in enumerate(csv.reader(io.StringIO(data.decode("utf-8"))), start=1):
        if len(values) != len(columns):
            raise SourceError(
                f"{where} line {line_number}: expected {len(columns)} fields ({', '.join(schema)}), "
                f"found {len(values)}"
            )
        row = dict(zip(columns, values, strict=True))
        # Inventory CSVs URL-encode keys.
        row["key"] = unquote_plus(row["key"])
        yield {"size": 0, "etag": "", "last_modified": None, **row}


def _inventory_parquet(data: bytes) -> Iterator[dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    renamed = table.rename_columns([_INVENTORY_FIELDS.get(n.lower(), n) for n in table.column_names])
    for row in renamed.to_pylist():
        yield {"size": 0, "etag": "", "last_modified": None, **row}


def _parse_time(value) -> datetime:
    if value is None or value == "":
        return datetime.fromtimestamp(0, UTC)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)


def open_source(source_config: Mapping, demo_dir: str | Path | None = None) -> Source:
    """The Source for the `source` section of the config (the demo reads the clips its rule made)."""
    kind = source_config.get("kind")
    if kind == "s3":
        bucket = source_config.get("bucket")
        if not bucket:
            raise SourceError("source.bucket: expected a bucket name for source.kind s3, found none")
        return S3Source(
            bucket=bucket,
            prefix=source_config.get("prefix") or "",
            region=source_config.get("region"),
            endpoint_url=source_config.get("endpoint_url"),
            inventory=source_config.get("inventory"),
            list_workers=int(source_config.get("list_workers", 8)),
        )
    if kind == "local":
        path = source_config.get("path")
        if not path:
            raise SourceError("source.path: expected a directory for source.kind local, found none")
        return LocalSource(path)
    if kind == "demo":
        if demo_dir is None:
            raise SourceError("source.kind demo: the demo clip directory was not given")
        return LocalSource(demo_dir)
    raise SourceError(f"source.kind: expected one of s3, local, demo, found {kind!r}")


def pair_captions(objects: Iterable[SourceObject]) -> pa.Table:
    """One manifest row per video, with the caption of the same stem (or none), sorted by key."""
    by_key = {obj.key: obj for obj in objects}
    rows = []
    for key in sorted(by_key):
        obj = by_key[key]
        stem, suffix = os.path.splitext(key)
        if suffix.lower() not in VIDEO_SUFFIXES:
            continue
        caption = by_key.get(stem + CAPTION_SUFFIX)
        rows.append(
            {
                "key": key,
                "caption_key": caption.key if caption else None,
                "size": obj.size,
                "etag": obj.etag,
                "last_modified": obj.last_modified,
                "caption_size": caption.size if caption else None,
                "caption_etag": caption.etag if caption else None,
            }
        )
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def build_manifest(source: Source) -> pa.Table:
    table = pair_captions(source.list_objects())
    log.info(
        "listed %s: %d videos, %d without caption",
        source.description,
        table.num_rows,
        table.column("caption_key").null_count,
    )
    return table


def chunk_of(key: str, chunks: int) -> int:
    """The probe chunk of a key: a stable hash, so adding keys never moves existing ones."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % chunks
