"""The torch dtypes of the cache jobs: what the encoders compute in, what the caches store."""

from __future__ import annotations

import torch

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a `cache.dtype` name."""
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"cache.dtype: expected one of {sorted(_TORCH_DTYPES)}, found {name!r}") from None


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU, fp32 on CPU (CPU bf16 convolutions are slow and less exact)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32
