"""Resolution buckets: every clip is resized to cover, then centre-cropped to the bucket closest in aspect."""

import math

from longcat.settings import Frames

# The Wan VAE downsamples 8x spatially and the DiT patchifies 2x2 more.
BUCKET_MULTIPLE = 16


def resolution_buckets(frames: Frames) -> list[tuple[int, int]]:
    """The configured `frames.buckets` as (height, width) pairs, checked.

    Without an explicit list, landscape, portrait and square buckets are derived from
    `frames.resolution` (the short side): about 16:9, 9:16, 4:3, 3:4 and 1:1.
    """
    configured = frames.buckets
    if configured is None:
        return default_buckets(frames.resolution)
    buckets = []
    for position, pair in enumerate(configured):
        if len(pair) != 2:
            raise ValueError(f"frames.buckets[{position}]: expected [height, width], found {pair!r}")
        height, width = int(pair[0]), int(pair[1])
        if height <= 0 or width <= 0 or height % BUCKET_MULTIPLE or width % BUCKET_MULTIPLE:
            raise ValueError(
                f"frames.buckets[{position}]: height and width must be positive multiples of "
                f"{BUCKET_MULTIPLE}, found {height}x{width}"
            )
        buckets.append((height, width))
    if not buckets:
        raise ValueError("frames.buckets: expected at least one [height, width] bucket, found an empty list")
    return buckets


def default_buckets(short_side: int) -> list[tuple[int, int]]:
    """Buckets for about 16:9, 9:16, 4:3, 3:4 and 1:1 around `short_side`, e.g. 480 -> 480x832 for 16:9."""

    def snap(value: float) -> int:
        return max(BUCKET_MULTIPLE, int(round(value / BUCKET_MULTIPLE)) * BUCKET_MULTIPLE)

    short = snap(short_side)
    buckets = []
    # 26/15 is what LongCat-Video calls 16:9 at 480p (480x832); 4:3 gives 480x640.
    for long_over_short in (26 / 15, 4 / 3):
        long = snap(short * long_over_short)
        buckets += [(short, long), (long, short)]
    buckets.append((short, short))
    return buckets


def display_size(width: int, height: int, rotation: float = 0, sample_aspect: float = 1.0) -> tuple[int, int]:
    """The (width, height) a player shows: square pixels, rotation applied."""
    display_width = width * (sample_aspect or 1.0)
    if int(round(rotation)) % 180 == 90:
        return int(round(height)), int(round(display_width))
    return int(round(display_width)), int(round(height))


def closest_bucket(aspect_ratio: float, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The (height, width) bucket whose width/height is closest to `aspect_ratio` (on a log scale)."""
    if not aspect_ratio > 0:
        raise ValueError(f"cannot choose a bucket for the aspect ratio {aspect_ratio!r}")
    target = math.log(aspect_ratio)
    return min(buckets, key=lambda bucket: (abs(math.log(bucket[1] / bucket[0]) - target), bucket))
