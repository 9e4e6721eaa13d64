"""The data stage in the report: how many clips were accepted and rejected (and why), and what the
accepted clips look like next to the frame plan: durations against the seconds each frame bucket needs,
frame rates, aspect ratios against the resolution buckets, clips per bucket, caption lengths.

Caption length is counted in words (whitespace-separated): the data stage runs before any model is
loaded. The tokens the text encoder sees are in the caches' report (`longcat.report.caches`).
"""

from __future__ import annotations

import csv
import html
import io
import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from longcat.data.buckets import resolution_buckets
from longcat.data.frames import frame_counts
from longcat.data.rejects import FIXES
from longcat.files import atomic_write_text
from longcat.report.figures import (
    bar_counts,
    histogram,
    html_table,
    mark,
    new_figure,
    no_data,
    save_svg,
    write_page,
)
from longcat.settings import Frames

log = logging.getLogger(__name__)

# The outputs of the rule report_data, by name.
DATA_OUTPUTS = ("summary", "rejects", "duration", "fps", "aspect", "buckets", "caption_words")
# Rows of the reject table shown on the page; all of them are in the CSV beside it.
MAX_REJECTS_SHOWN = 1000
METADATA_COLUMNS = [
    "duration",
    "fps",
    "aspect_ratio",
    "plan_num_frames",
    "plan_height",
    "plan_width",
    "caption",
]


def write_data_report(
    metadata_path: str | Path, rejected_path: str | Path, frames: Frames, outputs: Mapping[str, str | Path]
) -> None:
    """Every file of DATA_OUTPUTS from `metadata.parquet` and `rejected.parquet` (rule report_data)."""
    metadata = pq.read_table(metadata_path, columns=METADATA_COLUMNS).to_pydict()
    rejected = pq.read_table(rejected_path, columns=["key", "reason", "detail"]).to_pylist()
    write_summary(len(metadata["duration"]), rejected, outputs["summary"], Path(outputs["rejects"]).name)
    write_rejects_csv(rejected, outputs["rejects"])
    duration_figure(metadata["duration"], frames, outputs["duration"])
    fps_figure(metadata["fps"], frames, outputs["fps"])
    aspect_figure(metadata["aspect_ratio"], frames, outputs["aspect"])
    buckets_figure(metadata, outputs["buckets"])
    caption_words_figure(metadata["caption"], outputs["caption_words"])
    log.info("data report: %d accepted, %d rejected", len(metadata["duration"]), len(rejected))


def write_summary(accepted: int, rejected: list[dict], path: str | Path, csv_name: str) -> None:
    """Counts, rejects by reason, and the first MAX_REJECTS_SHOWN rejects with their detail."""
    reasons = Counter(row["reason"] for row in rejected)
    total = accepted + len(rejected)
    counts = html_table(
        ["clips", "count", "share"],
        [
            ("accepted", accepted, f"{accepted / total:.1%}" if total else "-"),
            ("rejected", len(rejected), f"{len(rejected) / total:.1%}" if total else "-"),
            ("listed", total, ""),
        ],
    )
    by_reason = html_table(
        ["reason", "count", "fix"],
        [
            (reason, count, FIXES.get(reason, ""))
            for reason, count in sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
        ],
    )
    shown = rejected[:MAX_REJECTS_SHOWN]
    note = (
        f"<p>The first {len(shown):,} of {len(rejected):,} rejects; all of them are in {csv_name}.</p>"
        if len(rejected) > len(shown)
        else ""
    )
    table = html_table(["key", "reason", "detail"], [(r["key"], r["reason"], r["detail"]) for r in shown])
    body = (
        f"{counts}\n<h2>Rejects by reason</h2>\n{by_reason if reasons else '<p>No rejects.</p>'}\n"
        f"<h2>Every reject</h2>\n{note}{table if shown else '<p>No rejects.</p>'}"
    )
    write_page(path, "Accepted and rejected clips", body)


def write_rejects_csv(rejected: list[dict], path: str | Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["key", "reason", "detail"])
    writer.writerows((row["key"], row["reason"], row["detail"]) for row in rejected)
    atomic_write_text(path, buffer.getvalue())


def _finite(values) -> np.ndarray:
    array = np.asarray([value for value in values if value is not None], dtype=float)
    return array[np.isfinite(array)]


def duration_figure(durations, frames: Frames, path: str | Path) -> None:
    """Clip durations, with the seconds of source each frame bucket needs at `frames.fps`."""
    figure, axes = new_figure("Duration of the accepted clips", "seconds", "clips")
    values = _finite(durations)
    if values.size:
        histogram(axes, values, bins=min(60, max(10, values.size // 5)))
        for count in frame_counts(frames):
            mark(axes, count / frames.fps, f"{count} frames")
    else:
        no_data(axes, "no accepted clips")
    save_svg(figure, path)


def fps_figure(rates, frames: Frames, path: str | Path) -> None:
    """Clips per source frame rate (every clip is sampled at `frames.fps`)."""
    figure, axes = new_figure(
        f"Source frame rates (all sampled at {frames.fps:g} fps)", "frames per second", "clips"
    )
    values = _finite(rates)
    if values.size:
        counts = sorted(Counter(round(float(value), 2) for value in values).items())
        bar_counts(axes, [f"{rate:g}" for rate, _ in counts], [count for _, count in counts])
    else:
        no_data(axes, "no accepted clips")
    save_svg(figure, path)


def aspect_figure(aspects, frames: Frames, path: str | Path) -> None:
    """Display aspect ratios (log scale: portrait and landscape mirror each other), with the buckets'."""
    figure, axes = new_figure(
        "Aspect ratio (width / height) and the resolution buckets", "aspect ratio", "clips"
    )
    values = _finite(aspects)
    values = values[values > 0]
    buckets = resolution_buckets(frames)
    if values.size:
        ratios = [width / height for height, width in buckets]
        low, high = min(values.min(), *ratios) / 1.1, max(values.max(), *ratios) * 1.1
        histogram(axes, values, bins=np.geomspace(low, high, 50))
        axes.set_xscale("log")
        axes.minorticks_off()
        ticks = sorted(set(ratios) | {1.0})
        axes.set_xticks(ticks, [f"{tick:.2f}" for tick in ticks])
        for (height, width), ratio in zip(buckets, ratios, strict=True):
            mark(axes, ratio, f"{height}x{width}")
    else:
        no_data(axes, "no accepted clips")
    save_svg(figure, path)


def buckets_figure(metadata: Mapping[str, list], path: str | Path) -> None:
    """Clips per training bucket: frames x height x width, as the frame plan chose them."""
    figure, axes = new_figure("Clips per training bucket", "frames x height x width", "clips")
    keys = zip(metadata["plan_num_frames"], metadata["plan_height"], metadata["plan_width"], strict=True)
    counts = sorted(Counter(keys).items(), key=lambda item: (-item[0][0], item[0][1], item[0][2]))
    if counts:
        bar_counts(axes, [f"{f} x {h}x{w}" for (f, h, w), _ in counts], [count for _, count in counts])
    else:
        no_data(axes, "no accepted clips")
    save_svg(figure, path)


def caption_words_figure(captions, path: str | Path) -> None:
    """Caption length in words, as captions are stored after cleaning."""
    figure, axes = new_figure("Caption length", "words", "clips")
    words = np.asarray([len((caption or "").split()) for caption in captions], dtype=float)
    if words.size:
        histogram(axes, words, bins=min(50, max(5, int(words.max() - words.min()) + 1)))
    else:
        no_data(axes, "no accepted clips")
    save_svg(figure, path)


def write_estimate_page(text_path: str | Path, path: str | Path) -> None:
    """The pre-launch estimate (`snakemake estimate`) as a page the report shows in place."""
    text = Path(text_path).read_text(encoding="utf-8")
    write_page(path, "Pre-launch estimate", f"<pre>{html.escape(text)}</pre>")
