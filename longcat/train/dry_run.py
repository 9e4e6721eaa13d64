"""`--dry-run`: check the config and the caches, count samples per bucket, estimate memory and step time
(for the largest shape, and per frame bucket: a 73-frame sample is about 0.7 of a 93-frame step)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from longcat.data.buckets import resolution_buckets
from longcat.data.frames import frame_counts
from longcat.paths import RunLayout
from longcat.settings import Frames, RunSettings, Train
from longcat.train.data import BucketedSampler
from longcat.train.estimate import CARDS, dit_config_for, estimate_run, latent_shape_for, step_time_text
from longcat.vae_frames import video_frames

# What each bucket keeps of its step-time estimate (`longcat.train.estimate.step_time`).
STEP_KEYS = ("step_seconds", "compute_seconds", "card", "assumed_mfu", "mfu_source", "communication")


def configured_latent_shapes(frames: Frames) -> list[tuple[int, int, int, int]]:
    """Every latent shape the config allows: each frame count (largest first) in each resolution bucket."""
    buckets = resolution_buckets(frames)
    return [latent_shape_for(count, h, w) for count in frame_counts(frames) for h, w in buckets]


def latent_volume(shape: tuple[int, ...]) -> int:
    return shape[1] * shape[2] * shape[3]


def data_report(cfg: Train, paths: RunLayout, fps: float) -> dict[str, Any]:
    from longcat.cache.reader import CacheReader
    from longcat.cache.spec import CacheError
    from longcat.train.preflight import training_set_problem

    try:
        reader = CacheReader(paths.vae_cache, paths.text_cache)
        reader.check()
        problem = training_set_problem(reader, cfg)
    except CacheError as error:
        problem = str(error)
    if problem:
        return {"ready": False, "problem": problem}
    shapes = [tuple(sample.latent_shape) for sample in reader.samples]
    sampler = BucketedSampler(shapes, cfg.train_batch_size, cfg.world_size, 0, cfg.seed)
    per_step = cfg.gradient_accumulation_steps
    used = sampler.batches_per_rank * cfg.world_size * cfg.train_batch_size
    steps_per_epoch = sampler.batches_per_rank // per_step
    frames = Counter(video_frames(shape[1]) for shape in shapes)
    # Sampled faster than frames.fps: only `short_clip: stretch` does that (the rate is cached per sample).
    stretched = sum(1 for sample in reader.samples if sample.fps > fps * (1 + 1e-6))
    return {
        "ready": True,
        "samples": len(shapes),
        "failed_samples": len(reader.failed),
        "buckets": {"x".join(map(str, shape)): count for shape, count in sorted(Counter(shapes).items())},
        "frames": {str(count): frames[count] for count in sorted(frames, reverse=True)},
        "time_stretched_samples": stretched,
        "samples_used_per_epoch": used,
        "optimizer_steps_per_epoch": steps_per_epoch,
        "epochs": cfg.max_train_steps / steps_per_epoch if steps_per_epoch else None,
    }


def dry_run_report(settings: RunSettings, paths: RunLayout) -> dict[str, Any]:
    cfg = settings.train
    dit_config, dit_source = dit_config_for(settings.base_model, paths.base_model)
    data = data_report(cfg, paths, settings.frames.fps)

    def estimate(shape: tuple[int, ...], card: str) -> dict[str, Any]:
        return estimate_run(dit_config, shape, cfg, card)

    if data["ready"]:
        counts = {tuple(int(d) for d in key.split("x")): count for key, count in data["buckets"].items()}
        shapes = list(counts)
    else:
        shapes = configured_latent_shapes(settings.frames)
        # No samples yet: each frame count in the first resolution bucket (480x832 for the real job).
        counts = dict.fromkeys(shape for shape in shapes if shape[2:] == shapes[0][2:])
    largest = max(shapes, key=latent_volume)
    estimates = {card: estimate(largest, card) for card in CARDS}
    buckets = []
    for shape in sorted(counts, key=lambda shape: (-shape[1], shape)):
        per_bucket = estimate(shape, cfg.gpu_type)
        buckets.append(
            {
                "latent_shape": list(shape),
                "frames": video_frames(shape[1]),
                "tokens_per_sample": per_bucket["tokens_per_sample"],
                "samples": counts[shape],
                **{key: per_bucket[key] for key in STEP_KEYS},
            }
        )
    weighted = None
    if data["ready"]:
        weighted = sum(b["step_seconds"] * b["samples"] for b in buckets) / sum(b["samples"] for b in buckets)
    return {
        "run_dir": str(paths.run_dir),
        "world_size": cfg.world_size,
        "global_batch": cfg.world_size * cfg.train_batch_size * cfg.gradient_accumulation_steps,
        "max_train_steps": cfg.max_train_steps,
        "dit_config": dit_source,
        "data": data,
        "estimate_shape": list(largest),
        "configured_card": cfg.gpu_type,
        "estimates": estimates,
        "bucket_estimates": buckets,
        "mean_step_seconds": weighted,
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"run: {report['run_dir']}  world size {report['world_size']}  "
        f"global batch {report['global_batch']}  steps {report['max_train_steps']}",
        f"model: {report['dit_config']}",
    ]
    data = report["data"]
    if data["ready"]:
        lines.append(
            f"data: {data['samples']} samples ({data['failed_samples']} failed in caching), "
            f"{data['optimizer_steps_per_epoch']} optimizer steps per epoch, "
            + (f"{data['epochs']:.2f} epochs" if data["epochs"] is not None else "too few for one step")
        )
        frames = ", ".join(f"{count} frames: {samples}" for count, samples in data["frames"].items())
        lines.append(f"  samples per frame count: {frames}; time-stretched: {data['time_stretched_samples']}")
    else:
        lines.append(f"data: not ready: {data['problem']}")
    card = CARDS[report["configured_card"]].name
    lines.append(f"step time per bucket on {card} (model FLOPs, batch per GPU):")
    for bucket in report["bucket_estimates"]:
        samples = "" if bucket["samples"] is None else f"{bucket['samples']} samples, "
        lines.append(
            f"  bucket {'x'.join(map(str, bucket['latent_shape']))} ({bucket['frames']} frames, "
            f"{bucket['tokens_per_sample']:,} tokens): {samples}{bucket['step_seconds']:.1f} s/step"
        )
    if report["mean_step_seconds"] is not None:
        lines.append(f"  mean over the samples: {report['mean_step_seconds']:.1f} s/step")
    largest = report["bucket_estimates"][0]
    lines.append(f"  a step of the {largest['frames']}-frame bucket: {largest['step_seconds']:.2f} s =")
    lines += [f"    {line}" for line in step_time_text(largest)]
    lines.append(f"estimate for the largest shape {report['estimate_shape']} (model FLOPs, batch per GPU):")
    for card, estimate in report["estimates"].items():
        memory = estimate["memory_gib"]
        marker = "*" if card == report["configured_card"] else " "
        lines.append(
            f" {marker}{estimate['card']}: {estimate['pflop_per_sample']:.2f} PFLOP/sample, "
            f"{estimate['step_seconds']:.1f} s/step at {estimate['assumed_mfu']:.0%} MFU; "
            f"memory {memory['total']:.1f} GiB/GPU (states {memory['sharded_states']:.1f}, "
            f"activations {memory['activations']:.1f}) {'fits' if estimate['fits'] else 'DOES NOT FIT'} "
            f"in {estimate['card_memory_gib']:.0f} GiB"
        )
    return "\n".join(lines)
