"""Frame plans, resolution buckets and ffmpeg decoding, on real clips made with ffmpeg."""

import re
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_clip as make_h264_clip
from conftest import planned

from longcat.config import ConfigError, load_config
from longcat.data.buckets import closest_bucket, default_buckets, resolution_buckets
from longcat.data.frames import ClipRejected, FramePlan, TooFewFrames, decode_clip, frame_counts, frame_plan
from longcat.data.local import LocalSource
from longcat.data.metadata import merge_metadata
from longcat.data.probe import PROBE_SCHEMA, probe_video
from longcat.data.rejects import Reject
from longcat.settings import load_settings

REPO = Path(__file__).resolve().parent.parent

DEFAULTS = load_settings(load_config())
FRAMES = replace(
    DEFAULTS.frames,
    num_frames=17,
    fps=15.0,
    frame_buckets=(17, 9),
    short_clip="fallback",
    resolution=64,
    buckets=((64, 112), (112, 64), (80, 80)),
)


def make_clip(path, size="160x90", rate=30, seconds=2.0, extra=(), source="testsrc2"):
    subprocess.run(
        ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi"]
        + ["-i", f"{source}=size={size}:rate={rate}:duration={seconds}"]
        + ["-pix_fmt", "yuv420p", *extra, str(path)],
        check=True,
    )
    return path


def row(**values):
    base = {"key": "clip.mp4", "width": 160, "height": 90, "fps": 30.0, "frame_count": 60, "duration": 2.0}
    return {**base, **values}


def test_long_clip_is_sampled_at_the_target_rate():
    plan = frame_plan(row(frame_count=300, duration=10.0), FRAMES)
    assert plan == FramePlan(num_frames=17, fps=15.0, height=64, width=112)


def test_short_clip_keeps_the_target_rate_in_a_smaller_bucket():
    # 17 frames at 15 fps need 1.13 s: a 1 s clip at 30 fps is not stretched to fill them, it holds 9.
    plan = frame_plan(row(frame_count=30, duration=1.0), FRAMES)
    assert (plan.num_frames, plan.fps, plan.time_stretch) == (9, 15.0, 1.0)


def test_clip_too_short_falls_to_a_frame_bucket_or_is_rejected():
    assert frame_plan(row(frame_count=24, duration=0.8), FRAMES).num_frames == 9
    with pytest.raises(ClipRejected, match="17 frames at 15 fps need 1.133 s .*short_clip: reject"):
        frame_plan(row(frame_count=24, duration=0.8), replace(FRAMES, short_clip="reject"))
    # 9 frames at 15 fps need 0.6 s, which a 0.5 s clip does not hold, whatever its frame count.
    with pytest.raises(
        ClipRejected, match=r"0.500 s at 30 fps is too short: 9 frames .* smallest frame bucket"
    ):
        frame_plan(row(frame_count=15, duration=0.5), FRAMES)


def test_frame_counts_must_be_4k_plus_1():
    assert frame_counts(replace(FRAMES, num_frames=93, frame_buckets=(61, 93, 29))) == [93, 61, 29]
    with pytest.raises(ConfigError, match=r"^frames.num_frames: expected 4k\+1 .*found 16$"):
        replace(FRAMES, num_frames=16, frame_buckets=())


@pytest.mark.parametrize(
    "frames, line",
    [
        ({"num_frames": 10}, r"^config key frames.num_frames: expected 4k\+1 .*found 10$"),
        ({"frame_buckets": [33, 17]}, r"frames.frame_buckets\[0\]: .* at most .*\(17\), found 33$"),
        ({"frame_buckets": [17, 8]}, r"frames.frame_buckets\[1\]: expected 4k\+1 .*found 8$"),
        ({"fps": 0}, r"frames.fps: expected exclusiveMinimum 0"),
        ({"buckets": [[64, 100]]}, r"frames.buckets\[0\]\[1\]: expected multipleOf 16"),
    ],
)
def test_frame_settings_the_library_would_refuse_are_refused_at_parse_time(tmp_path, frames, line):
    """A dry run stops with one line naming the key, before any clip is probed."""
    import subprocess
    import sys

    import yaml

    override = tmp_path / "frames.yaml"
    override.write_text(yaml.safe_dump({"frames": frames}))
    command = [sys.executable, "-m", "snakemake", "metadata", "-n", "-s", str(REPO / "Snakefile")]
    command += [
        "--directory",
        str(tmp_path),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        str(override),
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    errors = [text for text in (result.stdout + result.stderr).splitlines() if "key frames." in text]
    assert errors and re.search(line, errors[0]), result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_bucket_follows_display_aspect_rotation_included():
    def bucket(**values):
        plan = frame_plan(row(**values), FRAMES)
        return plan.height, plan.width

    assert bucket(aspect_ratio=16 / 9) == (64, 112)
    assert bucket(aspect_ratio=9 / 16) == (112, 64)
    assert bucket(aspect_ratio=1.1) == (80, 80)
    assert bucket(coded_width=160, coded_height=90, rotation=90) == (112, 64)


def test_default_buckets_for_480p():
    buckets = default_buckets(480)
    assert (480, 832) in buckets and (832, 480) in buckets and (480, 480) in buckets
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in buckets)
    assert closest_bucket(1920 / 1080, buckets) == (480, 832)


def test_bad_bucket_is_a_clear_error():
    with pytest.raises(ValueError, match=r"frames.buckets\[1\].*multiples of 16, found 100x64"):
        resolution_buckets(replace(FRAMES, buckets=((64, 112), (100, 64))))


def test_decode_gives_the_planned_frames(tmp_path):
    clip = make_clip(tmp_path / "a.mp4", size="320x180", rate=30, seconds=2)
    plan = frame_plan(row(width=320, height=180), FRAMES)
    frames = decode_clip(str(clip), plan)
    assert frames.shape == (17, 64, 112, 3) and frames.dtype == np.uint8
    # testsrc2 moves every frame: the decoded frames are distinct, not one frame repeated.
    assert len({frames[i].tobytes() for i in range(17)}) == 17


def test_decode_honours_rotation_and_pixel_aspect(tmp_path):
    rotated = make_clip(tmp_path / "r.mp4", size="160x90", extra=("-metadata:s:v:0", "rotate=90"))
    plan = frame_plan(row(coded_width=160, coded_height=90, rotation=90), FRAMES)
    assert decode_clip(str(rotated), plan).shape == (17, 112, 64, 3)

    # 80x90 pixels with a 2:1 pixel aspect display as 160x90: a landscape clip.
    anamorphic = make_clip(tmp_path / "s.mp4", size="80x90", extra=("-vf", "setsar=2/1"))
    plan = frame_plan(row(width=80, height=90, aspect_ratio=160 / 90), FRAMES)
    frames = decode_clip(str(anamorphic), plan)
    assert frames.shape == (17, 64, 112, 3)


def test_crop_keeps_the_centre(tmp_path):
    # A wide clip: left third red, middle green, right blue. Cropped to a square, the centre is green.
    clip = tmp_path / "bars.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-y",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "color=red:size=96x64:d=2:r=30",
        ]
        + [
            "-f",
            "lavfi",
            "-i",
            "color=green:size=96x64:d=2:r=30",
            "-f",
            "lavfi",
            "-i",
            "color=blue:size=96x64:d=2:r=30",
        ]
        + ["-filter_complex", "[0][1][2]hstack=inputs=3", "-pix_fmt", "yuv444p", str(clip)],
        check=True,
    )
    plan = frame_plan(row(width=288, height=64, aspect_ratio=288 / 64), replace(FRAMES, buckets=((80, 80),)))
    frames = decode_clip(str(clip), plan).astype(int)
    red, green, blue = frames[..., 0].mean(), frames[..., 1].mean(), frames[..., 2].mean()
    assert green > 100 and red < 30 and blue < 30


def test_broken_file_is_rejected_with_ffmpeg_reason(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 10)
    with pytest.raises(
        ClipRejected, match=r"ffmpeg could not decode the clip \(0 frames came out\): .*moov atom not found"
    ):
        decode_clip(str(broken), FramePlan(17, 15.0, 64, 112))


def test_clip_shorter_than_its_metadata_is_rejected(tmp_path):
    clip = make_clip(tmp_path / "short.mp4", seconds=0.5)
    with pytest.raises(
        TooFewFrames, match=r"^the clip plays 8 frames at 15 fps \(0.533 s\), the plan needs 17 \(1.133 s\)$"
    ):
        decode_clip(str(clip), FramePlan(17, 15.0, 64, 112))


# ---------------------------------------------------------------- what plays is what is cached

SQUARE = replace(FRAMES, buckets=((64, 64),))
SOURCE_24 = ("-f", "lavfi", "-i", "testsrc2=size=64x64:rate=24:duration=2", "-pix_fmt", "yuv420p")


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def fragmented(directory: Path) -> Path:
    """As streaming and capture tools write it: an empty moov, then a moof per keyframe."""
    path = directory / "fragmented.mp4"
    ffmpeg(*SOURCE_24, "-c:v", "libx264", "-bf", "2", "-movflags", "frag_keyframe+empty_moov", str(path))
    return path


def trimmed(directory: Path) -> Path:
    """Cut at 1.2 s without re-encoding: the samples from the keyframe at 0 s stay; an edit list skips
    them."""
    whole, path = directory / "whole.mp4", directory / "trimmed.mp4"
    ffmpeg(*SOURCE_24, "-c:v", "libx264", "-g", "48", str(whole))
    ffmpeg("-ss", "1.2", "-i", str(whole), "-c", "copy", str(path))
    return path


def remuxed(directory: Path) -> Path:
    """A raw H.264 stream with B-frames put into MP4: no timestamps of its own, its first packets flagged
    discard by the edit list that hides the decoder's delay."""
    raw, path = directory / "clip.h264", directory / "remuxed.mp4"
    ffmpeg(*SOURCE_24, "-c:v", "libx264", "-bf", "3", "-g", "30", "-bsf:v", "h264_mp4toannexb", str(raw))
    ffmpeg("-r", "24", "-i", str(raw), "-c", "copy", str(path))
    return path


def fps_filter_frames(path: Path, count: int) -> np.ndarray:
    """`ffmpeg -vf fps=15`'s first `count` frames of the clip, as RGB."""
    raw = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-vf", "fps=15", "-frames:v", str(count)]
        + ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True,
        capture_output=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, 64, 64, 3)


def ffprobe_duration(path: Path) -> float:
    output = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=duration", "-of", "csv=p=0", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(output)


@pytest.mark.parametrize("make, planned", [(fragmented, 17), (trimmed, 9), (remuxed, 17)])
def test_every_cached_frame_is_ffmpegs_frame_of_the_clip_as_it_plays(tmp_path, make, planned):
    path = make(tmp_path)
    columns, _ = probe_video(LocalSource(tmp_path), path.name, path.stat().st_size, decode_check=True)
    assert columns["duration"] == pytest.approx(ffprobe_duration(path), abs=1e-3)

    plan = frame_plan({**columns, "key": path.name}, SQUARE)
    assert plan.num_frames == planned
    reference = fps_filter_frames(path, plan.num_frames)
    assert len(reference) == plan.num_frames  # the clip plays every frame the plan takes
    frames = decode_clip(str(path), plan)
    for index, (frame, expected) in enumerate(zip(frames, reference, strict=True)):
        assert np.array_equal(frame, expected), f"frame {index} of {path.name} is not ffmpeg's"


def test_damage_past_the_first_picture_fails_the_clip_naming_the_damage(tmp_path):
    from longcat.encoders.decode import decode_row

    clips = tmp_path / "clips"
    path = make_h264_clip(clips / "damaged.mp4", rate=15, seconds=2.0, bitrate="800k")
    size = path.stat().st_size
    columns, _ = probe_video(LocalSource(clips), path.name, size, decode_check=True)
    plan = frame_plan({**columns, "key": path.name}, SQUARE)
    clean = decode_clip(str(path), plan)
    data = bytearray(path.read_bytes())
    data[size // 2 : size // 2 + 3000] = bytes(3000)  # a run of zeros in the middle of the media data
    path.write_bytes(bytes(data))

    damaged, _ = probe_video(LocalSource(clips), path.name, size, decode_check=True)
    assert damaged["num_frames"] == columns["num_frames"]  # the index and the first picture are intact
    row = planned({**damaged, "key": path.name, "frame_count": damaged["num_frames"]}, SQUARE)
    decoded = decode_row(row, SQUARE, LocalSource(clips), threads=1, scratch_dir=tmp_path / "scratch")
    assert decoded.frames is None
    reason, detail = decoded.reason.split(": ", 1)
    assert reason == "damaged_frames", decoded.reason
    assert re.match(r"\d+ of the 17 planned frames do not decode cleanly \(ffmpeg stopped", detail), detail
    assert "h264: " in detail and "Last message repeated" not in detail and str(clips) not in detail
    # Frames ffmpeg would have garbled (a plain decode conceals the damage) are not what was stored.
    garbled = fps_filter_frames(path, plan.num_frames)
    assert any(not np.array_equal(a, b) for a, b in zip(garbled, clean, strict=True))


def test_an_edit_list_that_plays_no_single_span_is_rejected_naming_it(tmp_path):
    path = trimmed(tmp_path)
    data = bytearray(path.read_bytes())
    elst = data.index(b"elst")
    # The one entry's rate (after version/flags, count, duration and media time) set to 2.
    data[elst + 4 + 4 + 4 + 4 + 4 : elst + 4 + 4 + 4 + 4 + 6] = (2).to_bytes(2, "big")
    path.write_bytes(bytes(data))
    with pytest.raises(Reject, match="^edit_list: the edit list plays the video at rate 2$"):
        probe_video(LocalSource(tmp_path), path.name, path.stat().st_size, decode_check=True)


# ---------------------------------------------------------------- the real job's frame settings on real clips


@pytest.fixture(scope="module")
def real_frames():
    """The real job's frame settings (93 frames, buckets [93, 73, 49], 15 fps, schema defaults filled in),
    with one tiny resolution bucket so the clips stay small."""
    frames = load_settings(load_config(REPO / "config" / "longcat-13b.yaml")).frames
    assert (frames.num_frames, frames.frame_buckets, frames.fps) == (93, (93, 73, 49), 15)
    assert frames.short_clip == "fallback"
    return replace(frames, buckets=((48, 64),))


SECONDS = (3.5, 5.0, 6.2, 10.0)
RATES = (24, 25, 30, 60)
# The largest bucket a clip holds at 15 fps: N frames need N/15 s (49: 3.27 s, 73: 4.87 s, 93: 6.2 s).
EXPECTED_BUCKET = {3.5: 49, 5.0: 73, 6.2: 93, 10.0: 93}


@pytest.fixture(scope="module")
def probed_clips(tmp_path_factory):
    """64x48 H.264 clips of each length and rate, and one variable-rate clip (30 fps for 2 s, then 10 fps
    to 5 s), with the probe's columns: {name: (path, probe row)}."""
    directory = tmp_path_factory.mktemp("rates")
    for seconds in SECONDS:
        for rate in RATES:
            make_h264_clip(
                directory / f"{seconds}s-{rate}fps.mp4", width=64, height=48, rate=rate, seconds=seconds
            )
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi"]
        + ["-i", "testsrc2=size=64x48:rate=30:duration=5", "-vf", r"select='lt(t\,2)+not(mod(n\,3))'"]
        + ["-vsync", "vfr", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
        + [str(directory / "vfr.mp4")],
        check=True,
    )
    source = LocalSource(directory)
    clips = {}
    for path in sorted(directory.glob("*.mp4")):
        columns, _ = probe_video(source, path.name, path.stat().st_size, decode_check=True)
        clips[path.name] = (path, {**columns, "key": path.name, "frame_count": columns["num_frames"]})
    return clips


def test_real_clips_take_the_largest_bucket_they_hold_at_exactly_15_fps(probed_clips, real_frames):
    for seconds in SECONDS:
        for rate in RATES:
            _, probed = probed_clips[f"{seconds}s-{rate}fps.mp4"]
            plan = frame_plan(probed, real_frames)
            assert (plan.num_frames, plan.fps, plan.time_stretch) == (EXPECTED_BUCKET[seconds], 15.0, 1.0), (
                f"{seconds} s at {rate} fps (probed {probed['duration']} s)"
            )
    _, vfr = probed_clips["vfr.mp4"]
    assert vfr["fps"] != vfr["fps_real"]  # the average rate is not the stream's nominal rate
    assert frame_plan(vfr, real_frames) == FramePlan(73, 15.0, 48, 64, 1.0)


def test_planned_frames_arrive_at_real_time(probed_clips, real_frames):
    # A 5 s clip at 30 fps holds 73 frames at 15 fps: every second source frame, not a stretched pick.
    path, probed = probed_clips["5.0s-30fps.mp4"]
    plan = frame_plan(probed, real_frames)
    frames = decode_clip(str(path), plan)
    assert frames.shape == (73, 48, 64, 3)
    every_source_frame = decode_clip(str(path), FramePlan(146, 30.0, 48, 64))
    np.testing.assert_array_equal(frames, every_source_frame[::2])
    # Clips of exactly 6.2 s (and the variable-rate one) decode to the full plan too.
    for name in [f"6.2s-{rate}fps.mp4" for rate in RATES] + ["vfr.mp4"]:
        path, probed = probed_clips[name]
        plan = frame_plan(probed, real_frames)
        assert decode_clip(str(path), plan).shape[0] == plan.num_frames, name


def test_stretch_is_opt_in_limited_and_recorded(real_frames):
    stretch = replace(real_frames, short_clip="stretch", max_stretch=1.25)
    five_seconds = row(fps=30.0, frame_count=150, duration=5.0, width=64, height=48)
    assert frame_plan(five_seconds, real_frames).time_stretch == 1.0
    # 93 frames over 5 s: 18.6 fps, 1.24x faster than real time, within 1.25.
    plan = frame_plan(five_seconds, stretch)
    assert (plan.num_frames, plan.fps, plan.time_stretch) == (93, 18.6, 1.24)
    # With at most 1.2x, 93 frames would need 5.17 s: the clip fills 73 at 15 fps instead.
    plan = frame_plan(five_seconds, replace(stretch, max_stretch=1.2))
    assert (plan.num_frames, plan.fps, plan.time_stretch) == (73, 15.0, 1.0)
    # 3 s holds no bucket at 15 fps; 49 frames over 3 s are 16.33 fps (1.09x).
    plan = frame_plan(row(fps=30.0, frame_count=90, duration=3.0), stretch)
    assert (plan.num_frames, plan.time_stretch) == (49, pytest.approx(49 / 3 / 15, abs=1e-6))
    assert plan.fps * 3.0 == pytest.approx(49)
    # Never faster than the source's own frames: a 16 fps source stretches at most 16/15.
    with pytest.raises(ClipRejected, match="too short"):
        frame_plan(row(fps=16.0, frame_count=48, duration=3.0), stretch)
    # A 10 fps source is never stretched: it is sampled at 15 fps (ffmpeg repeats frames).
    plan = frame_plan(row(fps=10.0, frame_count=50, duration=5.0), stretch)
    assert (plan.num_frames, plan.fps, plan.time_stretch) == (73, 15.0, 1.0)


def test_too_short_clip_is_a_recorded_reject_and_stretch_is_a_metadata_column(tmp_path, real_frames):
    clips = tmp_path / "clips"
    for name, seconds in (("long", 5.0), ("short", 3.0)):
        make_h264_clip(clips / f"{name}.mp4", width=64, height=48, rate=30, seconds=seconds)
    source = LocalSource(clips)
    records = []
    for name in ("long.mp4", "short.mp4"):
        columns, probe_bytes = probe_video(source, name, (clips / name).stat().st_size, decode_check=True)
        records.append(
            {"key": name, "etag": name, "size": (clips / name).stat().st_size, "caption": "a test card"}
            | columns
            | {"probe_bytes": probe_bytes}
        )
    manifest, part = tmp_path / "manifest.parquet", tmp_path / "part-000.parquet"
    pq.write_table(pa.table({"key": [record["key"] for record in records]}), manifest)
    pq.write_table(pa.Table.from_pylist(records, schema=PROBE_SCHEMA), part)
    probe = replace(DEFAULTS.probe, min_width=16, min_height=16)

    def merge(frames):
        outputs = (tmp_path / "metadata.parquet", tmp_path / "rejected.parquet")
        tables = merge_metadata(
            manifest, [part], probe, frames, *outputs, failed_rejected_path=tmp_path / "failed.parquet"
        )
        return [{row["key"]: row for row in table.to_pylist()} for table in tables]

    accepted, rejected = merge(real_frames)
    assert (accepted["long.mp4"]["plan_num_frames"], accepted["long.mp4"]["plan_fps"]) == (73, 15.0)
    assert accepted["long.mp4"]["plan_time_stretch"] == 1.0
    assert rejected["short.mp4"]["reason"] == "too_short"
    assert "49 frames at 15 fps need 3.267 s" in rejected["short.mp4"]["detail"]

    accepted, rejected = merge(replace(real_frames, short_clip="stretch"))
    assert not rejected and accepted["long.mp4"]["plan_time_stretch"] == pytest.approx(1.24)
    assert accepted["short.mp4"]["plan_num_frames"] == 49
    assert accepted["short.mp4"]["plan_time_stretch"] == pytest.approx(49 / 3 / 15, abs=1e-6)
