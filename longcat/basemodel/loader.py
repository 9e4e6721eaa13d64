"""Loading a published-layout directory's parts: the same code for the 13.6B model and the tiny one."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from longcat.basemodel.layout import SUBFOLDERS, check_layout

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def load_components(
    base_dir: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    components: Iterable[str] = SUBFOLDERS,
) -> dict:
    """Load the requested parts of a published-layout directory in `dtype` (float32 by default), by name.

    `dit` comes through `longcat.model.loading.load_dit` (meta-device init, shards streamed in, strict);
    `scheduler` is a diffusers `FlowMatchEulerDiscreteScheduler` whose config carries `shift`.
    """
    import torch

    dtype = dtype or torch.float32
    components = tuple(components)
    base_dir = check_layout(base_dir, components)
    loaded = {}
    if "tokenizer" in components:
        from transformers import AutoTokenizer

        loaded["tokenizer"] = AutoTokenizer.from_pretrained(base_dir / "tokenizer")
    if "text_encoder" in components:
        from transformers import UMT5EncoderModel

        text_encoder = UMT5EncoderModel.from_pretrained(base_dir / "text_encoder", dtype=dtype)
        loaded["text_encoder"] = text_encoder.to(device).eval()
    if "vae" in components:
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan.from_pretrained(base_dir / "vae", torch_dtype=dtype)
        loaded["vae"] = vae.to(device).eval()
    if "scheduler" in components:
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(base_dir / "scheduler")
        logger.info("flow shift %s from %s", scheduler.config.shift, base_dir / "scheduler")
        loaded["scheduler"] = scheduler
    if "dit" in components:
        from longcat.model.loading import load_dit

        loaded["dit"] = load_dit(base_dir / "dit", dtype=dtype, device=device).eval()
    return loaded
