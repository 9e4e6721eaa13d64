"""The data stage end to end through `snakemake` subprocesses: demo and S3 sources, incremental reruns."""

import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import FAKE_ACCESS_KEY, FAKE_SECRET_KEY, nothing_to_do, run_snakemake, upload_tree, write_pair

from longcat.data.demo import DEMO_REJECTS


def _snapshot(paths):
    return {Path(path).name: (Path(path).read_bytes(), Path(path).stat().st_mtime_ns) for path in paths}


def _probed_counts(results):
    counts = {}
    for log in sorted((results / "logs" / "probe_chunk").glob("*.log")):
        runs = re.findall(r"reused by etag, (\d+) probed", log.read_text())
        counts[log.stem] = int(runs[-1])
    return counts


def _probed_logs(results):
    return [log.read_text() for log in sorted((results / "logs" / "probe_chunk").glob("*.log"))]


def test_demo_source_runs_and_reruns_as_a_no_op(tmp_path):
    run_snakemake(tmp_path, "shards")

    results = tmp_path / "results"
    metadata = pq.read_table(results / "metadata.parquet").to_pylist()
    rejected = pq.read_table(results / "rejected.parquet").to_pylist()
    assert len(metadata) == 12 and {row["key"]: row["reason"] for row in rejected} == DEMO_REJECTS
    assert any(row["height"] > row["width"] for row in metadata), "the demo has a portrait clip"
    assert len({row["fps"] for row in metadata}) > 1 and len({row["codec"] for row in metadata}) == 1
    assert all(row["caption"] and row["plan_num_frames"] in (9, 17) for row in metadata)
    shard_lists = sorted((results / "shards").glob("shard-*.parquet"))
    assert [path.name for path in shard_lists] == [
        "shard-00000.parquet",
        "shard-00001.parquet",
        "shard-00002.parquet",
    ]
    assert sum(pq.read_table(path).num_rows for path in shard_lists) == 12
    # Each probe job logs its progress: clips done, clips/s, time left.
    logs = _probed_logs(results)
    assert logs and all(re.search(r"probed (\d+)/\1 clips in .* clips/s, .* left", log) for log in logs)

    # The pre-launch estimate needs only the metadata: written, shown at the end, and redone when one
    # of its figures changes in the config.
    shown = run_snakemake(tmp_path, "estimate").stdout
    rejected = pq.read_table(results / "rejected.parquet").num_rows
    text = (results / "estimate.txt").read_text()
    assert f"{len(metadata)} accepted, {rejected} rejected" in text and text in shown
    assert (results / "estimate.json").is_file()
    assert nothing_to_do(run_snakemake(tmp_path, "shards", "estimate", "-n"))
    changed = run_snakemake(tmp_path, "estimate", "-n", config={"estimate": {"vae_clips_per_s": 2.0}})
    assert "Params have changed" in changed.stdout + changed.stderr
    assert "{'estimate.vae_clips_per_s': 2.0}" in changed.stdout + changed.stderr  # the setting, not all

    # Another source in the same results starts its own shards at 00000: nothing of the demo's history
    # (shard assignments, probe records) is taken for its own; back on the demo, nothing is probed again.
    other = tmp_path / "other-clips"
    other.mkdir()
    for row in metadata[:4]:
        for suffix in (".mp4", ".txt"):
            name = Path(row["key"]).with_suffix(suffix).name
            (other / f"other-{name}").write_bytes((results / "demo_clips" / name).read_bytes())
    run_snakemake(tmp_path, "shards", config={"source": {"kind": "local", "path": str(other)}, "demo": None})
    assignments = pq.read_table(results / "shards" / "assignments.parquet").to_pylist()
    assert {row["shard"] for row in assignments} == {"00000"}
    assert all(row["key"].startswith("other-") for row in assignments)
    assert sorted(
        row["key"] for row in pq.read_table(results / "shards" / "shard-00000.parquet").to_pylist()
    ) == [row["key"] for row in assignments]
    run_snakemake(tmp_path, "shards")
    assert len(pq.read_table(results / "shards" / "assignments.parquet")) == 12
    assert set(_probed_counts(results).values()) == {0}


def test_s3_source_incremental_reruns(s3_bucket, tmp_path):
    client, bucket = s3_bucket
    clips = tmp_path / "clips"
    for index in range(8):
        write_pair(clips, f"batch one/clip {index}", f"first batch clip {index}", faststart=index % 2 == 0)
    write_pair(clips, "batch one/uncaptioned", None)
    upload_tree(client, bucket, clips, prefix="data/")
    workdir = tmp_path / "work"
    config = {
        "source": {
            "kind": "s3",
            "bucket": bucket,
            "prefix": "data/",
            "endpoint_url": client.meta.endpoint_url,
        },
        "demo": None,
        "probe": {"chunks": 3, "workers": 4, "min_width": 32, "min_height": 32},
    }
    results = workdir / "results"

    run_snakemake(workdir, "shards", config=config)

    first_lists = sorted((results / "shards").glob("shard-*.parquet"))
    assert [path.name for path in first_lists] == ["shard-00000.parquet", "shard-00001.parquet"]
    assert pq.read_table(results / "rejected.parquet").to_pylist()[0]["reason"] == "missing_caption"
    assert sum(_probed_counts(results).values()) == 9
    assert nothing_to_do(run_snakemake(workdir, "shards", "-n", config=config))

    # Three new videos and a replaced one, then an explicit relist.
    before = _snapshot(first_lists)
    for index in range(3):
        write_pair(clips, f"batch two/new {index}", f"second batch clip {index}")
    upload_tree(client, bucket, clips / "batch two", prefix="data/batch two/")
    replaced = write_pair(clips, "batch one/clip 3", "first batch clip 3", width=96, height=64)
    client.put_object(Bucket=bucket, Key="data/batch one/clip 3.mp4", Body=replaced.read_bytes())
    run_snakemake(workdir, "shards", "--forcerun", "manifest", config=config)

    assert sum(_probed_counts(results).values()) == 4, "only the new and the replaced videos are probed"
    all_lists = sorted((results / "shards").glob("shard-*.parquet"))
    assert [path.name for path in all_lists][-1] == "shard-00002.parquet" and len(all_lists) == 3
    assert _snapshot(first_lists) == before, "existing shard lists keep their bytes and mtimes"
    # The replaced object's new version is a new row in the new shard, with its new size; its old
    # version stays in its old shard's list (training takes a key from the newest shard that holds it).
    new_rows = pq.read_table(results / "shards" / "shard-00002.parquet").to_pylist()
    assert [row["key"] for row in new_rows] == ["batch one/clip 3.mp4"] + [
        f"batch two/new {index}.mp4" for index in range(3)
    ]
    assert new_rows[0]["width"] == 96
    assert nothing_to_do(run_snakemake(workdir, "shards", "-n", config=config))

    # A deleted shard list comes back alone, byte-identical.
    deleted = results / "shards" / "shard-00001.parquet"
    deleted_bytes = deleted.read_bytes()
    others = _snapshot([path for path in all_lists if path != deleted])
    deleted.unlink()
    dry_run = run_snakemake(workdir, "shards", "-n", config=config)
    assert re.search(r"shard_list\s+1\b", dry_run.stdout) and "probe_chunk" not in dry_run.stdout
    run_snakemake(workdir, "shards", config=config)
    assert deleted.read_bytes() == deleted_bytes
    assert _snapshot([path for path in all_lists if path != deleted]) == others

    # Nothing written by the stage carries a credential.
    for path in workdir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert FAKE_ACCESS_KEY.encode() not in data and FAKE_SECRET_KEY.encode() not in data, path


def test_excluded_keys_leave_their_shard_only(tmp_path):
    clips = tmp_path / "clips"
    for index in range(6):
        write_pair(clips, f"clip {index}", f"clip number {index}")
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("# keys to drop\n")
    config = {
        "source": {"kind": "local", "path": str(clips)},
        "demo": None,
        "probe": {"chunks": 2, "min_width": 32, "min_height": 32},
        "shards": {"size": 3, "exclude": str(exclude)},
    }
    workdir = tmp_path / "work"
    shards = workdir / "results" / "shards"
    run_snakemake(workdir, "shards", config=config)
    untouched = _snapshot([shards / "shard-00000.parquet"])

    exclude.write_text("# keys to drop\nclip 4.mp4\n")
    run_snakemake(workdir, "shards", config=config)

    assert pq.read_table(shards / "shard-00001.parquet").column("key").to_pylist() == [
        "clip 3.mp4",
        "clip 5.mp4",
    ]
    assert _snapshot([shards / "shard-00000.parquet"]) == untouched
    assert sorted(path.name for path in shards.glob("shard-*.parquet")) == [
        "shard-00000.parquet",
        "shard-00001.parquet",
    ]


def test_demo_clips_are_deterministic(tmp_path):
    from longcat.data.demo import make_demo_clips
    from longcat.settings import Demo

    first = make_demo_clips(tmp_path / "one", Demo(num_clips=4, seed=3))
    make_demo_clips(tmp_path / "two", Demo(num_clips=4, seed=3))

    names = sorted(path.name for path in (tmp_path / "one").iterdir())
    # 4 clips and their captions, the marker, and the broken inputs (2 videos, 2 captions).
    assert names == sorted(path.name for path in (tmp_path / "two").iterdir()) and len(names) == 13
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert any(clip.height > clip.width for clip in first)

    # The demo remakes its own folder, and refuses one with anything else in it.
    make_demo_clips(tmp_path / "one", Demo(num_clips=5, seed=3))
    assert len(list((tmp_path / "one").iterdir())) == 15
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.mp4").write_bytes(b"user data")
    with pytest.raises(ValueError, match="set demo: null"):
        make_demo_clips(mine, Demo(num_clips=1, seed=0))
    assert [path.name for path in mine.iterdir()] == ["a.mp4"]
