"""Write sampled frames as H.264 mp4 through ffmpeg."""

from __future__ import annotations

from pathlib import Path

import ffmpeg
import numpy as np
import torch

from longcat.files import atomic_path


def frames_to_uint8(frames) -> np.ndarray:
    """`[F, H, W, 3]` frames (float in [0, 1] or uint8; numpy or torch) as a contiguous uint8 array."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().float().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected [F, H, W, 3], found {list(frames.shape)}")
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(frames)


def write_mp4(frames, path: str | Path, fps: float = 15) -> Path:
    """Encode `[F, H, W, 3]` frames as libx264 yuv420p at `fps`; the file appears complete or not at all."""
    frames = frames_to_uint8(frames)
    num_frames, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"frames: yuv420p needs even height and width, found {height}x{width}")
    path = Path(path)
    with atomic_path(path, suffix=".mp4") as tmp:
        process = (
            ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=fps)
            .output(str(tmp), vcodec="libx264", pix_fmt="yuv420p", r=fps, movflags="+faststart")
            .global_args("-loglevel", "error", "-nostdin")
            .overwrite_output()
            .run_async(pipe_stdin=True, pipe_stderr=True)
        )
        _, stderr = process.communicate(input=frames.tobytes())
        if process.returncode != 0:
            raise RuntimeError(
                f"ffmpeg failed writing {path} ({num_frames} frames {width}x{height}): "
                f"{stderr.decode(errors='replace').strip()}"
            )
    return path
