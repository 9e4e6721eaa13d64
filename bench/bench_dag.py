"""DAG scale: how long Snakemake takes to plan `cache` for a 523,325-clip dataset, and a no-op rerun.

Writes, without any video, the tables the data stage would have written (manifest, 64 probe chunks,
metadata, rejects, the shard assignment table and one shard list per 1000 rows), then times
`snakemake -n cache` with every cache shard missing (planning ~1,050 jobs) and again with every
cache file present (nothing to do). Prints one JSON line. Goals: <= 20 s and <= 10 s.

    python bench/bench_dag.py                 # the real size
    python bench/bench_dag.py --rows 20000    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

from longcat.data.manifest import MANIFEST_SCHEMA, chunk_of
from longcat.data.metadata import METADATA_SCHEMA, REJECTED_SCHEMA
from longcat.data.probe import PROBE_SCHEMA
from longcat.data.shards import assign_shards, read_assignments
from longcat.data.tables import write_table
from longcat.paths import chunk_id

REPO = Path(__file__).resolve().parent.parent
CHUNKS = 64


def synthetic_columns(rows: int) -> dict[str, np.ndarray | list]:
    rng = np.random.default_rng(0)
    keys = [f"videos/{index // 1000:04d}/clip-{index:07d}.mp4" for index in range(rows)]
    landscape = rng.random(rows) < 0.7
    return {
        "key": keys,
        "caption_key": [key[:-4] + ".txt" for key in keys],
        "etag": [f"{index:032x}" for index in range(rows)],
        "caption_etag": [f"{index + rows:032x}" for index in range(rows)],
        "size": rng.integers(2_000_000, 9_000_000, rows),
        "caption_size": rng.integers(40, 900, rows),
        "width": np.where(landscape, 1280, 720).astype(np.int32),
        "height": np.where(landscape, 720, 1280).astype(np.int32),
        "fps": np.full(rows, 30.0),
        "num_frames": np.full(rows, 150),
        "duration": np.full(rows, 5.0),
        "caption": [f"a synthetic caption for clip {index}" for index in range(rows)],
    }


def table(columns: dict, schema: pa.Schema, rows: int) -> pa.Table:
    arrays = [
        pa.array(columns[field.name], type=field.type)
        if field.name in columns
        else pa.nulls(rows, field.type)
        for field in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def touch_all(paths: list[Path], when: float) -> None:
    for path in paths:
        os.utime(path, (when, when))


def write_data_stage(work: Path, rows: int, shard_size: int) -> dict:
    """The files `snakemake metadata shards` would leave, with the mtimes of a finished run."""
    results = work / "results"
    columns = synthetic_columns(rows)
    metadata = table(columns, METADATA_SCHEMA, rows)
    stages: list[list[Path]] = []

    write_table(table(columns, MANIFEST_SCHEMA, rows), results / "manifest.parquet")
    stages.append([results / "manifest.parquet"])

    probe = table(columns, PROBE_SCHEMA, rows)
    chunk_of_row = np.array([chunk_of(key, CHUNKS) for key in columns["key"]])
    parts = []
    for chunk in map(chunk_id, range(CHUNKS)):
        part = results / "metadata" / f"part-{chunk}.parquet"
        write_table(probe.filter(pa.array(chunk_of_row == int(chunk))), part)
        parts.append(part)
    stages.append(parts)

    write_table(metadata, results / "metadata.parquet")
    write_table(REJECTED_SCHEMA.empty_table(), results / "rejected.parquet")
    stages.append([results / "metadata.parquet", results / "rejected.parquet"])

    versions = zip(columns["key"], columns["etag"], strict=True)
    assignments = assign_shards(read_assignments(work / "missing.parquet"), versions, shard_size)
    write_table(assignments, results / "shards" / "assignments.parquet")
    stages.append([results / "shards" / "assignments.parquet"])

    order = {key: index for index, key in enumerate(columns["key"])}
    metadata_rows = np.array([order[key] for key in assignments.column("key").to_pylist()])
    shard_column = assignments.column("shard").to_numpy(zero_copy_only=False)
    by_shard = np.argsort(shard_column, kind="stable")
    shards, starts = np.unique(shard_column[by_shard], return_index=True)
    lists = []
    for shard, rows_of_shard in zip(shards, np.split(metadata_rows[by_shard], starts[1:]), strict=True):
        path = results / "shards" / f"shard-{shard}.parquet"
        write_table(metadata.take(rows_of_shard), path)
        lists.append(path)
    stages.append(lists)

    base_model = work / bench_layout(work).base_model
    base_model.mkdir(parents=True, exist_ok=True)
    (base_model / "model_index.json").write_text("{}")
    stages.append([base_model])

    # A finished run's order of mtimes, each stage a second after the last, all newer than the scripts.
    start = time.time()
    for step, paths in enumerate(stages):
        touch_all(paths, start + step)
    return {"shards": len(lists), "shard_lists": lists}


def bench_config(work: Path, shard_size: int) -> Path:
    (work / "clips").mkdir(exist_ok=True)
    config = {
        "source": {"kind": "local", "path": str(work / "clips")},
        "demo": None,
        "probe": {"chunks": CHUNKS},
        "shards": {"size": shard_size},
    }
    path = work / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def dry_run(work: Path, configfile: Path) -> tuple[float, str]:
    command = [sys.executable, "-m", "snakemake", "cache", "-n", "--quiet", "rules"]
    command += ["-s", str(REPO / "Snakefile"), "--directory", str(work), "--configfile", str(configfile)]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"snakemake -n cache failed:\n{result.stdout[-4000:]}")
    return elapsed, result.stdout


def planned_jobs(output: str) -> int:
    match = re.search(r"^total\s+(\d+)", output, flags=re.MULTILINE)
    return int(match.group(1)) if match else 0


def bench_layout(work: Path):
    """The paths of the bench's config (`bench_config`)."""
    sys.path.insert(0, str(REPO))
    from longcat.config import load_config
    from longcat.paths import Layout
    from longcat.settings import load_settings

    return Layout.from_settings(load_settings(load_config(work / "bench.yaml")))


def write_cache_outputs(work: Path) -> None:
    """Every file `snakemake cache` would write, newer than its inputs."""
    layout = bench_layout(work)
    shards = sorted(
        p.name[len("shard-") : -len(".parquet")] for p in (work / "results" / "shards").glob("shard-*")
    )
    files = []
    for cache in (layout.vae_cache, layout.text_cache):
        files.append(work / cache.spec)
        for shard in shards:
            files += [work / cache.tensors(shard), work / cache.index(shard)]
    files.append(work / layout.text_cache.empty_text)
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    spec_time = time.time() + 10
    touch_all([path for path in files if path.name == "spec.json"], spec_time)
    touch_all([path for path in files if path.name != "spec.json"], spec_time + 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=523_325)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, help="keep the synthetic tree here (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-dag-") as scratch:
        work = (args.workdir or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        configfile = bench_config(work, args.shard_size)
        start = time.perf_counter()
        data = write_data_stage(work, args.rows, args.shard_size)
        setup_s = time.perf_counter() - start

        plan_s, plan_output = dry_run(work, configfile)
        jobs = planned_jobs(plan_output)
        write_cache_outputs(work)
        noop_s, noop_output = dry_run(work, configfile)
        nothing = "Nothing to be done" in noop_output or planned_jobs(noop_output) == 0

    print(
        json.dumps(
            {
                "bench": "dag",
                "rows": args.rows,
                "shards": data["shards"],
                "planned_jobs": jobs,
                "dry_run_s": round(plan_s, 2),
                "noop_rerun_s": round(noop_s, 2),
                "noop_nothing_to_do": nothing,
                "goal_dry_run_s": 20,
                "goal_noop_rerun_s": 10,
                "setup_s": round(setup_s, 1),
                "machine": f"{platform.machine()} {os.cpu_count()} cores",
            }
        )
    )


if __name__ == "__main__":
    main()
