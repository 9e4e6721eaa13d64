"""VAE and text shard caches, built by the library on real clips with the tiny model of the real classes."""

import dataclasses
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import build_caches, planned, write_shard_list

from longcat.basemodel.loader import load_components
from longcat.basemodel.tiny import write_tiny_base_model
from longcat.cache.format import VAE_INDEX_SCHEMA, read_safetensors_header
from longcat.cache.reader import CacheReader
from longcat.cache.spec import CacheError, cache_key, text_cache_spec, vae_cache_spec, write_spec
from longcat.cache.writer import FailureLimit, ShardWriter
from longcat.config import ConfigError
from longcat.data.frames import decode_clip, frame_plan
from longcat.encoders.text import encode_prompts
from longcat.encoders.vae import FusedChannelRMSNorm, cache_vae_shard, prepare_vae
from longcat.encoders.write_behind import WriteBehind
from longcat.flow import normalize_latents
from longcat.paths import CacheLayout
from longcat.pipeline import LongCatVideoPipeline
from longcat.settings import load_settings
from longcat.train.data import BatchItem, CacheBatches

REPO = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")

# (name, ffmpeg size, seconds) -> landscape, portrait, square-ish, short (falls to the 9-frame bucket).
CLIPS = [
    ("land", "160x90", 2.0),
    ("port", "90x160", 2.0),
    ("square", "100x96", 1.5),
    ("short", "160x90", 0.8),  # holds 9 frames at 15 fps (0.6 s), not 17 (1.13 s)
]


def embedded_config():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def demo_config(clips_dir, **frames):
    config = embedded_config()
    config["source"] = {"kind": "local", "path": str(clips_dir)}
    config["frames"].update(frames)
    config["cache"]["max_failed_fraction"] = 1.0  # the broken and the uncaptioned clip fail on purpose
    return config


def demo_settings(clips_dir, **frames):
    return load_settings(demo_config(clips_dir, **frames))


def make_clip(path, size, seconds, rate=30):
    subprocess.run(
        ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi"]
        + ["-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )


def shard_row(key, size, seconds, rate=30, caption="a test pattern"):
    width, height = (int(v) for v in size.split("x"))
    frames = int(round(seconds * rate))
    row = {
        "key": key,
        "caption": caption,
        "width": width,
        "height": height,
        "aspect_ratio": width / height,
        "fps": float(rate),
        "frame_count": frames,
        "duration": frames / rate,
        "rotation": 0,
    }
    return planned(row)


@pytest.fixture(scope="session")
def base_model(tmp_path_factory):
    torch.set_num_threads(1)  # the tiny model gains nothing from threads; the test machine is shared
    out = tmp_path_factory.mktemp("model") / "base_model"
    return write_tiny_base_model(out, load_settings(embedded_config()).base_model.tiny)


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    directory = tmp_path_factory.mktemp("clips")
    rows = []
    for name, size, seconds in CLIPS:
        make_clip(directory / f"{name}.mp4", size, seconds)
        rows.append(shard_row(f"{name}.mp4", size, seconds, caption=f"a {name} test pattern &amp; noise"))
    (directory / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 4000)
    rows.insert(2, shard_row("broken.mp4", "160x90", 2.0))
    rows.append({**shard_row("nocaption.mp4", "160x90", 2.0), "caption": None})
    make_clip(directory / "nocaption.mp4", "160x90", 2.0)
    return directory, rows


@pytest.fixture(scope="session")
def built(tmp_path_factory, base_model, clips):
    clips_dir, rows = clips
    settings = demo_settings(clips_dir)
    vae_dir, text_dir = build_caches(tmp_path_factory.mktemp("cache"), settings, base_model, rows)
    return settings, rows, vae_dir, text_dir


def test_cache_key_follows_what_changes_the_bytes():
    config = embedded_config()

    def keys(config):
        settings = load_settings(config)
        return cache_key(vae_cache_spec(settings)), cache_key(text_cache_spec(settings))

    vae_key, text_key = keys(config)
    assert vae_key == keys(embedded_config())[0]

    training = json.loads(json.dumps(config))
    training["train"]["learning_rate"] = 0.5
    training["shards"]["size"] = 99
    training["cache"]["decode_workers"] = 7
    training["cache"] |= {"vae_batch_size": 4, "cudnn_benchmark": True, "channels_last": True}
    training["cache"]["fused_rms_norm"] = True
    training["cache"]["max_failed_fraction"] = 0.5
    assert keys(training)[0] == vae_key
    assert keys(training)[1] == text_key

    resolution = json.loads(json.dumps(config))
    resolution["frames"]["buckets"] = [[80, 144], [144, 80]]
    assert keys(resolution)[0] != vae_key
    assert keys(resolution)[1] == text_key

    tokens = json.loads(json.dumps(config))
    tokens["cache"]["max_tokens"] = 32
    assert keys(tokens)[1] != text_key
    assert keys(tokens)[0] == vae_key

    # The tiny tokenizer learns a fixed corpus: neither key depends on the demo or the source.
    grown = json.loads(json.dumps(config))
    grown["demo"]["num_clips"] = 16
    assert keys(grown)[0] == vae_key
    assert keys(grown)[1] == text_key
    real = json.loads(json.dumps(config))
    real["demo"] = None
    real["source"] = {"kind": "s3", "bucket": "videos"}
    assert keys(real) == (vae_key, text_key)

    for section, key, value in [("cache", "dtype", "bfloat16"), ("base_model", "kind", "hf")]:
        changed = json.loads(json.dumps(config))
        changed[section][key] = value
        changed["base_model"].setdefault("hf", {"id": "meituan-longcat/LongCat-Video", "revision": "main"})
        assert keys(changed)[0] != vae_key
        assert keys(changed)[1] != text_key


def test_index_records_every_sample_with_status_and_reason(built):
    _, rows, vae_dir, text_dir = built
    vae_index = pq.read_table(vae_dir / "shard-00000.index.parquet").to_pylist()
    assert [row["sample_id"] for row in vae_index] == [row["key"] for row in rows]
    by_id = {row["sample_id"]: row for row in vae_index}
    assert by_id["broken.mp4"]["status"] == "failed"
    assert by_id["broken.mp4"]["reason"].startswith("undecodable: ffmpeg could not decode the clip ")
    assert by_id["land.mp4"] | {"reason": None, "checksum": None} == {
        "sample_id": "land.mp4",
        "status": "ok",
        "reason": None,
        "num_frames": 17,
        "fps": 15.0,
        "bucket_height": 64,
        "bucket_width": 112,
        "latent_shape": [16, 5, 8, 14],
        "checksum": None,
    }
    assert isinstance(by_id["land.mp4"]["checksum"], int) and by_id["broken.mp4"]["checksum"] is None
    assert by_id["port.mp4"]["latent_shape"] == [16, 5, 14, 8]
    assert by_id["square.mp4"]["latent_shape"] == [16, 5, 10, 10]
    assert by_id["short.mp4"]["num_frames"] == 9 and by_id["short.mp4"]["latent_shape"] == [16, 3, 8, 14]
    assert by_id["short.mp4"]["fps"] == 15.0  # sampled at frames.fps, not stretched to fill 17 frames

    text_index = {
        row["sample_id"]: row for row in pq.read_table(text_dir / "shard-00000.index.parquet").to_pylist()
    }
    assert text_index["nocaption.mp4"]["status"] == "failed"
    assert text_index["nocaption.mp4"]["reason"].startswith("missing_caption: ")
    assert text_index["land.mp4"]["status"] == "ok" and text_index["land.mp4"]["text_len"] > 1
    assert not list(vae_dir.glob(".partial*")) and not list(text_dir.glob(".partial*"))


def test_latents_equal_a_direct_normalised_vae_encode(built, base_model):
    settings, rows, vae_dir, text_dir = built
    reader = CacheReader(vae_dir, text_dir)
    reader.check()
    assert [s.sample_id for s in reader.samples] == ["land.mp4", "port.mp4", "square.mp4", "short.mp4"]

    vae = load_components(base_model, components=("vae",))["vae"]
    row = next(row for row in rows if row["key"] == "port.mp4")
    frames = decode_clip(str(Path(settings.source.path, "port.mp4")), frame_plan(row, settings.frames))
    pixels = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
    with torch.no_grad():
        raw = vae.encode(pixels).latent_dist.mean
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    expected = ((raw - mean) / std)[0]

    cached = reader.latent("port.mp4")
    assert cached.dtype == torch.float32 and cached.shape == (16, 5, 14, 8)
    torch.testing.assert_close(cached, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(normalize_latents(raw, vae.config)[0], expected)


def test_text_embeddings_are_unpadded_and_match_the_encoder(built, base_model):
    settings, rows, vae_dir, text_dir = built
    reader = CacheReader(vae_dir, text_dir)
    parts = load_components(base_model, components=("tokenizer", "text_encoder"))
    max_tokens = settings.cache.max_tokens
    caption = next(row["caption"] for row in rows if row["key"] == "square.mp4")
    expected = encode_prompts(parts["tokenizer"], parts["text_encoder"], [caption], max_tokens).unpadded[0]
    cached = reader.text("square.mp4")
    sample = next(s for s in reader.samples if s.sample_id == "square.mp4")
    assert cached.shape == (sample.text_len, 32) and sample.text_len < max_tokens
    torch.testing.assert_close(cached, expected)
    empty = encode_prompts(parts["tokenizer"], parts["text_encoder"], [""], max_tokens).unpadded[0]
    torch.testing.assert_close(reader.empty_text(), empty)
    with pytest.raises(KeyError, match="broken.mp4"):
        reader.latent("broken.mp4")


def test_training_captions_reach_the_dit_as_the_pipeline_hands_them(built, base_model):
    """Train = infer: the loader's caption tensors and mask equal the pipeline's, dropped caption included.

    The official DiT attends to zero-padded caption positions (`text_tokens_zero_pad`), so the pad count
    is part of the input: both sides pad to the text cache's max_tokens.
    """
    settings, rows, vae_dir, text_dir = built
    reader = CacheReader(vae_dir, text_dir)
    max_tokens = settings.cache.max_tokens
    assert reader.max_tokens == max_tokens
    pipe = LongCatVideoPipeline(**load_components(base_model))
    ids = [sample.sample_id for sample in reader.samples]
    captions = {row["key"]: row["caption"] for row in rows}
    batches = CacheBatches(reader)
    for index, sample_id in enumerate(ids):
        batch = batches[[BatchItem(index, False), BatchItem(index, True)]]
        text, mask, negative, negative_mask = pipe.encode_prompt(
            captions[sample_id], "", max_sequence_length=max_tokens, dtype=torch.float32
        )
        assert batch["text_states"].shape == (2, 1, max_tokens, 32)
        assert batch["text_mask"].shape == (2, max_tokens)
        assert batch["text_states"].dtype == text.dtype and batch["text_mask"].dtype == mask.dtype
        torch.testing.assert_close(batch["text_states"][:1], text, rtol=0, atol=0)
        assert torch.equal(batch["text_mask"][:1], mask)
        torch.testing.assert_close(batch["text_states"][1:], negative, rtol=0, atol=0)
        assert torch.equal(batch["text_mask"][1:], negative_mask)


def test_bfloat16_cache(tmp_path, base_model, clips):
    clips_dir, rows = clips
    settings = demo_settings(clips_dir)
    settings = dataclasses.replace(settings, cache=dataclasses.replace(settings.cache, dtype="bfloat16"))
    vae_dir, text_dir = build_caches(tmp_path, settings, base_model, rows[:2])
    reader = CacheReader(vae_dir, text_dir)
    assert reader.latent("land.mp4").dtype == torch.bfloat16
    assert reader.text("land.mp4").dtype == torch.bfloat16


KILLABLE_JOB = """
import json, logging, sys, torch
from pathlib import Path
from longcat.encoders.vae import run_vae_shard
from longcat.paths import CacheLayout
from longcat.settings import load_settings
logging.basicConfig(level=logging.INFO)
torch.set_num_threads(1)
config, shard_list, cache_dir, base_model = sys.argv[1:5]
settings = load_settings(json.loads(config))
cache = CacheLayout(Path(cache_dir))
run_vae_shard(settings, shard_list, cache, "00000", base_model, torch.device("cpu"), threads=1)
"""


def test_sigkill_mid_shard_then_rerun_gives_the_same_bytes(tmp_path, base_model, clips):
    clips_dir, rows = clips
    config = demo_config(clips_dir)
    config["cache"]["decode_workers"] = 1
    many = [{**rows[0], "key": f"copy{i}.mp4"} for i in range(6)]
    for i in range(6):
        os.link(clips_dir / "land.mp4", tmp_path / f"copy{i}.mp4")
    config["source"]["path"] = str(tmp_path)
    settings = load_settings(config)

    reference_vae, reference_text = build_caches(tmp_path / "reference", settings, base_model, many)

    vae_dir = tmp_path / "killed" / "vae" / reference_vae.name
    write_spec(vae_dir / "spec.json", vae_cache_spec(settings))
    shard_list = write_shard_list(tmp_path / "killed" / "shard-00000.parquet", many)
    args = [json.dumps(config), str(shard_list), str(vae_dir), str(base_model)]
    job = subprocess.Popen([sys.executable, "-c", KILLABLE_JOB, *args])
    partial = vae_dir / ".partial-shard-00000"
    deadline = time.monotonic() + 120
    while len(list(partial.glob("*.safetensors"))) < 2:
        assert job.poll() is None, "the job ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)
    job.wait()
    survived = len(list(partial.glob("*.safetensors")))
    assert 2 <= survived < 6
    assert not (vae_dir / "shard-00000.safetensors").exists()

    rerun = subprocess.run([sys.executable, "-c", KILLABLE_JOB, *args], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming, {survived} samples already done" in rerun.stderr
    for name in ("shard-00000.safetensors", "shard-00000.index.parquet"):
        assert (vae_dir / name).read_bytes() == (reference_vae / name).read_bytes()
    assert not partial.exists()


def test_reader_names_the_broken_file(tmp_path, built):
    _, _, vae_dir, text_dir = built
    copy_vae, copy_text = tmp_path / "vae" / vae_dir.name, tmp_path / "text" / text_dir.name
    shutil.copytree(vae_dir, copy_vae)
    shutil.copytree(text_dir, copy_text)
    CacheReader(copy_vae, copy_text).check()

    shard = copy_vae / "shard-00000.safetensors"
    size = shard.stat().st_size
    with open(shard, "r+b") as handle:
        handle.truncate(size - 100)
    with pytest.raises(CacheError, match=rf"{shard}: expected {size} bytes .* found {size - 100}") as raised:
        CacheReader(copy_vae, copy_text).check()
    # Snakemake sees the file and would not rebuild it: the message says how.
    assert str(raised.value).endswith(
        "`snakemake verify_cache` removes every damaged shard (or delete shard-00000.safetensors and "
        f"shard-00000.index.parquet in {copy_vae}), then `snakemake cache` rebuilds what is missing"
    )
    with pytest.raises(CacheError, match="truncated"):
        read_safetensors_header(shard)

    (copy_vae / "shard-00000.safetensors").unlink()
    with pytest.raises(
        CacheError, match=r"shard-00000.safetensors: missing beside its shard; `snakemake cache`"
    ):
        CacheReader(copy_vae, copy_text).check()

    spec = json.loads((copy_text / "spec.json").read_text())
    spec["max_tokens"] = 7
    (copy_text / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(CacheError, match=r"spec.json: its key is .* but the directory is named"):
        CacheReader(vae_dir, copy_text).check()


def test_reader_survives_pickling(built):
    _, _, vae_dir, text_dir = built
    reader = CacheReader(vae_dir, text_dir)
    first = reader.latent("land.mp4")
    clone = pickle.loads(pickle.dumps(reader))
    torch.testing.assert_close(clone.latent("land.mp4"), first)


def test_clips_stream_from_s3_through_temp_files(tmp_path, base_model, clips, s3_bucket, monkeypatch):
    from conftest import FAKE_ACCESS_KEY, FAKE_SECRET_KEY

    from longcat.data.s3 import S3Source

    client, bucket = s3_bucket
    clips_dir, rows = clips
    for name in ("land.mp4", "port.mp4"):
        client.put_object(Bucket=bucket, Key=f"videos/{name}", Body=(clips_dir / name).read_bytes())
    shard_rows = [row for row in rows if row["key"] in ("land.mp4", "port.mp4")]
    shard_rows.append({**shard_rows[0], "key": "gone.mp4"})
    writer = ShardWriter(CacheLayout(tmp_path), "00000", VAE_INDEX_SCHEMA, {})
    vae = load_components(base_model, components=("vae",))["vae"]
    source = S3Source(bucket, prefix="videos/", client=client)
    settings = demo_settings(clips_dir)
    cache_vae_shard(
        shard_rows,
        vae,
        settings.frames,
        source,
        writer,
        torch.float32,
        CPU,
        settings.cache,
        FailureLimit(max_fraction=1.0),  # gone.mp4 fails, and its row is what this test reads
    )

    index = {
        row["sample_id"]: row for row in pq.read_table(tmp_path / "shard-00000.index.parquet").to_pylist()
    }
    assert index["land.mp4"]["status"] == "ok" and index["port.mp4"]["latent_shape"] == [16, 5, 14, 8]
    assert index["gone.mp4"]["status"] == "failed"
    assert f"s3://{bucket}/videos/gone.mp4" in index["gone.mp4"]["reason"]
    written = (tmp_path / "shard-00000.index.parquet").read_bytes() + (
        tmp_path / "shard-00000.safetensors"
    ).read_bytes()
    assert FAKE_ACCESS_KEY.encode() not in written and FAKE_SECRET_KEY.encode() not in written
    assert not writer.scratch_dir.exists(), "temp copies are deleted with the shard's parts"


def test_a_row_planned_under_other_frame_settings_is_refused_before_any_decode(tmp_path, base_model, clips):
    from longcat.data.local import LocalSource

    clips_dir, rows = clips
    settings = demo_settings(clips_dir)
    vae = load_components(base_model, components=("vae",))["vae"]
    stale = {**rows[0], "plan_num_frames": 9}
    unplanned = {key: value for key, value in rows[0].items() if not key.startswith("plan_")}
    for row, message in [
        (
            stale,
            r"row 'land.mp4': the metadata planned FramePlan\(num_frames=9.* give FramePlan\(num_frames=17",
        ),
        (unplanned, r"row 'land.mp4': expected the metadata's frame plan"),
    ]:
        writer = ShardWriter(CacheLayout(tmp_path), "00000", VAE_INDEX_SCHEMA, {})
        with pytest.raises(CacheError, match=message):
            cache_vae_shard(
                [rows[1], row],
                vae,
                settings.frames,
                LocalSource(clips_dir),
                writer,
                torch.float32,
                CPU,
                settings.cache,
                FailureLimit(max_fraction=1.0),
            )
        assert not writer.done, "nothing is decoded before every row's plan is checked"


def test_batched_channels_last_encode_equals_one_at_a_time(tmp_path, base_model, clips):
    from safetensors.torch import load_file

    from longcat.data.local import LocalSource

    clips_dir, rows = clips
    by_key = {row["key"]: row for row in rows}
    # Runs of one shape broken by a failed clip and by other shapes, so batches fill, split and flush.
    order = ["land", "land", "broken", "land", "port", "port", "short", "land"]
    shard_rows = []
    for index, name in enumerate(order):
        key = f"{index}-{name}.mp4"
        os.link(clips_dir / f"{name}.mp4", tmp_path / key)
        shard_rows.append({**by_key[f"{name}.mp4"], "key": key})
    settings = demo_settings(clips_dir)

    def build(name, cache):
        out = tmp_path / name
        writer = ShardWriter(CacheLayout(out), "00000", VAE_INDEX_SCHEMA, {})
        vae = prepare_vae(load_components(base_model, components=("vae",))["vae"], cache)
        fused = [module for module in vae.modules() if isinstance(module, FusedChannelRMSNorm)]
        assert bool(fused) == cache.fused_rms_norm
        cache_vae_shard(
            shard_rows,
            vae,
            settings.frames,
            LocalSource(tmp_path),
            writer,
            torch.float32,
            CPU,
            cache=cache,
            limit=FailureLimit(max_fraction=1.0),  # the broken clip fails in both
        )
        return out

    plain = settings.cache
    assert (plain.vae_batch_size, plain.channels_last, plain.fused_rms_norm) == (1, False, False)
    single = build("single", plain)
    batched = build(
        "batched", dataclasses.replace(plain, vae_batch_size=3, channels_last=True, fused_rms_norm=True)
    )
    # Equal rows but for the checksums: the latents agree to a tolerance, not bit for bit.
    single_index = pq.read_table(single / "shard-00000.index.parquet").drop_columns(["checksum"]).to_pylist()
    batched_index = pq.read_table(batched / "shard-00000.index.parquet").drop_columns(["checksum"])
    assert batched_index.to_pylist() == single_index
    assert [row["status"] for row in single_index].count("failed") == 1
    expected = load_file(single / "shard-00000.safetensors")
    found = load_file(batched / "shard-00000.safetensors")
    assert (
        list(found) == list(expected) == [row["sample_id"] for row in single_index if row["status"] == "ok"]
    )
    for sample_id, latent in expected.items():
        torch.testing.assert_close(found[sample_id], latent, rtol=1e-4, atol=1e-4)


def test_encode_speed_settings_come_from_the_cache_section():
    def speed(cache):
        settings = load_settings({**embedded_config(), "cache": cache}).cache
        return (
            settings.vae_batch_size,
            settings.channels_last,
            settings.cudnn_benchmark,
            settings.fused_rms_norm,
            settings.decode_workers,
        )

    assert speed({}) == (1, False, False, False, 2)
    assert load_settings({**embedded_config(), "cache": {"vae_compile": True}}).cache.vae_compile
    cache = {"vae_batch_size": 4, "channels_last": True, "cudnn_benchmark": True, "fused_rms_norm": True}
    assert speed(cache) == (4, True, True, True, 2)
    with pytest.raises(ConfigError, match=r"cache.vae_batch_size: expected minimum 1, found 0"):
        speed({"vae_batch_size": 0})


def test_prepare_vae_switches_the_fused_norms_on_and_off_repeatedly():
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1).eval()
    pixels = torch.rand(2, 3, 5, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(pixels).latent_dist.mode()
    cache = load_settings(embedded_config()).cache
    for fused in (True, True, False, True):
        prepare_vae(vae, dataclasses.replace(cache, channels_last=fused, fused_rms_norm=fused))
        swapped = sum(isinstance(module, FusedChannelRMSNorm) for module in vae.modules())
        assert swapped == (14 if fused else 0)
        with torch.no_grad():
            found = vae.encode(pixels).latent_dist.mode()
        torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)

    # Compiled (lazily: the first encode compiles), then plain again: one encoder module all along.
    encoder = vae.encoder
    prepare_vae(vae, dataclasses.replace(cache, fused_rms_norm=True, vae_compile=True))
    assert (
        isinstance(vae.encoder, torch._dynamo.eval_frame.OptimizedModule) and vae.encoder._orig_mod is encoder
    )
    prepare_vae(vae, dataclasses.replace(cache, fused_rms_norm=True, vae_compile=True))
    assert vae.encoder._orig_mod is encoder
    assert sum(isinstance(module, FusedChannelRMSNorm) for module in vae.modules()) == 14
    prepare_vae(vae, cache)
    assert vae.encoder is encoder
    with torch.no_grad():
        torch.testing.assert_close(vae.encode(pixels).latent_dist.mode(), expected, rtol=1e-5, atol=1e-5)


def test_write_behind_keeps_the_order_and_raises_a_failed_write_in_the_caller():
    written = []
    with WriteBehind(depth=2) as writes:
        for index in range(6):
            writes.submit(written.append, index)
    assert written == list(range(6))

    def fail():
        raise OSError("no space left on device")

    with pytest.raises(OSError, match="no space left"), WriteBehind() as writes:
        writes.submit(fail)  # raises here once the write is done, or when the block ends
