"""Append-only shard assignment and the per-shard lists built from it.

The assignment table maps each accepted version of a key (key, etag) to a shard id ("00000", ...).
Existing assignments never change: keys that appear later fill new shards, so existing shard lists (and
the caches built from them) stay valid. An object replaced after it was assigned is a new version
(a relist gives it a new etag, the probe reads it again): it goes into a new shard like a new key, and
training takes each key from the newest shard that cached it. Keys to drop are listed in an exclusion
file and filtered out of their shard's list; they keep their assignment, so nothing is reshuffled.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from longcat.data.metadata import METADATA_SCHEMA
from longcat.data.tables import write_table
from longcat.paths import shard_id
from longcat.settings import Shards

log = logging.getLogger(__name__)

ASSIGNMENT_SCHEMA = pa.schema([("key", pa.string()), ("etag", pa.string()), ("shard", pa.string())])


def read_exclusions(path: str | Path | None) -> frozenset[str]:
    """Keys listed one per line (blank lines and `#` comments ignored); no file means no exclusions."""
    if not path:
        return frozenset()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"shards.exclude: expected a file of keys, one per line, found nothing at {path}"
        )
    keys = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        key = line.strip()
        if key and not key.startswith("#"):
            keys.add(key)
    return frozenset(keys)


def read_assignments(path: str | Path) -> pa.Table:
    """The stored table; one written before versions were tracked gets a null etag (any version)."""
    path = Path(path)
    if not path.exists():
        return ASSIGNMENT_SCHEMA.empty_table()
    table = pq.read_table(path)
    if table.schema.names == ["key", "shard"]:
        table = table.add_column(1, "etag", pa.nulls(table.num_rows, pa.string()))
    if table.schema != ASSIGNMENT_SCHEMA:
        raise ValueError(f"{path}: expected columns key, etag, shard (strings), found {table.schema.names}")
    return table


def assign_shards(
    previous: pa.Table,
    accepted: Iterable[tuple[str, str]],
    shard_size: int,
    excluded: frozenset[str] = frozenset(),
) -> pa.Table:
    """The previous assignments, then new (key, etag) versions, sorted, in new shards of `shard_size`.

    A previous row with a null etag (a table from before versions were tracked) stands for every
    version of its key.
    """
    if shard_size < 1:
        raise ValueError(f"shards.size: expected a positive number of rows, found {shard_size}")
    known = set(zip(previous.column("key").to_pylist(), previous.column("etag").to_pylist(), strict=True))
    any_version = {key for key, etag in known if etag is None}
    new = sorted(
        (key, etag)
        for key, etag in set(accepted)
        if (key, etag) not in known and key not in any_version and key not in excluded
    )
    shard_numbers = [int(shard) for shard in pc.unique(previous.column("shard")).to_pylist()]
    next_shard = max(shard_numbers, default=-1) + 1
    added = pa.Table.from_pydict(
        {
            "key": [key for key, _ in new],
            "etag": [etag for _, etag in new],
            "shard": [shard_id(next_shard + position // shard_size) for position in range(len(new))],
        },
        schema=ASSIGNMENT_SCHEMA,
    )
    return pa.concat_tables([previous, added])


def update_assignments(
    metadata_path: str | Path,
    store_path: str | Path,
    output_path: str | Path,
    shards: Shards,
) -> pa.Table:
    """Extend the stored assignment table with newly accepted keys and write it to the store and the output.

    The store survives Snakemake's deletion of the checkpoint's output before the job runs.
    """
    previous = read_assignments(store_path)
    accepted = pq.read_table(metadata_path, columns=["key", "etag"]).to_pydict()
    versions = zip(accepted["key"], accepted["etag"], strict=True)
    table = assign_shards(previous, versions, shards.size, read_exclusions(shards.exclude))
    new_shards = sorted(set(table.column("shard").to_pylist()) - set(previous.column("shard").to_pylist()))
    log.info(
        "shards: %d versions of keys in %d shards; %d new in new shards %s",
        table.num_rows,
        len(pc.unique(table.column("shard"))),
        table.num_rows - previous.num_rows,
        new_shards,
    )
    write_table(table, store_path)
    write_table(table, output_path)
    return table


def shard_ids(assignments_path: str | Path) -> list[str]:
    column = pq.read_table(assignments_path, columns=["shard"]).column("shard")
    return sorted(pc.unique(column).to_pylist())


@functools.cache
def _shard_keys(assignments_path: str, mtime_ns: int) -> dict[str, list[tuple[str, str | None]]]:
    keys_by_shard: dict[str, list[tuple[str, str | None]]] = {}
    for key, etag, shard in zip(*read_assignments(assignments_path).to_pydict().values(), strict=True):
        keys_by_shard.setdefault(shard, []).append((key, etag))
    return keys_by_shard


@functools.cache
def _exclusions(exclude_path: str, mtime_ns: int) -> frozenset[str]:
    return read_exclusions(exclude_path)


def shard_keys(assignments_path: str | Path, shard: str) -> list[tuple[str, str | None]]:
    """(key, etag) of each version assigned to one shard; a null etag stands for any version."""
    path = str(assignments_path)
    return _shard_keys(path, Path(path).stat().st_mtime_ns).get(shard, [])


def superseded_keys(assignments_path: str | Path) -> dict[str, frozenset[str]]:
    """Per shard, its keys that have a version in a later shard (an object replaced, then relisted):
    training takes that newer version, so a failure of the old one in this shard does not count against
    it. No key is superseded without an assignment table (shard lists made outside the workflow)."""
    path = Path(assignments_path)
    if not path.exists():
        return {}
    keys_by_shard = _shard_keys(str(path), path.stat().st_mtime_ns)
    latest: dict[str, str] = {}
    for shard in sorted(keys_by_shard, key=int):
        latest |= dict.fromkeys((key for key, _ in keys_by_shard[shard]), shard)
    return {
        shard: frozenset(key for key, _ in keys if latest[key] != shard)
        for shard, keys in keys_by_shard.items()
    }


def excluded_in_shard(assignments_path: str | Path, exclude_path: str | Path | None, shard: str) -> list[str]:
    """The excluded keys assigned to one shard: a rule parameter, so only that shard's list is rebuilt."""
    if not exclude_path or not Path(assignments_path).exists():
        return []
    excluded = _exclusions(str(exclude_path), Path(exclude_path).stat().st_mtime_ns)
    return sorted({key for key, _ in shard_keys(assignments_path, shard) if key in excluded})


def build_shard_list(
    assignments_path: str | Path,
    metadata_path: str | Path,
    shard: str,
    excluded: Iterable[str],
    output_path: str | Path,
) -> pa.Table:
    """The metadata rows of one shard's versions (in assignment order), excluded keys left out.

    A version the metadata no longer holds (the object was replaced or removed since) is left out: its
    newer version, if any, has a shard of its own.
    """
    excluded = set(excluded)
    versions = [(key, etag) for key, etag in shard_keys(assignments_path, shard) if key not in excluded]
    if not versions and shard not in shard_ids(assignments_path):
        raise ValueError(f"shard {shard}: not in {assignments_path}")
    rows = {}
    if versions:
        metadata = pq.read_table(metadata_path, filters=[("key", "in", [key for key, _ in versions])])
        rows = {row["key"]: row for row in metadata.to_pylist()}
    kept = [rows[key] for key, etag in versions if key in rows and etag in (None, rows[key]["etag"])]
    if len(kept) < len(versions):
        gone = next(key for key, etag in versions if key not in rows or etag not in (None, rows[key]["etag"]))
        log.warning(
            "shard %s: %d keys no longer accepted at their assigned version, left out (first: %s)",
            shard,
            len(versions) - len(kept),
            gone,
        )
    table = pa.Table.from_pylist(kept, schema=METADATA_SCHEMA)
    write_table(table, output_path)
    log.info("shard %s: %d rows", shard, table.num_rows)
    return table
