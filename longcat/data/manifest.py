"""The manifest: one row per video of the source, paired with the caption of the same stem.

Videos pair with a caption of the same stem (`a/b/clip.mp4` + `a/b/clip.txt`). A caption without its
video is listed beside the manifest (`unpaired.parquet`) and ends in rejected.parquet; other files
(neither video nor caption) are counted in the job's log. Each key also has a probe chunk, from a
stable hash of the key, so a relist never moves an existing key to another chunk.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

from longcat.data.sources import Source, SourceError, SourceObject
from longcat.data.tables import write_table

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

UNPAIRED_SCHEMA = pa.schema([("key", pa.string()), ("etag", pa.string()), ("size", pa.int64())])


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


def unpaired_captions(objects: Iterable[SourceObject]) -> pa.Table:
    """The captions with no video of the same stem, sorted by key."""
    by_key = {obj.key: obj for obj in objects}
    stems = (os.path.splitext(key) for key in by_key)
    videos = {stem for stem, suffix in stems if suffix.lower() in VIDEO_SUFFIXES}
    rows = [
        {"key": key, "etag": obj.etag, "size": obj.size}
        for key, obj in sorted(by_key.items())
        if key.endswith(CAPTION_SUFFIX) and key.removesuffix(CAPTION_SUFFIX) not in videos
    ]
    return pa.Table.from_pylist(rows, schema=UNPAIRED_SCHEMA)


def build_manifest(source: Source) -> pa.Table:
    return list_source(source)[0]


def list_source(source: Source) -> tuple[pa.Table, pa.Table]:
    """The manifest and the captions without a video, from one listing.

    A listing without a single video is an error (SourceError naming the source, what it found and the
    settings to check): a wrong prefix or path would otherwise pass as an empty dataset.
    """
    objects = list(source.list_objects())
    table, unpaired = pair_captions(objects), unpaired_captions(objects)
    captioned = table.num_rows - table.column("caption_key").null_count
    others = len(objects) - table.num_rows - captioned - unpaired.num_rows
    log.info(
        "listed %s: %d videos, %d without caption, %d captions without video, %d other files (not listed)",
        source.description,
        table.num_rows,
        table.num_rows - captioned,
        unpaired.num_rows,
        others,
    )
    if not table.num_rows:
        message = f"{source.description}: expected videos ({', '.join(VIDEO_SUFFIXES)}), found none: " + (
            f"the listing found {len(objects):,} objects, {unpaired.num_rows:,} of them captions "
            f"({CAPTION_SUFFIX}) and {others:,} other files{_first_other(objects)}"
            if objects
            else "the listing found no object at all"
        )
        message += f". Check {source.location_keys}."
        log.error("%s", message)
        raise SourceError(message)
    return table, unpaired


def _first_other(objects: list[SourceObject]) -> str:
    """`, e.g. KEY` for the first listed object that is neither a video nor a caption."""
    for obj in objects:
        suffix = os.path.splitext(obj.key)[1].lower()
        if suffix not in (*VIDEO_SUFFIXES, CAPTION_SUFFIX):
            return f", e.g. {obj.key!r}"
    return ""


def write_manifest(source: Source, path: str | Path, unpaired_path: str | Path) -> pa.Table:
    table, unpaired = list_source(source)
    write_table(unpaired, unpaired_path)
    write_table(table, path)
    return table


def chunk_of(key: str, chunks: int) -> int:
    """The probe chunk of a key: a stable hash, so adding keys never moves existing ones."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % chunks


def manifest_chunk(manifest: pa.Table, chunk: str, chunks: int) -> list[dict]:
    """The manifest rows whose key hashes to `chunk`."""
    index = int(chunk)
    if not 0 <= index < chunks:
        raise ValueError(f"probe chunk {chunk}: expected 000..{chunks - 1:03d} (probe.chunks={chunks})")
    return [row for row in manifest.to_pylist() if chunk_of(row["key"], chunks) == index]
