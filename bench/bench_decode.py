"""Decode pipeline throughput: 6.2 s 720p and 1080p sources -> 93x480x832 RGB, against ffmpeg's own decode.

Both sides run on one core (`-threads 1`): the floor is `ffmpeg -threads 1 -i clip -f null -`, i.e. decoding
every frame and nothing else; ours also selects the planned frames, resizes, crops and converts to RGB
and reads them into a numpy array. Prints one JSON line: clips/s per core for each source and the ratio
(ours / floor in time; the goal is <= 1.3).

    python bench/bench_decode.py                 # 5 s sources, 3 repeats
    python bench/bench_decode.py --seconds 1 --repeats 1   # a quick check
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from longcat.config import REPO_ROOT, load_config
from longcat.data.frames import decode_clip, frame_plan
from longcat.settings import load_settings

SOURCES = {"720p": (1280, 720), "1080p": (1920, 1080)}
# The real job's frame settings (93 frames at 15 fps) with three of its 480p buckets.
FRAMES = replace(
    load_settings(load_config(REPO_ROOT / "config" / "longcat-13b.yaml")).frames,
    buckets=((480, 832), (832, 480), (624, 624)),
)


def make_source(path: Path, width: int, height: int, seconds: float, rate: int = 30) -> None:
    """A camera-like H.264 clip: moving pattern plus temporal noise, so the bitrate is realistic."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi"]
        + ["-i", f"testsrc2=size={width}x{height}:rate={rate}:duration={seconds},noise=alls=12:allf=t"]
        + ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )


def timed(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.2)  # 93 frames at 15 fps
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rate = 30
    result = {"bench": "decode", "seconds": args.seconds, "output": "93x480x832 rgb24", "threads": 1}
    with tempfile.TemporaryDirectory() as scratch:
        for name, (width, height) in SOURCES.items():
            path = Path(scratch, f"{name}.mp4")
            make_source(path, width, height, args.seconds, rate)
            frames = int(round(args.seconds * rate))
            row = {"width": width, "height": height, "fps": rate, "frame_count": frames}
            row |= {"duration": frames / rate, "aspect_ratio": width / height}
            plan = frame_plan(row, FRAMES)

            def floor(path=path):
                subprocess.run(
                    [
                        "ffmpeg",
                        "-nostdin",
                        "-loglevel",
                        "error",
                        "-threads",
                        "1",
                        "-i",
                        str(path),
                        "-f",
                        "null",
                        "-",
                    ],
                    check=True,
                )

            ours_s = timed(lambda path=path, plan=plan: decode_clip(str(path), plan, threads=1), args.repeats)
            floor_s = timed(floor, args.repeats)
            result[name] = {
                "clips_per_s": round(1 / ours_s, 3),
                "floor_clips_per_s": round(1 / floor_s, 3),
                "ratio_to_floor": round(ours_s / floor_s, 3),
                "frames": plan.num_frames,
                "fps": plan.fps,
            }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
