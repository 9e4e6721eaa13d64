"""Header-only probing through bounded range reads, over S3 on loopback and local files."""

import json
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from fractions import Fraction

import pytest
from conftest import MAX_CAPTION_BYTES, corrupt_first_frame, first_video_sample_of, make_clip, write_pair

from longcat.data.decode_check import DECODE_CHECK_BYTES
from longcat.data.local import LocalSource
from longcat.data.manifest import build_manifest
from longcat.data.mp4 import BOX_READ_BYTES, MAX_WALK_BYTES
from longcat.data.probe import (
    HEAD_BYTES,
    TAIL_BYTES,
    check_first_picture,
    probe_object,
    probe_rows,
    probe_video,
    read_video,
)
from longcat.data.rejects import Reject
from longcat.data.s3 import S3Source


class CountingSource(LocalSource):
    """A local source that records every read, to show what probing touches."""

    def __init__(self, root):
        super().__init__(root)
        self.ranges = []
        self.whole = []

    def read_range(self, key, start, end):
        self.ranges.append((key, start, end))
        return super().read_range(key, start, end)

    def read_all(self, key):
        self.whole.append(key)
        return super().read_all(key)


def ffprobe_truth(path):
    output = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output)["streams"][0]


@pytest.mark.parametrize("faststart", [False, True], ids=["moov-at-end", "moov-at-head"])
def test_probe_over_s3_reads_only_the_index_and_first_frame(s3_bucket, tmp_path, faststart):
    client, bucket = s3_bucket
    path = make_clip(
        tmp_path / "clip.mp4", width=320, height=192, rate=30, seconds=4, faststart=faststart, bitrate="2M"
    )
    client.put_object(Bucket=bucket, Key="v/clip.mp4", Body=path.read_bytes())
    size = path.stat().st_size

    columns, bytes_read = probe_video(
        S3Source(bucket, "v/", client=client), "clip.mp4", size, decode_check=True
    )

    truth = ffprobe_truth(path)
    assert (columns["width"], columns["height"]) == (320, 192)
    assert columns["num_frames"] == int(truth["nb_read_frames"]) == 120
    assert columns["fps"] == columns["fps_real"] == 30.0
    assert columns["duration"] == pytest.approx(4.0, abs=0.05)
    assert (columns["codec"], columns["pix_fmt"], columns["rotation"]) == ("h264", "yuv420p", 0)
    assert columns["aspect_ratio"] == pytest.approx(320 / 192)
    assert bytes_read < 0.2 * size, f"read {bytes_read} of {size} bytes"


def test_probe_never_reads_a_whole_video_and_bounds_each_read(tmp_path):
    make_clip(tmp_path / "clip.mp4", width=320, height=192, seconds=3, bitrate="2M")
    (tmp_path / "clip.txt").write_text("a caption")
    source = CountingSource(tmp_path)
    row = build_manifest(source).to_pylist()[0]

    record = probe_object(source, row, decode_check=True, max_caption_bytes=MAX_CAPTION_BYTES)

    assert record["reason"] is None and record["caption"] == "a caption"
    assert source.whole == []
    assert ("clip.txt", 0, len("a caption")) in source.ranges
    video_ranges = [(start, end) for key, start, end in source.ranges if key == "clip.mp4"]
    assert all(end - start <= 64 * 1024 for start, end in video_ranges)
    assert record["probe_bytes"] == sum(min(end, row["size"]) - start for start, end in video_ranges)


@pytest.mark.parametrize("faststart", [False, True], ids=["moov-at-end", "moov-at-head"])
def test_one_round_trip_brings_the_index_and_the_first_picture(tmp_path, faststart):
    # A first picture that does not fit in the head read: the decode check reads only its start.
    path = make_clip(
        tmp_path / "clip.mp4", width=1280, height=720, seconds=1, bitrate="8M", faststart=faststart
    )
    size = path.stat().st_size
    first_offset, first_length = first_video_sample_of(path)
    head = HEAD_BYTES + DECODE_CHECK_BYTES
    assert first_offset + first_length > head
    source = CountingSource(tmp_path)

    columns, bytes_read = probe_video(source, "clip.mp4", size, decode_check=True)

    assert (columns["width"], columns["num_frames"], columns["pix_fmt"]) == (1280, 15, "yuv420p")
    # The head and the tail, read at once; nothing else.
    assert sorted(source.ranges) == [("clip.mp4", 0, head), ("clip.mp4", size - TAIL_BYTES, size)]
    assert bytes_read == head + TAIL_BYTES


def test_a_nal_unit_longer_than_its_sample_is_undecodable(tmp_path):
    path = make_clip(tmp_path / "clip.mp4", width=96, height=64)
    offset, length = first_video_sample_of(path)
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = (length + 100).to_bytes(4, "big")
    path.write_bytes(bytes(data))

    with pytest.raises(Reject) as rejected:
        probe_video(LocalSource(tmp_path), "clip.mp4", len(data), decode_check=True)
    assert rejected.value.reason == "undecodable"
    assert f"claims {length + 100} bytes" in rejected.value.detail


def test_caption_rejects_come_before_the_video_ones(tmp_path):
    corrupt_first_frame(make_clip(tmp_path / "clip.mp4"))
    (tmp_path / "clip.txt").write_text("  \n")
    source = LocalSource(tmp_path)
    row = build_manifest(source).to_pylist()[0]
    assert (
        probe_object(source, row, decode_check=True, max_caption_bytes=MAX_CAPTION_BYTES)["reason"]
        == "empty_caption"
    )
    (tmp_path / "clip.txt").write_text("a caption")
    row = build_manifest(source).to_pylist()[0]
    assert (
        probe_object(source, row, decode_check=True, max_caption_bytes=MAX_CAPTION_BYTES)["reason"]
        == "undecodable"
    )


def test_rotation_swaps_the_shown_aspect(tmp_path):
    plain = make_clip(tmp_path / "plain.mp4", width=96, height=64)
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-i",
            str(plain),
            "-c",
            "copy",
            "-metadata:s:v:0",
            "rotate=90",
            str(tmp_path / "rotated.mp4"),
        ],
        check=True,
    )
    columns, _ = probe_video(
        LocalSource(tmp_path), "rotated.mp4", (tmp_path / "rotated.mp4").stat().st_size, decode_check=True
    )
    assert (columns["width"], columns["height"], columns["rotation"]) == (96, 64, 90)
    assert columns["display_aspect"] == pytest.approx(1.5)
    assert columns["aspect_ratio"] == pytest.approx(64 / 96)


def test_probe_without_decode_check_reads_less(tmp_path):
    # Large enough that the first keyframe is not inside the head read.
    make_clip(tmp_path / "clip.mp4", width=640, height=384, seconds=2, bitrate="8M")
    size = (tmp_path / "clip.mp4").stat().st_size
    with_check, checked_bytes = probe_video(LocalSource(tmp_path), "clip.mp4", size, decode_check=True)
    without, header_bytes = probe_video(LocalSource(tmp_path), "clip.mp4", size, decode_check=False)
    assert header_bytes < checked_bytes
    assert (without["num_frames"], without["width"]) == (with_check["num_frames"], with_check["width"])


def test_the_decode_check_runs_apart_from_the_reads(tmp_path):
    """`read_video` makes the reads (all of them, in the usual layouts); `check_first_picture`, on another
    thread, decodes: the same columns as `probe_video`, or a reject with the bytes the clip cost."""
    make_clip(tmp_path / "clip.mp4", width=96, height=64)
    corrupt_first_frame(make_clip(tmp_path / "broken.mp4", width=96, height=64))
    source = CountingSource(tmp_path)
    size = (tmp_path / "clip.mp4").stat().st_size

    columns, fetched, track = read_video(source, "clip.mp4", size, decode_check=True)
    reads = len(source.ranges)
    assert track is not None and columns["pix_fmt"] is None
    with ThreadPoolExecutor(1) as decoder:
        checked = decoder.submit(check_first_picture, columns, fetched, track).result()
    assert len(source.ranges) == reads
    assert checked == probe_video(LocalSource(tmp_path), "clip.mp4", size, decode_check=True)
    assert checked[0]["pix_fmt"] == "yuv420p"
    assert read_video(source, "clip.mp4", size, decode_check=False)[2] is None

    broken = read_video(source, "broken.mp4", (tmp_path / "broken.mp4").stat().st_size, decode_check=True)
    with pytest.raises(Reject) as rejected:
        check_first_picture(*broken)
    assert rejected.value.reason == "undecodable"
    assert rejected.value.bytes_read == broken[1].bytes_read > 0


def test_the_probe_job_checks_each_clip_on_a_thread_of_its_own(tmp_path, monkeypatch):
    """probe_rows hands each clip's decode check to one thread of its own while its workers read on: the
    records are the ones probe_object makes, a broken first frame a reject with the bytes it cost."""
    import threading

    import longcat.data.probe as probe_module

    for name in ("a", "b", "c"):
        write_pair(tmp_path, name)
    corrupt_first_frame(tmp_path / "b.mp4")
    rows = build_manifest(LocalSource(tmp_path)).to_pylist()
    checked_on = []

    def decoded_pixel_format(fetched, track):
        checked_on.append(threading.current_thread().name)
        return real(fetched, track)

    real = probe_module.decoded_pixel_format
    expected = [
        probe_object(LocalSource(tmp_path), row, decode_check=True, max_caption_bytes=MAX_CAPTION_BYTES)
        for row in rows
    ]
    monkeypatch.setattr(probe_module, "decoded_pixel_format", decoded_pixel_format)
    records, probed, unanswered = probe_rows(
        LocalSource(tmp_path), rows, workers=2, decode_check=True, max_caption_bytes=MAX_CAPTION_BYTES
    )

    assert (probed, unanswered) == (3, [])
    assert len(checked_on) == 3 and all(name.startswith("probe-check") for name in checked_on)
    assert records == expected
    assert [record["reason"] for record in records] == [None, "undecodable", None]
    assert records[1]["probe_bytes"] > 0


def test_records_are_reused_by_etag_and_reprobed_when_it_changes(tmp_path):
    for name in ("a", "b"):
        make_clip(tmp_path / f"{name}.mp4")
        (tmp_path / f"{name}.txt").write_text(f"clip {name}")
    source = CountingSource(tmp_path)
    rows = build_manifest(source).to_pylist()

    first, probed, _ = probe_rows(
        source, rows, workers=2, decode_check=True, max_caption_bytes=MAX_CAPTION_BYTES
    )
    assert probed == 2 and [r["reason"] for r in first] == [None, None]

    source.ranges.clear()
    again, probed, _ = probe_rows(
        source, rows, previous=first, workers=2, decode_check=True, max_caption_bytes=MAX_CAPTION_BYTES
    )
    assert probed == 0 and again == first and source.ranges == []

    changed = [dict(rows[0], etag="new-etag"), rows[1]]
    _, probed, _ = probe_rows(
        source, changed, previous=first, workers=2, decode_check=True, max_caption_bytes=MAX_CAPTION_BYTES
    )
    assert probed == 1 and {key for key, _, _ in source.ranges} == {"a.mp4", "a.txt"}


@pytest.mark.parametrize("rate", ["24", "30000/1001", "12"])
def test_index_facts_match_ffprobe(tmp_path, rate):
    path = tmp_path / "clip.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size=112x64:rate={rate}",
            "-t",
            "1.5",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-vf",
            "setsar=4/3",
            str(path),
        ],
        check=True,
    )
    columns, _ = probe_video(LocalSource(tmp_path), "clip.mp4", path.stat().st_size, decode_check=True)

    truth = ffprobe_truth(path)
    assert columns["num_frames"] == int(truth["nb_frames"]) == int(truth["nb_read_frames"])
    assert columns["fps"] == pytest.approx(float(Fraction(truth["avg_frame_rate"])))
    assert columns["fps_real"] == pytest.approx(float(Fraction(truth["r_frame_rate"])))
    assert columns["duration"] == pytest.approx(float(truth["duration"]), abs=1e-3)
    assert columns["display_aspect"] == pytest.approx(112 * 4 / 3 / 64)
    assert columns["pix_fmt"] == truth["pix_fmt"]


def test_changing_the_chunk_count_reuses_the_stored_records(tmp_path):
    from longcat.data.manifest import write_manifest
    from longcat.data.metadata import probe_chunk
    from longcat.paths import chunk_id

    clips = tmp_path / "clips"
    for index in range(6):
        make_clip(clips / f"clip {index}.mp4", seconds=0.5)
        (clips / f"clip {index}.txt").write_text(f"clip {index}")
    source = CountingSource(clips)
    manifest = tmp_path / "manifest.parquet"
    write_manifest(source, manifest, tmp_path / "unpaired.parquet")
    store = tmp_path / "store"
    for chunks in (2, 3):
        source.ranges.clear()
        for chunk in map(chunk_id, range(chunks)):
            out = tmp_path / f"parts-{chunks}" / f"part-{chunk}.parquet"
            store_part = store / f"part-{chunk}.parquet"
            probe_chunk(
                source,
                manifest,
                chunk,
                chunks,
                out,
                store_part,
                workers=8,
                decode_check=True,
                max_caption_bytes=MAX_CAPTION_BYTES,
            )
        probed = {key for key, _, _ in source.ranges if key.endswith(".mp4")}
        assert len(probed) == (6 if chunks == 2 else 0)


def _encode(path, encoder, pix_fmt="yuv420p"):
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=10"]
        + ["-t", "1", "-c:v", encoder, "-pix_fmt", pix_fmt, str(path)],
        check=True,
    )
    return path


# H.264 and HEVC decode from the index's codec configuration; the rest through FFmpeg's demuxer.
@pytest.mark.parametrize(
    ("encoder", "pix_fmt", "codec", "decoded_pix_fmt"),
    [
        ("libx264", "yuv420p", "h264", "yuv420p"),
        ("libx265", "yuv420p", "hevc", "yuv420p"),
        ("libvpx-vp9", "yuv420p", "vp9", "yuv420p"),
        ("mjpeg", "yuvj420p", "mjpeg", "yuvj420p"),
    ],
)
def test_decode_check_decodes_the_first_frame_of_each_codec(
    tmp_path, encoder, pix_fmt, codec, decoded_pix_fmt
):
    path = _encode(tmp_path / "clip.mp4", encoder, pix_fmt)
    columns, _ = probe_video(LocalSource(tmp_path), "clip.mp4", path.stat().st_size, decode_check=True)
    assert (columns["codec"], columns["pix_fmt"]) == (codec, decoded_pix_fmt)
    assert (columns["width"], columns["height"], columns["num_frames"]) == (96, 64, 10)


@pytest.mark.parametrize("encoder", ["libx264", "libx265", "mpeg4"])
def test_a_garbled_first_frame_is_undecodable(tmp_path, encoder):
    path = _encode(tmp_path / "clip.mp4", encoder)
    corrupt_first_frame(path)
    with pytest.raises(Reject) as rejected:
        probe_video(LocalSource(tmp_path), "clip.mp4", path.stat().st_size, decode_check=True)
    assert rejected.value.reason == "undecodable"
    assert "first" in rejected.value.detail
    _, header_bytes = probe_video(LocalSource(tmp_path), "clip.mp4", path.stat().st_size, decode_check=False)
    assert header_bytes > 0


def _encode_as(path, fmt, *codec, seconds=1.2, size="96x64", rate=15):
    """A clip in container `fmt` (FFmpeg's muxer name), whatever the file is called."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}"]
        + ["-t", str(seconds), *codec, "-pix_fmt", "yuv420p", "-f", fmt, str(path)],
        check=True,
    )
    return path


VP9 = ("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8")
H264 = ("-c:v", "libx264", "-preset", "ultrafast")


def test_a_vp9_webm_named_mp4_is_probed_by_ffmpeg_and_decodes_for_the_cache(tmp_path):
    from longcat.config import load_config
    from longcat.data.frames import decode_clip, frame_plan
    from longcat.data.metadata import METADATA_SCHEMA
    from longcat.settings import load_settings

    path = _encode_as(tmp_path / "clip.mp4", "webm", *VP9, seconds=1.4)
    (tmp_path / "clip.txt").write_text("a webm")
    make_clip(tmp_path / "real.mp4")
    (tmp_path / "real.txt").write_text("an mp4")
    source = CountingSource(tmp_path)
    records, _, _ = probe_rows(
        source,
        build_manifest(source).to_pylist(),
        workers=2,
        decode_check=True,
        max_caption_bytes=MAX_CAPTION_BYTES,
    )
    webm, mp4 = records

    assert webm["reason"] is None, webm["detail"]
    assert (webm["container"], webm["codec"], webm["pix_fmt"]) == ("matroska,webm", "vp9", "yuv420p")
    assert (webm["width"], webm["height"], webm["fps"], webm["num_frames"]) == (96, 64, 15.0, 21)
    assert webm["duration"] == pytest.approx(1.4, abs=0.01)
    assert webm["probe_bytes"] == path.stat().st_size  # a small clip is read once, whole
    assert (mp4["reason"], mp4["container"], mp4["codec"]) == (None, "mp4", "h264")
    assert "container" in METADATA_SCHEMA.names

    frames = replace(
        load_settings(load_config()).frames, num_frames=17, frame_buckets=(), buckets=((48, 64),)
    )
    plan = frame_plan(webm, frames)
    assert decode_clip(str(path), plan).shape == (17, 48, 64, 3)


@pytest.mark.parametrize(("fmt", "name"), [("mpegts", "mpegts"), ("avi", "avi")])
def test_mpeg_ts_and_avi_are_accepted_with_their_container(tmp_path, fmt, name):
    path = _encode_as(tmp_path / "clip.mp4", fmt, *H264)
    columns, bytes_read = probe_video(
        LocalSource(tmp_path), "clip.mp4", path.stat().st_size, decode_check=True
    )
    assert (columns["container"], columns["codec"], columns["pix_fmt"]) == (name, "h264", "yuv420p")
    assert (columns["width"], columns["height"], columns["fps"], columns["num_frames"]) == (96, 64, 15.0, 18)
    assert columns["duration"] == pytest.approx(1.2, abs=0.01)
    assert columns["display_aspect"] == pytest.approx(1.5)
    assert bytes_read == path.stat().st_size


def test_bytes_no_demuxer_reads_and_audio_only_containers_are_rejected(tmp_path):
    import random

    (tmp_path / "noise.mp4").write_bytes(random.Random(0).randbytes(300_000))
    (tmp_path / "text.mp4").write_text("this is a text file, not a video\n" * 20)
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=0.5"]
        + ["-c:a", "libopus", "-f", "webm", str(tmp_path / "sound.mp4")],
        check=True,
    )
    source = LocalSource(tmp_path)
    for name, reason in [("noise", "not_a_video"), ("text", "not_a_video"), ("sound", "no_video_stream")]:
        with pytest.raises(Reject) as rejected:
            probe_video(source, f"{name}.mp4", (tmp_path / f"{name}.mp4").stat().st_size, decode_check=True)
        assert rejected.value.reason == reason, rejected.value.detail


def test_the_fallback_probe_reads_at_most_its_bound(tmp_path, monkeypatch):
    from longcat.data import container

    monkeypatch.setattr(container, "FALLBACK_PROBE_BYTES", 300_000)
    for fmt in ("matroska", "mpegts"):
        _encode_as(tmp_path / f"{fmt}.mp4", fmt, *H264, "-b:v", "4M", seconds=4, size="320x240", rate=25)
    source = CountingSource(tmp_path)

    size = (tmp_path / "matroska.mp4").stat().st_size
    columns, bytes_read = probe_video(source, "matroska.mp4", size, decode_check=True)
    assert size > 3 * 300_000 and bytes_read <= 300_000
    assert (columns["container"], columns["num_frames"], columns["duration"]) == ("matroska,webm", 100, 4.0)
    assert bytes_read == sum(end - start for _, start, end in source.ranges)

    # MPEG-TS states no duration: FFmpeg reads the timestamps at the end, past the bound here.
    source.ranges.clear()
    with pytest.raises(Reject) as rejected:
        probe_video(source, "mpegts.mp4", (tmp_path / "mpegts.mp4").stat().st_size, decode_check=True)
    assert rejected.value.reason == "undecodable"
    assert "needs more than the first 300000 bytes" in rejected.value.detail
    assert rejected.value.bytes_read == sum(end - start for _, start, end in source.ranges) <= 300_000


def test_a_webm_over_s3(s3_bucket, tmp_path):
    client, bucket = s3_bucket
    path = _encode_as(tmp_path / "clip.mp4", "webm", *VP9)
    client.put_object(Bucket=bucket, Key="v/clip.mp4", Body=path.read_bytes())
    columns, _ = probe_video(
        S3Source(bucket, "v/", client=client), "clip.mp4", path.stat().st_size, decode_check=True
    )
    assert (columns["container"], columns["codec"], columns["width"], columns["num_frames"]) == (
        "matroska,webm",
        "vp9",
        96,
        18,
    )


def test_many_small_boxes_before_the_index_are_walked(tmp_path):
    # 200 `free` boxes between ftyp and mdat, the index at the end: the walk is bounded by bytes read,
    # not by a count of boxes.
    path = make_clip(tmp_path / "plain.mp4", width=96, height=64, faststart=False)
    data = path.read_bytes()
    ftyp_length = struct.unpack(">I", data[:4])[0]
    padded = data[:ftyp_length] + struct.pack(">I4s", 8, b"free") * 200 + data[ftyp_length:]
    (tmp_path / "clip.mp4").write_bytes(padded)
    source = CountingSource(tmp_path)

    columns, bytes_read = probe_video(source, "clip.mp4", len(padded), decode_check=False)

    assert (columns["width"], columns["height"], columns["num_frames"]) == (96, 64, 18)
    assert columns["duration"] == pytest.approx(1.2, abs=0.05)
    assert bytes_read <= len(padded) and len(source.ranges) <= 3


def test_a_walk_past_its_byte_budget_stops_as_truncated(tmp_path):
    # Boxes of BOX_READ_BYTES each, more than the walk may read, before any index.
    box = struct.pack(">I4s", BOX_READ_BYTES, b"free") + bytes(BOX_READ_BYTES - 8)
    data = struct.pack(">I4s4sI", 16, b"ftyp", b"isom", 0) + box * (MAX_WALK_BYTES // BOX_READ_BYTES + 4)
    (tmp_path / "clip.mp4").write_bytes(data)
    source = CountingSource(tmp_path)

    with pytest.raises(Reject) as rejected:
        probe_video(source, "clip.mp4", len(data), decode_check=False)

    assert rejected.value.reason == "truncated" and "no moov box" in rejected.value.detail
    assert sum(end - start for _, start, end in source.ranges) <= MAX_WALK_BYTES + 3 * BOX_READ_BYTES


def test_a_huge_caption_is_read_up_to_the_limit_and_cut_at_a_character(tmp_path):
    make_clip(tmp_path / "clip.mp4", width=96, height=64)
    caption = ("ünïcödé " * 400_000).encode()  # 4 MB; the limit falls inside a two-byte character
    (tmp_path / "clip.txt").write_bytes(caption)
    source = CountingSource(tmp_path)
    row = build_manifest(source).to_pylist()[0]
    limit = 997  # 83 repeats of 12 bytes, and the first byte of the next "ü"

    record = probe_object(source, row, decode_check=False, max_caption_bytes=limit)

    assert record["reason"] is None and source.whole == []
    assert [(start, end) for key, start, end in source.ranges if key == "clip.txt"] == [(0, limit)]
    assert caption.decode().startswith(record["caption"])
    assert len(record["caption"].encode()) == limit - 2  # without the cut "ü" and the trailing space
    assert record["caption_fixups"] == f"truncated from {len(caption)} to {limit} bytes,strip"
    assert record["caption_encoding"] == "utf-8"


def test_a_caption_within_the_limit_is_kept_whole(tmp_path):
    make_clip(tmp_path / "clip.mp4", width=96, height=64)
    (tmp_path / "clip.txt").write_text("a red square, ünïcödé")
    source = CountingSource(tmp_path)
    row = build_manifest(source).to_pylist()[0]

    record = probe_object(
        source, row, decode_check=False, max_caption_bytes=len("a red square, ünïcödé".encode())
    )

    assert (record["caption"], record["caption_fixups"]) == ("a red square, ünïcödé", "")


def test_a_changed_caption_limit_probes_only_the_clips_it_cuts_differently(tmp_path):
    write_pair(tmp_path, "short", caption="short", width=96, height=64)
    write_pair(tmp_path, "long", caption="long " * 100, width=96, height=64)
    source = LocalSource(tmp_path)
    rows = build_manifest(source).to_pylist()

    first, probed, _ = probe_rows(source, rows, workers=2, decode_check=False, max_caption_bytes=100)
    assert probed == 2
    _, probed, _ = probe_rows(source, rows, first, workers=2, decode_check=False, max_caption_bytes=100)
    assert probed == 0
    again, probed, _ = probe_rows(source, rows, first, workers=2, decode_check=False, max_caption_bytes=200)
    assert probed == 1
    assert {record["caption_fixups"] for record in again} == {"", "truncated from 500 to 200 bytes,strip"}
