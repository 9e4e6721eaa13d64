"""Which frames of a clip to take, and decoding them with ffmpeg straight into a uint8 array.

One ffmpeg process per clip does all the pixel work: decode, time-based frame selection (`fps` filter),
rotation (ffmpeg applies the display matrix itself), resize to cover the bucket in display aspect,
centre crop, conversion to RGB. Python only reads the raw pipe into one array.

The frames are those the `fps` filter gives for the clip as it plays (edit lists honoured), in order and
unpadded: exactly `ffmpeg -i CLIP -vf fps=RATE`'s frames. A decoder error or a concealed frame before
the last planned frame stops the decode (`-xerror`), and the clip fails with the damage named: damaged
frames are never stored.
"""

import re
import subprocess
import tempfile
from dataclasses import dataclass

import ffmpeg
import numpy as np

from longcat.data.buckets import closest_bucket, display_size, resolution_buckets
from longcat.settings import Frames


class ClipRejected(Exception):
    """A clip that the sampling policy or the decoder cannot turn into a sample; the text is the reason.
    `reason` is its cache failure reason (`longcat.data.rejects.CACHE_FAILURE_REASONS`)."""

    reason = "undecodable"


class DamagedFrames(ClipRejected):
    """Frames the plan keeps did not decode cleanly (a decoder error, or a frame it concealed)."""

    reason = "damaged_frames"


class TooFewFrames(ClipRejected):
    """The clip plays fewer frames than its plan takes."""

    reason = "too_few_frames"


# ffmpeg's own lines when a frame fails to decode or comes out concealed (`-xerror` then stops it).
DAMAGE_LINES = ("corrupt decoded frame", "Error while decoding stream")
# Distinct decoder messages named in a failure's detail.
MESSAGES_SHOWN = 3
_CONTEXT = re.compile(r"^\[([^\]]+?) @ 0x[0-9a-f]+\] ")

# Durations are exact fractions of the container's timescale; a clip of exactly N/fps seconds holds N frames.
DURATION_TOLERANCE_S = 1e-6


@dataclass(frozen=True)
class FramePlan:
    num_frames: int  # frames to decode, 4k+1
    fps: float  # sampling rate, recorded per sample: frames.fps unless the clip is time-stretched
    height: int  # bucket
    width: int
    time_stretch: float = 1.0  # fps over frames.fps: how much faster than real time motion plays


def frame_counts(frames: Frames) -> list[int]:
    """The allowed frame counts, largest first: `num_frames` and `frame_buckets` (each 4k+1 and at most
    `num_frames`: `longcat.settings.Frames` refuses others)."""
    return sorted({frames.num_frames, *frames.frame_buckets}, reverse=True)


def frame_plan(row: dict, frames: Frames) -> FramePlan:
    """The sampling plan of one metadata row (fps, duration, aspect_ratio or size and rotation).

    Frames are taken from the clip's start at exactly `frames.fps` (the model has no fps input, so any
    other rate would teach it motion at the wrong speed). N frames need N / fps seconds of source; a clip
    gets the largest allowed frame count it holds. A source slower than `frames.fps` is still sampled at
    `frames.fps` (ffmpeg repeats frames; time stays right). A clip too short for the smallest count, or
    for `frames.num_frames` when `frames.short_clip` is `reject`, is rejected. Only with `short_clip:
    stretch` may a clip be sampled faster, at N / duration but at most at its own rate and
    `frames.max_stretch` times `frames.fps`; the plan records the factor.
    """
    source_fps = float(row["fps"])
    duration = float(row["duration"])
    if source_fps <= 0 or duration <= 0:
        raise ClipRejected(f"no usable video timing (fps={source_fps}, duration={duration})")

    counts = frame_counts(frames)
    target_fps = frames.fps
    short_clip = frames.short_clip
    if short_clip == "reject":
        counts = counts[:1]
    # The fastest rate a clip may be sampled at: frames.fps, or with `stretch` up to max_stretch times
    # that, but never faster than the source's own frames.
    max_stretch = frames.max_stretch if short_clip == "stretch" else 1.0
    fastest = max(target_fps, min(source_fps, target_fps * max_stretch))
    for num_frames in counts:
        if num_frames / target_fps <= duration + DURATION_TOLERANCE_S:
            fps = target_fps
            break
        if num_frames / duration <= fastest * (1 + DURATION_TOLERANCE_S):
            fps = num_frames / duration
            break
    else:
        needs = f"{counts[-1]} frames at {target_fps:g} fps need {counts[-1] / target_fps:.3f} s"
        if short_clip == "reject":
            needs += " (frames.num_frames, short_clip: reject)"
        elif fastest > target_fps:
            needs += f", {counts[-1] / fastest:.3f} s at most stretched ({fastest / target_fps:.3g}x)"
        else:
            needs += " (the smallest frame bucket)"
        raise ClipRejected(f"{duration:.3f} s at {source_fps:.3g} fps is too short: {needs}")

    bucket_height, bucket_width = closest_bucket(display_aspect_ratio(row), resolution_buckets(frames))
    return FramePlan(
        num_frames=num_frames,
        fps=round(fps, 6),
        height=bucket_height,
        width=bucket_width,
        time_stretch=round(fps / target_fps, 6),
    )


def display_aspect_ratio(row: dict) -> float:
    """Width over height as shown: the probe's `aspect_ratio` (rotation and pixel aspect applied), or,
    without it, the coded size turned by `rotation`."""
    if row.get("aspect_ratio"):
        return float(row["aspect_ratio"])
    width = row.get("coded_width") or row["width"]
    height = row.get("coded_height") or row["height"]
    shown_width, shown_height = display_size(int(width), int(height), float(row.get("rotation") or 0))
    if shown_width <= 0 or shown_height <= 0:
        raise ClipRejected(f"no usable frame size ({width}x{height})")
    return shown_width / shown_height


def decode_clip(source: str, plan: FramePlan, threads: int = 0) -> np.ndarray:
    """Decode the planned frames of `source` (a path or URL) as uint8 RGB, shape [F, H, W, 3].

    Raises DamagedFrames when a decoder error or a concealed frame comes before the last planned frame,
    TooFewFrames when the clip plays fewer frames, and ClipRejected when ffmpeg cannot decode it at all;
    each names what ffmpeg found.
    """
    height, width = plan.height, plan.width
    # Cover the bucket in display aspect (`dar` includes the sample aspect ratio), then crop the centre.
    cover_width = f"max({width},ceil({height}*dar))"
    cover_height = f"max({height},ceil({width}/dar))"
    stream = (
        ffmpeg.input(source, threads=threads)
        .video.filter("fps", fps=f"{plan.fps:.6f}", round="near")
        .filter("scale", w=cover_width, h=cover_height, flags="bicubic")
        .filter("format", "rgb24")
        .filter("setsar", "1")
        .filter("crop", width, height)
        # Passthrough: the fps filter's frames as they are. ffmpeg's default for raw output would pad the
        # start with copies of the first frame when the clip's first frame rounds to after time 0.
        .output("pipe:", format="rawvideo", pix_fmt="rgb24", vframes=plan.num_frames, fps_mode="passthrough")
        .global_args("-nostdin", "-loglevel", "warning", "-xerror")
    )
    frames = np.empty((plan.num_frames, height, width, 3), dtype=np.uint8)
    # ffmpeg's messages go to a file: a damaged stream can log more than a pipe holds while we read frames.
    with tempfile.TemporaryFile() as messages:
        process = subprocess.Popen(stream.compile(), stdout=subprocess.PIPE, stderr=messages)
        # Read straight into the array: no intermediate bytes object, and the array stays writable.
        view, filled = memoryview(frames).cast("B"), 0
        while filled < len(view):
            count = process.stdout.readinto(view[filled:])
            if not count:
                break
            filled += count
        process.stdout.close()
        process.wait()
        messages.seek(0)
        lines = messages.read().decode("utf-8", "replace").splitlines()
    decoded = filled // (height * width * 3)
    if process.returncode != 0 and decoded < plan.num_frames:
        found = _ffmpeg_messages(lines, source) or f"exit status {process.returncode}"
        if any(marker in line for line in lines for marker in DAMAGE_LINES):
            raise DamagedFrames(
                f"{plan.num_frames - decoded} of the {plan.num_frames} planned frames do not decode cleanly "
                f"(ffmpeg stopped at the first damaged frame, after {decoded} clean ones): {found}"
            )
        raise ClipRejected(f"ffmpeg could not decode the clip ({decoded} frames came out): {found}")
    if decoded < plan.num_frames:
        raise TooFewFrames(
            f"the clip plays {decoded} frames at {plan.fps:g} fps ({decoded / plan.fps:.3f} s), the plan "
            f"needs {plan.num_frames} ({plan.num_frames / plan.fps:.3f} s)"
        )
    return frames


def _ffmpeg_messages(lines: list[str], source: str) -> str:
    """ffmpeg's distinct messages as one sentence: each with the component that logged it ("h264: ..."),
    without ffmpeg's repeat notices or the path of the input (a temp file of the job)."""
    found: list[str] = []
    for line in lines:
        line = line.strip().replace(f"{source}: ", "")
        if not line or line.startswith("Last message repeated"):
            continue
        context = _CONTEXT.match(line)
        if context:
            # "NULL" is the demuxer's parser, which has no codec of its own.
            name = context.group(1)
            line = line[context.end() :] if name == "NULL" else f"{name}: {line[context.end() :]}"
        if line not in found:
            found.append(line)
    more = f" (and {len(found) - MESSAGES_SHOWN} more)" if len(found) > MESSAGES_SHOWN else ""
    return "; ".join(found[:MESSAGES_SHOWN]) + more
