"""`snakemake cache` on the demo, end to end on CPU, and what a rerun rebuilds (only what is missing)."""

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import torch
import yaml
from conftest import REPO, nothing_to_do, run_snakemake

from longcat.basemodel.loader import load_components
from longcat.cache.reader import CacheReader
from longcat.data.frames import decode_clip, frame_plan
from longcat.settings import load_settings


def snapshot(directory):
    return {
        path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in sorted(Path(directory).iterdir())
    }


def only_dir(parent):
    (directory,) = Path(parent).iterdir()
    return directory


def jobs_run(result, rule):
    return (result.stdout + result.stderr).count(f"rule {rule}:")


def test_demo_cache_end_to_end_and_incremental(trained_demo, tmp_path):
    # The demo's caches as `snakemake train` built them from a clean directory (conftest's session
    # fixture), copied with their times and Snakemake's records, so this copy is that run's outputs.
    without_runs = shutil.ignore_patterns("runs")
    shutil.copytree(trained_demo, tmp_path, symlinks=True, dirs_exist_ok=True, ignore=without_runs)

    results, cache = tmp_path / "results", tmp_path / "cache"
    vae_dir, text_dir = only_dir(cache / "vae"), only_dir(cache / "text")
    shards = ["shard-00000", "shard-00001", "shard-00002"]
    for directory in (vae_dir, text_dir):
        assert sorted(p.name for p in directory.glob("shard-*.safetensors")) == [
            f"{s}.safetensors" for s in shards
        ]
        assert (directory / "spec.json").is_file() and not list(directory.glob(".partial*"))

    reader = CacheReader(vae_dir, text_dir)
    reader.check()
    assert len(reader.samples) == 12
    metadata = {row["key"]: row for row in pq.read_table(results / "metadata.parquet").to_pylist()}
    settings = load_settings(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    config_frames = settings.frames
    components = load_components(only_dir(results / "base_model"), components=("vae",))
    vae = components["vae"]
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    for sample in reader.samples:
        plan = frame_plan(metadata[sample.sample_id], config_frames)
        assert sample.latent_shape == (16, (plan.num_frames - 1) // 4 + 1, plan.height // 8, plan.width // 8)
    # Shapes, dtype and normalisation against a direct encode of the same frames (a portrait clip).
    sample = next(s for s in reader.samples if s.latent_shape[2] > s.latent_shape[3])
    frames = decode_clip(
        str(tmp_path / settings.source.path / sample.sample_id),
        frame_plan(metadata[sample.sample_id], config_frames),
    )
    pixels = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
    with torch.no_grad():
        expected = (vae.encode(pixels).latent_dist.mean - mean) / std
    cached = reader.latent(sample.sample_id)
    assert cached.dtype == torch.float32
    torch.testing.assert_close(cached, expected[0], rtol=1e-5, atol=1e-5)
    assert reader.text(sample.sample_id).shape == (sample.text_len, 32)
    assert reader.empty_text().shape[1] == 32

    assert nothing_to_do(run_snakemake(tmp_path, "cache", "-n"))

    # A deleted shard file: only its job runs, and it comes back byte-identical.
    deleted = vae_dir / "shard-00001.safetensors"
    deleted_bytes = deleted.read_bytes()
    vae_before, text_before = snapshot(vae_dir), snapshot(text_dir)
    deleted.unlink()
    rerun = run_snakemake(tmp_path, "cache")
    assert jobs_run(rerun, "cache_vae_shard") == 1 and jobs_run(rerun, "cache_text_shard") == 0
    assert deleted.read_bytes() == deleted_bytes
    vae_after = snapshot(vae_dir)
    for name in ("shard-00001.safetensors", "shard-00001.index.parquet"):
        vae_before.pop(name), vae_after.pop(name)
    assert vae_after == vae_before and snapshot(text_dir) == text_before

    # More demo clips: one invocation makes them, relists, probes, assigns them a new shard and caches
    # just that shard; the cache keys do not depend on the source, so every old shard stays as it was.
    vae_before, text_before = snapshot(vae_dir), snapshot(text_dir)
    more = {"demo": {"num_clips": 14, "seed": 0}}
    grown = run_snakemake(tmp_path, "cache", config=more)
    assert jobs_run(grown, "cache_vae_shard") == 1 and jobs_run(grown, "cache_text_shard") == 1
    assert jobs_run(grown, "base_model") == 0
    vae_after, text_after = snapshot(vae_dir), snapshot(text_dir)
    assert {name: vae_after[name] for name in vae_before} == vae_before
    assert {name: text_after[name] for name in text_before} == text_before
    reader = CacheReader(vae_dir, text_dir)
    reader.check()
    assert [s.sample_id for s in reader.samples if s.shard == "00003"] == ["clip-012.mp4", "clip-013.mp4"]
    assert pq.read_table(results / "metadata.parquet").num_rows == 14
    assert nothing_to_do(run_snakemake(tmp_path, "cache", "-n", config=more))

    # Another resolution: a new key directory; the old one is not touched.
    vae_before = snapshot(vae_dir)
    wider = {**more, "frames": {"buckets": [[80, 144], [144, 80], [96, 96]]}}
    run_snakemake(tmp_path, "cache_vae", config=wider)
    assert snapshot(vae_dir) == vae_before
    (new_dir,) = [path for path in (cache / "vae").iterdir() if path != vae_dir]
    new_reader = CacheReader(new_dir, text_dir)
    new_reader.check()
    assert len(new_reader.samples) == 14
    assert {s.latent_shape[2:] for s in new_reader.samples} <= {(10, 18), (18, 10), (12, 12)}
