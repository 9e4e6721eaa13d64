"""What every figure and table of the report shares: matplotlib without pyplot (no display, no global
state), SVG with its text kept as text, the same bytes for the same data, and small standalone HTML
pages. Every file is written atomically, so a figure is complete or absent.

matplotlib is imported when a figure is drawn, not with this module: the rules import the figures'
names when the Snakefile is parsed, again in every cluster job.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from longcat.files import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Text as <text> (small, searchable), and ids from a fixed salt, so the same data draws the same bytes.
SVG_STYLE = {"svg.fonttype": "none", "svg.hashsalt": "longcat", "axes.grid": True, "grid.alpha": 0.3}
WIDE = (7.0, 3.6)

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
video { width: 100%; background: #000; }
figure { display: inline-block; width: 28em; max-width: 100%; margin: 0 1.5em 1.5em 0; vertical-align: top; }
figcaption { font-size: 0.85em; }
"""


def new_figure(
    title: str, xlabel: str, ylabel: str, size: tuple[float, float] = WIDE
) -> tuple[Figure, object]:
    """One figure with one axes, titled and labelled."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(SVG_STYLE):
        figure = Figure(figsize=size, layout="constrained")
        axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    return figure, axes


def new_panels(title: str, xlabel: str, ylabels: Sequence[str]) -> tuple[Figure, list]:
    """Panels stacked over one x axis, one per y label (quantities on scales of their own)."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(SVG_STYLE):
        figure = Figure(figsize=(WIDE[0], 2.2 * len(ylabels)), layout="constrained")
        panels = list(figure.subplots(len(ylabels), 1, sharex=True, squeeze=False)[:, 0])
    figure.suptitle(title)
    panels[-1].set_xlabel(xlabel)
    for panel, ylabel in zip(panels, ylabels, strict=True):
        panel.set_ylabel(ylabel)
    return figure, panels


def no_data(axes, message: str) -> None:
    """Say on the figure why it is empty, instead of leaving a blank frame."""
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes, color="#666")
    axes.set_xticks([])
    axes.set_yticks([])


def mark(axes, x: float, label: str) -> None:
    """A dashed vertical line at `x`, labelled along it (a bucket's threshold or shape)."""
    axes.axvline(x, color="#cc6677", linestyle="--")
    axes.annotate(
        label,
        (x, 1),
        xycoords=("data", "axes fraction"),
        rotation=90,
        va="top",
        ha="right",
        fontsize=8,
        color="#cc6677",
    )


def save_svg(figure: Figure, path: str | Path) -> Path:
    """Write the figure as SVG (no date in its metadata: the bytes depend on the data only)."""
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context(SVG_STYLE):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def histogram(axes, values, bins) -> None:
    """A histogram of counts (whole numbers on the count axis)."""
    from matplotlib.ticker import MaxNLocator

    axes.hist(values, bins=bins, color="#4477aa")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))


def bar_counts(axes, labels: Sequence[str], counts: Sequence[int]) -> None:
    """Bars with their counts written on top."""
    from matplotlib.ticker import MaxNLocator

    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    positions = range(len(labels))
    bars = axes.bar(positions, counts, color="#4477aa")
    axes.set_xticks(list(positions), labels, rotation=30 if len(labels) > 6 else 0, ha="right")
    axes.bar_label(bars, labels=[f"{count:,}" for count in counts], fontsize=8)
    axes.margins(y=0.15)


def cell(value) -> str:
    """A table cell: numbers right-aligned with thousands separators, everything else escaped."""
    if isinstance(value, bool) or value is None:
        return f"<td>{'' if value is None else value}</td>"
    if isinstance(value, int):
        return f'<td class="number">{value:,}</td>'
    if isinstance(value, float):
        return f'<td class="number">{value:,.3g}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def html_table(columns: Sequence[str], rows: Iterable[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name in columns)
    body = "\n".join("<tr>" + "".join(cell(value) for value in row) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def write_page(path: str | Path, title: str, body: str) -> Path:
    """A standalone HTML page (no outside resources): it opens alone and inside the report's frame."""
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{PAGE_STYLE}</style>\n</head>\n"
        f"<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )
    atomic_write_text(path, page)
    return Path(path)


def script_safe_json(value) -> str:
    """`value` as JSON text holding no `<`, `>` or `&` (written as \\u003c, \\u003e, \\u0026, which JSON
    reads back as they were): Snakemake's report puts a job's params inside a <script> element, which a
    `</script>` in them would end."""
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
