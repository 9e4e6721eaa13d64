"""Listing and reading sources: local trees with awkward names, S3 on loopback, S3 Inventory, captions."""

import csv
import gzip
import io
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import (
    FAKE_ACCESS_KEY,
    FAKE_SECRET_KEY,
    MAX_CAPTION_BYTES,
    REPO,
    RcloneS3,
    free_port,
    make_clip,
)

import longcat.data.s3 as s3_module
from longcat import settings
from longcat.config import ConfigError, load_yaml, merge
from longcat.data import obstore_reads
from longcat.data.captions import decode_caption
from longcat.data.local import LocalSource
from longcat.data.manifest import build_manifest, chunk_of
from longcat.data.open_source import open_source
from longcat.data.probe import probe_rows
from longcat.data.s3 import S3Source, s3_client
from longcat.data.sources import ChangedSinceProbe, OutsideSource, SourceError, TransientSourceError, sanitize

AWKWARD = [
    "top.mp4",
    "a b/clip with spaces.mp4",
    "ünï/cödé/視頻 [1] (final).mp4",
    "deep/1/2/3/4/5/x#y%z&.mp4",
]


def _write(root, key, data=b"x"):
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_local_listing_pairs_captions_at_any_depth_with_awkward_names(tmp_path):
    for key in AWKWARD:
        _write(tmp_path, key, b"video")
        _write(tmp_path, key[: -len(".mp4")] + ".txt", b"caption")
    _write(tmp_path, "lonely/no caption.mp4", b"video")
    _write(tmp_path, "notes/readme.md", b"ignored")

    manifest = build_manifest(LocalSource(tmp_path)).to_pylist()

    by_key = {row["key"]: row for row in manifest}
    assert sorted(by_key) == sorted([*AWKWARD, "lonely/no caption.mp4"])
    for key in AWKWARD:
        assert by_key[key]["caption_key"] == key[: -len(".mp4")] + ".txt"
        assert by_key[key]["size"] == 5 and by_key[key]["etag"]
    assert by_key["lonely/no caption.mp4"]["caption_key"] is None
    source = LocalSource(tmp_path)
    assert source.read_range(AWKWARD[2], 1, 4) == b"ide"


def test_names_pair_one_way_only_and_invisible_captions_are_empty(tmp_path, caplog):
    """a.mp4 and a.MP4 (two clips) would both take a.txt; c.txt and c.TXT could each be c.mp4's caption:
    those videos are rejected naming the others. b.TXT is b.mp4's caption. A caption of zero-width and
    other invisible characters (entities included) is empty. The listing counts each kind of file once."""
    from longcat.data.manifest import list_source

    make_clip(tmp_path / "a.mp4")
    (tmp_path / "a.txt").write_text("the first a")
    for name in ("b", "c", "d", "e"):
        make_clip(tmp_path / f"{name}.mp4")
    (tmp_path / "b.TXT").write_text("a caption in upper case")
    (tmp_path / "c.txt").write_text("one caption")
    (tmp_path / "c.TXT").write_text("another caption")
    (tmp_path / "d.txt").write_text("\u200b\u2060 &nbsp;&#8203;\ufeff\u3164\n")
    (tmp_path / "e.txt").write_text("a test pattern")
    (tmp_path / "notes.md").write_text("not a clip")
    source = LocalSource(tmp_path)

    def probe(previous=()):
        manifest, unpaired = list_source(source)
        records, _, _ = probe_rows(
            source,
            manifest.to_pylist(),
            previous,
            workers=2,
            decode_check=True,
            max_caption_bytes=MAX_CAPTION_BYTES,
        )
        assert unpaired.num_rows == 0
        return records, {record["key"]: record for record in records}

    first, _ = probe()
    make_clip(tmp_path / "a.MP4", pattern="smptebars")
    with caplog.at_level(logging.INFO, logger="longcat.data.manifest"):
        _, records = probe(previous=first)

    assert (
        "6 videos, 0 without caption, 3 with an ambiguous name, 0 captions without video, 1 other files"
        in (caplog.text)
    )
    # a.mp4 was accepted before a.MP4 came: its stored record is not reused.
    for key, other in (("a.mp4", "a.MP4"), ("a.MP4", "a.mp4")):
        assert records[key]["reason"] == "ambiguous_name"
        assert records[key]["detail"] == (
            f"{key} and {other} differ only in case or extension: each would take the caption a.txt. "
            "Rename all but one"
        )
    assert records["c.mp4"]["reason"] == "ambiguous_name"
    assert records["c.mp4"]["detail"].startswith("the captions c.TXT, c.txt differ only in case")
    assert (records["b.mp4"]["reason"], records["b.mp4"]["caption"]) == (None, "a caption in upper case")
    assert records["d.mp4"]["reason"] == "empty_caption"
    assert records["d.mp4"]["detail"].startswith("d.txt holds no visible text")
    assert records["e.mp4"]["reason"] is None


def test_local_source_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="source.path: expected a directory"):
        list(LocalSource(tmp_path / "absent").list_objects())


def test_s3_listing_by_prefix_pages_and_ranges(s3_bucket):
    client, bucket = s3_bucket
    keys = [f"videos/{folder}/clip-{index:04d}.mp4" for folder in ("a", "b [2]") for index in range(520)]
    keys += ["videos/top level.mp4", "videos/top level.txt", "videos/a/clip-0000.txt", "elsewhere/x.mp4"]
    # obstore's paths would read "videos/lead.mp4" for this key: S3Source reads it on boto3.
    keys += ["videos//lead.mp4", "videos/lead.mp4"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=key.encode()), keys))

    source = open_source(
        settings.Source(
            kind="s3",
            path=None,
            bucket=bucket,
            prefix="videos/",
            region=None,
            endpoint_url=client.meta.endpoint_url,
            inventory=None,
            list_workers=8,
            follow_symlinks=False,
        )
    )
    objects = {obj.key: obj for obj in source.list_objects()}

    # 1045 objects under the prefix: more than one ListObjectsV2 page, across three sub-prefixes.
    assert len(objects) == 1045
    assert "x.mp4" not in objects and "a/clip-0519.mp4" in objects and "b [2]/clip-0000.mp4" in objects
    assert objects["top level.mp4"].size == len(b"videos/top level.mp4")
    assert len(objects["top level.mp4"].etag) == 32
    manifest = build_manifest(source).to_pylist()
    captioned = {row["key"] for row in manifest if row["caption_key"]}
    assert captioned == {"top level.mp4", "a/clip-0000.mp4"}
    assert source.read_range("top level.mp4", 7, 12) == b"top l"
    assert source.read_ranges("/lead.mp4", [(0, 8), (8, 16)]) == [b"videos//", b"lead.mp4"]
    assert source.obstore is not None  # moto answers ranges as S3 does: obstore read them all


def test_s3_read_errors_name_the_object_but_no_secret(s3_bucket):
    client, bucket = s3_bucket
    source = S3Source(bucket, "videos", client=client)
    with pytest.raises(SourceError) as raised:
        source.read_range("missing.mp4", 0, 10)
    message = str(raised.value)
    assert f"s3://{bucket}/videos/missing.mp4" in message and "HTTP 404 NoSuchKey" in message
    assert not isinstance(raised.value, TransientSourceError)  # permanent: may become a reject
    assert FAKE_ACCESS_KEY not in message and FAKE_SECRET_KEY not in message


def test_ranged_reads_and_probes_from_a_server_that_answers_ranges_with_200(rclone_s3, tmp_path):
    from longcat.data.probe import probe_video

    path = make_clip(tmp_path / "clip.mp4", width=320, height=192, seconds=2)
    data = path.read_bytes()
    client = s3_client("us-east-1", rclone_s3)
    client.create_bucket(Bucket="videos")
    client.put_object(Bucket="videos", Key="v/clip.mp4", Body=data)
    source = S3Source("videos", "v/", client=client)

    assert source.read_range("clip.mp4", 100, 200) == data[100:200]
    assert source.read_range("clip.mp4", len(data) - 50, len(data) + 10) == data[-50:]
    assert source.read_ranges("clip.mp4", [(0, 8), (len(data) - 8, len(data))]) == [data[:8], data[-8:]]
    assert source.read_all("clip.mp4") == data
    assert probe_video(source, "clip.mp4", len(data), decode_check=True) == probe_video(
        LocalSource(tmp_path), "clip.mp4", len(data), decode_check=True
    )
    assert source.obstore is None  # obstore refuses such answers; boto3 read them and reads on


def test_reads_of_awkward_keys_pass_a_signature_check(rclone_s3):
    """rclone checks SigV4 signatures: keys that need quoting are read, whole and by range."""
    client = s3_client("us-east-1", rclone_s3)
    client.create_bucket(Bucket="awkward")
    keys = [*AWKWARD, "a+b/c=d;e,f@g~h!.mp4", "x/ä ö/$'()*.mp4"]
    for key in keys:
        client.put_object(Bucket="awkward", Key=f"in/{key}", Body=key.encode() * 3)
    source = S3Source("awkward", "in", client=client)

    for key in keys:
        body = key.encode() * 3
        assert source.read_all(key) == body
        assert source.read_ranges(key, [(1, 4), (len(body) - 2, len(body))]) == [body[1:4], body[-2:]]
    with pytest.raises(
        SourceError, match=r"s3://awkward/in/absent\.mp4 failed: HTTP 404 NoSuchKey"
    ) as raised:
        source.read_range("absent.mp4", 0, 10)
    assert not isinstance(raised.value, TransientSourceError)


class ChunkedFile(io.BytesIO):
    """An in-memory file that remembers the largest single write."""

    largest_write = 0

    def write(self, data):
        self.largest_write = max(self.largest_write, len(data))
        return super().write(data)


@pytest.mark.parametrize("server", ["moto", "rclone"])
def test_s3_download_streams_the_probed_version_only(server, request, monkeypatch):
    """Downloads stream in bounded pieces at the probed etag; a replaced object is ChangedSinceProbe
    (moto answers If-Match with 412; rclone ignores If-Match, so the answer's ETag is checked)."""
    if server == "moto":
        client, bucket = request.getfixturevalue("s3_bucket")
    else:
        client, bucket = s3_client("us-east-1", request.getfixturevalue("rclone_s3")), "videos"
        client.create_bucket(Bucket=bucket)
    monkeypatch.setattr(s3_module, "DOWNLOAD_CHUNK_BYTES", 4096)
    old, new = bytes(range(256)) * 100, b"replaced" * 1000
    client.put_object(Bucket=bucket, Key="v/a.mp4", Body=old)
    source = S3Source(bucket, "v", client=client)
    (probed,) = [obj.etag for obj in source.list_objects()]

    handle = ChunkedFile()
    assert source.download("a.mp4", handle, etag=probed) == len(old)
    assert handle.getvalue() == old and handle.largest_write <= 4096
    assert source.read_ranges("a.mp4", [(0, 3), (len(old) - 2, len(old) + 5)]) == [old[:3], old[-2:]]

    client.put_object(Bucket=bucket, Key="v/a.mp4", Body=new)
    (current,) = [obj.etag for obj in source.list_objects()]
    with pytest.raises(ChangedSinceProbe) as raised:
        source.download("a.mp4", io.BytesIO(), etag=probed)
    assert f"s3://{bucket}/v/a.mp4" in str(raised.value)
    assert probed in str(raised.value) and current in str(raised.value)
    assert source.local_path("a.mp4", probed) is None

    with pytest.raises(SourceError, match="HTTP 404") as missing:
        source.download("absent.mp4", io.BytesIO(), etag=probed)
    assert not isinstance(missing.value, TransientSourceError | ChangedSinceProbe)


def test_a_stopped_server_is_transient_and_names_no_secret():
    """Nothing listens on the port: after the client's (here two) attempts, every read is a
    TransientSourceError, never a verdict on the object. An endpoint URL with user:password (which the
    config refuses) is a permanent error that never shows them."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    source = S3Source("videos", "v", endpoint_url=endpoint, max_attempts=2, connect_timeout=1)
    started = time.monotonic()
    for read in (
        lambda: source.read_range("a.mp4", 0, 10),
        lambda: source.read_ranges("a.mp4", [(0, 10), (20, 30)]),
        lambda: source.read_all("a.txt"),
        lambda: source.download("a.mp4", io.BytesIO(), etag="abc"),
        lambda: list(source.list_objects()),
    ):
        with pytest.raises(TransientSourceError) as raised:
            read()
        message = str(raised.value)
        assert "s3://videos/v/" in message and "after 2 attempts" in message
    assert time.monotonic() - started < 10

    with_userinfo = endpoint.replace("//", f"//{FAKE_ACCESS_KEY}:{FAKE_SECRET_KEY}@")
    with pytest.raises(SourceError) as raised:
        S3Source("videos", endpoint_url=with_userinfo, max_attempts=1).read_range("a.mp4", 0, 10)
    assert not isinstance(raised.value, TransientSourceError)
    assert FAKE_SECRET_KEY not in str(raised.value) and FAKE_ACCESS_KEY not in str(raised.value)


# A credential_process stands in for the providers whose keys expire (SSO, assumed roles, web identity,
# instance roles): boto3 holds all of them as refreshable credentials. Each call hands out keys that
# expire in 12 minutes, inside the window where boto3 renews them before the next request. Its first
# answer is a key the server refuses, so a read passes only with keys fetched after the client was made.
CREDENTIAL_PROCESS = """
import datetime, json, pathlib, sys
calls = pathlib.Path(sys.argv[1])
n = int(calls.read_text()) + 1 if calls.exists() else 1
calls.write_text(str(n))
key, secret = ("AKIASTALE00000000000", "stale") if n == 1 else (sys.argv[2], sys.argv[3])
expires = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=12)).isoformat()
print(json.dumps({"Version": 1, "AccessKeyId": key, "SecretAccessKey": secret, "Expiration": expires}))
"""

SOURCE_READS = """
import io, json, sys
from longcat.data.s3 import S3Source
source = S3Source("videos", "v", region="us-east-1", endpoint_url=sys.argv[1])
listed = {listed.key: listed.etag for listed in source.list_objects()}
whole = io.BytesIO()
source.download("clip.mp4", whole, etag=listed["clip.mp4"])
print(json.dumps({
    "listed": sorted(listed),
    "range": source.read_range("clip.mp4", 2, 6).hex(),
    "ranges": [part.hex() for part in source.read_ranges("clip.mp4", [(0, 2), (8, 10)])],
    "whole": whole.getvalue().hex(),
}))
"""


def test_reads_use_credentials_that_boto3_refreshes_as_they_near_expiry(s3_endpoint, tmp_path):
    """A job's reads sign with the credentials boto3's chain refreshes (instance role, SSO, web identity
    all expire within hours), not with a copy taken when the job started: a day-long cache job keeps
    reading after its first credentials expire. (s3_endpoint's keys in the environment are what the
    server's start-up check signs with; the server refuses them, which tells it is up.)"""
    import boto3

    keys = ("AKIAFRESH00000000000", "freshSecret/0000000000000000000000000")
    server = RcloneS3(tmp_path / "rclone-s3", keys=keys)
    server.start()
    try:
        data = bytes(range(16))
        setup = boto3.client(
            "s3",
            region_name="us-east-1",
            endpoint_url=server.endpoint,
            aws_access_key_id=keys[0],
            aws_secret_access_key=keys[1],
        )
        setup.create_bucket(Bucket="videos")
        setup.put_object(Bucket="videos", Key="v/clip.mp4", Body=data)

        (tmp_path / "credentials.py").write_text(CREDENTIAL_PROCESS)
        calls = tmp_path / "calls"
        process = f"{sys.executable} {tmp_path / 'credentials.py'} {calls} {keys[0]} {keys[1]}"
        (tmp_path / "aws-config").write_text(f"[profile job]\ncredential_process = {process}\n")
        env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
        env.update(
            AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
            AWS_PROFILE="job",
            AWS_EC2_METADATA_DISABLED="true",
        )
        result = subprocess.run(
            [sys.executable, "-c", SOURCE_READS, server.endpoint],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    reads = json.loads(result.stdout)
    assert reads == {
        "listed": ["clip.mp4"],
        "range": data[2:6].hex(),
        "ranges": [data[0:2].hex(), data[8:10].hex()],
        "whole": data.hex(),
    }
    # The keys made with the client, then fresh ones before each request that follows another (listing,
    # download, one range, then two ranges at once, which may share theirs).
    assert int(calls.read_text()) >= 1 + 4


def test_credentials_in_the_endpoint_url_are_refused_at_config_load():
    config = merge(
        load_yaml(REPO / "config" / "config.yaml"),
        {
            "demo": None,
            "source": {
                "kind": "s3",
                "path": None,
                "bucket": "b",
                "endpoint_url": f"http://{FAKE_ACCESS_KEY}:{FAKE_SECRET_KEY}@127.0.0.1:9000",
            },
        },
    )
    with pytest.raises(ConfigError) as raised:
        settings.load_settings(config)
    message = str(raised.value)
    assert "source.endpoint_url" in message and len(message.splitlines()) == 1
    assert FAKE_SECRET_KEY not in message and FAKE_ACCESS_KEY not in message
    config["source"]["endpoint_url"] = "http://127.0.0.1:9000"
    assert settings.load_settings(config).source.endpoint_url == "http://127.0.0.1:9000"


def test_local_source_checks_the_probed_version(tmp_path):
    _write(tmp_path, "a/clip.mp4", b"first version")
    source = LocalSource(tmp_path)
    (listed,) = source.list_objects()

    assert source.local_path("a/clip.mp4", listed.etag) == str(tmp_path / "a" / "clip.mp4")
    handle = io.BytesIO()
    assert source.download("a/clip.mp4", handle, listed.etag) == len(b"first version")
    assert handle.getvalue() == b"first version"

    _write(tmp_path, "a/clip.mp4", b"second, longer version")
    for read in (
        lambda: source.local_path("a/clip.mp4", listed.etag),
        lambda: source.download("a/clip.mp4", io.BytesIO(), listed.etag),
    ):
        with pytest.raises(
            ChangedSinceProbe, match=rf"clip\.mp4 changed since it was probed: etag {listed.etag}"
        ):
            read()
    with pytest.raises(SourceError, match="absent.mp4") as missing:
        source.local_path("absent.mp4", listed.etag)
    assert not isinstance(missing.value, ChangedSinceProbe | TransientSourceError)


def _hostile_tree(tmp_path):
    """A source root beside an outside folder, linked to in every way a tree can lead out: (root, secret)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    secret = b"root:x:0:0:outside secret\n"
    _write(outside, "passwd", secret)
    _write(outside, "clip.mp4", b"outside video")
    _write(outside, "deep/other.mp4", b"outside video")
    _write(outside, "deep/other.txt", b"outside caption")
    _write(root, "a/clip.mp4", b"video")
    _write(root, "a/clip.txt", b"inside caption")
    _write(root, "b.mp4", b"video")
    (root / "b.txt").symlink_to(outside / "passwd")  # a caption leading out
    (root / "c.mp4").symlink_to(outside / "clip.mp4")  # a video leading out
    (root / "c.txt").symlink_to("a/clip.txt")  # a caption linked inside: an ordinary file
    (root / "escape.mp4").symlink_to("a/../../outside/clip.mp4")  # out through `..`
    (root / "escape.txt").write_text("a caption beside a video linked out")
    (root / "out").symlink_to(outside / "deep", target_is_directory=True)
    (root / "a" / "up").symlink_to("..", target_is_directory=True)  # inside, would list everything again
    (root / "loop1").symlink_to("loop2")
    (root / "loop2").symlink_to("loop1")
    (root / "broken.txt").symlink_to("nothing-here")
    os.mkfifo(root / "fifo.mp4")
    (root / "fifo.txt").write_text("a caption beside a FIFO")
    return root, secret


def test_local_source_reads_nothing_outside_its_root(tmp_path, caplog):
    root, secret = _hostile_tree(tmp_path)
    source = LocalSource(root)

    with caplog.at_level(logging.WARNING, logger="longcat.data.local"):
        listed = {obj.key: obj for obj in source.list_objects()}

    # Links leading out are listed, so their clips are rejected with the reason; nothing under `out`.
    assert sorted(listed) == [
        "a/clip.mp4", "a/clip.txt", "b.mp4", "b.txt", "broken.txt", "c.mp4", "c.txt", "escape.mp4",
        "escape.txt", "fifo.txt", "loop1", "loop2",
    ]  # fmt: skip
    assert listed["c.txt"].size == len(b"inside caption")
    assert source.read_range("c.txt", 0, 100) == b"inside caption"
    refused = dict(source.refused)
    assert refused["b.txt"] == refused["c.mp4"] == refused["escape.mp4"] == "link outside the source"
    assert refused["out"] == "directory link outside the source, not followed"
    assert refused["a/up"] == "directory link to ., listed under its own path"
    assert refused["fifo.mp4"] == "FIFO" and refused["broken.txt"].startswith("link to no file")
    assert "loop1" in refused and "loop2" in refused
    assert f"{len(refused)} entries are not readable files inside the source" in caplog.text
    assert "out (directory link outside the source, not followed)" in caplog.text

    reads = (
        lambda key: source.read_range(key, 0, 100),
        source.read_all,
        source.local_path,
        lambda key: source.download(key, io.BytesIO()),
    )
    for key in ("b.txt", "c.mp4", "escape.mp4"):
        for read in reads:
            with pytest.raises(OutsideSource, match=rf"{key} links outside {root} \(to .*outside") as raised:
                read(key)
            assert isinstance(raised.value, SourceError) and raised.value.reason == "outside_source"
    for key, why in (("broken.txt", "a link to nothing-here"), ("loop1", "Too many levels")):
        with pytest.raises(SourceError, match=why):
            source.read_range(key, 0, 10)
    with pytest.raises(SourceError, match="not a regular file"):
        source.read_range("fifo.mp4", 0, 10)  # a FIFO never blocks a read
    with pytest.raises(OutsideSource):
        source.read_range("../outside/passwd", 0, 100)


def test_a_caption_linking_outside_is_a_reject_and_its_text_goes_nowhere(tmp_path):
    root, secret = _hostile_tree(tmp_path)
    manifest = build_manifest(LocalSource(root)).to_pylist()

    records, _, unanswered = probe_rows(
        LocalSource(root), manifest, workers=2, decode_check=False, max_caption_bytes=MAX_CAPTION_BYTES
    )

    by_key = {record["key"]: record for record in records}
    assert not unanswered and by_key["b.mp4"]["reason"] == by_key["c.mp4"]["reason"] == "outside_source"
    assert by_key["escape.mp4"]["reason"] == "outside_source"
    assert by_key["b.mp4"]["detail"].startswith(f"b.txt links outside {root}")
    assert by_key["c.mp4"]["detail"].startswith(f"c.mp4 links outside {root}")
    assert by_key["a/clip.mp4"]["caption"] == "inside caption" and "fifo.mp4" not in by_key
    assert all(secret.decode().strip() not in str(record) for record in records)


def test_follow_symlinks_reads_outside_links_and_stops_at_loops(tmp_path):
    root, secret = _hostile_tree(tmp_path)
    (tmp_path / "outside" / "deep" / "back").symlink_to("..", target_is_directory=True)
    config = merge(
        load_yaml(REPO / "config" / "config.yaml"),
        {"source": {"kind": "local", "path": str(root), "follow_symlinks": True}},
    )
    source = open_source(settings.load_settings(config).source)

    listed = {obj.key for obj in source.list_objects()}

    assert source.read_all("b.txt") == secret
    assert {"out/other.mp4", "out/other.txt", "b.txt", "c.mp4"} <= listed
    # `back` leads to the directory that holds `deep`, which holds `back`: walked once, never again.
    assert "out/back/passwd" in listed and not any(key.startswith("out/back/deep") for key in listed)
    assert dict(source.refused)["out/back/deep"] == "out again, already walked (a link loop)"
    assert settings.load_settings(load_yaml(REPO / "config" / "config.yaml")).source.follow_symlinks is False


class FlakyS3:
    """An HTTP/1.1 server on loopback that answers GETs of one object from a script of behaviours:
    "ok" (206 with the range and its Content-Range, or 200 with the whole object without a Range;
    connection kept), "ok+close" (the same, then the connection is closed without notice, as an idle
    keep-alive connection ends), "reset:N" (the answer's headers and its first N bytes, then the
    connection reset), "drop" (closed without an answer), or an HTTP status (with an S3 error body that
    echoes the request, as S3's can)."""

    BODY = bytes(range(256)) * 4
    ETAG = "0123456789abcdef"

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        flaky = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                flaky.requests.append((self.headers.get("Authorization"), self.headers.get("Range")))
                behaviour = flaky.script.pop(0) if flaky.script else "ok"
                if behaviour == "drop":
                    self.close_connection = True
                    return
                if behaviour.startswith(("ok", "reset")):
                    requested = self.headers.get("Range")
                    if requested is None:
                        start, end, status = 0, len(flaky.BODY) - 1, 200
                    else:
                        first, last = requested.removeprefix("bytes=").split("-")
                        start, end, status = int(first), int(last or len(flaky.BODY) - 1), 206
                    body = flaky.BODY[start : end + 1]
                else:
                    code = {"500": "InternalError", "403": "AccessDenied"}[behaviour]
                    request = f"{self.path} {self.headers.get('Authorization')}"
                    body = f"<Error><Code>{code}</Code><Request>{request}</Request></Error>".encode()
                    status = int(behaviour)
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(flaky.BODY)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", f'"{flaky.ETAG}"')
                self.end_headers()
                if behaviour.startswith("reset:"):
                    self.wfile.write(body[: int(behaviour.removeprefix("reset:"))])
                    self.wfile.flush()
                    time.sleep(0.1)  # those bytes reach the client before the reset
                    # An RST, not a FIN: the connection reset by the peer mid-body.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                self.wfile.write(body)
                self.close_connection = behaviour == "ok+close"

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def source(self, max_attempts=4, use_obstore=False) -> S3Source:
        """An S3Source on this server, reading on boto3 alone unless `use_obstore`."""
        return S3Source(
            "flaky",
            endpoint_url=self.endpoint,
            region="us-east-1",
            max_attempts=max_attempts,
            use_obstore=use_obstore,
        )


@pytest.fixture
def flaky_s3(monkeypatch):
    """Starts FlakyS3 servers, stopped after the test; reads have credentials to sign with."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET_KEY)
    started = []

    def start(script) -> FlakyS3:
        started.append(FlakyS3(script))
        return started[-1]

    yield start
    for flaky in started:
        flaky.server.shutdown()
        flaky.server.server_close()


def test_object_reads_retry_server_errors_and_dropped_connections(flaky_s3):
    flaky = flaky_s3(["500", "drop", "ok+close", "ok", "ok"])
    source = flaky.source()
    body = FlakyS3.BODY

    assert source.read_range("clip.mp4", 10, 20) == body[10:20]  # 500, dropped, then an answer
    # The kept connection was closed by the server meanwhile: both reads go out again on new ones.
    assert source.read_ranges("clip.mp4", [(0, 4), (1000, 1024)]) == [body[:4], body[1000:]]
    ranges = [requested for _, requested in flaky.requests]
    assert ranges[:3] == ["bytes=10-19"] * 3 and sorted(ranges[3:]) == ["bytes=0-3", "bytes=1000-1023"]
    assert all(auth.startswith("AWS4-HMAC-SHA256 Credential=") for auth, _ in flaky.requests)


def test_object_reads_give_up_naming_the_object_and_no_secret(flaky_s3):
    flaky = flaky_s3(["500"] * 3)
    with pytest.raises(TransientSourceError) as raised:
        flaky.source(max_attempts=3).read_range("a/clip.mp4", 0, 10)
    # The error bodies echo the signed request; the message keeps only their code.
    assert (
        str(raised.value) == "reading s3://flaky/a/clip.mp4 failed after 3 attempts: HTTP 500 InternalError"
    )
    assert len(flaky.requests) == 3

    denied = flaky_s3(["403"])
    with pytest.raises(
        SourceError, match=r"^reading s3://flaky/b\.mp4 failed: HTTP 403 AccessDenied$"
    ) as refused:
        denied.source().read_range("b.mp4", 0, 10)
    assert not isinstance(refused.value, TransientSourceError)
    assert len(denied.requests) == 1  # refusals are not retried


def test_a_download_resumes_from_the_bytes_written_after_a_reset_and_counts_real_attempts(
    flaky_s3, monkeypatch
):
    """A connection reset mid-body, whether any byte of the answer arrived or not: the rest is asked for with
    a Range from the bytes written, at the probed version. A server that resets every answer fails the
    download after the attempts it really had."""
    body = FlakyS3.BODY
    # Reset before any byte of the body arrived: asked for again from the start.
    small = flaky_s3(["reset:0", "ok"])
    handle = io.BytesIO()
    assert small.source(max_attempts=3).download("clip.mp4", handle, etag=FlakyS3.ETAG) == len(body)
    assert handle.getvalue() == body
    assert [requested for _, requested in small.requests] == [None, None]

    monkeypatch.setattr(s3_module, "DOWNLOAD_CHUNK_BYTES", 256)
    large = flaky_s3(["reset:700", "reset:100", "ok"])
    handle = io.BytesIO()
    assert large.source(max_attempts=3).download("clip.mp4", handle, etag=FlakyS3.ETAG) == len(body)
    assert handle.getvalue() == body
    assert [requested for _, requested in large.requests] == [None, "bytes=700-", "bytes=800-"]

    failing = flaky_s3(["reset:300"] * 3)
    with pytest.raises(TransientSourceError) as raised:
        failing.source(max_attempts=3).download("a/clip.mp4", io.BytesIO(), etag=FlakyS3.ETAG)
    assert str(raised.value).startswith(
        "downloading s3://flaky/a/clip.mp4 failed: the connection broke mid-object in each of 3 attempts, "
        "900 bytes written (last: "
    )
    assert len(failing.requests) == 3

    refused = flaky_s3(["drop"] * 2)
    with pytest.raises(TransientSourceError) as raised:
        refused.source(max_attempts=2).download("b.mp4", io.BytesIO())
    assert "failed after 2 attempts" in str(raised.value) and len(refused.requests) == 2


def test_obstore_reads_first_and_boto3_has_the_last_word(flaky_s3, caplog):
    """Ranges are read on obstore (signed, both in flight at once); what obstore cannot read is read on
    boto3, whose answer or error stands: so a 5xx that outlasts obstore's own retries is still retried
    and then transient, a 403 stays permanent, and once boto3 read what obstore could not, the source
    reads on boto3 alone."""
    body = FlakyS3.BODY
    served = flaky_s3([])
    source = served.source(use_obstore=True)
    assert source.read_ranges("clip.mp4", [(0, 4), (1000, 1024)]) == [body[:4], body[1000:]]
    assert sorted(requested for _, requested in served.requests) == ["bytes=0-3", "bytes=1000-1023"]
    assert all(auth.startswith("AWS4-HMAC-SHA256 Credential=") for auth, _ in served.requests)
    assert source.obstore is not None

    denied = flaky_s3(["403", "403"])
    source = denied.source(use_obstore=True)
    with pytest.raises(SourceError) as refused:
        source.read_range("b.mp4", 0, 10)
    assert str(refused.value) == "reading s3://flaky/b.mp4 failed: HTTP 403 AccessDenied"
    assert not isinstance(refused.value, TransientSourceError)
    assert len(denied.requests) == 2 and source.obstore is not None  # one each; refusals are not retried

    failing = flaky_s3(["500"] * (1 + obstore_reads.RETRIES + 2))
    with pytest.raises(TransientSourceError) as raised:
        failing.source(max_attempts=2, use_obstore=True).read_range("a/clip.mp4", 0, 10)
    assert str(raised.value) == (
        "reading s3://flaky/a/clip.mp4 failed after 2 attempts: HTTP 500 InternalError"
    )
    assert len(failing.requests) == 1 + obstore_reads.RETRIES + 2

    recovering = flaky_s3(["500"] * (1 + obstore_reads.RETRIES))
    source = recovering.source(use_obstore=True)
    with caplog.at_level(logging.WARNING, logger="longcat.data.s3"):
        assert source.read_range("clip.mp4", 10, 20) == body[10:20]
    assert source.obstore is None
    assert "obstore could not read s3://flaky/clip.mp4 (GenericError) where boto3 could" in caplog.text
    assert FAKE_ACCESS_KEY not in caplog.text and FAKE_SECRET_KEY not in caplog.text
    assert source.read_range("clip.mp4", 0, 2) == body[:2]
    assert len(recovering.requests) == 1 + obstore_reads.RETRIES + 2


# Each call hands out a new key that expires in 12 minutes, inside boto3's renewal window.
NUMBERED_KEYS = """
import datetime, json, pathlib, sys
calls = pathlib.Path(sys.argv[1])
n = int(calls.read_text()) + 1 if calls.exists() else 1
calls.write_text(str(n))
expires = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=12)).isoformat()
key = {"Version": 1, "AccessKeyId": f"AKIAKEY{n:013d}", "SecretAccessKey": "s", "Expiration": expires}
print(json.dumps(key))
"""


def test_obstore_signs_with_the_keys_boto3_renews(flaky_s3, tmp_path, monkeypatch):
    """obstore asks boto3's chain for keys again once its copy is CREDENTIALS_TTL old (here 1 s, 5 minutes
    in a job), and boto3 renews keys that near their expiry: a day-long job's ranged reads never sign
    with keys that have lapsed."""
    import boto3

    (tmp_path / "keys.py").write_text(NUMBERED_KEYS)
    process = f"{sys.executable} {tmp_path / 'keys.py'} {tmp_path / 'calls'}"
    (tmp_path / "aws-config").write_text(f"[profile job]\ncredential_process = {process}\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_PROFILE", "job")
    monkeypatch.setattr(obstore_reads, "CREDENTIALS_TTL", timedelta(seconds=1))
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # one made earlier holds the earlier profiles
    served = flaky_s3([])
    source = served.source(use_obstore=True)

    assert source.read_range("clip.mp4", 0, 4) == FlakyS3.BODY[:4]
    time.sleep(2)
    assert source.read_range("clip.mp4", 4, 8) == FlakyS3.BODY[4:8]

    first, second = (auth.split("Credential=")[1].split("/")[0] for auth, _ in served.requests)
    assert first.startswith("AKIAKEY") and second.startswith("AKIAKEY") and first != second
    assert source.obstore is not None  # both reads were obstore's


def test_sanitize_blanks_presigned_signatures_and_key_ids():
    url = (
        "https://b.s3.amazonaws.com/k.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAABCDEFGHIJKLMNOP%2F20260101%2Fus-east-1&X-Amz-Signature=abcdef0123456789"
    )
    cleaned = sanitize(f"GET {url} failed")
    assert "abcdef0123456789" not in cleaned and "AKIAABCDEFGHIJKLMNOP" not in cleaned
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in cleaned and "k.mp4" in cleaned
    with_userinfo = sanitize('Could not connect to "http://someone:pass/word@127.0.0.1:9000/b/k.mp4"')
    assert with_userinfo == 'Could not connect to "http://***@127.0.0.1:9000/b/k.mp4"'


def _put_inventory(client, bucket, file_format, rows):
    if file_format == "CSV":
        text = io.StringIO()
        csv.writer(text, quoting=csv.QUOTE_ALL).writerows(rows)
        body = gzip.compress(text.getvalue().encode())
        part = "inventory/data/part-0.csv.gz"
    else:
        columns = ["bucket", "key", "size", "last_modified_date", "e_tag"]
        table = pa.Table.from_pylist([dict(zip(columns, row, strict=True)) for row in rows])
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        body = buffer.getvalue()
        part = "inventory/data/part-0.parquet"
    client.put_object(Bucket=bucket, Key=part, Body=body)
    manifest = {
        "sourceBucket": bucket,
        "fileFormat": file_format,
        "fileSchema": "Bucket, Key, Size, LastModifiedDate, ETag",
        "files": [{"key": part, "size": len(body), "MD5checksum": "0"}],
    }
    client.put_object(Bucket=bucket, Key="inventory/manifest.json", Body=json.dumps(manifest).encode())
    return f"s3://{bucket}/inventory/manifest.json"


@pytest.mark.parametrize("file_format", ["CSV", "Parquet"])
def test_s3_inventory_replaces_listing(s3_bucket, file_format):
    client, bucket = s3_bucket
    # CSV inventories URL-encode keys; Parquet ones do not.
    encoded = "videos/a+b%5B1%5D.mp4" if file_format == "CSV" else "videos/a b[1].mp4"
    rows = [
        [bucket, encoded, "123", "2026-01-02T03:04:05.000Z", "etag1"],
        [
            bucket,
            "videos/a b[1].txt" if file_format == "Parquet" else "videos/a+b%5B1%5D.txt",
            "7",
            "2026-01-02T03:04:05.000Z",
            "etag2",
        ],
        [bucket, "other/skip.mp4", "1", "2026-01-02T03:04:05.000Z", "etag3"],
    ]
    inventory = _put_inventory(client, bucket, file_format, rows)

    source = S3Source(bucket, "videos/", inventory=inventory, client=client)
    manifest = build_manifest(source).to_pylist()

    assert [(row["key"], row["caption_key"], row["size"], row["etag"]) for row in manifest] == [
        ("a b[1].mp4", "a b[1].txt", 123, "etag1")
    ]
    assert manifest[0]["last_modified"].year == 2026


def test_s3_inventory_location_must_be_a_manifest(s3_bucket):
    client, bucket = s3_bucket
    with pytest.raises(SourceError, match="expected s3://BUCKET/.../manifest.json"):
        list(S3Source(bucket, inventory="s3://b/inventory/data.csv", client=client).list_objects())


@pytest.mark.parametrize(
    ("raw", "text", "encoding", "fixups"),
    [
        (b"a red square\n", "a red square", "utf-8", ()),
        ("ünïcödé 視頻".encode(), "ünïcödé 視頻", "utf-8", ()),
        (b"\xef\xbb\xbfwith bom", "with bom", "utf-8", ("bom",)),
        (b"line one\r\nline two\r\n", "line one\nline two", "utf-8", ("crlf",)),
        ("café au lait".encode("latin-1"), "café au lait", "latin-1", ("latin-1",)),
        ("\ufeffutf16 text".encode("utf-16-le"), "utf16 text", "utf-16-le", ("bom",)),
        (b"  \n\t ", "", "utf-8", ("strip",)),
    ],
)
def test_captions_decode_losslessly_and_record_fixups(raw, text, encoding, fixups):
    caption = decode_caption(raw)
    assert (caption.text, caption.encoding, caption.fixups) == (text, encoding, fixups)


def test_long_captions_are_kept_whole():
    long_text = "word " * 5000
    assert decode_caption(long_text.encode()).text == long_text.strip()


def test_chunk_assignment_is_stable_and_spread():
    keys = [f"clip-{index}.mp4" for index in range(400)]
    chunks = [chunk_of(key, 4) for key in keys]
    assert chunks == [chunk_of(key, 4) for key in keys]
    assert {chunks.count(chunk) for chunk in range(4)} <= set(range(70, 130))
