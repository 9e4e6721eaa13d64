"""A source that does not answer fails the job and a plain rerun goes on; what is cached is what was probed;
cache jobs stream objects to the cache directory with bounded memory."""

import dataclasses
import json
import logging
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
from conftest import MAX_CAPTION_BYTES, make_clip, planned, run_snakemake, write_pair

from longcat.basemodel.loader import load_components
from longcat.cache.format import VAE_INDEX_SCHEMA, read_safetensors_header
from longcat.cache.writer import FailureLimit, ShardWriter
from longcat.config import load_config
from longcat.data.local import LocalSource
from longcat.data.metadata import probe_chunk
from longcat.data.open_source import open_source
from longcat.data.s3 import S3Source
from longcat.data.sources import TransientSourceError
from longcat.encoders.vae import cache_vae_shard
from longcat.paths import CacheLayout
from longcat.settings import load_settings

CPU = torch.device("cpu")
UNANSWERED = "could not be read because the source did not answer"


def settings_for(source: dict):
    return load_settings({**load_config(), "source": source, "demo": None})


def s3_settings(bucket: str, endpoint: str):
    return settings_for({"kind": "s3", "bucket": bucket, "endpoint_url": endpoint})


def clip_rows(source) -> list[dict]:
    """Shard-list rows (with the listed etag) for every .mp4 of `source`, as 160x90, 30 fps, 2 s clips."""
    rows = []
    for obj in source.list_objects():
        if obj.key.endswith(".mp4"):
            row = {
                "key": obj.key,
                "etag": obj.etag,
                "caption": "a test pattern",
                "width": 160,
                "height": 90,
                "aspect_ratio": 160 / 90,
                "fps": 30.0,
                "frame_count": 60,
                "duration": 2.0,
                "rotation": 0,
            }
            rows.append(planned(row))
    return rows


def write_clips(directory, names):
    for name in names:
        make_clip(directory / f"{name}.mp4", width=160, height=90, rate=30, seconds=2.0)


def serve(server, write) -> None:
    """Files written into the server's folder by `write`; rclone lists a folder once, so it restarts."""
    server.stop()
    write(server.root)
    server.start()


def index_of(root):
    return {row["sample_id"]: row for row in pq.read_table(root / "shard-00000.index.parquet").to_pylist()}


def test_outage_while_probing_fails_the_job_and_a_plain_rerun_accepts_every_clip(rclone_server, tmp_path):
    serve(
        rclone_server, lambda root: [write_pair(root / "videos", f"clip {i}", f"clip {i}") for i in range(3)]
    )
    workdir = tmp_path / "work"
    config = {
        "source": {"kind": "s3", "bucket": "videos", "endpoint_url": rclone_server.endpoint},
        "demo": None,
        "probe": {"chunks": 1, "min_width": 32, "min_height": 32},
    }
    results = workdir / "results"
    run_snakemake(workdir, "manifest", config=config)

    rclone_server.stop()
    failed = run_snakemake(workdir, "metadata", config=config, check=False)
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert f"3 of 3 objects {UNANSWERED}" in output and "plain rerun" in output, output[-3000:]
    assert not (results / "rejected.parquet").exists() and not (results / "metadata.parquet").exists()

    rclone_server.start()
    run_snakemake(workdir, "metadata", config=config)
    assert pq.read_table(results / "metadata.parquet").num_rows == 3
    assert pq.read_table(results / "rejected.parquet").num_rows == 0


class FlakySource(LocalSource):
    """A local tree whose reads of `down` fail as an unanswered source's would."""

    def __init__(self, root, down):
        super().__init__(root)
        self.down = set(down)

    def read_range(self, key, start, end):
        if key in self.down:
            raise TransientSourceError(f"reading {key} failed after 3 attempts: ConnectionRefusedError")
        return super().read_range(key, start, end)


def test_probe_keeps_the_answered_objects_and_rereads_only_the_others(tmp_path, caplog):
    from longcat.data.manifest import write_manifest

    clips = tmp_path / "clips"
    for index in range(4):
        write_pair(clips, f"clip {index}", f"clip number {index}")
    manifest, store, part = (
        tmp_path / "manifest.parquet",
        tmp_path / "store" / "part-000.parquet",
        tmp_path / "p",
    )
    write_manifest(LocalSource(clips), manifest, tmp_path / "unpaired.parquet")

    def probe(source):
        limits = {"workers": 2, "decode_check": True, "max_caption_bytes": MAX_CAPTION_BYTES}
        return probe_chunk(source, manifest, "000", 1, part, store, **limits)

    with pytest.raises(TransientSourceError, match=f"1 of 4 objects {UNANSWERED}.*ConnectionRefusedError"):
        probe(FlakySource(clips, {"clip 2.mp4"}))
    assert not part.exists()
    stored = pq.read_table(store).to_pylist()
    assert sorted(row["key"] for row in stored) == ["clip 0.mp4", "clip 1.mp4", "clip 3.mp4"]
    assert not any(row["reason"] for row in stored)

    caplog.set_level(logging.INFO, logger="longcat.data.metadata")
    table = probe(LocalSource(clips))
    assert table.num_rows == 4 and not any(table.column("reason").to_pylist())
    assert "3 reused by etag, 1 probed" in caplog.text


def test_outage_while_caching_keeps_the_done_samples_and_a_rerun_finishes(
    rclone_server, tiny_base_model, tmp_path
):
    serve(rclone_server, lambda root: write_clips(root / "videos", ["a", "b"]))
    settings = s3_settings("videos", rclone_server.endpoint)
    settings = dataclasses.replace(settings, cache=dataclasses.replace(settings.cache, decode_workers=1))
    # Few attempts: the outage is certain, the retries' backoff would only slow the test down.
    source = S3Source("videos", endpoint_url=rclone_server.endpoint, max_attempts=2)
    rows = clip_rows(source)
    download = source.download

    def outage_before_b(key, handle, etag=None):
        if key == "b.mp4":
            rclone_server.stop()
        return download(key, handle, etag=etag)

    source.download = outage_before_b
    vae = load_components(tiny_base_model, components=("vae",))["vae"]
    layout = CacheLayout(tmp_path / "vae")

    def run(source):
        writer = ShardWriter(layout, "00000", VAE_INDEX_SCHEMA, {})
        limit = FailureLimit(settings.cache.max_failed_fraction)
        cache_vae_shard(rows, vae, settings.frames, source, writer, torch.float32, CPU, settings.cache, limit)
        return writer

    with pytest.raises(TransientSourceError, match=r"source did not answer.*plain rerun"):
        run(source)
    partial = layout.partial("00000")
    assert len(list(partial.glob("*.safetensors"))) == 1
    assert not (layout.root / "shard-00000.safetensors").exists()
    assert not any((partial / "tmp").iterdir())

    rclone_server.start()
    run(open_source(settings.source))
    index = index_of(layout.root)
    assert [index[key]["status"] for key in ("a.mp4", "b.mp4")] == ["ok", "ok"]
    assert not partial.exists()


def test_a_clip_replaced_after_probing_is_not_cached(s3_bucket, tiny_base_model, tmp_path):
    client, bucket = s3_bucket
    write_clips(tmp_path / "clips", ["kept", "replaced"])
    for name in ("kept", "replaced"):
        client.put_object(
            Bucket=bucket, Key=f"{name}.mp4", Body=(tmp_path / "clips" / f"{name}.mp4").read_bytes()
        )
    local_dir = tmp_path / "local"
    write_clips(local_dir, ["kept", "replaced"])
    vae = load_components(tiny_base_model, components=("vae",))["vae"]
    for name, settings in (
        ("s3", s3_settings(bucket, client.meta.endpoint_url)),
        ("local", settings_for({"kind": "local", "path": str(local_dir)})),
    ):
        source = open_source(settings.source)
        rows = clip_rows(source)
        # Other bytes under the same key after the probe: S3 gives it a new etag, a local file a new mtime.
        make_clip(tmp_path / "other.mp4", width=90, height=160, rate=30, seconds=2.0)
        other = (tmp_path / "other.mp4").read_bytes()
        if name == "s3":
            client.put_object(Bucket=bucket, Key="replaced.mp4", Body=other)
        else:
            (local_dir / "replaced.mp4").write_bytes(other)
        layout = CacheLayout(tmp_path / name)
        writer = ShardWriter(layout, "00000", VAE_INDEX_SCHEMA, {})
        # Any share of failures: the failed row in the index is what this test reads.
        limit = FailureLimit(max_fraction=1.0)
        cache_vae_shard(rows, vae, settings.frames, source, writer, torch.float32, CPU, settings.cache, limit)

        index = index_of(layout.root)
        assert index["kept.mp4"]["status"] == "ok", name
        assert index["replaced.mp4"]["status"] == "failed", name
        assert index["replaced.mp4"]["reason"].startswith("changed_since_probe: "), index["replaced.mp4"]
        header, _ = read_safetensors_header(layout.root / "shard-00000.safetensors")
        assert "kept.mp4" in header and "replaced.mp4" not in header, "no latents from the new bytes"


STREAM_JOB = """
import json, os, resource, sys
from pathlib import Path
from longcat.config import load_config
from longcat.data.open_source import open_source
from longcat.data.s3 import S3Source
from longcat.encoders.decode import clip_file
from longcat.settings import load_settings

endpoint, etag, scratch = sys.argv[1:]
settings = load_settings({**load_config(), "demo": None, "source": {"kind": "s3", "bucket": "videos",
                                                                  "endpoint_url": endpoint}})
source = open_source(settings.source)
source.read_range("big.mp4", 0, 16)  # the client and its connection pool are up before measuring
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with clip_file(source, "big.mp4", etag, Path(scratch)) as path:
    found = {"path": path, "size": os.path.getsize(path)}
found["growth"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps(found))
"""


def test_objects_stream_to_the_shards_scratch_dir_with_bounded_memory(rclone_server, tmp_path):
    size = 512 * 1024 * 1024

    def write_big(root):
        (root / "videos").mkdir()
        with open(root / "videos" / "big.mp4", "wb") as handle:
            for _ in range(size // (16 * 1024 * 1024)):
                handle.write(os.urandom(16 * 1024 * 1024))

    serve(rclone_server, write_big)
    source = open_source(s3_settings("videos", rclone_server.endpoint).source)
    (etag,) = [obj.etag for obj in source.list_objects()]
    # A file left by a killed job goes when the shard's job starts again.
    layout = CacheLayout(tmp_path / "vae")
    stale = layout.partial("00000") / "tmp" / "clip-killed.mp4"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by a killed job")
    scratch = ShardWriter(layout, "00000", VAE_INDEX_SCHEMA, {}).scratch_dir
    assert not stale.exists()

    job = subprocess.run(
        [sys.executable, "-c", STREAM_JOB, rclone_server.endpoint, etag, str(scratch)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    found = json.loads(job.stdout)
    assert found["size"] == size and found["path"].startswith(str(scratch) + "/")
    assert found["growth"] < size / 8, f"peak memory grew by {found['growth']} bytes for a {size}-byte object"
    assert list(scratch.iterdir()) == [], "the temp file is deleted after use"
