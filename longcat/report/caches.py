"""The caches in the report: the clips that do not train, by stage (probe, VAE cache, text cache) and
reason; per shard, the clips encoded and failed (with the reasons), the bytes on disk and the encode
throughput; and the caption lengths in tokens of the base model's tokenizer, as the text cache recorded
them.

Clips and failures come from each shard's index (`status`, `reason`), the probe's rejects from
`rejected.parquet`. A failure whose key has a newer version in a later shard (an object replaced, then
relisted) is superseded: that version trains instead. The time of a shard job comes from
Snakemake's benchmark table of that job (`benchmark:` in rules/cache.smk): the wall time of the job's
last attempt, model loading included. A shard whose benchmark table is missing (cached before the
benchmarks existed) shows no throughput.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from longcat.cache.format import STATUS_OK
from longcat.data.rejects import FIXES, count_reasons, split_cache_failure
from longcat.data.shards import superseded_keys
from longcat.paths import Layout
from longcat.report.figures import (
    histogram,
    html_table,
    mark,
    new_figure,
    new_panels,
    no_data,
    save_svg,
    write_page,
)

log = logging.getLogger(__name__)

# The outputs of the rule report_caches, by name.
CACHE_OUTPUTS = ("shards", "throughput", "caption_tokens")
CACHE_KINDS = ("vae", "text")
STAGES = {"vae": "VAE cache", "text": "text cache"}
MIB = 1024**2


@dataclass(frozen=True)
class CacheShard:
    """What one cache (vae or text) holds for one shard."""

    encoded: int
    failures: list[tuple[str, str]]  # (sample id, reason)
    bytes: int
    seconds: float | None  # the job's wall time from its benchmark table; None without one
    text_lens: list[int]

    @property
    def clips_per_second(self) -> float | None:
        return self.encoded / self.seconds if self.seconds else None


def benchmark_seconds(path: str | Path) -> float | None:
    """The wall time `s` of a Snakemake benchmark table (its last row: the last repeat), if there is one."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    try:
        return float(rows[-1]["s"])
    except (IndexError, KeyError, ValueError):
        log.warning("ignoring the benchmark table %s: no `s` column with a number", path)
        return None


def read_cache_shard(layout: Layout, kind: str, shard: str) -> CacheShard:
    cache = layout.vae_cache if kind == "vae" else layout.text_cache
    columns = ["sample_id", "status", "reason"] + (["text_len"] if kind == "text" else [])
    index = pq.read_table(cache.index(shard), columns=columns).to_pylist()
    encoded = [row for row in index if row["status"] == STATUS_OK]
    return CacheShard(
        encoded=len(encoded),
        failures=[(row["sample_id"], row["reason"] or "") for row in index if row["status"] != STATUS_OK],
        bytes=sum(
            path.stat().st_size for path in (cache.tensors(shard), cache.index(shard)) if path.exists()
        ),
        seconds=benchmark_seconds(layout.cache_benchmark(kind, shard)),
        text_lens=[row["text_len"] for row in encoded] if kind == "text" else [],
    )


def write_cache_report(
    layout: Layout, shards: Sequence[str], max_tokens: int, outputs: Mapping[str, str | Path]
) -> None:
    """Every file of CACHE_OUTPUTS for the given shards of both caches (rule report_caches)."""
    listed = {shard: pq.read_metadata(layout.shard_list(shard)).num_rows for shard in shards}
    caches = {
        kind: {shard: read_cache_shard(layout, kind, shard) for shard in shards} for kind in CACHE_KINDS
    }
    rejected = pq.read_table(layout.rejected, columns=["key", "reason", "detail"]).to_pylist()
    write_shards_page(listed, caches, rejected, superseded_keys(layout.assignments), outputs["shards"])
    throughput_figure(caches, outputs["throughput"])
    caption_tokens_figure(
        [length for shard in caches["text"].values() for length in shard.text_lens],
        max_tokens,
        outputs["caption_tokens"],
    )
    log.info("cache report: %d shards", len(shards))


def _shard_columns(shard: CacheShard) -> tuple:
    rate = shard.clips_per_second
    return (
        shard.encoded,
        len(shard.failures),
        shard.bytes / MIB,
        "-" if shard.seconds is None else round(shard.seconds, 1),
        "-" if rate is None else rate,
    )


def not_trained_rows(
    rejected: Sequence[Mapping],
    caches: Mapping[str, Mapping[str, CacheShard]],
    superseded: Mapping[str, frozenset[str]],
) -> list[tuple]:
    """(stage, reason, clips, an example clip, its detail, the fix) for the probe's rejects and each
    cache's failures that are not superseded."""
    stages = {"probe": [(row["key"], row["reason"], row["detail"]) for row in rejected]}
    for kind in CACHE_KINDS:
        stages[STAGES[kind]] = [
            (sample, *split_cache_failure(reason))
            for shard, cached in caches[kind].items()
            for sample, reason in cached.failures
            if sample not in superseded.get(shard, ())
        ]
    return [
        (stage, count.reason, count.count, count.example, count.detail, FIXES.get(count.reason, ""))
        for stage, rows in stages.items()
        for count in count_reasons(rows)
    ]


def write_shards_page(
    listed: Mapping[str, int],
    caches: Mapping[str, Mapping[str, CacheShard]],
    rejected: Sequence[Mapping],
    superseded: Mapping[str, frozenset[str]],
    path: str | Path,
) -> None:
    """The clips that do not train by stage and reason; one row per shard (both caches side by side) and
    a total row; then every failure with its reason."""
    per_cache = ["encoded", "failed", "MiB", "job s", "clips/s"]
    columns = ["shard", "clips listed"] + [f"{kind} {name}" for kind in CACHE_KINDS for name in per_cache]
    rows = [
        (shard, count, *(value for kind in CACHE_KINDS for value in _shard_columns(caches[kind][shard])))
        for shard, count in listed.items()
    ]
    totals = ["all", sum(listed.values())]
    for kind in CACHE_KINDS:
        shards = caches[kind].values()
        timed = [shard for shard in shards if shard.seconds]
        seconds = sum(shard.seconds for shard in timed)
        totals += [
            sum(shard.encoded for shard in shards),
            sum(len(shard.failures) for shard in shards),
            sum(shard.bytes for shard in shards) / MIB,
            round(seconds, 1) if timed else "-",
            sum(shard.encoded for shard in timed) / seconds if seconds else "-",
        ]
    failures = [
        (
            shard,
            kind,
            sample,
            reason,
            "superseded by a later shard" if sample in superseded.get(shard, ()) else "",
        )
        for kind in CACHE_KINDS
        for shard, cached in caches[kind].items()
        for sample, reason in cached.failures
    ]
    not_trained = not_trained_rows(rejected, caches, superseded)
    body = (
        "<h2>Clips that do not train</h2>\n"
        + (
            html_table(["stage", "reason", "clips", "e.g.", "detail", "fix"], not_trained)
            if not_trained
            else "<p>None: every listed clip is in both caches.</p>"
        )
        + "\n<h2>Shards</h2>\n<p>clips/s: clips encoded over the shard job's wall time (model loading "
        "included), from its benchmark table; '-' where the job has none.</p>\n"
        f"{html_table(columns, [*rows, totals])}\n<h2>Failed clips</h2>\n"
        + (html_table(["shard", "cache", "clip", "reason", "note"], failures) if failures else "<p>None.</p>")
    )
    write_page(path, "Cache shards", body)


def throughput_figure(caches: Mapping[str, Mapping[str, CacheShard]], path: str | Path) -> None:
    """Clips per second of each shard job: VAE above, text below, each on its own scale."""
    figure, panels = new_panels("Encode throughput per shard job", "shard", ["VAE clips/s", "text clips/s"])
    shards = list(caches["vae"])
    positions = np.arange(len(shards))
    for panel, kind, color in zip(panels, CACHE_KINDS, ("#4477aa", "#228833"), strict=True):
        rates = np.asarray([caches[kind][s].clips_per_second or np.nan for s in shards], float)
        if np.isfinite(rates).any():
            panel.plot(positions, rates, "o-", color=color)
            panel.set_ylim(bottom=0)
        else:
            no_data(panel, "no benchmark tables (shard jobs cached before they were recorded)")
    step = max(1, len(shards) // 12)
    panels[-1].set_xticks(positions[::step], shards[::step])
    save_svg(figure, path)


def caption_tokens_figure(lengths: Sequence[int], max_tokens: int, path: str | Path) -> None:
    """Caption length in tokens as encoded; captions at `cache.max_tokens` were cut there."""
    figure, axes = new_figure("Caption length in tokens (text cache)", "tokens", "clips")
    if lengths:
        values = np.asarray(lengths, dtype=float)
        histogram(axes, values, bins=min(50, max(5, int(values.max() - values.min()) + 1)))
        mark(axes, max_tokens, f"cache.max_tokens = {max_tokens}")
        axes.set_xlim(right=max_tokens * 1.05 + 1)
    else:
        no_data(axes, "no cached captions")
    save_svg(figure, path)
