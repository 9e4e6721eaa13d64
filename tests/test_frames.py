"""Frame plans, resolution buckets and ffmpeg decoding, on real clips made with ffmpeg."""

import subprocess

import numpy as np
import pytest

from longcat.buckets import closest_bucket, default_buckets, resolution_buckets
from longcat.frames import ClipRejected, FramePlan, decode_clip, frame_counts, frame_plan

FRAMES = {"num_frames": 17, "fps": 15, "frame_buckets": [17, 9], "short_clip": "fallback", "resolution": 64}
FRAMES["buckets"] = [[64, 112], [112, 64], [80, 80]]


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


def test_short_clip_is_sampled_evenly_across_its_length():
    # 17 frames at 15 fps need 1.13 s; a 1 s clip at 30 fps is spread over its whole length.
    plan = frame_plan(row(frame_count=30, duration=1.0), FRAMES)
    assert plan.num_frames == 17 and plan.fps == pytest.approx(17.0)


def test_clip_with_too_few_frames_falls_to_a_frame_bucket_or_is_rejected():
    assert frame_plan(row(frame_count=12, duration=0.4), FRAMES).num_frames == 9
    with pytest.raises(ClipRejected, match="short_clip: reject"):
        frame_plan(row(frame_count=12, duration=0.4), {**FRAMES, "short_clip": "reject"})
    with pytest.raises(ClipRejected, match="smallest frame bucket 9"):
        frame_plan(row(frame_count=5, duration=0.2), FRAMES)


def test_frame_counts_must_be_4k_plus_1():
    assert frame_counts({"num_frames": 93, "frame_buckets": [61, 93, 29]}) == [93, 61, 29]
    with pytest.raises(ValueError, match=r"4k\+1, found \[16\]"):
        frame_counts({"num_frames": 16})


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
        resolution_buckets({"buckets": [[64, 112], [100, 64]]})


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
    plan = frame_plan(row(width=288, height=64, aspect_ratio=288 / 64), {**FRAMES, "buckets": [[80, 80]]})
    frames = decode_clip(str(clip), plan).astype(int)
    red, green, blue = frames[..., 0].mean(), frames[..., 1].mean(), frames[..., 2].mean()
    assert green > 100 and red < 30 and blue < 30


def test_broken_file_is_rejected_with_ffmpeg_reason(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 10)
    with pytest.raises(ClipRejected, match="ffmpeg failed"):
        decode_clip(str(broken), FramePlan(17, 15.0, 64, 112))


def test_clip_shorter_than_its_metadata_is_rejected(tmp_path):
    clip = make_clip(tmp_path / "short.mp4", seconds=0.5)
    with pytest.raises(ClipRejected, match="decoded .* frames, the plan needs 17"):
        decode_clip(str(clip), FramePlan(17, 15.0, 64, 112))
