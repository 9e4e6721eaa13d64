"""Checking every shard of a VAE and a text cache, and removing the damaged ones (`snakemake verify_cache`).

A shard is damaged when its index is unreadable (parquet's page checksums, column types), its tensors file
is missing, truncated or written for another cache key, its tensors are not its ok samples in index order,
or a sample's tensor fails its checksum, has the wrong shape or holds NaN or infinite values. A damaged
shard loses both of its files (and any unfinished parts), so the next `snakemake cache` runs exactly its
job again; the shards that pass are not touched. The report lists every problem and every removed file.
"""

from __future__ import annotations

import json
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from longcat.cache.format import (
    CHECKSUM_KEY,
    EMPTY_TEXT_TENSOR,
    STATUS_OK,
    TEXT_INDEX_SCHEMA,
    VAE_INDEX_SCHEMA,
    TensorFile,
    nonfinite_count,
    read_index,
)
from longcat.cache.reader import stored_shards
from longcat.cache.spec import CacheError
from longcat.files import atomic_write_text
from longcat.paths import CacheLayout

log = logging.getLogger(__name__)

SUMMARY_PROBLEMS = 20  # problems listed in the summary; the report has them all


@dataclass(frozen=True)
class Problem:
    """What is wrong with one file of a cache (and with which sample, when it is one sample's)."""

    cache: str  # "vae" | "text"
    shard: str | None  # None for the empty caption
    file: str
    problem: str
    sample_id: str | None = None


@dataclass
class ShardCheck:
    """What checking one shard (or the empty caption: shard None) read and found."""

    cache: str
    shard: str | None
    samples: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)


@dataclass
class VerifyReport:
    """The report file's content: what was checked, every problem, every file removed."""

    vae_cache: str
    text_cache: str
    shards_checked: int = 0
    samples_checked: int = 0
    bytes_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        bad = sorted({(p.cache, p.shard or "empty caption") for p in self.problems})
        head = (
            f"verify_cache: {self.shards_checked} shards, {self.samples_checked} samples, "
            f"{self.bytes_checked / 1e9:.2f} GB checked"
        )
        if not bad:
            return f"{head}: all sound"
        lines = [f"{head}: {len(bad)} damaged, {len(self.removed)} files removed"]
        lines += [
            f"  {p.file}" + (f" [{p.sample_id}]" if p.sample_id else "") + f": {p.problem}"
            for p in self.problems[:SUMMARY_PROBLEMS]
        ]
        if len(self.problems) > SUMMARY_PROBLEMS:
            lines.append(f"  ... {len(self.problems) - SUMMARY_PROBLEMS} more in the report")
        lines.append("  `snakemake cache` rebuilds the removed files")
        return "\n".join(lines)


def _expected_shape(kind: str, row: dict, shape: list[int]) -> bool:
    if kind == "vae":
        return shape == list(row["latent_shape"])
    return len(shape) == 2 and shape[0] == row["text_len"]


def check_shard(layout: CacheLayout, kind: str, shard: str) -> ShardCheck:
    """Every check of one shard's pair of files; reads each tensor once, in file order."""
    result = ShardCheck(kind, shard)
    index_path, tensors_path = layout.index(shard), layout.tensors(shard)

    def problem(path: Path, text: str, sample_id: str | None = None) -> None:
        result.problems.append(Problem(kind, shard, str(path), text, sample_id))

    for path in (index_path, tensors_path):
        if not path.is_file():
            problem(path, "missing beside its shard")
            return result
    schema = VAE_INDEX_SCHEMA if kind == "vae" else TEXT_INDEX_SCHEMA
    try:
        rows = [row for row in read_index(index_path, schema).to_pylist() if row["status"] == STATUS_OK]
    except CacheError as error:
        problem(index_path, str(error).removeprefix(f"{index_path}: "))
        return result
    try:
        tensors = TensorFile(tensors_path)
    except (CacheError, OSError) as error:
        problem(tensors_path, str(error).removeprefix(f"{tensors_path}: "))
        return result
    with tensors:
        written_for = tensors.metadata.get("cache_key")
        if written_for != layout.root.name:
            problem(tensors_path, f"written for cache key {written_for!r}, not {layout.root.name}")
        names = tensors.names()
        if names != [row["sample_id"] for row in rows]:
            problem(tensors_path, f"holds {len(names)} tensors, not the {len(rows)} ok samples of its index")
            return result
        for row in rows:
            sample_id = row["sample_id"]
            try:
                tensor, digest = tensors.read(sample_id)
            except (CacheError, OSError) as error:
                problem(tensors_path, f"unreadable: {error}", sample_id)
                continue
            result.samples += 1
            result.bytes += tensor.numel() * tensor.element_size()
            if digest != row["checksum"]:
                found = f"checksum {digest:016x}, its index row says {row['checksum']:016x}"
                problem(tensors_path, found, sample_id)
            elif not _expected_shape(kind, row, list(tensor.shape)):
                problem(tensors_path, f"shape {list(tensor.shape)} does not match its index row", sample_id)
            elif bad := nonfinite_count(tensor):
                problem(tensors_path, f"{bad} NaN or infinite values of {tensor.numel()}", sample_id)
    return result


def check_empty_text(layout: CacheLayout) -> ShardCheck:
    """The empty caption's embedding against the checksum in its file's metadata."""
    result = ShardCheck("text", None)
    path = layout.empty_text
    if not path.is_file():
        return result  # not built yet: `snakemake cache` builds it
    try:
        with TensorFile(path) as file:
            tensor, digest = file.read(EMPTY_TEXT_TENSOR)
            expected = file.metadata.get(CHECKSUM_KEY)
    except (CacheError, OSError) as error:
        result.problems.append(Problem("text", None, str(path), str(error).removeprefix(f"{path}: ")))
        return result
    result.samples, result.bytes = 1, tensor.numel() * tensor.element_size()
    if str(digest) != expected:
        text = f"checksum {digest:016x}, its metadata says {expected!r}"
    elif bad := nonfinite_count(tensor):
        text = f"{bad} NaN or infinite values of {tensor.numel()}"
    else:
        return result
    result.problems.append(Problem("text", None, str(path), text, EMPTY_TEXT_TENSOR))
    return result


def remove_damaged(layout: CacheLayout, shard: str | None) -> list[str]:
    """Delete a damaged shard's files (index first, then tensors, then unfinished parts) or the damaged
    empty caption. Either file missing makes Snakemake rerun the shard's job, which writes both anew."""
    paths = [layout.empty_text] if shard is None else [layout.index(shard), layout.tensors(shard)]
    removed = []
    for path in paths:
        if path.is_file():
            path.unlink()
            removed.append(str(path))
    if shard is not None and layout.partial(shard).is_dir():
        shutil.rmtree(layout.partial(shard))
        removed.append(str(layout.partial(shard)))
    return removed


def verify_caches(vae: CacheLayout, text: CacheLayout, report_path: Path, threads: int = 4) -> VerifyReport:
    """Check every shard of both caches (progress on stderr), remove the damaged ones, write the report."""
    report = VerifyReport(str(vae.root), str(text.root))
    jobs = []
    for kind, layout in (("vae", vae), ("text", text)):
        if not layout.root.is_dir():
            log.info("%s: no %s cache yet, nothing to check", layout.root, kind)
            continue
        index_shards, tensor_shards = stored_shards(layout.root)
        jobs += [(layout, kind, shard) for shard in sorted(index_shards | tensor_shards)]
    checks = [check_empty_text(text)] if text.root.is_dir() else []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        futures = [pool.submit(check_shard, *job) for job in jobs]
        for future in tqdm(as_completed(futures), total=len(futures), desc="verify_cache", unit="shard"):
            checks.append(future.result())
    for check in sorted(checks, key=lambda check: (check.cache, check.shard or "")):
        report.shards_checked += check.shard is not None
        report.samples_checked += check.samples
        report.bytes_checked += check.bytes
        if check.problems:
            report.problems += check.problems
            report.removed += remove_damaged(vae if check.cache == "vae" else text, check.shard)
    atomic_write_text(report_path, json.dumps(asdict(report), indent=2) + "\n")
    return report
