"""The manifest: one row per video of the source, paired with the caption of the same stem.

Videos pair with a caption of the same stem (`a/b/clip.mp4` + `a/b/clip.txt`), names compared without
regard to case (`clip.TXT` pairs too). A name must pair one way only: videos whose names differ only in
case or extension (`a.mp4`, `a.MP4`, `A.mov`), or a video beside several such captions (`b.txt`,
`b.TXT`), would share or choose a caption silently, so each such video keeps its row with a
`name_conflict` that names the others, and the probe rejects it (`ambiguous_name`). A caption without
its video is listed beside the manifest (`unpaired.parquet`) and ends in rejected.parquet; other files
(neither video nor caption) are counted in the job's log. Each key also has a probe chunk, from a
stable hash of the key, so a relist never moves an existing key to another chunk.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
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
        ("name_conflict", pa.string()),  # why the key pairs ambiguously; null when it does not
    ]
)

UNPAIRED_SCHEMA = pa.schema([("key", pa.string()), ("etag", pa.string()), ("size", pa.int64())])


def _kind(key: str) -> str:
    suffix = os.path.splitext(key)[1].lower()
    return "video" if suffix in VIDEO_SUFFIXES else "caption" if suffix == CAPTION_SUFFIX else "other"


@dataclass
class _Name:
    """The videos and captions whose keys are one name when case and the extension are ignored."""

    videos: list[SourceObject] = field(default_factory=list)
    captions: list[SourceObject] = field(default_factory=list)


def _names(objects: Iterable[SourceObject]) -> dict[str, _Name]:
    names: dict[str, _Name] = {}
    for obj in sorted(objects, key=lambda obj: obj.key):
        kind = _kind(obj.key)
        if kind != "other":
            name = names.setdefault(os.path.splitext(obj.key)[0].lower(), _Name())
            (name.videos if kind == "video" else name.captions).append(obj)
    return names


def _conflict(video: SourceObject, name: _Name) -> str | None:
    """Why `video` pairs ambiguously, naming the other keys; None when it does not."""
    others = [obj.key for obj in name.videos if obj is not video]
    if others:
        return (
            f"{video.key} and {', '.join(others)} differ only in case or extension: each would take the "
            f"caption {os.path.splitext(video.key)[0]}{CAPTION_SUFFIX}. Rename all but one"
        )
    if len(name.captions) > 1:
        captions = ", ".join(obj.key for obj in name.captions)
        return (
            f"the captions {captions} differ only in case: each could be the caption of {video.key}. Keep one"
        )
    return None


def pair_captions(objects: Iterable[SourceObject]) -> pa.Table:
    """One manifest row per video, with its caption (or none) or its name conflict, sorted by key."""
    rows = []
    for name in _names(objects).values():
        caption = name.captions[0] if len(name.captions) == 1 else None
        for video in name.videos:
            rows.append(
                {
                    "key": video.key,
                    "caption_key": caption.key if caption else None,
                    "size": video.size,
                    "etag": video.etag,
                    "last_modified": video.last_modified,
                    "caption_size": caption.size if caption else None,
                    "caption_etag": caption.etag if caption else None,
                    "name_conflict": _conflict(video, name),
                }
            )
    rows.sort(key=lambda row: row["key"])
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def unpaired_captions(objects: Iterable[SourceObject]) -> pa.Table:
    """The captions with no video of the same name, sorted by key."""
    rows = [
        {"key": obj.key, "etag": obj.etag, "size": obj.size}
        for name in _names(objects).values()
        if not name.videos
        for obj in name.captions
    ]
    rows.sort(key=lambda row: row["key"])
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
    rows = table.to_pylist()
    others = sum(1 for obj in objects if _kind(obj.key) == "other")
    log.info(
        "listed %s: %d videos, %d without caption, %d with an ambiguous name, %d captions without video, "
        "%d other files (not listed)",
        source.description,
        len(rows),
        sum(1 for row in rows if not row["caption_key"] and not row["name_conflict"]),
        sum(1 for row in rows if row["name_conflict"]),
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
        if _kind(obj.key) == "other":
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
