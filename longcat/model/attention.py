"""Self- and cross-attention of the LongCat-Video DiT, with the attention kernel in a swappable processor.

The modules own the weights (names as in the reference checkpoint); a processor computes
softmax(q k^T / sqrt(d)) v on tensors laid out [batch, tokens, heads, head_dim]. PyTorch SDPA serves
every device and picks its kernel itself; `sdpa_cudnn` and `sdpa_flash` make it use cuDNN's or its
flash kernel for CUDA half-precision inputs; flash-attn 2 or 3 serves those when the package is installed.
"""

import functools
import importlib
import importlib.util
import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .layers import RMSNormFP32
from .rope import apply_rope

logger = logging.getLogger(__name__)

ATTENTION_BACKENDS = ("sdpa", "sdpa_cudnn", "sdpa_flash", "flash_attn2", "flash_attn3")

_FLASH_MODULES = {"flash_attn2": "flash_attn", "flash_attn3": "flash_attn_interface"}

# SDPA held to one kernel. PyTorch ranks its own flash kernel (FlashAttention-2, written for Ampere) above
# cuDNN's fused attention, which is built for Hopper too; bench/bench_train_gpu.py --attention-kernels
# times each.
_SDPA_KERNELS = {"sdpa_cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa_flash": SDPBackend.FLASH_ATTENTION}


def _half_on_cuda(query: torch.Tensor, key_mask: torch.Tensor | None) -> bool:
    """Inputs the fused kernels take: CUDA, fp16 or bf16, no padding mask (the zero-padded text has none)."""
    return key_mask is None and query.is_cuda and query.dtype in (torch.float16, torch.bfloat16)


class SDPAProcessor:
    """PyTorch scaled_dot_product_attention. As `sdpa` it dispatches to a kernel itself; as `sdpa_cudnn`
    or `sdpa_flash` it runs that kernel where it applies (CUDA half-precision inputs without a mask) and
    lets SDPA choose elsewhere, so that the same model runs on any device."""

    def __init__(self, name: str = "sdpa"):
        self.name = name
        self._kernel = _SDPA_KERNELS.get(name)

    def __call__(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        query, key, value = (tensor.transpose(1, 2) for tensor in (query, key, value))
        if self._kernel is not None and _half_on_cuda(query, key_mask):
            with sdpa_kernel(self._kernel):
                out = F.scaled_dot_product_attention(query, key, value)
        else:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)
        return out.transpose(1, 2)


class FlashAttentionProcessor:
    """flash-attn 2 (`flash_attn`) or 3 (`flash_attn_interface`); other inputs go to SDPA."""

    def __init__(self, name: str):
        self.name = name
        self._flash_attn_func = importlib.import_module(_FLASH_MODULES[name]).flash_attn_func
        self._fallback = SDPAProcessor()

    def __call__(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # Padding masks and float32 are not flash-attn cases; the default text path (zero-padded) has no mask.
        if not _half_on_cuda(query, key_mask):
            return self._fallback(query, key, value, key_mask)
        out = self._flash_attn_func(query, key, value)
        # flash-attn 3 returns (out, softmax_lse) in some releases.
        return out[0] if isinstance(out, tuple) else out


@functools.cache
def flash_attention_available(name: str) -> bool:
    """True when the flash-attn module imports; a broken build (e.g. torch ABI mismatch) counts as absent."""
    module = _FLASH_MODULES[name]
    if importlib.util.find_spec(module) is None:
        return False
    try:
        importlib.import_module(module)
    except ImportError as err:
        logger.warning("%s is installed but does not import (%s); it will not be used", module, err)
        return False
    return True


def make_processor(name: str) -> SDPAProcessor | FlashAttentionProcessor:
    """A processor by name, one of ATTENTION_BACKENDS."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(
            f"unknown attention backend {name!r}: expected one of {', '.join(ATTENTION_BACKENDS)}"
        )
    if name == "sdpa" or name in _SDPA_KERNELS:
        return SDPAProcessor(name)
    if not flash_attention_available(name):
        raise ValueError(
            f"attention backend {name!r} needs the module {_FLASH_MODULES[name]!r}, which is not importable"
        )
    return FlashAttentionProcessor(name)


def best_available_backend(prefer_flash3: bool = True, prefer_flash2: bool = True) -> str:
    """The fastest installed kernel among those allowed, SDPA otherwise."""
    if prefer_flash3 and flash_attention_available("flash_attn3"):
        return "flash_attn3"
    if prefer_flash2 and flash_attention_available("flash_attn2"):
        return "flash_attn2"
    return "sdpa"


class SelfAttention(nn.Module):
    """Fused-qkv self-attention with per-head RMSNorm on q and k, then 3D RoPE.

    With condition tokens (the first `num_cond_tokens`, clean frames for image/video conditioning),
    those attend only among themselves while the noisy tokens attend to all tokens.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = RMSNormFP32(self.head_dim, eps=1e-6)
        self.k_norm = RMSNormFP32(self.head_dim, eps=1e-6)
        self.proj = nn.Linear(dim, dim)
        self.processor = SDPAProcessor()

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], num_cond_tokens: int = 0
    ) -> torch.Tensor:
        batch, num_tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, num_tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.unbind(2)
        cos, sin = (freqs[:, None, :] for freqs in rope)
        query = apply_rope(self.q_norm(query), cos, sin)
        key = apply_rope(self.k_norm(key), cos, sin)
        if num_cond_tokens > 0:
            n = num_cond_tokens
            cond_out = self.processor(query[:, :n], key[:, :n], value[:, :n])
            noisy_out = self.processor(query[:, n:], key, value)
            out = torch.cat([cond_out, noisy_out], dim=1)
        else:
            out = self.processor(query, key, value)
        return self.proj(out.reshape(batch, num_tokens, dim))


class CrossAttention(nn.Module):
    """Attention from video tokens to text tokens: per-head RMSNorm on q and k, no RoPE, no gate.

    Condition tokens (the first `num_cond_tokens`) receive no text: their output is exactly zero.
    `key_mask` [B, L] (True = attend) restricts each sample to its own valid text tokens.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = RMSNormFP32(self.head_dim, eps=1e-6)
        self.k_norm = RMSNormFP32(self.head_dim, eps=1e-6)
        self.processor = SDPAProcessor()

    def _attend(self, x: torch.Tensor, text: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        batch, num_tokens, dim = x.shape
        query = self.q_norm(self.q_linear(x).view(batch, num_tokens, self.num_heads, self.head_dim))
        kv = self.kv_linear(text).view(batch, text.shape[1], 2, self.num_heads, self.head_dim)
        key, value = kv.unbind(2)
        out = self.processor(query, self.k_norm(key), value, key_mask)
        return self.proj(out.reshape(batch, num_tokens, dim))

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        num_cond_tokens: int = 0,
    ) -> torch.Tensor:
        if num_cond_tokens == 0:
            return self._attend(x, text, key_mask)
        noisy_out = self._attend(x[:, num_cond_tokens:], text, key_mask)
        cond_out = noisy_out.new_zeros(x.shape[0], num_cond_tokens, x.shape[2])
        return torch.cat([cond_out, noisy_out], dim=1)
