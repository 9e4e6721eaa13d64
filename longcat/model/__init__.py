"""The LongCat-Video DiT: model, transformer block, attention backends, checkpoint loading and saving."""

from .blocks import LongCatSingleStreamBlock
from .loading import load_dit, save_dit
from .transformer import LongCatVideoTransformer3DModel

__all__ = ["LongCatSingleStreamBlock", "LongCatVideoTransformer3DModel", "load_dit", "save_dit"]
