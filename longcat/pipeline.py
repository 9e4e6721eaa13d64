"""Text-to-video sampling with LongCat-Video: flow matching, Euler steps, CFG-Zero* guidance.

The schedule, the update, the guidance, the latent normalisation and the caption padding come from
`longcat.flow`, the definitions training uses too: sigmas `linspace(1, 0.001, N)` shifted by the
scheduler's `shift` and ending at 0, DiT timestep `1000·σ`, an Euler step on the negated model output (the
DiT predicts `x0 − noise`), CFG-Zero* over the whole latent. Latents live normalised by the VAE's
`latents_mean`/`latents_std` and are denormalised just before decoding. With a conditioning video, the
latents of its last `num_cond_frames` frames lead the sample, stay clean (timestep 0, `num_cond_latents`)
and only the frames after them are denoised, as the official pipeline does for image-to-video and video
continuation (and as training conditions, `longcat.train.objective`). Captions are padded to the length
the model was trained with, which an exported model records in `model_index.json`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from transformers import PreTrainedTokenizerBase, UMT5EncoderModel

from longcat.encoders.text import encode_prompts
from longcat.flow import (
    cfg_zero_star,
    denormalize_latents,
    encode_latents,
    euler_step,
    sampling_sigmas,
    timesteps,
    vae_pixels,
)
from longcat.model import LongCatVideoTransformer3DModel
from longcat.vae_frames import is_frame_count, latent_frames

PATCH_SIZE = 2
# The official pipeline pads captions to 512 tokens unless told otherwise (`max_sequence_length` of
# `generate_t2v` and the others, longcat_video/pipeline_longcat_video.py l. 417).
DEFAULT_MAX_SEQUENCE_LENGTH = 512


def denoise(
    dit: Callable[..., torch.Tensor],
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    negative_text: torch.Tensor | None = None,
    negative_mask: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    num_cond_latents: int = 0,
    model_dtype: torch.dtype = torch.float32,
    progress: Callable[[int], object] | None = None,
) -> torch.Tensor:
    """Run the Euler sampler from `latents` (float32, normalised) along `sigmas`; returns float32 latents.

    `dit` has the DiT's forward signature. Guidance runs when `negative_text` is given: the negative and
    positive batches go through the model together, combined with CFG-Zero* over the whole latent.
    """
    guided = negative_text is not None
    latents = latents.float()
    if guided:
        text = torch.cat([negative_text, text])
        text_mask = torch.cat([negative_mask, text_mask])
    batch, _, num_latent_frames = latents.shape[:3]
    model_batch = 2 * batch if guided else batch
    for index in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[index]), float(sigmas[index + 1])
        timestep = timesteps(torch.full((model_batch, num_latent_frames), sigma, device=latents.device))
        timestep[:, :num_cond_latents] = 0
        model_input = torch.cat([latents, latents]) if guided else latents
        prediction = dit(
            hidden_states=model_input.to(model_dtype),
            timestep=timestep.to(model_dtype),
            encoder_hidden_states=text,
            encoder_attention_mask=text_mask,
            num_cond_latents=num_cond_latents,
        ).float()
        if guided:
            # CFG-Zero*'s scale is taken over the whole latent, conditioning frames included (official).
            uncond, cond = prediction.chunk(2)
            prediction = cfg_zero_star(cond, uncond, guidance_scale)
        noisy = latents[:, :, num_cond_latents:]
        stepped = euler_step(noisy, prediction[:, :, num_cond_latents:], sigma, sigma_next)
        latents = torch.cat([latents[:, :, :num_cond_latents], stepped], 2)
        if progress is not None:
            progress(1)
    return latents


@dataclass
class LongCatVideoPipelineOutput(BaseOutput):
    """`frames`: `[B, F, H, W, 3]` numpy in [0, 1] ("np"), `[B, F, 3, H, W]` tensor ("pt") or latents."""

    frames: np.ndarray | torch.Tensor


class LongCatVideoPipeline(DiffusionPipeline):
    """LongCat-Video text-to-video (and video-conditioned) sampling over the published layout's components."""

    model_cpu_offload_seq = "text_encoder->dit->vae"

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        text_encoder: UMT5EncoderModel,
        vae: AutoencoderKLWan,
        scheduler: FlowMatchEulerDiscreteScheduler,
        dit: LongCatVideoTransformer3DModel,
        max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH,
    ):
        """`max_sequence_length`: the caption length captions are padded to unless a call says otherwise;
        a finetuned model's `model_index.json` records the one it was trained with."""
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, dit=dit
        )
        self.register_to_config(max_sequence_length=max_sequence_length)
        self.vae_scale_factor_temporal = vae.config.scale_factor_temporal
        self.vae_scale_factor_spatial = vae.config.scale_factor_spatial
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        revision: str = "main",
        dtype: torch.dtype | None = None,
    ) -> LongCatVideoPipeline:
        """Load a published-layout directory (or a Hugging Face repository id) through `load_components`.

        `torch_dtype` (or its newer name `dtype`) applies to every part; float32 when neither is given.
        Captions are padded to the length `model_index.json` records (512 when it records none).
        """
        from longcat.basemodel.layout import download_hf, read_max_sequence_length
        from longcat.basemodel.loader import load_components

        path = Path(pretrained_model_name_or_path)
        if not path.is_dir():
            path = download_hf(str(pretrained_model_name_or_path), revision)
        dtype = dtype or torch_dtype or torch.float32
        max_sequence_length = read_max_sequence_length(path) or DEFAULT_MAX_SEQUENCE_LENGTH
        return cls(
            **load_components(path, device=device, dtype=dtype), max_sequence_length=max_sequence_length
        )

    def _check_size(self, num_frames: int, height: int, width: int) -> None:
        spatial = self.vae_scale_factor_spatial * PATCH_SIZE
        if height % spatial or width % spatial or height <= 0 or width <= 0:
            raise ValueError(
                f"height and width: expected positive multiples of {spatial}, found {height}x{width}"
            )
        if not is_frame_count(num_frames, self.vae_scale_factor_temporal):
            raise ValueError(
                f"num_frames: expected {self.vae_scale_factor_temporal}k+1 (e.g. 93), found {num_frames}"
            )

    def _encode_text(self, prompts: Sequence[str], max_sequence_length: int, dtype: torch.dtype):
        embeddings = encode_prompts(self.tokenizer, self.text_encoder, prompts, max_sequence_length)
        device = self._execution_device
        return embeddings.padded.to(device=device, dtype=dtype), embeddings.mask.to(device)

    def encode_prompt(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = "",
        max_sequence_length: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """What the DiT receives for the captions: `(text, mask, negative_text, negative_mask)`, text
        `[B, 1, max_sequence_length, C]` in `dtype` (the DiT's by default) and masks `[B, L]`; the
        negative pair is None when `negative_prompt` is None (no guidance). `max_sequence_length` is the
        pipeline's (`config.max_sequence_length`) unless given."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        dtype = dtype or self.dit.dtype
        max_sequence_length = max_sequence_length or self.config.max_sequence_length
        text, mask = self._encode_text(prompts, max_sequence_length, dtype)
        if negative_prompt is None:
            return text, mask, None, None
        negatives = (
            [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        )
        if len(negatives) != len(prompts):
            raise ValueError(f"negative_prompt: expected {len(prompts)} prompts, found {len(negatives)}")
        negative_text, negative_mask = self._encode_text(negatives, max_sequence_length, dtype)
        return text, mask, negative_text, negative_mask

    def _encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Normalised latents of `video` ([B, 3, F, H, W] in [0, 1], or uint8). The official pipeline
        draws a sample of the VAE's posterior (`retrieve_latents`, l. 31-41); here its mode, from pixels
        scaled as the caches scale the clips (`longcat.flow.encode_latents`)."""
        return encode_latents(self.vae, vae_pixels(video.to(self._execution_device), self.vae.dtype))

    def _conditioning(
        self,
        video: torch.Tensor | None,
        num_cond_frames: int | None,
        cond_latents: torch.Tensor | None,
        num_frames: int,
        shape: tuple[int, ...],
    ) -> torch.Tensor | None:
        """The normalised latents that lead a sample of latent `shape` `[B, C, T, h, w]`, or None."""
        batch, channels, num_latent_frames, height, width = shape
        spatial = self.vae_scale_factor_spatial
        if video is not None and cond_latents is not None:
            raise ValueError("video and cond_latents: expected at most one of them, found both")
        if video is not None:
            video = video.unsqueeze(0) if video.ndim == 4 else video
            num_cond_frames = video.shape[2] if num_cond_frames is None else num_cond_frames
            if (
                not is_frame_count(num_cond_frames, self.vae_scale_factor_temporal)
                or not 0 < num_cond_frames < num_frames
                or num_cond_frames > video.shape[2]
            ):
                raise ValueError(
                    f"num_cond_frames: expected {self.vae_scale_factor_temporal}k+1 frames, fewer than "
                    f"num_frames={num_frames} and at most the video's {video.shape[2]}, "
                    f"found {num_cond_frames}"
                )
            if tuple(video.shape[-2:]) != (height * spatial, width * spatial) or video.shape[0] not in (
                1,
                batch,
            ):
                raise ValueError(
                    f"video: expected [1 or {batch}, 3, F, {height * spatial}, {width * spatial}], "
                    f"found {list(video.shape)}"
                )
            cond_latents = self._encode_video(video[:, :, video.shape[2] - num_cond_frames :])
        if cond_latents is None:
            return None
        cond_latents = cond_latents.unsqueeze(0) if cond_latents.ndim == 4 else cond_latents
        count, found_channels, frames, *size = cond_latents.shape
        if (
            count not in (1, batch)
            or (found_channels, *size) != (channels, height, width)
            or not 0 < frames < num_latent_frames
        ):
            raise ValueError(
                f"cond_latents: expected [1 or {batch}, {channels}, N, {height}, {width}] with "
                f"0 < N < {num_latent_frames}, found {list(cond_latents.shape)}"
            )
        return cond_latents.to(self._execution_device, torch.float32).expand(batch, -1, -1, -1, -1)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] = "",
        num_frames: int = 93,
        height: int = 480,
        width: int = 832,
        num_inference_steps: int = 50,
        guidance_scale: float = 4.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        video: torch.Tensor | None = None,
        num_cond_frames: int | None = None,
        cond_latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        max_sequence_length: int | None = None,
        output_type: str = "np",
        return_dict: bool = True,
    ):
        """Sample videos for `prompt`.

        `video` (optional, `[B, 3, F, H, W]` or `[3, F, H, W]` in [0, 1]) conditions the sample on its last
        `num_cond_frames` frames (4k+1; all of them by default), which lead the sample and stay clean, as
        the reference does for image-to-video (1 frame) and video continuation; `cond_latents` (normalised
        latents `[B or 1, C, N, h, w]`) are such frames already encoded. `latents` replaces the initial
        noise (normalised space). `prompt_embeds` and `prompt_attention_mask` (and the negative pair under
        guidance) are the captions as the DiT takes them (`encode_prompt`), in place of `prompt`.
        Captions are padded to `max_sequence_length`, by default the pipeline's
        (`config.max_sequence_length`: the exported model's training caption length).
        """
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"output_type: expected one of np, pt, latent, found {output_type!r}")
        self._check_size(num_frames, height, width)
        device = self._execution_device
        model_dtype = self.dit.dtype

        guided = guidance_scale > 1.0
        if prompt_embeds is None:
            if prompt is None:
                raise ValueError("prompt: expected a prompt or prompt_embeds, found neither")
            text, text_mask, negative_text, negative_mask = self.encode_prompt(
                prompt, (negative_prompt or "") if guided else None, max_sequence_length, model_dtype
            )
        else:
            if guided and negative_prompt_embeds is None:
                raise ValueError("negative_prompt_embeds: expected them with prompt_embeds under guidance")
            text, text_mask = prompt_embeds.to(device, model_dtype), prompt_attention_mask.to(device)
            negative_text = negative_prompt_embeds.to(device, model_dtype) if guided else None
            negative_mask = negative_prompt_attention_mask.to(device) if guided else None
        batch = text.shape[0]

        shape = (
            batch,
            self.dit.config.in_channels,
            latent_frames(num_frames, self.vae_scale_factor_temporal),
            height // self.vae_scale_factor_spatial,
            width // self.vae_scale_factor_spatial,
        )
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents: expected shape {list(shape)}, found {list(latents.shape)}")
        latents = latents.to(device=device, dtype=torch.float32)

        num_cond_latents = 0
        cond = self._conditioning(video, num_cond_frames, cond_latents, num_frames, shape)
        if cond is not None:
            num_cond_latents = cond.shape[2]
            latents = torch.cat([cond, latents[:, :, num_cond_latents:]], dim=2)

        sigmas = sampling_sigmas(num_inference_steps, float(self.scheduler.config.shift))
        with self.progress_bar(total=num_inference_steps) as bar:
            latents = denoise(
                self.dit,
                latents,
                sigmas,
                text,
                text_mask,
                negative_text,
                negative_mask,
                guidance_scale=guidance_scale,
                num_cond_latents=num_cond_latents,
                model_dtype=model_dtype,
                progress=bar.update,
            )

        if output_type == "latent":
            frames = latents
        else:
            decoded = self.vae.decode(denormalize_latents(latents, self.vae.config).to(self.vae.dtype)).sample
            frames = self.video_processor.postprocess_video(decoded.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return LongCatVideoPipelineOutput(frames=frames)
