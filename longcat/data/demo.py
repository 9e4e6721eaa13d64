"""Synthetic clips for the demo: small, deterministic, varied, each with a caption that describes it.

ffmpeg's lavfi sources draw the pictures; sizes, frame rates, lengths and the `moov` position vary so
the probe and the frame plan see the cases real data has (portrait, a clip shorter than the frame plan
asks for, different rates). Beside the clips lie a few broken inputs, as real buckets hold them: a
truncated clip, a clip without a caption and a caption without a clip; each ends in `rejected.parquet`
with its reason (shown by the report).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path

import ffmpeg

from longcat.files import write_dir_atomically
from longcat.settings import Demo

log = logging.getLogger(__name__)

# (lavfi source with {w}x{h} size and {rate}, caption)
PATTERNS = [
    (
        "testsrc2=size={w}x{h}:rate={rate}",
        "a colourful test card with a moving gradient and a running counter",
    ),
    ("smptebars=size={w}x{h}:rate={rate}", "vertical SMPTE colour bars above a row of grey and black blocks"),
    (
        "mandelbrot=size={w}x{h}:rate={rate}:start_scale=2",
        "a Mandelbrot fractal slowly zooming in, glowing edges on a dark background",
    ),
    (
        "life=size={w}x{h}:rate={rate}:seed={seed}:mold=10:life_color=white:death_color=#202080",
        "Conway's game of life, white cells growing and dying on a dark blue grid",
    ),
    ("rgbtestsrc=size={w}x{h}:rate={rate}", "three wide vertical stripes in red, green and blue"),
    ("testsrc=size={w}x{h}:rate={rate}", "a test pattern with a colour wheel and a ticking timestamp"),
    (
        "cellauto=size={w}x{h}:rate={rate}:seed={seed}:rule=110",
        "a black and white cellular automaton scrolling upwards",
    ),
    (
        "color=c=blue:size={w}x{h}:rate={rate},drawbox=x='mod(t*40,{w})':y={h}/3:w={h}/3:h={h}/3:c=red:t=fill",
        "a red square moving across a blue background",
    ),
]
# The captions the demo's clips are built from: the fixed corpus of the tiny model's tokenizer.
DEMO_CAPTIONS = tuple(caption for _, caption in PATTERNS)
SIZES = [(128, 72), (96, 96), (72, 128), (160, 96), (112, 64), (64, 112)]
RATES = [24, 25, 30, 15, 12]


# Written into the demo's folder: the demo may replace a folder that holds it, and no other.
DEMO_MARKER = "DEMO_CLIPS"
# 2020-01-01T00:00:00Z: the modification times of the demo's files count from here (stamp_by_content).
CONTENT_EPOCH_NS = 1_577_836_800 * 10**9
# The broken inputs beside the clips, with the reason recorded for each (names that never collide with
# `clip-NNN`): a truncated video, a video without caption and a caption without video.
DEMO_REJECTS = {
    "broken-orphan.txt": "caption_without_video",
    "broken-truncated.mp4": "truncated",
    "broken-uncaptioned.mp4": "missing_caption",
}


@dataclass(frozen=True)
class DemoClip:
    name: str
    source: str
    caption: str
    width: int
    height: int
    rate: int
    seconds: float
    faststart: bool


def plan_clips(demo: Demo) -> list[DemoClip]:
    """The clips the demo makes: the same list for the same (num_clips, seed)."""
    rng = random.Random(demo.seed)
    clips = []
    for index in range(demo.num_clips):
        pattern, caption = PATTERNS[index % len(PATTERNS)]
        # Every third clip is portrait and one clip is shorter than the full frame plan.
        width, height = SIZES[(index + rng.randrange(len(SIZES))) % len(SIZES)]
        if index % 3 == 2 and width > height:
            width, height = height, width
        rate = RATES[rng.randrange(len(RATES))]
        seconds = 0.8 if index == 1 else round(rng.uniform(1.3, 2.4), 1)
        clip_seed = rng.randrange(1 << 16)
        clips.append(
            DemoClip(
                name=f"clip-{index:03d}",
                source=pattern.format(w=width, h=height, rate=rate, seed=clip_seed),
                caption=f"{caption}, {width}x{height} at {rate} frames per second",
                width=width,
                height=height,
                rate=rate,
                seconds=seconds,
                faststart=index % 2 == 0,
            )
        )
    return clips


def encode_clip(clip: DemoClip, path: str | Path) -> None:
    """Encode one clip with ffmpeg (H.264, bit-exact flags and one thread, so the bytes are reproducible)."""
    output_args = {
        "t": clip.seconds,
        "vcodec": "libx264",
        "preset": "ultrafast",
        "pix_fmt": "yuv420p",
        "g": clip.rate,
        "threads": 1,
        "map_metadata": -1,
        "fflags": "+bitexact",
        "flags:v": "+bitexact",
        "an": None,
    }
    if clip.faststart:
        output_args["movflags"] = "+faststart"
    stream = ffmpeg.input(clip.source, f="lavfi").output(str(path), **output_args)
    try:
        stream.overwrite_output().global_args("-nostdin", "-loglevel", "error").run(capture_stderr=True)
    except ffmpeg.Error as error:
        message = (error.stderr or b"").decode("utf-8", "replace").strip()
        raise RuntimeError(f"demo clip {clip.name} ({clip.source}): ffmpeg failed: {message}") from None


def write_broken_inputs(folder: Path) -> list[str]:
    """The inputs of DEMO_REJECTS and a caption for the truncated video, the same
    bytes on every run; returns the names written. The truncated clip keeps its first half: its index
    (`moov`, written last) is gone."""
    clip = DemoClip(
        name="broken",
        source="testsrc2=size=112x64:rate=15",
        caption="a test card whose file was cut in half",
        width=112,
        height=64,
        rate=15,
        seconds=1.5,
        faststart=False,
    )
    encode_clip(clip, folder / "broken-truncated.mp4")
    whole = (folder / "broken-truncated.mp4").read_bytes()
    (folder / "broken-truncated.mp4").write_bytes(whole[: len(whole) // 2])
    (folder / "broken-truncated.txt").write_text(clip.caption + "\n", encoding="utf-8")
    encode_clip(replace(clip, source="smptebars=size=112x64:rate=15"), folder / "broken-uncaptioned.mp4")
    (folder / "broken-orphan.txt").write_text("a caption whose video was never uploaded\n", encoding="utf-8")
    return ["broken-truncated.mp4", "broken-truncated.txt", "broken-uncaptioned.mp4", "broken-orphan.txt"]


def check_demo_folder(path: str | Path) -> None:
    """Refuse a folder that holds anything the demo did not write: the demo replaces its whole folder."""
    path = Path(path)
    if path.is_dir() and any(path.iterdir()) and not (path / DEMO_MARKER).is_file():
        raise ValueError(
            f"config key demo: set, so the demo_clips rule would replace {path} (source.path) with "
            f"synthetic clips, but that folder holds files the demo did not write; set demo: null to "
            "train on them, or point source.path at a new folder for the demo"
        )


def stamp_by_content(folder: Path) -> None:
    """Give every file a modification time derived from its bytes (early January 2020). A local
    object's etag is its size and mtime, so a clip written again byte for byte keeps its etag: more
    demo clips make new shards and leave the existing ones, and their caches, as they are."""
    for path in folder.iterdir():
        digest = hashlib.sha256(path.read_bytes()).digest()
        mtime_ns = CONTENT_EPOCH_NS + int.from_bytes(digest[:6], "big")
        os.utime(path, ns=(mtime_ns, mtime_ns))


def make_demo_clips(out_dir: str | Path, demo: Demo) -> list[DemoClip]:
    """Write NAME.mp4 + NAME.txt for each demo clip, and the broken inputs, into `out_dir`, which
    appears complete or not at all.

    `DEMO_MARKER` in the folder says the demo wrote it (`check_demo_folder`); the source ignores it.
    """
    check_demo_folder(out_dir)
    clips = plan_clips(demo)
    broken = []

    def fill(building: Path) -> None:
        (building / DEMO_MARKER).write_text(f"{demo}\n", encoding="utf-8")
        for clip in clips:
            encode_clip(clip, building / f"{clip.name}.mp4")
            (building / f"{clip.name}.txt").write_text(clip.caption + "\n", encoding="utf-8")
        broken.extend(write_broken_inputs(building))
        stamp_by_content(building)

    write_dir_atomically(out_dir, fill)
    log.info("wrote %d demo clips and %d broken inputs to %s", len(clips), len(broken), out_dir)
    return clips
