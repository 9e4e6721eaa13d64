"""Small layers of the LongCat-Video DiT: fp32 norms, embedders, SwiGLU feed-forward and the final layer.

Parameter names follow the reference checkpoint; several computations run in float32 whatever the
weights' dtype, as the reference does (norms, AdaLN modulation, timestep embedding, final layer).
"""

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn


def fp32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """Switch autocast off so that explicitly float32 computations stay float32 under an outer autocast."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def linear_fp32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


class LayerNormFP32(nn.LayerNorm):
    """LayerNorm computed in float32, returned in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class RMSNormFP32(nn.Module):
    """RMSNorm over the last dimension, normalised in float32, scaled in the input's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def modulate_fp32(norm: nn.Module, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN: norm(x) * (1 + scale) + shift in float32, back to x's dtype. shift/scale broadcast per frame."""
    normed = norm(x.float())
    return (normed * (scale + 1) + shift).to(x.dtype)


class PatchEmbed3D(nn.Module):
    """Conv3d patchify: [B, C, T, H, W] -> tokens [B, T*(H/ph)*(W/pw), hidden], ordered t, h, w."""

    def __init__(self, patch_size: tuple[int, int, int], in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features (cos | sin) of each timestep, then an MLP; all in float32."""

    def __init__(self, embed_dim: int, frequency_embedding_size: int = 256, max_period: float = 10000.0):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.max_period = max_period
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, embed_dim, bias=True),
            nn.SiLU(),
            nn.Linear(embed_dim, embed_dim, bias=True),
        )

    def sinusoid(self, timesteps: torch.Tensor) -> torch.Tensor:
        half = self.frequency_embedding_size // 2
        exponents = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
        freqs = torch.exp(-math.log(self.max_period) * exponents)
        args = timesteps.float()[:, None] * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.frequency_embedding_size % 2:
            embedding = F.pad(embedding, (0, 1))
        return embedding

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        with fp32_region(timesteps.device):
            hidden = F.silu(linear_fp32(self.mlp[0], self.sinusoid(timesteps)))
            return linear_fp32(self.mlp[2], hidden)


class CaptionEmbedder(nn.Module):
    """Projects text-encoder states to the model width (Linear, tanh-GELU, Linear) in the model's dtype."""

    def __init__(self, caption_channels: int, hidden_size: int):
        super().__init__()
        self.y_proj = nn.Sequential(
            nn.Linear(caption_channels, hidden_size, bias=True),
            nn.GELU(approximate="tanh"),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        return self.y_proj(caption)


def swiglu_hidden_dim(hidden_dim: int, multiple_of: int = 256) -> int:
    """The reference's SwiGLU width: 2/3 of hidden_dim rounded up to a multiple of 256 (16384 -> 11008)."""
    two_thirds = int(2 * hidden_dim / 3)
    return multiple_of * ((two_thirds + multiple_of - 1) // multiple_of)


class FeedForwardSwiGLU(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        inner = swiglu_hidden_dim(hidden_dim)
        self.w1 = nn.Linear(dim, inner, bias=False)
        self.w2 = nn.Linear(inner, dim, bias=False)
        self.w3 = nn.Linear(dim, inner, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class FinalLayerFP32(nn.Module):
    """Per-frame AdaLN (shift, scale), then the patch projection in float32."""

    def __init__(self, hidden_size: int, num_patch: int, out_channels: int, adaln_tembed_dim: int):
        super().__init__()
        self.norm_final = LayerNormFP32(hidden_size, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(hidden_size, num_patch * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(adaln_tembed_dim, 2 * hidden_size, bias=True)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch, num_tokens, channels = x.shape
        num_frames = t.shape[1]
        with fp32_region(x.device):
            modulation = linear_fp32(self.adaLN_modulation[1], F.silu(t.float()))
            shift, scale = modulation.unsqueeze(2).chunk(2, dim=-1)
            x = modulate_fp32(self.norm_final, x.view(batch, num_frames, -1, channels), shift, scale)
            return linear_fp32(self.linear, x.view(batch, num_tokens, channels))
