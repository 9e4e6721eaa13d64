"""3D rotary position embedding over the (frame, height, width) token grid."""

import torch


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Split a head's channels between the t, h and w axes (44/42/42 for head_dim 128)."""
    if head_dim % 8 != 0:
        raise ValueError(f"3D RoPE needs a head dimension divisible by 8, found {head_dim}")
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def _axis_angles(num_positions: int, dim: int, base: float) -> torch.Tensor:
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    angles = torch.outer(torch.arange(num_positions, dtype=torch.float32), inv_freq)
    # Pairs of adjacent channels share one frequency (GPT-J interleaved layout).
    return angles.repeat_interleave(2, dim=-1)


def rope_cos_sin(
    head_dim: int,
    grid: tuple[int, int, int],
    device: torch.device | str | None = None,
    base: float = 10000.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines for every token of a (T, H, W) grid, float32 [T*H*W, head_dim], row order t, h, w."""
    num_frames, height, width = grid
    dim_t, dim_h, dim_w = rope_axis_dims(head_dim)
    angles_t = _axis_angles(num_frames, dim_t, base)[:, None, None, :].expand(
        num_frames, height, width, dim_t
    )
    angles_h = _axis_angles(height, dim_h, base)[None, :, None, :].expand(num_frames, height, width, dim_h)
    angles_w = _axis_angles(width, dim_w, base)[None, None, :, :].expand(num_frames, height, width, dim_w)
    angles = torch.cat([angles_t, angles_h, angles_w], dim=-1).reshape(num_frames * height * width, head_dim)
    angles = angles.to(device)
    return angles.cos(), angles.sin()


def _rotate_interleaved_pairs(x: torch.Tensor) -> torch.Tensor:
    pairs = x.unflatten(-1, (-1, 2))
    first, second = pairs.unbind(-1)
    return torch.stack((-second, first), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, tokens, heads, head_dim] in float32 by cos, sin [tokens, 1, head_dim]; keep x's dtype."""
    x32 = x.float()
    return (x32 * cos + _rotate_interleaved_pairs(x32) * sin).type_as(x)
