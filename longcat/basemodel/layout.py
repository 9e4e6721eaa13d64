"""The published LongCat-Video layout: check a directory, find one (a local copy or a Hugging Face
snapshot), link it into place, and write the files diffusers' pipeline loader needs.

The layout is a directory with `dit/` (sharded safetensors + index), `vae/` (diffusers `AutoencoderKLWan`),
`text_encoder/` (transformers `UMT5EncoderModel`), `tokenizer/` and `scheduler/` (`scheduler_config.json`
carrying the flow `shift`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from longcat.files import atomic_write_text, write_dir_atomically
from longcat.settings import BaseModel

logger = logging.getLogger(__name__)

SUBFOLDERS = ("dit", "vae", "text_encoder", "tokenizer", "scheduler")
SOURCE_FILE = "SOURCE.json"
MODEL_INDEX = "model_index.json"
PIPELINE_MODULE = "pipeline"

# What marks each subfolder as present and loadable; the tokenizer may be a sentencepiece or tokenizers file.
_MARKERS = {
    "dit": ("config.json",),
    "vae": ("config.json",),
    "text_encoder": ("config.json",),
    "tokenizer": ("tokenizer_config.json", "tokenizer.json", "spiece.model"),
    "scheduler": ("scheduler_config.json",),
}

PIPELINE_SHIM = '''"""The pipeline class that `diffusers.DiffusionPipeline.from_pretrained` loads.

Used with `trust_remote_code=True`; the pipeline itself lives in the installed `longcat` package.
"""

from longcat.pipeline import LongCatVideoPipeline

__all__ = ["LongCatVideoPipeline"]
'''


class BaseModelError(ValueError):
    """A base-model directory or setting that cannot be used; the message names the path or key."""


def check_layout(base_dir: str | Path, components: Iterable[str] = SUBFOLDERS) -> Path:
    """Raise BaseModelError naming every missing subfolder or config file of the published layout."""
    base_dir = Path(base_dir)
    if not base_dir.is_dir():
        raise BaseModelError(f"base model {base_dir}: not a directory (expected the published layout)")
    problems = []
    for name in components:
        if name not in _MARKERS:
            raise BaseModelError(f"base model component {name!r}: expected one of {', '.join(SUBFOLDERS)}")
        folder = base_dir / name
        if not folder.is_dir():
            problems.append(f"missing {name}/")
        elif not any((folder / marker).is_file() for marker in _MARKERS[name]):
            problems.append(f"{name}/ has none of {', '.join(_MARKERS[name])}")
    if problems:
        raise BaseModelError(
            f"base model {base_dir}: {'; '.join(problems)} "
            f"(expected subfolders {', '.join(name + '/' for name in SUBFOLDERS)})"
        )
    return base_dir


def resolve(base_model: BaseModel) -> Path:
    """The directory holding the published layout for `base_model.kind` dir or hf (hf downloads it once).

    kind tiny has no source: `longcat.basemodel.tiny.write_tiny_base_model` writes it in place.
    """
    kind = base_model.kind
    if kind == "dir":
        if not base_model.dir:
            raise BaseModelError(
                "base_model.dir: expected a directory for base_model.kind dir, found nothing"
            )
        return check_layout(Path(base_model.dir).expanduser().resolve())
    if kind == "hf":
        if base_model.hf is None or not base_model.hf.id:
            raise BaseModelError(
                "base_model.hf.id: expected a Hugging Face repository id for base_model.kind hf"
            )
        return check_layout(download_hf(base_model.hf.id, base_model.hf.revision))
    if kind == "tiny":
        raise BaseModelError("base_model.kind tiny has no source directory; write_tiny_base_model writes it")
    raise BaseModelError(f"base_model.kind: expected one of tiny, dir, hf, found {kind!r}")


def download_hf(repo_id: str, revision: str) -> Path:
    """Download the published layout's files of a Hugging Face repository into the Hugging Face cache."""
    from huggingface_hub import snapshot_download

    patterns = [f"{name}/*" for name in SUBFOLDERS] + [MODEL_INDEX]
    logger.info(
        "downloading %s@%s (%s) into the Hugging Face cache", repo_id, revision, ", ".join(SUBFOLDERS)
    )
    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))


def link_base_model(source: str | Path, out_dir: str | Path, record: Mapping) -> Path:
    """Point `out_dir/<sub>` at `source/<sub>` with symlinks and record the source in SOURCE.json."""
    source = check_layout(Path(source).resolve())

    def fill(tmp: Path) -> None:
        for name in SUBFOLDERS:
            (tmp / name).symlink_to(source / name, target_is_directory=True)
        (tmp / SOURCE_FILE).write_text(json.dumps(dict(record), indent=2, sort_keys=True) + "\n")
        write_pipeline_files(tmp, tokenizer_class=tokenizer_class_name(source))

    return write_dir_atomically(Path(out_dir), fill)


def tokenizer_class_name(base_dir: str | Path) -> str:
    """The tokenizer class a base model names in model_index.json or tokenizer_config.json (T5Tokenizer)."""
    base_dir = Path(base_dir)
    index = base_dir / MODEL_INDEX
    if index.is_file():
        entry = json.loads(index.read_text()).get("tokenizer")
        if isinstance(entry, list) and len(entry) == 2:
            return entry[1]
    config = base_dir / "tokenizer" / "tokenizer_config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("tokenizer_class") or "T5Tokenizer"
    return "T5Tokenizer"


def read_max_sequence_length(model_dir: str | Path) -> int | None:
    """The caption length `model_index.json` records (an exported model's), or None (a published one)."""
    index = Path(model_dir) / MODEL_INDEX
    if not index.is_file():
        return None
    value = json.loads(index.read_text()).get("max_sequence_length")
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise BaseModelError(f"{index}: max_sequence_length: expected an integer >= 1, found {value!r}")
    return value


def write_pipeline_files(
    directory: str | Path, tokenizer_class: str = "T5Tokenizer", max_sequence_length: int | None = None
) -> None:
    """Write `model_index.json` and the `pipeline.py` entry point that diffusers' loader needs.

    `max_sequence_length`, the caption length a finetuned DiT was trained with, goes into the index:
    both loaders hand it to the pipeline, which pads captions to it (see `read_max_sequence_length`).
    """
    import diffusers

    from longcat.model import LongCatVideoTransformer3DModel

    directory = Path(directory)
    # diffusers resolves a component outside its own libraries by its defining module, already imported.
    dit_entry = [LongCatVideoTransformer3DModel.__module__, LongCatVideoTransformer3DModel.__name__]
    index = {
        "_class_name": [PIPELINE_MODULE, "LongCatVideoPipeline"],
        "_diffusers_version": diffusers.__version__,
        "dit": dit_entry,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", tokenizer_class],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    if max_sequence_length is not None:
        index["max_sequence_length"] = int(max_sequence_length)
    atomic_write_text(directory / MODEL_INDEX, json.dumps(index, indent=2) + "\n")
    atomic_write_text(directory / f"{PIPELINE_MODULE}.py", PIPELINE_SHIM)
