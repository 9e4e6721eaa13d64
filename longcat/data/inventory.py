"""S3 Inventory reports as a listing: the manifest.json names CSV or Parquet parts of (bucket, key, size,
etag, last-modified) rows, read instead of listing a bucket too big to list."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from urllib.parse import unquote_plus, urlparse

from longcat.data.sources import SourceError, SourceObject

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


def strip_etag(etag: str | None) -> str:
    return (etag or "").strip('"')


def inventory_location(inventory: str) -> tuple[str, str]:
    """(bucket, key) of an inventory's `s3://BUCKET/.../manifest.json`."""
    parsed = urlparse(inventory)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.endswith("manifest.json"):
        raise SourceError(f"source.inventory: expected s3://BUCKET/.../manifest.json, found {inventory!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def list_inventory(
    read: Callable[[str, str, str], bytes], inventory: str, bucket: str, prefix: str
) -> Iterator[SourceObject]:
    """The objects of `bucket` under `prefix` that an inventory lists; `read(what, bucket, key)` reads
    one of its files (the manifest, then each part)."""
    inventory_bucket, manifest_key = inventory_location(inventory)
    body = read("reading inventory manifest", inventory_bucket, manifest_key)
    try:
        manifest = json.loads(body)
        file_format = manifest["fileFormat"].lower()
        parts = [part["key"] for part in manifest["files"]]
    except (ValueError, KeyError, TypeError) as error:
        raise SourceError(
            f"s3://{inventory_bucket}/{manifest_key}: expected an S3 Inventory manifest with fileFormat "
            f"and files, found {type(error).__name__}: {error}"
        ) from None
    if file_format not in {"csv", "parquet"}:
        raise SourceError(
            f"s3://{inventory_bucket}/{manifest_key}: inventory fileFormat {manifest['fileFormat']!r} is not "
            "supported (expected CSV or Parquet)"
        )
    schema = [name.strip() for name in manifest.get("fileSchema", "").split(",") if name.strip()]
    for part in parts:
        data = read("reading inventory part", inventory_bucket, part)
        rows = _inventory_csv(data, schema, part) if file_format == "csv" else _inventory_parquet(data)
        for row in rows:
            if row["bucket"] != bucket or not row["key"].startswith(prefix):
                continue
            if row["key"].endswith("/") or row.get("is_delete_marker") in (True, "true"):
                continue
            yield SourceObject(
                key=row["key"][len(prefix) :],
                size=int(row["size"] or 0),
                etag=strip_etag(row["etag"]),
                last_modified=_parse_time(row["last_modified"]),
            )


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
