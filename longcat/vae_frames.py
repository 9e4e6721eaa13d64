"""How the Wan 2.1 VAE counts time, one definition for the config, the caches, the trainer, the
estimate and the pipeline: causal in time, it encodes the first frame alone, then every 4 frames into one
latent frame, so a video of 4k+1 frames has k+1 latent frames, and a clip's first n latent frames are
its first 4(n-1)+1 frames encoded alone."""

from __future__ import annotations

TEMPORAL_COMPRESSION = 4
SPATIAL_COMPRESSION = 8


def is_frame_count(num_frames: int, temporal: int = TEMPORAL_COMPRESSION) -> bool:
    """Whether the VAE takes `num_frames` frames whole: 4k+1 (1, 5, ..., 17, 49, 73, 93)."""
    return num_frames >= 1 and (num_frames - 1) % temporal == 0


def latent_frames(num_frames: int, temporal: int = TEMPORAL_COMPRESSION) -> int:
    """Latent frames of a video of `num_frames` (4k+1) frames."""
    return (num_frames - 1) // temporal + 1


def video_frames(latent_frames: int, temporal: int = TEMPORAL_COMPRESSION) -> int:
    """Video frames behind `latent_frames` latent frames: what they decode to, and what a clip's first
    `latent_frames` latents encode."""
    return (latent_frames - 1) * temporal + 1
