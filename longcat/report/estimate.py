"""The pre-launch estimate: what the configured run will cost, from the metadata and the config alone.

Before any GPU work, and in seconds for half a million clips: clips accepted and rejected, how they fall
into frame and resolution buckets, the bytes of the caches and checkpoints, and the GPU-hours of the
caches and of training. Model FLOPs, step times and checkpoint bytes are `longcat.train.estimate`'s (the
dry run counts with the same definitions); cache throughputs come from the config's `estimate` section
and the MFU from `train.assumed_mfu`. They are estimates: model FLOPs at an MFU measured on one GPU,
FSDP2's communication modelled on top, and throughputs measured at one clip shape and scaled to the
others.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from longcat.files import atomic_write_text
from longcat.settings import BaseModel, Cache, Estimate, Train
from longcat.train.estimate import (
    CARDS,
    card_mfu,
    dit_config_for,
    dit_parameter_counts,
    latent_shape_for,
    sample_cost,
    step_time,
    step_time_text,
)
from longcat.train.memory import EXPORTED_WEIGHT_BYTES, checkpoint_bytes

log = logging.getLogger(__name__)

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# The clip shape (frames, height, width) that `estimate.vae_clips_per_s` is given for.
VAE_REFERENCE_SHAPE = (93, 480, 832)
PLAN_COLUMNS = ["plan_num_frames", "plan_height", "plan_width"]
METADATA_COLUMNS = [*PLAN_COLUMNS, "duration"]


def read_columns(path: str | Path, columns: list[str]) -> pa.Table:
    """The named columns of a parquet table, or an error naming the file and the columns expected."""
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as error:
        expected = ", ".join(columns)
        raise ValueError(f"{path}: expected a table with the columns {expected} ({error})") from None


def rejects_by_reason(rejected: pa.Table) -> dict[str, int]:
    """Rejected clips per reason, the most frequent first."""
    counts = rejected.group_by("reason").aggregate([("reason", "count")]).to_pylist()
    pairs = [(row["reason"] or "unknown", row["reason_count"]) for row in counts]
    return dict(sorted(pairs, key=lambda pair: (-pair[1], pair[0])))


def plan_groups(metadata: pa.Table) -> list[dict[str, Any]]:
    """Accepted clips per frame plan (frames, height, width), with their seconds of source: the largest
    frame count first, then the most clips."""
    grouped = metadata.group_by(PLAN_COLUMNS).aggregate([("plan_num_frames", "count"), ("duration", "sum")])
    groups = [
        {
            "frames": row["plan_num_frames"],
            "height": row["plan_height"],
            "width": row["plan_width"],
            "clips": row["plan_num_frames_count"],
            "source_seconds": row["duration_sum"] or 0.0,
        }
        for row in grouped.to_pylist()
    ]
    return sorted(groups, key=lambda g: (-g["frames"], -g["clips"], g["height"], g["width"]))


def _totals(groups: list[dict], name: Callable[[dict], str]) -> dict[str, int]:
    """Clips per `name(group)`, in the order of `groups`."""
    counts: dict[str, int] = {}
    for group in groups:
        counts[name(group)] = counts.get(name(group), 0) + group["clips"]
    return counts


def estimate(
    metadata: pa.Table,
    rejected: pa.Table,
    cache: Cache,
    train: Train,
    figures: Estimate,
    dit_config: dict[str, Any],
    model_source: str,
) -> dict[str, Any]:
    """The estimate as plain values (what `estimate.json` holds), from the metadata's frame plans."""
    card = CARDS[train.gpu_type]
    mfu = card_mfu(card, train.assumed_mfu)
    gpus = train.world_size
    samples_per_step = gpus * train.train_batch_size * train.gradient_accumulation_steps
    dtype_bytes = DTYPE_BYTES[cache.dtype]
    counts = dit_parameter_counts(dit_config)
    parameters = counts["total"]

    buckets = []
    for group in plan_groups(metadata):
        shape = latent_shape_for(group["frames"], group["height"], group["width"], dit_config["in_channels"])
        tokens, flops = sample_cost(dit_config, shape)
        step = step_time(counts, dit_config["depth"], flops, train, train.gpu_type)
        relative_pixels = group["frames"] * group["height"] * group["width"] / math.prod(VAE_REFERENCE_SHAPE)
        buckets.append(
            {
                **group,
                "latent_shape": list(shape),
                "latent_bytes": math.prod(shape) * dtype_bytes,
                "tokens": tokens,
                "pflop_per_sample": flops / 1e15,
                "step_seconds": step["step_seconds"],
                "step": step,
                "vae_gpu_seconds_per_clip": relative_pixels / figures.vae_clips_per_s,
            }
        )
    accepted = sum(bucket["clips"] for bucket in buckets)
    reasons = rejects_by_reason(rejected)

    text_shape = [cache.max_tokens, dit_config["caption_channels"]]
    text_bytes = math.prod(text_shape) * dtype_bytes
    one_checkpoint = checkpoint_bytes(parameters)
    vae_gpu_hours = sum(b["clips"] * b["vae_gpu_seconds_per_clip"] for b in buckets) / 3600
    text_gpu_hours = accepted / figures.text_captions_per_s / 3600

    step_clip_seconds = sum(b["clips"] * b["step_seconds"] for b in buckets)
    mean_step = step_clip_seconds / accepted if accepted else None
    steps_per_pass = accepted / samples_per_step
    pass_hours = step_clip_seconds / samples_per_step / 3600
    run_hours = train.max_train_steps * mean_step / 3600 if accepted else None
    return {
        "run": train.run,
        "model": {"source": model_source, "parameters": parameters},
        "clips": {
            "accepted": accepted,
            "rejected": rejected.num_rows,
            "rejected_by_reason": reasons,
            "source_hours": sum(b["source_seconds"] for b in buckets) / 3600,
            "by_frames": _totals(buckets, lambda b: str(b["frames"])),
            "by_resolution": dict(
                sorted(_totals(buckets, lambda b: f"{b['height']}x{b['width']}").items(), key=lambda p: -p[1])
            ),
        },
        "buckets": buckets,
        "disk": {
            "cache_dtype": cache.dtype,
            "vae_cache_bytes": sum(b["clips"] * b["latent_bytes"] for b in buckets),
            "text_shape": text_shape,
            # Every caption padded to max_tokens, and the empty caption: the cache keeps only each
            # caption's own tokens, so this is the most it can take.
            "text_cache_bytes_at_most": (accepted + 1) * text_bytes,
            "checkpoint_bytes": one_checkpoint,
            "checkpoints_kept": train.checkpoints_total_limit,
            "checkpoints_bytes": one_checkpoint * train.checkpoints_total_limit,
            "exported_model_bytes": parameters * EXPORTED_WEIGHT_BYTES,
        },
        "gpus": {"count": gpus, "card": card.name},
        "cache_time": {
            "vae_clips_per_s": figures.vae_clips_per_s,
            "vae_reference_shape": list(VAE_REFERENCE_SHAPE),
            "vae_gpu_hours": vae_gpu_hours,
            "vae_wall_hours": vae_gpu_hours / gpus,
            "text_captions_per_s": figures.text_captions_per_s,
            "text_gpu_hours": text_gpu_hours,
            "text_wall_hours": text_gpu_hours / gpus,
        },
        "training": {
            "assumed_mfu": mfu,
            "samples_per_step": samples_per_step,
            "mean_step_seconds": mean_step,
            "steps_per_pass": steps_per_pass,
            "pass_hours": pass_hours,
            "pass_gpu_hours": pass_hours * gpus,
            "max_train_steps": train.max_train_steps,
            "run_hours": run_hours,
            "run_gpu_hours": run_hours * gpus if accepted else None,
            "passes": train.max_train_steps / steps_per_pass if accepted else None,
        },
    }


BYTE_UNITS = (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("B", 1))  # decimal, as disks are sold
COUNT_UNITS = (("B", 1e9), ("M", 1e6), ("k", 1e3), ("", 1))
FLOP_UNITS = (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("FLOP", 1))


def scaled(value: float, units: tuple[tuple[str, float], ...]) -> str:
    """`value` in the largest unit it fills, three digits: 2.41 TB, 13.6B, 6.36 PFLOP."""
    name, scale = next(((name, scale) for name, scale in units if value >= scale), units[-1])
    space = "" if units is COUNT_UNITS else " "
    return f"{value / scale:.3g}{space}{name}"


def seconds_text(seconds: float) -> str:
    return f"{seconds:.3g} s" if seconds >= 0.1 else "under 0.1 s"


def hours_text(hours: float) -> str:
    if hours >= 48:
        return f"{hours:,.0f} h ({hours / 24:.1f} days)"
    if hours >= 1:
        return f"{hours:.1f} h"
    if hours * 60 >= 1:
        return f"{hours * 60:.1f} min"
    return seconds_text(hours * 3600)


def gpu_hours_text(hours: float) -> str:
    if hours >= 10:
        return f"{hours:,.0f} GPU-h"
    return f"{hours:.2g} GPU-h" if hours >= 0.01 else "under 0.01 GPU-h"


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{key}: {count:,}" for key, count in counts.items()) or "none"


def _frame_rows(report: dict[str, Any]) -> list[str]:
    """One line per frame bucket, its resolution buckets together (weighted by their clips)."""
    lines = []
    for frames in report["clips"]["by_frames"]:
        rows = [bucket for bucket in report["buckets"] if str(bucket["frames"]) == frames]
        clips = sum(row["clips"] for row in rows)

        def mean(key: str, rows: list[dict] = rows, clips: int = clips) -> float:
            return sum(row[key] * row["clips"] for row in rows) / clips

        hours = mean("step_seconds") * clips / report["training"]["samples_per_step"] / 3600
        lines.append(
            f"  {frames:>3} frames: {clips:>9,} clips, {mean('tokens'):>8,.0f} tokens, "
            f"{scaled(mean('pflop_per_sample') * 1e15, FLOP_UNITS)}/sample, "
            f"{seconds_text(mean('step_seconds'))}/step, {hours_text(hours)} per pass"
        )
    return lines


def format_estimate(report: dict[str, Any]) -> str:
    """The estimate for people: a few lines per part, then one line per frame bucket."""
    clips, disk, cache, train = report["clips"], report["disk"], report["cache_time"], report["training"]
    gpus = report["gpus"]
    rejected = f" ({_counts_text(clips['rejected_by_reason'])})" if clips["rejected"] else ""
    reference = "x".join(map(str, cache["vae_reference_shape"]))
    lines = [
        f"Estimate for run {report['run']} on {gpus['count']} x {gpus['card']}: "
        f"{scaled(report['model']['parameters'], COUNT_UNITS)} parameters, from {report['model']['source']}",
        f"clips: {clips['accepted']:,} accepted, {clips['rejected']:,} rejected{rejected}; "
        f"{hours_text(clips['source_hours'])} of accepted source",
        f"  per frame bucket: {_counts_text(clips['by_frames'])}",
        f"  per resolution bucket: {_counts_text(clips['by_resolution'])}",
        f"disk: VAE cache {scaled(disk['vae_cache_bytes'], BYTE_UNITS)} ({disk['cache_dtype']}); text cache "
        f"at most {scaled(disk['text_cache_bytes_at_most'], BYTE_UNITS)} ({disk['text_shape']} per caption)",
        f"  checkpoint {scaled(disk['checkpoint_bytes'], BYTE_UNITS)} (fp32 weights + AdamW moments), "
        f"{disk['checkpoints_kept']} kept: {scaled(disk['checkpoints_bytes'], BYTE_UNITS)}; "
        f"exported model {scaled(disk['exported_model_bytes'], BYTE_UNITS)}",
        f"cache on {gpus['count']} GPUs: VAE {gpu_hours_text(cache['vae_gpu_hours'])}, "
        f"{hours_text(cache['vae_wall_hours'])} wall ({cache['vae_clips_per_s']:g} clips/s per GPU at "
        f"{reference}); text {gpu_hours_text(cache['text_gpu_hours'])}, "
        f"{hours_text(cache['text_wall_hours'])} wall ({cache['text_captions_per_s']:g} captions/s per GPU)",
        f"training at {train['assumed_mfu']:.1%} MFU, {train['samples_per_step']} samples per step:",
        *_frame_rows(report),
    ]
    if train["mean_step_seconds"] is None:
        lines.append("  no accepted clips: nothing to train on")
    else:
        largest = report["buckets"][0]
        lines.append(
            f"  a step of the largest bucket ({largest['frames']}x{largest['height']}x{largest['width']}): "
            f"{seconds_text(largest['step_seconds'])} ="
        )
        lines += [f"    {line}" for line in step_time_text(largest["step"])]
        lines += [
            f"  mean step {seconds_text(train['mean_step_seconds'])}; "
            f"one pass {train['steps_per_pass']:,.0f} steps, "
            f"{hours_text(train['pass_hours'])}, {gpu_hours_text(train['pass_gpu_hours'])}",
            f"  max_train_steps {train['max_train_steps']:,}: {hours_text(train['run_hours'])}, "
            f"{gpu_hours_text(train['run_gpu_hours'])}, {train['passes']:.2f} passes over the data",
        ]
    return "\n".join(lines) + "\n"


def run_estimate(
    metadata_path: str | Path,
    rejected_path: str | Path,
    cache: Cache,
    train: Train,
    figures: Estimate,
    base_model: BaseModel,
    base_model_dir: str | Path,
    json_path: str | Path,
    text_path: str | Path,
) -> str:
    """Read the metadata, estimate, write `estimate.json` and `estimate.txt`; returns the text."""
    metadata = read_columns(metadata_path, METADATA_COLUMNS)
    rejected = read_columns(rejected_path, ["reason"])
    dit_config, model_source = dit_config_for(base_model, Path(base_model_dir))
    report = estimate(metadata, rejected, cache, train, figures, dit_config, model_source)
    text = format_estimate(report)
    atomic_write_text(json_path, json.dumps(report, indent=1) + "\n")
    atomic_write_text(text_path, text)
    log.info("estimate written to %s and %s:\n%s", text_path, json_path, text)
    return text
