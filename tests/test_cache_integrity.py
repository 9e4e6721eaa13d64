"""Damaged caches: checksums refused at read time with the file, the sample and the fix, and
`snakemake verify_cache` removing exactly the damaged shards so that `snakemake cache` rebuilds them."""

import dataclasses
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import REPO, run_snakemake

from longcat.cache.format import (
    TEXT_INDEX_SCHEMA,
    VAE_INDEX_SCHEMA,
    read_safetensors_header,
    tensor_bytes,
    write_safetensors,
)
from longcat.cache.ownership import ShardLock
from longcat.cache.reader import CacheReader
from longcat.cache.spec import CacheError, cache_key, text_cache_spec, vae_cache_spec, write_spec
from longcat.cache.verify import check_shard, verify_caches
from longcat.cache.writer import ShardWriter, write_empty_text, write_index
from longcat.paths import CacheLayout, Layout
from longcat.train.data import TrainLoader

LATENT_SHAPE = (16, 2, 4, 6)
TEXT_LEN = 3
MAX_TOKENS = 8


def sample_ids(shard: int, per_shard: int) -> list[str]:
    return [f"clip-{shard}-{index}.mp4" for index in range(per_shard)]


def small_cache(root: Path, shards: int = 2, per_shard: int = 3) -> tuple[CacheLayout, CacheLayout]:
    """A VAE and a text cache of random tensors, written by the cache's own writer, as the rules lay
    them out (one directory per key, spec.json, shard pairs, the empty caption)."""
    generator = torch.Generator().manual_seed(0)
    layouts = []
    for kind, schema in (("vae", VAE_INDEX_SCHEMA), ("text", TEXT_INDEX_SCHEMA)):
        spec = {"kind": kind, "test": "integrity"} | ({"max_tokens": MAX_TOKENS} if kind == "text" else {})
        layout = CacheLayout(root / kind / cache_key(spec))
        write_spec(layout.spec, spec)
        metadata = {"cache_key": layout.root.name}
        for shard in range(shards):
            writer = ShardWriter(layout, f"{shard:05d}", schema, metadata)
            for sample_id in sample_ids(shard, per_shard):
                row = {"sample_id": sample_id, "status": "ok", "reason": None}
                if kind == "vae":
                    row |= {"num_frames": 5, "fps": 15.0, "bucket_height": 32, "bucket_width": 48}
                    writer.add(
                        row | {"latent_shape": list(LATENT_SHAPE)},
                        torch.randn(LATENT_SHAPE, generator=generator),
                    )
                else:
                    writer.add(row | {"text_len": TEXT_LEN}, torch.randn(TEXT_LEN, 32, generator=generator))
            writer.finish(sample_ids(shard, per_shard))
        if kind == "text":
            write_empty_text(layout.empty_text, torch.randn(1, 32, generator=generator), metadata)
        layouts.append(layout)
    return layouts[0], layouts[1]


def flip_bit(path: Path, sample_id: str, byte: int = 0, bit: int = 0) -> None:
    """Flip one bit of a sample's tensor data in place (bit 0 of a float32's first byte: a change in the
    7th significant digit that leaves the value finite)."""
    header, data_start = read_safetensors_header(path)
    offset = data_start + header[sample_id]["data_offsets"][0] + byte
    with open(path, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ (1 << bit)]))


def test_a_flipped_bit_in_a_latent_stops_training_naming_shard_and_sample(tmp_path):
    vae, text = small_cache(tmp_path)
    shard = vae.tensors("00001")
    flip_bit(shard, "clip-1-2.mp4")
    reader = CacheReader(vae.root, text.root)
    reader.check()  # headers and sizes are fine: only the checksum can tell
    torch.testing.assert_close(reader.latent("clip-1-1.mp4"), reader.latent("clip-1-1.mp4"))

    # As training reads it: in a loader worker process, raised where the step takes its batch.
    loader = TrainLoader(reader, batch_size=1, world_size=1, rank=0, seed=0, num_workers=1)
    with pytest.raises(CacheError) as raised:
        for _ in zip(range(len(reader.samples)), loader, strict=False):
            pass
    message = str(raised.value)
    assert f"{shard}: sample 'clip-1-2.mp4' is damaged: its checksum is" in message
    assert "`snakemake verify_cache` removes every damaged shard" in message
    assert "delete shard-00001.safetensors and shard-00001.index.parquet" in message


def test_a_nan_sample_never_reaches_training_and_verify_names_it(tmp_path):
    vae, text = small_cache(tmp_path, shards=1)
    # The writer keeps no non-finite tensor: the sample is recorded as failed, with the count.
    writer = ShardWriter(vae, "00001", VAE_INDEX_SCHEMA, {"cache_key": vae.root.name})
    latent = torch.zeros(LATENT_SHAPE)
    latent[0, 0, 0, :2] = torch.tensor([float("nan"), float("inf")])
    writer.add(
        {"sample_id": "nan.mp4", "status": "ok", "reason": None, "latent_shape": list(LATENT_SHAPE)}, latent
    )
    writer.finish(["nan.mp4"])
    (row,) = pq.read_table(vae.index("00001")).to_pylist()
    assert row["status"] == "failed" and row["reason"].startswith("nonfinite: 2 of 768 values")
    assert read_safetensors_header(vae.tensors("00001"))[0] == {"__metadata__": {"cache_key": vae.root.name}}

    # A NaN that its checksum vouches for (not written by this writer) is named by verify_cache.
    data = tensor_bytes(latent)
    write_safetensors(vae.tensors("00001"), [("nan.mp4", data)], {"cache_key": vae.root.name})
    ok_row = row | {"status": "ok", "reason": None, "checksum": data.checksum}
    write_index(vae.index("00001"), [ok_row], VAE_INDEX_SCHEMA)
    shutil.copy(text.index("00000"), text.index("00001"))
    shutil.copy(text.tensors("00000"), text.tensors("00001"))
    text_rows = pq.read_table(text.index("00000")).to_pylist()
    write_index(text.index("00001"), [text_rows[0] | {"sample_id": "nan.mp4"}], TEXT_INDEX_SCHEMA)
    (problem,) = check_shard(vae, "vae", "00001").problems
    assert (problem.file, problem.sample_id) == (str(vae.tensors("00001")), "nan.mp4")
    assert "2 NaN or infinite" in problem.problem


def test_a_flipped_byte_in_an_index_names_the_file_and_the_fix(tmp_path):
    vae, text = small_cache(tmp_path, shards=1, per_shard=4)
    index = vae.index("00000")
    original = index.read_bytes()

    def read():
        """Everything training would get from the caches."""
        reader = CacheReader(vae.root, text.root)
        tensors = [
            (reader.latent(s.sample_id).tolist(), reader.text(s.sample_id).tolist()) for s in reader.samples
        ]
        return reader.samples, reader.failed, tensors

    expected = read()
    refused = 0
    for position in range(0, len(original), 3):
        damaged = bytearray(original)
        damaged[position] ^= 0xFF
        index.write_bytes(bytes(damaged))
        try:
            found = read()
        except CacheError as error:
            assert str(error).startswith(f"{index}: ") and "`snakemake verify_cache`" in str(error), error
            refused += 1
            continue
        assert found == expected, f"byte {position}: a damaged index was read as other samples"
    assert refused > len(original) // 6

    index.write_bytes(original)
    # An index of cache format 1 (no checksums) in a directory of format 2.
    pq.write_table(pq.read_table(index).drop_columns(["checksum"]), index)
    with pytest.raises(
        CacheError, match=rf"{index}: unreadable index: .* 'checksum' .* \(an index of cache format 1\)"
    ):
        CacheReader(vae.root, text.root)


def test_verify_finds_every_kind_of_damage_and_removes_only_those_shards(tmp_path):
    vae, text = small_cache(tmp_path, shards=4, per_shard=2)
    flip_bit(vae.tensors("00000"), "clip-0-1.mp4", byte=3, bit=7)  # the sign of the float
    with open(text.tensors("00002"), "r+b") as handle:
        handle.truncate(handle.seek(0, 2) - 8)
    vae.index("00003").write_bytes(vae.index("00003").read_bytes()[:-20])
    vae.partial("00003").mkdir()  # an unfinished part of the damaged shard goes with it
    sound = {path: path.read_bytes() for path in sorted(tmp_path.rglob("shard-*"))}

    report_path = tmp_path / "results" / "verify_cache.json"
    report = verify_caches(vae, text, report_path, threads=2)

    assert [(p.cache, p.shard, Path(p.file).name, p.sample_id) for p in report.problems] == [
        ("text", "00002", "shard-00002.safetensors", None),
        ("vae", "00000", "shard-00000.safetensors", "clip-0-1.mp4"),
        ("vae", "00003", "shard-00003.index.parquet", None),
    ]
    assert "checksum" in report.problems[1].problem and "truncated" in report.problems[0].problem
    removed = [text.index("00002"), text.tensors("00002"), vae.index("00000"), vae.tensors("00000")]
    removed += [vae.index("00003"), vae.tensors("00003"), vae.partial("00003")]
    assert sorted(report.removed) == sorted(map(str, removed))
    assert not any(path.exists() for path in removed)
    for path, data in sound.items():
        if path not in removed:
            assert path.read_bytes() == data, f"{path} changed"
    assert (report.shards_checked, report.samples_checked) == (8, 2 * 8 + 1 - 2 - 2)
    assert json.loads(report_path.read_text())["removed"] == report.removed
    assert "3 damaged, 7 files removed" in report.summary()

    again = verify_caches(vae, text, report_path)
    assert not again.problems and again.summary().endswith("all sound")
    assert check_shard(vae, "vae", "00001").problems == []


def test_verify_cache_target_removes_the_bad_shard_and_cache_rebuilds_only_it(tmp_path, tiny_base_model):
    """A real `snakemake verify_cache`, then a real `snakemake cache` dry run: one job, the bad shard's."""
    from longcat.encoders.text import run_empty_text, run_text_shard
    from longcat.encoders.vae import run_vae_shard
    from longcat.settings import load_settings

    workdir = tmp_path / "work"
    config = {"demo": {"num_clips": 4, "seed": 0}, "probe": {"chunks": 1}, "shards": {"size": 2}}
    run_snakemake(workdir, "shards", config=config)
    # What the cache jobs do, by the same library calls as their scripts, in this process (a torch
    # process per job would cost more than this whole test).
    embedded = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    settings = load_settings(embedded | config)
    settings = dataclasses.replace(
        settings,
        results=str(workdir / settings.results),
        cache_dir=str(workdir / settings.cache_dir),
        source=dataclasses.replace(settings.source, path=str(workdir / settings.source.path)),
    )
    paths = Layout.from_settings(settings)
    shutil.copytree(tiny_base_model, paths.base_model)
    write_spec(paths.vae_cache.spec, vae_cache_spec(settings))
    write_spec(paths.text_cache.spec, text_cache_spec(settings))
    cpu = torch.device("cpu")
    for shard in ("00000", "00001"):
        shard_list = paths.shard_list(shard)
        run_vae_shard(settings, shard_list, paths.vae_cache, shard, paths.base_model, cpu, threads=1)
        run_text_shard(settings, shard_list, paths.text_cache, shard, paths.base_model, cpu)
    run_empty_text(settings, paths.text_cache, paths.base_model, cpu)
    (bad_id, *_) = pq.read_table(paths.shard_list("00001")).column("key").to_pylist()
    flip_bit(paths.vae_cache.tensors("00001"), bad_id)
    cache_files = sorted(path for path in (workdir / "cache").rglob("*") if path.is_file())
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in cache_files}

    verified = run_snakemake(workdir, "verify_cache", config=config)

    output = verified.stdout + verified.stderr
    assert "verify_cache: 4 shards, 9 samples" in output and "1 damaged, 2 files removed" in output
    # The workflow's paths are relative to its working directory.
    bad_shard = paths.vae_cache.tensors("00001").relative_to(workdir)
    assert f"{bad_shard} [{bad_id}]: checksum" in output
    report = json.loads(paths.cache_verify_report.read_text())
    assert report["removed"] == [str(bad_shard.with_name("shard-00001.index.parquet")), str(bad_shard)]
    assert [problem["sample_id"] for problem in report["problems"]] == [bad_id]
    for path, (data, mtime) in before.items():
        if str(path.relative_to(workdir)) not in report["removed"]:
            assert (path.read_bytes(), path.stat().st_mtime_ns) == (data, mtime), f"{path} changed"

    planned = run_snakemake(workdir, "cache", "-n", config=config)
    output = planned.stdout + planned.stderr
    assert output.count("rule cache_vae_shard:") == 1 and "shard=00001" in output
    assert "rule cache_text_shard:" not in output and "rule base_model:" not in output


def test_a_key_cached_in_several_shards_is_read_from_the_newest(tmp_path):
    # An object replaced after its shard was cached is a new version when relisted: it goes into a new
    # shard (longcat.data.shards), so both versions are cached. Training takes the newest.
    vae, text = small_cache(tmp_path, shards=1)
    replaced, new_shape = "clip-0-1.mp4", (16, 3, 4, 6)
    for layout, schema in ((vae, VAE_INDEX_SCHEMA), (text, TEXT_INDEX_SCHEMA)):
        writer = ShardWriter(layout, "00001", schema, {"cache_key": layout.root.name})
        row = {"sample_id": replaced, "status": "ok", "reason": None}
        if schema is VAE_INDEX_SCHEMA:
            row |= {"num_frames": 9, "fps": 15.0, "bucket_height": 32, "bucket_width": 48}
            writer.add(row | {"latent_shape": list(new_shape)}, torch.ones(new_shape))
        else:
            writer.add(row | {"text_len": TEXT_LEN}, torch.ones(TEXT_LEN, 32))
        writer.finish([replaced])

    reader = CacheReader(vae.root, text.root)
    versions = [sample for sample in reader.samples if sample.sample_id == replaced]
    assert [(sample.shard, tuple(sample.latent_shape)) for sample in versions] == [("00001", new_shape)]
    assert torch.equal(reader.latent(replaced), torch.ones(new_shape))
    assert len(reader.samples) == 3


def test_a_key_whose_newest_version_failed_does_not_train_an_older_one(tmp_path):
    # The replacing object failed to cache (damaged, say): the object it replaced is gone, so its older
    # version, cached ok in an earlier shard, must not train in its place.
    vae, text = small_cache(tmp_path, shards=1)
    replaced = "clip-0-1.mp4"
    for layout, schema in ((vae, VAE_INDEX_SCHEMA), (text, TEXT_INDEX_SCHEMA)):
        writer = ShardWriter(layout, "00001", schema, {"cache_key": layout.root.name})
        if schema is VAE_INDEX_SCHEMA:
            row = {"sample_id": replaced, "status": "failed", "reason": "damaged_frames: 3 of 9 frames"}
            writer.add(row | {"num_frames": 9, "fps": 15.0, "bucket_height": 32, "bucket_width": 48}, None)
        else:
            row = {"sample_id": replaced, "status": "ok", "reason": None, "text_len": TEXT_LEN}
            writer.add(row, torch.ones(TEXT_LEN, 32))
        writer.finish([replaced])

    reader = CacheReader(vae.root, text.root)
    assert replaced not in {sample.sample_id for sample in reader.samples}
    assert len(reader.samples) == 2
    assert reader.failed[replaced] == "00001"


# ---------------------------------------------------------------- a cache written by more than one


def test_a_second_workflow_on_a_cache_dir_stops_before_any_job(tmp_path):
    """Two workflows (each its own results) with one cache_dir: the second stops when its Snakefile is
    parsed, naming the first one's results, before any job could delete or rebuild a shard. A copy of a
    workflow's results and caches together goes on (its results hold the same workflow id)."""
    config = {"cache_dir": str(tmp_path / "shared-cache")}
    run_snakemake(tmp_path / "first", "metadata", "-n", config=config)
    second = run_snakemake(tmp_path / "second", "metadata", "-n", config=config, check=False)
    output = second.stdout + second.stderr
    assert second.returncode != 0
    assert (
        "belongs to another workflow, whose results are in " + str(tmp_path / "first" / "results") in output
    )
    assert "Set cache_dir to a directory of this workflow's own" in output, output[-3000:]

    shutil.copytree(tmp_path / "first", tmp_path / "moved")
    run_snakemake(tmp_path / "moved", "metadata", "-n", config=config)


SECOND_JOB = """
import logging, sys
from pathlib import Path
from longcat.cache.format import TEXT_INDEX_SCHEMA
from longcat.cache.writer import ShardWriter
from longcat.paths import CacheLayout

logging.basicConfig(level=logging.INFO)
with ShardWriter(CacheLayout(Path(sys.argv[1])), "00000", TEXT_INDEX_SCHEMA, {"cache_key": "key"}) as writer:
    print("finished" if writer.finished(sys.argv[2:]) else "to write", flush=True)
"""


def test_a_second_job_of_a_shard_waits_and_leaves_the_finished_shard_as_it_is(tmp_path, caplog):
    """A controller started again while the first job of a shard still runs submits the shard again: the
    second job waits for the first one's lock, then finds the shard finished, keeps it and succeeds (so
    that Snakemake deletes nothing). A lock left by a process that is gone is taken over at once."""
    import logging
    import socket
    import subprocess
    import sys

    layout = CacheLayout(tmp_path / "text" / "key")
    ids = sample_ids(0, 2)
    first = ShardWriter(layout, "00000", TEXT_INDEX_SCHEMA, {"cache_key": "key"})
    second = subprocess.Popen(
        [sys.executable, "-c", SECOND_JOB, str(layout.root), *ids],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Read until it says it waits (at the end of its output, had it not waited).
    told = next((line for line in second.stderr if "the shard is being written by" in line), None)
    for sample_id in ids:
        first.add({"sample_id": sample_id, "status": "ok", "reason": None, "text_len": 3}, torch.ones(3, 32))
    first.finish(ids)
    written = layout.tensors("00000").stat()
    out, err = second.communicate(timeout=30)
    assert told and second.returncode == 0 and out == "finished\n", err[-3000:]
    kept = layout.tensors("00000").stat()
    assert (kept.st_ino, kept.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    assert not layout.lock("00000").exists() and not layout.partial("00000").exists()

    gone = subprocess.Popen(["true"])
    gone.wait()
    layout.lock("00001").write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid}))
    with caplog.at_level(logging.WARNING, logger="longcat.cache.ownership"):
        ShardWriter(layout, "00001", TEXT_INDEX_SCHEMA, {"cache_key": "key"}).close()
    assert "a process that is gone" in caplog.text

    # The same process id in another pid namespace (a container on this host) says nothing of that one.
    lock = ShardLock(layout.lock("00002"))
    elsewhere = json.dumps({"host": socket.gethostname(), "pid": gone.pid, "pid_namespace": "pid:[1]"})
    assert lock._stale(elsewhere, unchanged_s=1.0) is None
    here = json.dumps({**lock.holder, "pid": gone.pid})
    assert "a process that is gone" in lock._stale(here, unchanged_s=1.0)


def test_a_writer_that_fails_to_start_leaves_no_lock_behind(tmp_path):
    """A shard job that fails right after taking the shard's lock (its parts directory cannot be made)
    releases the lock: a later job of the shard, on any node, takes it at once instead of waiting for it
    to go stale."""
    layout = CacheLayout(tmp_path / "text" / "key")
    layout.root.mkdir(parents=True)
    layout.partial("00000").write_text("a file where the parts directory goes")
    with pytest.raises(FileExistsError):
        ShardWriter(layout, "00000", TEXT_INDEX_SCHEMA, {"cache_key": "key"})
    assert not layout.lock("00000").exists()


def test_a_writer_whose_lock_was_taken_over_does_not_write_the_shard(tmp_path):
    """A job stopped past the lock's staleness (a frozen node) has lost its shard to another job: when it
    goes on, it does not write the shard over the other job's, and leaves that job's lock alone."""
    layout = CacheLayout(tmp_path / "text" / "key")
    writer = ShardWriter(layout, "00000", TEXT_INDEX_SCHEMA, {"cache_key": "key"})
    writer.add({"sample_id": "a.mp4", "status": "ok", "reason": None, "text_len": 3}, torch.ones(3, 32))
    taker = json.dumps({"host": "another-node", "pid": 1, "token": "theirs"})
    layout.lock("00000").write_text(taker)
    with pytest.raises(CacheError, match="was taken over by another job"):
        writer.finish(["a.mp4"])
    writer.close()
    assert not layout.tensors("00000").exists() and not layout.index("00000").exists()
    assert layout.lock("00000").read_text() == taker


def test_a_cache_on_a_filesystem_without_hard_links_is_claimed_and_locked(tmp_path, monkeypatch):
    """Where link(2) is refused (FUSE and SMB mounts without hard links), the workflow id, the cache's
    owner and a shard's lock are made by an exclusive create: claimed once, locked once, released."""
    import errno
    import threading

    from longcat.cache import ownership

    def no_hard_links(source, target):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(target))

    monkeypatch.setattr(ownership.os, "link", no_hard_links)
    ownership.claim(tmp_path / "cache", tmp_path / "results" / "workflow-id")
    ownership.claim(tmp_path / "cache", tmp_path / "results" / "workflow-id")
    lock = ownership.ShardLock(tmp_path / "cache" / ".lock-shard-00000")
    taking = threading.Thread(target=lock.acquire, daemon=True)
    taking.start()
    taking.join(timeout=10)
    assert not taking.is_alive(), "the lock was never taken"
    assert not ownership.create_file(lock.path, "another job")
    lock.release()
    assert not lock.path.exists()
    assert not list((tmp_path / "cache").glob(".*.tmp"))
