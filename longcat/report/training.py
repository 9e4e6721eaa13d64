"""The training run in the report: figures of the scalars its TensorBoard event files hold (loss, loss
per σ bucket and per task, the held-out loss per task and σ bucket, learning rate, gradient norm, step
time, data-wait fraction, MFU) and a page that plays its validation videos and final samples.

A resumed run writes one event file per training process; TensorBoard's loader reads them in order and
drops the steps a resume logged again, and so do these figures. A tag the run did not log (MFU is
logged only on GPUs with a known peak) gives a figure that says so.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from longcat.files import write_dir_atomically
from longcat.report.figures import html_table, new_figure, no_data, save_svg, write_page
from longcat.train.tasks import TASKS

log = logging.getLogger(__name__)

# name -> (tag or tag prefix ending in "/", title, y label, smoothed, log scale, legend title of a prefix)
TRAINING_FIGURES = {
    "loss": ("train/loss", "Training loss", "loss", True, True, None),
    "loss_by_sigma": ("loss_by_sigma/", "Training loss per σ bucket", "loss", True, True, "σ bucket"),
    "loss_by_task": ("loss_by_task/", "Training loss per task", "loss", True, True, "task"),
    **{
        f"heldout_loss_{task}": (
            f"heldout_loss/{task}/",
            f"Held-out loss, {task.replace('_', ' ')} (fixed σ and noise)",
            "loss",
            False,
            True,
            "σ bucket",
        )
        for task in TASKS
    },
    "lr": ("train/lr", "Learning rate", "learning rate", False, False, None),
    "grad_norm": ("train/grad_norm", "Gradient norm (before clipping)", "norm", True, True, None),
    "step_time": ("perf/step_seconds", "Step time", "seconds", True, False, None),
    "data_wait": (
        "perf/data_wait_fraction",
        "Share of the step spent waiting for data",
        "fraction",
        True,
        False,
        None,
    ),
    "mfu": ("perf/mfu", "Model FLOPs utilisation", "MFU", True, False, None),
}
# The outputs of the rule report_training, by name: the figures, the video page, the videos' folder and
# the page of what was trained.
TRAINING_OUTPUTS = (*TRAINING_FIGURES, "videos", "validation", "record")
# Points per line: a run of 100,000 steps draws the range of each group of 100 steps.
MAX_POINTS = 1000
# Validation steps whose videos the page plays (the first and the last); the report lists them all.
STEPS_PLAYED = 2

Series = tuple[np.ndarray, np.ndarray]


def read_tensorboard(tb_dir: str | Path) -> tuple[dict[str, Series], dict[tuple[int, str], str]]:
    """(scalars by tag as (steps, values), validation prompts by (step, video file name))."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    scalars = {}
    for tag in tags["scalars"]:
        by_step = {event.step: event.value for event in events.Scalars(tag)}
        steps = np.asarray(sorted(by_step), dtype=float)
        scalars[tag] = (steps, np.asarray([by_step[step] for step in sorted(by_step)], dtype=float))
    prompts = {}
    for tag in tags["tensors"]:
        if re.fullmatch(r"validation/[^/]+/prompt/text_summary", tag):
            for event in events.Tensors(tag):
                text = event.tensor_proto.string_val[0].decode("utf-8", "replace")
                match = re.fullmatch(r"(.*) \(([^()]+\.mp4)\)", text, flags=re.DOTALL)
                if match:
                    prompts[(event.step, match.group(2))] = match.group(1)
    return scalars, prompts


def smooth(values: np.ndarray) -> np.ndarray:
    """An exponential moving average over about 1% of the points (10 at least), as TensorBoard draws
    it: started without bias towards zero."""
    weight = 1 - 1 / max(10, len(values) / 100)
    smoothed, average, norm = np.empty_like(values), 0.0, 0.0
    for index, value in enumerate(values):
        average = weight * average + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        smoothed[index] = average / norm
    return smoothed


def draw_series(axes, steps: np.ndarray, values: np.ndarray, label: str | None, smoothed: bool) -> None:
    """One tag: the smoothed line over the raw values (faint), at most MAX_POINTS points per line: a
    longer run shows the range of each group of steps as a band, so its SVG stays small."""
    groups = np.array_split(np.arange(len(values)), min(len(values), MAX_POINTS))
    ends = np.asarray([group[-1] for group in groups])
    line_values = smooth(values) if smoothed else values
    line = axes.plot(steps[ends], line_values[ends], label=label, linewidth=1.5)[0]
    if not smoothed:
        return
    if len(groups) == len(values):
        axes.plot(steps, values, color=line.get_color(), alpha=0.25, linewidth=0.8)
    else:
        low = [values[group].min() for group in groups]
        high = [values[group].max() for group in groups]
        axes.fill_between(steps[ends], low, high, color=line.get_color(), alpha=0.2, linewidth=0)


def scalar_figure(scalars: Mapping[str, Series], name: str, path: str | Path) -> None:
    """One figure of TRAINING_FIGURES: each tag it names (all `loss_by_sigma/*` at once). Non-finite
    values (skipped steps, counted by `train/nonfinite_steps`) are left out."""
    tag, title, ylabel, smoothed, log_scale, legend = TRAINING_FIGURES[name]
    figure, axes = new_figure(title, "step", ylabel)
    series = {}
    for found in sorted(scalars):
        if found == tag or (tag.endswith("/") and found.startswith(tag)):
            steps, values = scalars[found]
            finite = np.isfinite(values)
            if finite.any():
                series[found] = (steps[finite], values[finite])
    for label, (steps, values) in series.items():
        draw_series(axes, steps, values, label.removeprefix(tag) if label != tag else None, smoothed)
    if not series:
        no_data(axes, f"{tag.rstrip('/')} was not logged by this run")
    else:
        if log_scale and all((values > 0).all() for _, values in series.values()):
            axes.set_yscale("log")
        if any(label != tag for label in series):
            axes.legend(title=legend, fontsize=8)
    save_svg(figure, path)


def video_tag(path: Path, caption: str) -> str:
    """A <figure> that plays `path` inline: the video is embedded, so the page needs no other file."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><video controls loop muted preload="metadata" title="{html.escape(path.name)}" '
        f'src="data:video/mp4;base64,{data}"></video>'
        f"<figcaption><b>{html.escape(path.name)}</b> {html.escape(caption)}</figcaption></figure>"
    )


def validation_steps(validation_dir: Path) -> list[tuple[int, list[Path]]]:
    """(step, videos) of every `step-N/` folder holding mp4 files, by step."""
    steps = []
    for folder in validation_dir.glob("step-*") if validation_dir.is_dir() else ():
        if folder.name.removeprefix("step-").isdigit() and any(folder.glob("*.mp4")):
            steps.append((int(folder.name.removeprefix("step-")), sorted(folder.glob("*.mp4"))))
    return sorted(steps)


def write_video_page(
    validation_dir: str | Path,
    samples_dir: str | Path,
    prompts: Mapping[tuple[int, str], str],
    path: str | Path,
) -> None:
    """The final samples and the validation videos of the first and the last validation step."""
    samples_dir = Path(samples_dir)
    sample_prompts = {}
    if (samples_dir / "prompts.json").is_file():
        sample_prompts = json.loads((samples_dir / "prompts.json").read_text(encoding="utf-8"))
    samples = sorted(samples_dir.glob("*.mp4")) if samples_dir.is_dir() else []
    parts = ["<h2>Samples of the final model</h2>"]
    parts += [video_tag(video, sample_prompts.get(video.name, "")) for video in samples] or ["<p>None.</p>"]
    steps = validation_steps(Path(validation_dir))
    played = steps if len(steps) <= STEPS_PLAYED else [steps[0], steps[-1]]
    for step, videos in played:
        parts.append(f"<h2>Validation at step {step}</h2>")
        parts += [video_tag(video, prompts.get((step, video.name), "")) for video in videos]
    if not steps:
        parts.append("<h2>Validation</h2><p>No validation videos (train.validation_every_n_steps).</p>")
    elif len(steps) > len(played):
        parts.append(f"<p>{len(steps)} validation steps in all: each video is in the report on its own.</p>")
    write_page(path, "Videos", "\n".join(parts))


def link_validation_videos(validation_dir: str | Path, out_dir: str | Path) -> None:
    """`out_dir/step-N/*.mp4`: the validation videos as files of the report (hard links, else copies)."""

    def fill(building: Path) -> None:
        for step, videos in validation_steps(Path(validation_dir)):
            (building / f"step-{step}").mkdir()
            for video in videos:
                target = building / f"step-{step}" / video.name
                try:
                    os.link(video, target)
                except OSError:
                    shutil.copyfile(video, target)

    write_dir_atomically(out_dir, fill)


def write_record_page(record: Mapping, path: str | Path) -> None:
    """What the final model was trained with (`longcat.train.record`): each start's steps and what
    changed at it, where step 0 started from, the settings that shape the weights, the last settings."""
    from longcat.params import flatten
    from longcat.train.changes import show

    segments = [
        (
            f"{segment['from_step'] + 1:,}-{segment['to_step']:,}",
            segment["started"],
            segment["world_size"],
            segment["samples"],
            "; ".join(f"{key}: {show(old)} -> {show(new)}" for key, (old, new) in segment["changed"].items()),
        )
        for segment in record["segments"]
    ]
    start = record.get("init_from") or {}
    heldout = record.get("heldout") or {}
    parts = [
        f"<p>Run {html.escape(str(record['run']))}: {record['step']:,} steps, from "
        + (html.escape(show(start)) if start else "the base model's weights")
        + ".</p>",
        f"<p>{heldout.get('samples', 0):,} samples held out, never trained on; the held-out loss is "
        f"computed on {html.escape(', '.join(heldout.get('evaluated') or []) or 'none')}.</p>",
        "<h2>Starts</h2>",
        html_table(
            ("steps", "started (UTC)", "processes", "samples", "settings changed at the start"), segments
        ),
        "<h2>What shapes the weights (the same for every step)</h2>",
        html_table(
            ("setting", "value"), [(key, show(value)) for key, value in flatten(record["identity"]).items()]
        ),
        "<h2>Training settings of the last start</h2>",
        html_table(
            ("setting", "value"), [(f"train.{key}", show(value)) for key, value in record["train"].items()]
        ),
    ]
    write_page(path, "What was trained", "\n".join(parts))


def write_training_report(
    tb_dir: str | Path,
    validation_dir: str | Path,
    samples_dir: str | Path,
    record: Mapping,
    outputs: Mapping[str, str | Path],
) -> None:
    """Every file of TRAINING_OUTPUTS for one run (rule report_training); `record` is the run's record
    of the final model's steps."""
    write_record_page(record, outputs["record"])
    scalars, prompts = read_tensorboard(tb_dir)
    for name in TRAINING_FIGURES:
        scalar_figure(scalars, name, outputs[name])
    write_video_page(validation_dir, samples_dir, prompts, outputs["videos"])
    link_validation_videos(validation_dir, outputs["validation"])
    log.info(
        "training report: %d scalar tags, %d validation steps",
        len(scalars),
        len(validation_steps(Path(validation_dir))),
    )
