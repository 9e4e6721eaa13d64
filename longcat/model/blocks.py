"""The LongCat-Video transformer block: the unit of activation checkpointing and FSDP sharding."""

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CrossAttention, SelfAttention, make_processor
from .layers import FeedForwardSwiGLU, LayerNormFP32, fp32_region, linear_fp32, modulate_fp32


class LongCatSingleStreamBlock(nn.Module):
    """Per-frame AdaLN self-attention (gated), ungated text cross-attention, per-frame AdaLN SwiGLU (gated).

    The six modulation vectors come from the frame's timestep embedding and are computed in float32;
    the gated residual sums are taken in float32 and returned in the stream's dtype.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, adaln_tembed_dim: int):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(adaln_tembed_dim, 6 * hidden_size, bias=True)
        )
        self.mod_norm_attn = LayerNormFP32(hidden_size, eps=1e-6, elementwise_affine=False)
        self.mod_norm_ffn = LayerNormFP32(hidden_size, eps=1e-6, elementwise_affine=False)
        self.pre_crs_attn_norm = LayerNormFP32(hidden_size, eps=1e-6, elementwise_affine=True)
        self.attn = SelfAttention(hidden_size, num_heads)
        self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.ffn = FeedForwardSwiGLU(hidden_size, int(hidden_size * mlp_ratio))

    def set_attention_backend(self, backend: str) -> None:
        """Attention kernel of this block, one of ATTENTION_BACKENDS."""
        self.attn.processor = make_processor(backend)
        self.cross_attn.processor = make_processor(backend)

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        t: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        text_key_mask: torch.Tensor | None = None,
        num_cond_tokens: int = 0,
    ) -> torch.Tensor:
        """x [B, T*h*w, C]; text [B, L, C]; t [B, T, adaln_tembed_dim] float32; rope (cos, sin) [T*h*w, D]."""
        stream_dtype = x.dtype
        batch, _, channels = x.shape
        per_frame = (batch, t.shape[1], -1, channels)

        with fp32_region(x.device):
            modulation = linear_fp32(self.adaLN_modulation[1], F.silu(t.float())).unsqueeze(2)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=-1)

        x_mod = modulate_fp32(self.mod_norm_attn, x.view(per_frame), shift_msa, scale_msa).view_as(x)
        attn_out = self.attn(x_mod, rope, num_cond_tokens)
        x = (x + (gate_msa * attn_out.view(per_frame)).view_as(x)).to(stream_dtype)

        x = x + self.cross_attn(self.pre_crs_attn_norm(x), text, text_key_mask, num_cond_tokens)

        x_mod = modulate_fp32(self.mod_norm_ffn, x.view(per_frame), shift_mlp, scale_mlp).view_as(x)
        ffn_out = self.ffn(x_mod)
        return (x + (gate_mlp * ffn_out.view(per_frame)).view_as(x)).to(stream_dtype)
