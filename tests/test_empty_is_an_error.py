"""Empty is an error: a listing without a clip, a probe that accepts none, a cache shard with too many
failed samples and a training set without a whole batch each stop with one message that names the
cause and the fix, instead of handing nothing on to the next stage."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import run_snakemake, upload_tree, workflow_settings, write_pair

from longcat.cache.format import TEXT_INDEX_SCHEMA, VAE_INDEX_SCHEMA
from longcat.cache.reader import CacheReader
from longcat.cache.spec import cache_key, write_spec
from longcat.cache.writer import ShardWriter, write_empty_text
from longcat.data.local import LocalSource
from longcat.data.manifest import build_manifest
from longcat.data.metadata import REJECTED_SCHEMA
from longcat.data.rejects import FIXES
from longcat.data.shards import ASSIGNMENT_SCHEMA
from longcat.data.sources import SourceError
from longcat.paths import CacheLayout

CHANGED_FIX = FIXES["changed_since_probe"]


def output_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def test_a_listing_without_videos_stops_the_manifest_naming_the_source(s3_bucket, tmp_path):
    client, bucket = s3_bucket
    write_pair(tmp_path / "clips", "clip", "a clip")
    upload_tree(client, bucket, tmp_path / "clips", prefix="videos/")
    client.put_object(Bucket=bucket, Key="captions/clip.txt", Body=b"a clip")
    client.put_object(Bucket=bucket, Key="captions/notes.md", Body=b"not a clip")
    source = {"kind": "s3", "bucket": bucket, "prefix": "captions", "endpoint_url": client.meta.endpoint_url}

    result = run_snakemake(
        tmp_path / "work", "manifest", config={"source": source, "demo": None}, check=False
    )

    assert result.returncode != 0
    assert (
        f"s3://{bucket}/captions/: expected videos (.mp4, .mov, .m4v), found none: the listing found 2 "
        "objects, 1 of them captions (.txt) and 1 other files, e.g. 'notes.md'. Check source.bucket and "
        "source.prefix."
    ) in output_of(result), output_of(result)[-3000:]
    assert not (tmp_path / "work" / "results" / "manifest.parquet").exists()

    (tmp_path / "empty").mkdir()
    with pytest.raises(
        SourceError, match=r"found none: the listing found no object at all\. Check source\.path"
    ):
        build_manifest(LocalSource(tmp_path / "empty"))


def test_a_probe_that_accepts_no_clip_stops_the_metadata_with_the_rejects_by_reason(tmp_path):
    clips = tmp_path / "clips"
    for name in ("small a", "small b"):
        write_pair(clips, name, "a small clip", width=32, height=32)
    write_pair(clips, "uncaptioned", None)
    config = {"source": {"kind": "local", "path": str(clips)}, "demo": None, "probe": {"chunks": 1}}
    work, results = tmp_path / "work", tmp_path / "work" / "results"

    result = run_snakemake(work, "metadata", config=config, check=False)

    output = output_of(result)
    assert result.returncode != 0
    kept = results / "logs" / "metadata.rejected.parquet"
    assert (
        "metadata: expected at least one accepted clip, found none: all 3 objects listed were rejected "
        f"(every reject is in {kept.relative_to(work)}):\n"
        "  too_small: 2, e.g. small a.mp4 (32x32 is below probe.min_width x min_height = 64x64)\n"
        f"    fix: {FIXES['too_small']}\n"
        "  missing_caption: 1, e.g. uncaptioned.mp4 (no caption uncaptioned.txt beside the video)\n"
        f"    fix: {FIXES['missing_caption']}"
    ) in output, output[-3000:]
    # Snakemake deletes the failed job's outputs; the rejects are kept beside its log.
    assert not (results / "metadata.parquet").exists() and not (results / "rejected.parquet").exists()
    assert sorted(pq.read_table(kept).column("reason").to_pylist()) == [
        "missing_caption",
        "too_small",
        "too_small",
    ]

    # The fix the message gives: no clip is probed again, and the kept table goes.
    run_snakemake(
        work, "metadata", config={**config, "probe": {"chunks": 1, "min_width": 32, "min_height": 32}}
    )
    assert pq.read_table(results / "metadata.parquet").num_rows == 2 and not kept.exists()


def test_a_cache_shard_of_changed_clips_fails_and_relisting_supersedes_them(tmp_path):
    config = {"demo": {"num_clips": 4, "seed": 0}, "probe": {"chunks": 1}, "shards": {"size": 4}}
    run_snakemake(tmp_path, "shards", config=config)
    # A copy that drops sub-second modification times: every clip differs from its probed version.
    for clip in (tmp_path / "results" / "demo_clips").glob("clip-*.mp4"):
        stat = clip.stat()
        os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns // 10**9 * 10**9))

    failed = run_snakemake(tmp_path, "cache_vae", config=config, check=False)

    output = output_of(failed)
    (vae,) = (tmp_path / "cache" / "vae").iterdir()
    assert failed.returncode != 0
    assert (
        "shard-00000.safetensors: 4 of 4 samples failed (100.0%), more than cache.max_failed_fraction "
        "(0.05); the shard is not written:\n  changed_since_probe: 4, e.g. clip-000.mp4 "
        "(results/demo_clips/clip-000.mp4 changed since it was probed: etag "
    ) in output, output[-3000:]
    assert f"    fix: {CHANGED_FIX}\n" in output
    assert not (vae / "shard-00000.index.parquet").exists()
    assert not list((vae / ".partial-shard-00000").glob("*.safetensors")), (
        "a rerun tries each failed clip again"
    )

    # The fix: the relist gives the changed clips a new shard, and their failures in the old one no
    # longer count, so it is written with them.
    run_snakemake(tmp_path, "cache_vae", "--forcerun", "manifest", config=config)
    old = pq.read_table(vae / "shard-00000.index.parquet").to_pylist()
    new = pq.read_table(vae / "shard-00001.index.parquet").to_pylist()
    assert [row["status"] for row in old] == ["failed"] * 4 and [row["status"] for row in new] == ["ok"] * 4
    log = next((tmp_path / "results" / "logs" / "cache_vae").glob("*/shard-00000.log")).read_text()
    assert "4 failed samples are superseded (a newer version is in a later shard), not counted" in log


def new_caches(root: Path) -> tuple[CacheLayout, CacheLayout]:
    """An empty VAE and text cache directory with their specs."""
    layouts = []
    for kind in ("vae", "text"):
        spec = {"kind": kind, "test": "empty"} | ({"max_tokens": 8} if kind == "text" else {})
        layouts.append(CacheLayout(root / kind / cache_key(spec)))
        write_spec(layouts[-1].spec, spec)
    return layouts[0], layouts[1]


def write_shard(vae: CacheLayout, text: CacheLayout, shard: str, vae_rows: list[dict]) -> None:
    """One shard of the VAE cache with the given rows (id, status, reason), and of the text cache with
    every caption, as the cache jobs lay them out."""
    writers = [
        ShardWriter(layout, shard, schema, {"cache_key": layout.root.name})
        for layout, schema in ((vae, VAE_INDEX_SCHEMA), (text, TEXT_INDEX_SCHEMA))
    ]
    for row in vae_rows:
        writers[1].add(
            {"sample_id": row["sample_id"], "status": "ok", "reason": None, "text_len": 3}, torch.zeros(3, 32)
        )
        if row["status"] == "ok":
            shape = [16, 2, 4, 4]
            plan = {
                "num_frames": 5,
                "fps": 15.0,
                "bucket_height": 32,
                "bucket_width": 32,
                "latent_shape": shape,
            }
            writers[0].add(row | plan, torch.zeros(shape))
        else:
            writers[0].add(row)
    for writer in writers:
        writer.finish(row["sample_id"] for row in vae_rows)
    write_empty_text(text.empty_text, torch.zeros(1, 32), {"cache_key": text.root.name})


def changed(index: int) -> dict:
    return {
        "sample_id": f"clip-{index}.mp4",
        "status": "failed",
        "reason": f"changed_since_probe: clip-{index}.mp4 changed since it was probed: etag a then, b now",
    }


def test_training_without_a_whole_batch_stops_before_starting_with_one_message(tmp_path):
    from longcat.train.launch import launch_command
    from longcat.train.preflight import training_set_problem
    from longcat.train.record import run_config

    vae, text = new_caches(tmp_path / "cache")
    write_shard(vae, text, "00000", [changed(index) for index in range(3)])
    settings = workflow_settings()
    config = tmp_path / "train_config.yaml"
    config.write_text(yaml.safe_dump(run_config(settings)))
    command = launch_command(settings.train, sys.executable)
    command += (
        f" --config {config} --run-dir {tmp_path / 'run'} --vae-cache {vae.root} --text-cache {text.root}"
    )

    result = subprocess.run(
        command,
        shell=True,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )

    output = output_of(result)
    assert result.returncode != 0
    expected = (
        "training data: expected at least 2 usable samples of one latent shape (train.train_batch_size 1 "
        "on each of 2 ranks), found none. A sample is usable when the VAE and the text cache both hold it "
        f"as ok.\nVAE cache {vae.root}: 3 samples in 1 shards, 0 ok, 3 failed by reason:\n"
        "  changed_since_probe: 3, e.g. clip-0.mp4 (clip-0.mp4 changed since it was probed: etag a then, "
        "b now)\n"
        f"    fix: {CHANGED_FIX}\n"
        f"text cache {text.root}: 3 samples in 1 shards, 3 ok, 0 failed\n"
    )
    assert output.count("training data:") == 1 and expected in output, output[-4000:]
    # The launcher reports the exit status; no traceback of the training processes comes with it.
    assert "/longcat/" not in output and "exitcode  : 2" in output
    assert not (tmp_path / "run").exists(), "nothing of a run is started"

    # Some usable samples, but fewer than a batch on each rank: the message says how to get one.
    ok = {"sample_id": "clip-9.mp4", "status": "ok", "reason": None}
    vae, text = new_caches(tmp_path / "some")
    write_shard(vae, text, "00000", [changed(0), ok])
    reader = CacheReader(vae.root, text.root)
    problem = training_set_problem(reader, settings.train)
    assert "found 1 in buckets {'16x2x4x4': 1}" in problem
    assert problem.endswith(
        "fix: a smaller train.train_batch_size or fewer ranks (train.num_processes x train.nodes), or "
        "more clips"
    )
    assert training_set_problem(reader, dataclasses.replace(settings.train, num_processes=1)) is None


def test_the_report_shows_cache_failures_beside_the_probes_rejects(tmp_path):
    from longcat.paths import Layout
    from longcat.report.caches import CACHE_OUTPUTS, write_cache_report

    settings = workflow_settings()
    layout = Layout.from_settings(
        dataclasses.replace(settings, results=str(tmp_path / "results"), cache_dir=str(tmp_path / "cache"))
    )
    undecodable = "undecodable: ffmpeg failed: <moov> & more"
    shards = {
        "00000": [
            {"sample_id": "a.mp4", "status": "ok", "reason": None},
            changed(1) | {"sample_id": "b.mp4"},
            {"sample_id": "c.mp4", "status": "failed", "reason": undecodable},
        ],
        "00001": [{"sample_id": "b.mp4", "status": "ok", "reason": None}],
    }
    layout.shard_list("00000").parent.mkdir(parents=True)
    for shard, rows in shards.items():
        write_shard(layout.vae_cache, layout.text_cache, shard, rows)
        pq.write_table(pa.table({"key": [row["sample_id"] for row in rows]}), layout.shard_list(shard))
    # b.mp4 was replaced and relisted: its new version is in shard 00001.
    assigned = [
        {"key": row["sample_id"], "etag": "", "shard": shard} for shard in shards for row in shards[shard]
    ]
    pq.write_table(pa.Table.from_pylist(assigned, schema=ASSIGNMENT_SCHEMA), layout.assignments)
    reject = {"key": "short.mp4", "size": 1, "reason": "too_short", "detail": "0.400 s is too short"}
    pq.write_table(pa.Table.from_pylist([reject], schema=REJECTED_SCHEMA), layout.rejected)
    outputs = {name: tmp_path / "report" / f"{name}.out" for name in CACHE_OUTPUTS}

    write_cache_report(layout, list(shards), settings.cache.max_tokens, outputs)

    page = outputs["shards"].read_text()
    not_trained = page.split("<h2>Clips that do not train</h2>")[1].split("<h2>")[0]
    assert "<td>probe</td><td>too_short</td>" in not_trained and "<td>short.mp4</td>" in not_trained
    assert (
        '<td>VAE cache</td><td>undecodable</td><td class="number">1</td><td>c.mp4</td>'
        "<td>ffmpeg failed: &lt;moov&gt; &amp; more</td>"
    ) in not_trained
    assert "changed_since_probe" not in not_trained, "the newer version of b.mp4 trains"
    failed = page.split("<h2>Failed clips</h2>")[1]
    assert "<td>b.mp4</td><td>changed_since_probe: " in failed and "superseded by a later shard" in failed
