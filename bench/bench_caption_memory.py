"""Peak memory (max RSS) of the data stage and the text-cache job for a clip whose caption is 50 MB.

A local source holds one short clip beside a caption of `--caption-mb` MB of words. Each job the
workflow would run for it is run in a fresh process, as Snakemake runs them: `probe` (manifest and the
probe chunk), `metadata` (merge into metadata.parquet, then the shard list the `shards` rule writes
from it) and `text_cache` (the shard's text embeddings with the tiny demo base model, on the CPU).
Each job runs twice: the caption read up to `probe.max_caption_bytes` (the probe's way) and read whole
(the reference way: the limit raised above the caption's size, so the whole text reaches the metadata,
the shard list and the tokenizer). A process reports its own peak RSS when it ends (VmHWM: ru_maxrss
would carry the parent's peak over the exec); the parent also watches each one's RSS and stops one that
passes `--ceiling-gb`, so a reference run cannot take the machine's memory (its peak is then reported
as at least the ceiling).

Prints one JSON line per job and way, then one with the peaks and the ratios (whole / bounded).
Goal: every bounded job <= 2 GB.

    python bench/bench_caption_memory.py                  # 50 MB caption
    python bench/bench_caption_memory.py --caption-mb 5 --ceiling-gb 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("probe", "metadata", "text_cache")
WAYS = ("bounded", "whole")
GOAL_MB = 2048
WORDS = (
    "a red square moves slowly across the blue background while the camera pans left over green hills "
    "under a grey sky with birds flying past tall trees and a river shining in the evening light"
).split()


def write_source(directory: Path, caption_mb: float) -> int:
    """clip.mp4 (112x64, 1.2 s, 15 fps) beside clip.txt of `caption_mb` MB of words; the caption's size."""
    directory.mkdir(parents=True)
    command = [
        "ffmpeg", "-nostdin", "-v", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=112x64:rate=15:duration=1.2",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
    ]  # fmt: skip
    subprocess.run([*command, str(directory / "clip.mp4")], check=True)
    rng = random.Random(0)
    target = int(caption_mb * 1024 * 1024)
    written = 0
    with open(directory / "clip.txt", "w", encoding="utf-8") as caption:
        while written < target:
            line = " ".join(rng.choices(WORDS, k=200)) + ".\n"
            caption.write(line)
            written += len(line)
    return (directory / "clip.txt").stat().st_size


def settings_for(work: Path, source: Path):
    from longcat.config import load_config
    from longcat.settings import load_settings

    settings = load_settings(load_config())
    return dataclasses.replace(
        settings,
        results=str(work / "results"),
        cache_dir=str(work / "cache"),
        source=dataclasses.replace(settings.source, path=str(source)),
    )


def run_stage(stage: str, work: Path, source: Path, base_model: Path, limit: int) -> None:
    """One job of the workflow, in this process."""
    from longcat.paths import Layout

    settings = settings_for(work, source)
    results = work / "results"
    results.mkdir(parents=True, exist_ok=True)
    manifest, part, store = (results / name for name in ("manifest.parquet", "part.parquet", "store.parquet"))
    metadata, shard_list = results / "metadata.parquet", results / "shard-00000.parquet"
    if stage == "probe":
        from longcat.data.local import LocalSource
        from longcat.data.manifest import write_manifest
        from longcat.data.metadata import probe_chunk

        local = LocalSource(source)
        write_manifest(local, manifest, manifest.with_name("unpaired.parquet"))
        probe_chunk(
            local, manifest, "000", 1, part, store, workers=1, decode_check=True, max_caption_bytes=limit
        )
    elif stage == "metadata":
        import pyarrow.parquet as pq

        from longcat.data.metadata import merge_metadata
        from longcat.data.tables import write_table

        rejected = results / "rejected.parquet"
        merge_metadata(
            manifest,
            [part],
            settings.probe,
            settings.frames,
            metadata,
            rejected,
            failed_rejected_path=results / "metadata.rejected.parquet",
        )
        table = pq.read_table(metadata)
        assert table.num_rows == 1, f"expected the clip accepted, found {table.num_rows} rows"
        write_table(table, shard_list)
    else:
        import torch

        from longcat.cache.spec import text_cache_spec, write_spec
        from longcat.encoders.text import run_text_shard

        torch.set_num_threads(1)
        layout = Layout.from_settings(settings)
        write_spec(layout.text_cache.spec, text_cache_spec(settings))
        run_text_shard(settings, shard_list, layout.text_cache, "00000", base_model, torch.device("cpu"))


# What each job imports before it reads anything: the baseline its peak is compared with.
STAGE_MODULES = {
    "probe": ("longcat.data.metadata", "longcat.data.local", "longcat.data.manifest"),
    "metadata": ("longcat.data.metadata", "longcat.data.tables"),
    "text_cache": ("longcat.encoders.text", "longcat.cache.spec", "longcat.paths"),
}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def child(args: argparse.Namespace) -> None:
    import importlib

    for module in STAGE_MODULES[args.stage]:
        importlib.import_module(module)
    baseline = peak_rss_mb()
    start = time.perf_counter()
    run_stage(args.stage, Path(args.work), Path(args.source), Path(args.base_model), args.limit)
    result = {"max_rss_mb": round(peak_rss_mb(), 1), "after_imports_mb": round(baseline, 1)}
    print(json.dumps({**result, "seconds": round(time.perf_counter() - start, 2)}))


def watched(command: list[str], ceiling_mb: float) -> tuple[dict | None, float, bool]:
    """Runs `command`, sampling its RSS every 20 ms: (its JSON line, the peak seen, whether it stopped it)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    seen, stopped = 0.0, False
    while process.poll() is None:
        try:
            with open(f"/proc/{process.pid}/status") as status:
                rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
            seen = max(seen, rss)
        except (OSError, StopIteration):
            pass
        if seen > ceiling_mb:
            process.kill()
            stopped = True
        time.sleep(0.02)
    output = process.stdout.read()
    if not stopped and process.returncode != 0:
        raise SystemExit(f"{command[-1]}: the job failed ({process.returncode})")
    return (json.loads(output.strip().splitlines()[-1]) if not stopped else None), seen, stopped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caption-mb", type=float, default=50)
    parser.add_argument("--ceiling-gb", type=float, default=6)
    parser.add_argument("--stage", choices=STAGES)
    parser.add_argument("--work")
    parser.add_argument("--source")
    parser.add_argument("--base-model")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    if args.stage:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-caption-memory-") as scratch:
        print(json.dumps(measure(Path(scratch), args.caption_mb, args.ceiling_gb * 1024)))


def measure(root: Path, caption_mb: float, ceiling_mb: float) -> dict:
    """Every job both ways under `root`; prints a line per job, returns the summary."""
    from longcat.basemodel.tiny import write_tiny_base_model

    source = root / "source"
    caption_bytes = write_source(source, caption_mb)
    settings = settings_for(root, source)
    base_model = write_tiny_base_model(root / "base_model", settings.base_model.tiny)
    limits = {"bounded": settings.probe.max_caption_bytes, "whole": caption_bytes + 1}
    peaks, stopped_jobs = {}, []
    for way in WAYS:
        for stage in STAGES:
            command = [
                sys.executable, __file__, "--stage", stage, "--work", str(root / way),
                "--source", str(source), "--base-model", str(base_model), "--limit", str(limits[way]),
            ]  # fmt: skip
            started = time.perf_counter()
            result, seen, stopped = watched(command, ceiling_mb)
            line = {"bench": "caption_memory", "stage": stage, "way": way, "caption_bytes": caption_bytes}
            if stopped:
                line.update(max_rss_mb=None, stopped_above_mb=round(seen, 1))
                line.update(stopped_after_seconds=round(time.perf_counter() - started, 1))
                peaks[(stage, way)] = seen
                stopped_jobs.append(f"{stage}_{way}")
            else:
                line.update(result)
                peaks[(stage, way)] = result["max_rss_mb"]
            print(json.dumps({**line, "limit": limits[way]}), flush=True)
            if stopped:
                break  # the next jobs of this way read what the stopped one would have written
    summary = {
        "bench": "caption_memory",
        "machine": f"{os.cpu_count()}-core {platform.machine()} CPU",
        "caption_bytes": caption_bytes,
        "max_caption_bytes": limits["bounded"],
        "goal_mb": GOAL_MB,
        "ceiling_mb": ceiling_mb,
        "stopped_at_ceiling": stopped_jobs,  # their peaks and ratios are lower bounds
    }
    for stage in STAGES:
        bounded, whole = peaks.get((stage, "bounded")), peaks.get((stage, "whole"))
        summary[f"{stage}_bounded_mb"] = bounded
        summary[f"{stage}_whole_mb"] = round(whole, 1) if whole else None
        summary[f"{stage}_ratio"] = round(whole / bounded, 2) if bounded and whole else None
    summary["within_goal"] = all(peaks[(stage, "bounded")] <= GOAL_MB for stage in STAGES)
    return summary


if __name__ == "__main__":
    main()
