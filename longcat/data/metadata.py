"""The data stage's tables: manifest, probe chunks, metadata and rejects.

Every manifest key ends in exactly one of `metadata.parquet` (accepted, with the frame plan) and
`rejected.parquet` (with a reason). Probe records hold only facts about the objects; the acceptance
rules that depend on the config (minimum size, the frame plan) are applied when the chunks are merged,
so changing them never re-probes anything.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from longcat.cache.spec import CacheError
from longcat.data.buckets import display_size
from longcat.data.frames import ClipRejected, FramePlan, frame_plan
from longcat.data.manifest import VIDEO_SUFFIXES, chunk_of, manifest_chunk
from longcat.data.probe import PROBE_SCHEMA, probe_rows
from longcat.data.rejects import count_reasons, reasons_text
from longcat.data.sources import Source, TransientSourceError, sanitize
from longcat.data.tables import write_table
from longcat.settings import Frames, Probe

log = logging.getLogger(__name__)

PLAN_FIELDS = [
    ("frame_count", pa.int64()),
    ("plan_num_frames", pa.int32()),
    ("plan_fps", pa.float64()),
    ("plan_time_stretch", pa.float64()),  # plan_fps over frames.fps: 1.0 unless short_clip is stretch
    ("plan_height", pa.int32()),
    ("plan_width", pa.int32()),
    ("filename", pa.string()),
]
METADATA_SCHEMA = pa.schema([f for f in PROBE_SCHEMA if f.name not in {"reason", "detail"}] + PLAN_FIELDS)
REJECTED_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("caption_key", pa.string()),
        ("etag", pa.string()),
        ("size", pa.int64()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)

_NO_VIDEO = {
    "reason": "caption_without_video",
    "detail": f"no video of the same name ({', '.join(VIDEO_SUFFIXES)}) beside it",
}


def read_records(path: str | Path, keys: Sequence[str] | None = None) -> list[dict]:
    """Probe records stored by an earlier run (only those of `keys` when given); none when the store is
    missing or unreadable (a cold start)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        table = pq.read_table(path, filters=[("key", "in", list(keys))] if keys else None)
    except (OSError, pa.ArrowException) as error:
        log.warning("ignoring the unreadable probe store %s (%s)", path, error)
        return []
    if table.schema != PROBE_SCHEMA:
        log.warning("ignoring the probe store %s: its columns differ from this version's", path)
        return []
    return table.to_pylist()


def probe_chunk(
    source: Source,
    manifest_path: str | Path,
    chunk: str,
    chunks: int,
    output: str | Path,
    store: str | Path,
    *,
    workers: int,
    decode_check: bool,
    max_caption_bytes: int,
) -> pa.Table:
    """Probe the objects of one chunk, reusing the store's records by etag, and write the part file.

    The store lives outside the rule's outputs because Snakemake deletes outputs before a job runs.
    When the source did not answer for some objects, the records of the others are stored and the job
    fails with TransientSourceError, writing no part: a plain rerun reads only those objects again, and
    an outage never becomes a reject.
    """
    rows = manifest_chunk(pq.read_table(manifest_path), chunk, chunks)
    store = Path(store)
    own = read_records(store)
    previous = list(own)
    stored = {record["key"] for record in own}
    missing = [row["key"] for row in rows if row["key"] not in stored]
    if missing:
        # Keys may have been probed under another chunk (probe.chunks changed); look in the other stores.
        for other in sorted(store.parent.glob("part-*.parquet")):
            if other != store:
                previous += read_records(other, missing)
    records, probed, unanswered = probe_rows(
        source,
        rows,
        previous,
        workers=workers,
        decode_check=decode_check,
        max_caption_bytes=max_caption_bytes,
    )
    rejected = sum(1 for record in records if record["reason"])
    log.info(
        "chunk %s: %d objects, %d reused by etag, %d probed, %d rejected, %d unanswered, %d bytes read",
        chunk,
        len(rows),
        len(records) - probed,
        probed,
        rejected,
        len(unanswered),
        sum(record["probe_bytes"] or 0 for record in records),
    )
    # Records of keys that now hash to another chunk stay stored until that chunk has taken them over;
    # records of keys that left the source are dropped.
    this_chunk = {row["key"] for row in rows}
    kept = [rec for rec in own if rec["key"] not in this_chunk and chunk_of(rec["key"], chunks) != int(chunk)]
    write_table(pa.Table.from_pylist(records + kept, schema=PROBE_SCHEMA), store)
    if unanswered:
        message = (
            f"chunk {chunk}: {len(unanswered)} of {len(rows)} objects could not be read because the source "
            f"did not answer (first: {sanitize(unanswered[0])}). None of them is recorded as rejected; the "
            f"records of the {len(records)} others are stored. A plain rerun of the same target (no "
            f"--forcerun) reads only these {len(unanswered)} again."
        )
        log.error("%s", message)
        raise TransientSourceError(message)
    table = pa.Table.from_pylist(records, schema=PROBE_SCHEMA)
    write_table(table, output)
    return table


def _acceptance(record: dict, probe: Probe, frames: Frames) -> tuple[str, str] | dict:
    """A reject (reason, detail) or the plan columns for one probed record."""
    row = {**record, "frame_count": record["num_frames"]}
    shown_width, shown_height = display_size(record["width"], record["height"], record["rotation"] or 0)
    min_width, min_height = probe.min_width, probe.min_height
    if shown_width < min_width or shown_height < min_height:
        return (
            "too_small",
            f"{shown_width}x{shown_height} is below probe.min_width x min_height = {min_width}x{min_height}",
        )
    try:
        plan = frame_plan(row, frames)
    except ClipRejected as reject:
        return "too_short", str(reject)
    return {"frame_count": record["num_frames"], **plan_columns(plan), "filename": record["key"]}


def plan_columns(plan: FramePlan) -> dict:
    """The metadata's plan_* columns of a frame plan."""
    return {
        "plan_num_frames": plan.num_frames,
        "plan_fps": plan.fps,
        "plan_time_stretch": plan.time_stretch,
        "plan_height": plan.height,
        "plan_width": plan.width,
    }


def stored_plan(row: dict, frames: Frames) -> FramePlan:
    """The frame plan the metadata stage stored in a metadata (or shard list) row, the one the clip is
    decoded with. It must be the plan `frames` gives: a row planned under other frame settings would
    land in a cache keyed by these, so CacheError names both plans and the fix."""
    key = row.get("key")
    try:
        plan = FramePlan(
            num_frames=int(row["plan_num_frames"]),
            fps=float(row["plan_fps"]),
            height=int(row["plan_height"]),
            width=int(row["plan_width"]),
            time_stretch=float(row["plan_time_stretch"]),
        )
    except (KeyError, TypeError) as error:
        raise CacheError(
            f"row {key!r}: expected the metadata's frame plan (plan_num_frames, plan_fps, plan_height, "
            f"plan_width, plan_time_stretch), found none ({error!r}); shard lists are made from "
            "results/metadata.parquet, which holds it"
        ) from None
    try:
        planned = frame_plan(row, frames)
    except ClipRejected as rejected:
        planned = f"a reject ({rejected})"
    if planned != plan:
        raise CacheError(
            f"row {key!r}: the metadata planned {plan}, but the config's frames settings give {planned}: "
            "the shard list was made under other frames settings. `snakemake --forcerun metadata cache` "
            "plans the clips again"
        )
    return plan


def merge_metadata(
    manifest_path: str | Path,
    part_paths: Sequence[str | Path],
    probe: Probe,
    frames: Frames,
    metadata_path: str | Path,
    rejected_path: str | Path,
    *,
    unpaired_path: str | Path | None = None,
    failed_rejected_path: str | Path,
) -> tuple[pa.Table, pa.Table]:
    """Split the probe records into accepted rows (with the frame plan) and rejects, both sorted by key.

    The captions the listing found without a video (`unpaired_path`) are rejects too. When no clip is
    accepted, nothing is written but the rejects, to `failed_rejected_path` (Snakemake deletes a failed
    job's outputs), and ValueError counts them by reason, with an example and the fix of each.
    """
    manifest_keys = pq.read_table(manifest_path, columns=["key"]).column("key").to_pylist()
    records = {}
    for path in part_paths:
        for record in pq.read_table(path).to_pylist():
            records[record["key"]] = record
    missing = [key for key in manifest_keys if key not in records]
    if missing:
        raise ValueError(
            f"{len(missing)} manifest keys have no probe record in {len(part_paths)} parts "
            f"(first: {missing[0]!r}); the parts are older than the manifest"
        )
    accepted, rejected = [], []
    for key in sorted(manifest_keys):
        record = records[key]
        if record["reason"]:
            rejected.append(record)
            continue
        outcome = _acceptance(record, probe, frames)
        if isinstance(outcome, tuple):
            rejected.append({**record, "reason": outcome[0], "detail": outcome[1]})
        else:
            accepted.append({**record, **outcome})
    if unpaired_path is not None:
        rejected += [
            {**caption, "caption_key": caption["key"], **_NO_VIDEO}
            for caption in pq.read_table(unpaired_path).to_pylist()
        ]
        rejected.sort(key=lambda record: record["key"])
    metadata = pa.Table.from_pylist(accepted, schema=METADATA_SCHEMA)
    rejects = pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA)
    reasons = count_reasons((row["key"], row["reason"], row["detail"]) for row in rejected)
    if not accepted:
        write_table(rejects, failed_rejected_path)
        message = (
            f"metadata: expected at least one accepted clip, found none: all {len(rejected):,} objects "
            f"listed were rejected (every reject is in {failed_rejected_path}):\n{reasons_text(reasons)}"
        )
        log.error("%s", message)
        raise ValueError(message)
    Path(failed_rejected_path).unlink(missing_ok=True)
    write_table(metadata, metadata_path)
    write_table(rejects, rejected_path)
    log.info(
        "metadata: %d accepted, %d rejected %s",
        metadata.num_rows,
        rejects.num_rows,
        {count.reason: count.count for count in reasons} or "",
    )
    return metadata, rejects
