"""LongCat-Video full finetuning: data stage, caches, model, training and sampling."""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "LongCatVideoTransformer3DModel": "longcat.model",
    "LongCatSingleStreamBlock": "longcat.model",
    "LongCatVideoPipeline": "longcat.pipeline",
    "CacheReader": "longcat.cache.reader",
}


def __getattr__(name):
    # Heavy imports (torch, diffusers) wait until asked for, so the data stage stays light.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'longcat' has no attribute {name!r}")
