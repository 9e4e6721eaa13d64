"""LongCatVideoTransformer3DModel: the LongCat-Video text-to-video DiT (13.6B at the published config).

Same parameter names, shapes and forward computation as the reference implementation, so that the
published `dit/` checkpoint loads strictly and the outputs agree. Plain PyTorch and diffusers mixins:
activation checkpointing per block through diffusers' mechanism, no distribution code (FSDP is applied
from outside, one `LongCatSingleStreamBlock` per unit).

The model casts its own inputs to the weights' dtype and hands each block float32 timestep embeddings
and RoPE tables on purpose. Under FSDP2 mixed precision use `MixedPrecisionPolicy(...,
cast_forward_inputs=False)`: casting those block inputs to bf16 drifts from the reference (about 1% here).
"""

import logging
import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .attention import ATTENTION_BACKENDS, best_available_backend
from .blocks import LongCatSingleStreamBlock
from .layers import CaptionEmbedder, FinalLayerFP32, PatchEmbed3D, TimestepEmbedder
from .rope import rope_axis_dims, rope_cos_sin

logger = logging.getLogger(__name__)

# diffusers' own backend names, accepted for convenience.
_BACKEND_ALIASES = {"native": "sdpa", "flash": "flash_attn2", "_flash_3": "flash_attn3"}


class LongCatVideoTransformer3DModel(ModelMixin, ConfigMixin):
    """Video DiT: patch embed, per-frame timestep embedding, caption projection, N blocks, final layer.

    The constructor accepts every key of the published `dit/config.json`. Attention flags choose the
    kernel (flash-attn 3 or 2 when installed, PyTorch SDPA otherwise); `cp_split_hw` must be null or
    [1, 1] (no context parallelism inside the model) and block-sparse attention (`enable_bsa`) is not
    supported.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["LongCatSingleStreamBlock"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 16,
        out_channels: int = 16,
        hidden_size: int = 4096,
        depth: int = 48,
        num_heads: int = 32,
        caption_channels: int = 4096,
        mlp_ratio: float = 4,
        adaln_tembed_dim: int = 512,
        frequency_embedding_size: int = 256,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        enable_flashattn3: bool = False,
        enable_flashattn2: bool = False,
        enable_xformers: bool = False,
        enable_bsa: bool = False,
        bsa_params: dict | None = None,
        cp_split_hw: list[int] | None = None,
        text_tokens_zero_pad: bool = False,
    ):
        super().__init__()
        patch_size = tuple(patch_size)
        _check_architecture(hidden_size, num_heads, patch_size, enable_bsa, cp_split_hw)
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.head_dim = hidden_size // num_heads
        self.text_tokens_zero_pad = text_tokens_zero_pad

        self.x_embedder = PatchEmbed3D(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(adaln_tembed_dim, frequency_embedding_size)
        self.y_embedder = CaptionEmbedder(caption_channels, hidden_size)
        self.blocks = nn.ModuleList(
            LongCatSingleStreamBlock(hidden_size, num_heads, mlp_ratio, adaln_tembed_dim)
            for _ in range(depth)
        )
        self.final_layer = FinalLayerFP32(hidden_size, math.prod(patch_size), out_channels, adaln_tembed_dim)
        self.gradient_checkpointing = False

        backend = best_available_backend(prefer_flash3=enable_flashattn3, prefer_flash2=enable_flashattn2)
        if (enable_flashattn3 or enable_flashattn2 or enable_xformers) and backend == "sdpa":
            logger.info("the configured attention kernel is not installed; using PyTorch SDPA (same result)")
        self.set_attention_backend(backend)

    @property
    def attention_backend(self) -> str:
        return self.blocks[0].attn.processor.name if len(self.blocks) else "sdpa"

    def set_attention_backend(self, backend: str) -> None:
        """Attention kernel for every block, one of ATTENTION_BACKENDS. Weights are untouched."""
        backend = _BACKEND_ALIASES.get(backend, backend)
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"unknown attention backend {backend!r}: expected one of {', '.join(ATTENTION_BACKENDS)}"
            )
        for block in self.blocks:
            block.set_attention_backend(backend)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        num_cond_latents: int | torch.Tensor = 0,
    ) -> torch.Tensor:
        """Predict x0 - noise for noisy latents.

        hidden_states [B, C_in, T, H, W] (H, W even); timestep [B] or per latent frame [B, T], in [0, 1000];
        encoder_hidden_states [B, 1, L, C_text] or [B, L, C_text]; encoder_attention_mask [B, L] (nonzero =
        real token); num_cond_latents: leading clean latent frames (timestep 0) that condition the rest.
        Returns float32 [B, C_out, T, H, W].
        """
        num_cond_latents = int(num_cond_latents)
        text = encoder_hidden_states.squeeze(1) if encoder_hidden_states.dim() == 4 else encoder_hidden_states
        self._check_inputs(
            hidden_states, timestep, encoder_hidden_states, text, encoder_attention_mask, num_cond_latents
        )

        batch, _, num_frames, height, width = hidden_states.shape
        patch_t, patch_h, patch_w = self.patch_size
        grid = (num_frames // patch_t, height // patch_h, width // patch_w)
        if timestep.dim() < 2:
            timestep = timestep.reshape(-1).expand(batch).unsqueeze(1).expand(batch, grid[0])

        dtype = self.x_embedder.proj.weight.dtype
        x = self.x_embedder(hidden_states.to(dtype))
        # The reference rounds timesteps to the model dtype before the float32 sinusoid.
        t = self.t_embedder(timestep.to(dtype).float().flatten()).view(batch, grid[0], -1)
        text = self.y_embedder(text.to(dtype))

        text_key_mask = None
        if encoder_attention_mask is not None:
            valid = encoder_attention_mask != 0
            if self.text_tokens_zero_pad:
                # Padded positions become exact zeros and stay attended, as in the reference.
                text = text * valid[:, :, None].to(text.dtype)
            else:
                text_key_mask = valid

        rope = rope_cos_sin(self.head_dim, grid, device=x.device)
        num_cond_tokens = num_cond_latents * grid[1] * grid[2]
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, text, t, rope, text_key_mask, num_cond_tokens)
            else:
                x = block(x, text, t, rope, text_key_mask, num_cond_tokens)

        x = self.final_layer(x, t)
        return self._unpatchify(x, grid).to(torch.float32)

    def _unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        batch = x.shape[0]
        patch_t, patch_h, patch_w = self.patch_size
        x = x.view(batch, *grid, patch_t, patch_h, patch_w, self.out_channels)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(batch, self.out_channels, grid[0] * patch_t, grid[1] * patch_h, grid[2] * patch_w)

    def _check_inputs(
        self, hidden_states, timestep, encoder_hidden_states, text, mask, num_cond_latents
    ) -> None:
        if hidden_states.dim() != 5 or hidden_states.shape[1] != self.in_channels:
            raise ValueError(
                f"hidden_states: expected [B, {self.in_channels}, T, H, W] latents, found shape "
                f"{list(hidden_states.shape)}"
            )
        batch, _, num_frames, height, width = hidden_states.shape
        patch_t, patch_h, patch_w = self.patch_size
        if num_frames % patch_t or height % patch_h or width % patch_w:
            raise ValueError(
                f"hidden_states: latent T, H, W must be multiples of the patch size {list(self.patch_size)}, "
                f"found {num_frames}x{height}x{width}"
            )
        latent_frames = num_frames // patch_t
        per_sample = timestep.dim() == 1 and timestep.shape[0] in (1, batch)
        per_frame = timestep.dim() == 2 and tuple(timestep.shape) == (batch, latent_frames)
        if timestep.dim() > 0 and not (per_sample or per_frame):
            raise ValueError(
                f"timestep: expected [B] or [B, T] = [{batch}, {latent_frames}], found {list(timestep.shape)}"
            )
        caption_channels = self.config.caption_channels
        if text.dim() != 3 or text.shape[0] != batch or text.shape[2] != caption_channels:
            raise ValueError(
                f"encoder_hidden_states: expected [{batch}, 1, L, {caption_channels}] or [{batch}, L, "
                f"{caption_channels}], found {list(encoder_hidden_states.shape)}"
            )
        if mask is not None:
            if tuple(mask.shape) != (batch, text.shape[1]):
                raise ValueError(
                    f"encoder_attention_mask: expected [B, L] = [{batch}, {text.shape[1]}] to match "
                    f"encoder_hidden_states, found {list(mask.shape)}"
                )
            if not self.text_tokens_zero_pad and not bool((mask != 0).any(dim=1).all()):
                empty = (mask != 0).any(dim=1).logical_not().nonzero().flatten().tolist()
                raise ValueError(f"encoder_attention_mask: samples {empty} have no valid text token")
        if not 0 <= num_cond_latents < latent_frames:
            raise ValueError(
                f"num_cond_latents: expected 0 <= n < {latent_frames} (the latent frames), "
                f"found {num_cond_latents}"
            )


def _check_architecture(hidden_size, num_heads, patch_size, enable_bsa, cp_split_hw) -> None:
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    rope_axis_dims(hidden_size // num_heads)
    if len(patch_size) != 3 or patch_size[0] != 1:
        raise ValueError(f"patch_size: expected [1, ph, pw] (no temporal patching), found {list(patch_size)}")
    if enable_bsa:
        raise ValueError(
            "enable_bsa: block-sparse attention is not supported by this implementation; set it to false "
            "(the published base config has it off)"
        )
    if cp_split_hw is not None and math.prod(cp_split_hw) != 1:
        raise ValueError(
            f"cp_split_hw: context parallelism inside the model is not supported; expected null or [1, 1], "
            f"found {list(cp_split_hw)}"
        )
