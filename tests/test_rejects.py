"""Every kind of bad input ends in rejected.parquet with its reason; every good clip is accepted."""

import pyarrow.parquet as pq
from conftest import MAX_CAPTION_BYTES, corrupt_first_frame, make_clip, run_snakemake, write_pair

from longcat.data.local import LocalSource


def _cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# The caption of a clip outside the source root, which no table may ever hold.
OUTSIDE_TEXT = "a caption from outside the source root"


def make_bad_inputs(root):
    """A tree with good clips and one file of each reject kind: {key: reason or None}."""
    expected = {}
    for name in ("good moov-at-end", "sub dir/ünï [x] (1)"):
        write_pair(root, name, "a good clip")
        expected[f"{name}.mp4"] = None
    write_pair(root, "good-faststart", "a clip with its index first", faststart=True)
    expected["good-faststart.mp4"] = None
    write_pair(root, "good-bom-crlf", b"\xef\xbb\xbfwindows caption\r\nsecond line\r\n")
    expected["good-bom-crlf.mp4"] = None
    write_pair(root, "good-latin1", "caf\xe9 cr\xe8me".encode("latin-1"))
    expected["good-latin1.mp4"] = None

    (root / "zero.mp4").write_bytes(b"")
    (root / "zero.txt").write_text("empty video")
    expected["zero.mp4"] = "zero_bytes"
    (root / "text.mp4").write_text("this is a text file, not a video\n" * 20)
    (root / "text.txt").write_text("not a video")
    expected["text.mp4"] = "not_a_video"
    write_pair(root, "audio-only", "only sound", video=False)
    expected["audio-only.mp4"] = "no_video_stream"
    _cut_in_half(write_pair(root, "truncated-tail", "index was at the end"))
    expected["truncated-tail.mp4"] = "truncated"
    _cut_in_half(write_pair(root, "truncated-head", "index first, data cut", faststart=True))
    expected["truncated-head.mp4"] = "truncated"
    corrupt_first_frame(write_pair(root, "undecodable", "garbage frames"))
    expected["undecodable.mp4"] = "undecodable"
    write_pair(root, "short", "too few frames", seconds=0.3)
    expected["short.mp4"] = "too_short"
    write_pair(root, "small", "too few pixels", width=32, height=32)
    expected["small.mp4"] = "too_small"
    make_clip(root / "no-caption.mp4")
    expected["no-caption.mp4"] = "missing_caption"
    write_pair(root, "empty-caption", " \r\n\t\n")
    expected["empty-caption.mp4"] = "empty_caption"
    (root / "orphan.txt").write_text("a caption whose video is missing")
    expected["orphan.txt"] = "caption_without_video"

    # Links: one that stays inside the root reads as a plain file; those leading out are never read.
    outside = root.parent / "outside"
    write_pair(outside, "elsewhere", OUTSIDE_TEXT)
    write_pair(root, "caption-linked-out", None)
    (root / "caption-linked-out.txt").symlink_to(outside / "elsewhere.txt")
    expected["caption-linked-out.mp4"] = "outside_source"
    (root / "video-linked-out.mp4").symlink_to(outside / "elsewhere.mp4")
    (root / "video-linked-out.txt").write_text("a caption inside, its video outside")
    expected["video-linked-out.mp4"] = "outside_source"
    (root / "linked-in.mp4").symlink_to("good-faststart.mp4")
    (root / "linked-in.txt").symlink_to("sub dir/ünï [x] (1).txt")
    expected["linked-in.mp4"] = None
    (root / "linked-dir").symlink_to(outside, target_is_directory=True)  # not descended: no rows
    return expected


def test_each_reject_kind_is_recorded_and_good_clips_pass(tmp_path):
    clips = tmp_path / "clips"
    expected = make_bad_inputs(clips)
    workdir = tmp_path / "work"
    config = {
        "source": {"kind": "local", "path": str(clips)},
        "demo": None,
        "probe": {"chunks": 3, "min_width": 48, "min_height": 48},
    }

    run_snakemake(workdir, "metadata", config=config)

    metadata = pq.read_table(workdir / "results" / "metadata.parquet").to_pylist()
    rejected = pq.read_table(workdir / "results" / "rejected.parquet").to_pylist()
    accepted = {row["key"]: row for row in metadata}
    reasons = {row["key"]: row["reason"] for row in rejected}
    assert sorted(accepted) == sorted(key for key, reason in expected.items() if reason is None)
    assert reasons == {key: reason for key, reason in expected.items() if reason}
    assert all(row["detail"] for row in rejected)
    assert OUTSIDE_TEXT not in str(metadata) + str(rejected)
    assert accepted["linked-in.mp4"]["caption"] == "a good clip"

    assert accepted["good-bom-crlf.mp4"]["caption"] == "windows caption\nsecond line"
    assert accepted["good-bom-crlf.mp4"]["caption_fixups"] == "bom,crlf"
    assert accepted["good-latin1.mp4"]["caption"] == "café crème"
    assert accepted["good-latin1.mp4"]["caption_encoding"] == "latin-1"
    for row in metadata:
        assert row["filename"] == row["key"] and row["num_frames"] == row["frame_count"] == 18
        assert row["plan_num_frames"] == 17 and row["width"] == row["height"] == 64
        assert row["plan_fps"] == 15.0 and row["plan_time_stretch"] == 1.0


def test_corrupted_indexes_become_records_not_crashes(tmp_path):
    import random

    from longcat.data.probe import probe_object
    from longcat.data.rejects import REJECT_REASONS

    original = make_clip(tmp_path / "original.mp4").read_bytes()
    rng = random.Random(0)
    rows = []
    for index in range(40):
        data = bytearray(original)
        moov = data.find(b"moov")
        for _ in range(8):
            position = rng.randrange(moov - 4, len(data)) if index % 2 else rng.randrange(len(data))
            data[position] = rng.randrange(256)
        name = f"fuzz-{index}"
        (tmp_path / f"{name}.mp4").write_bytes(bytes(data))
        (tmp_path / f"{name}.txt").write_text("fuzzed")
        rows.append({"key": f"{name}.mp4", "caption_key": f"{name}.txt", "size": len(data), "etag": "e"})

    records = [
        probe_object(LocalSource(tmp_path), row, decode_check=True, max_caption_bytes=MAX_CAPTION_BYTES)
        for row in rows
    ]

    assert all(record["reason"] in (None, *REJECT_REASONS) for record in records)
    assert any(record["reason"] for record in records)
