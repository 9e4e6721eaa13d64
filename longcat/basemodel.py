"""The base model in the published LongCat-Video layout: resolve it, write a tiny one, load its parts.

The layout is a directory with `dit/` (sharded safetensors + index), `vae/` (diffusers `AutoencoderKLWan`),
`text_encoder/` (transformers `UMT5EncoderModel`), `tokenizer/` and `scheduler/` (`scheduler_config.json`
carrying the flow `shift`). The workflow materialises it at `{results}/base_model/` for every kind:
`tiny` writes a random model there; `dir` and `hf` link the subfolders of the resolved source there (never
copying tens of gigabytes) and record where they came from in `SOURCE.json`. Everything downstream loads
`{results}/base_model` through `load_components`, the same code for the 13.6B model and the tiny one.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

SUBFOLDERS = ("dit", "vae", "text_encoder", "tokenizer", "scheduler")
SOURCE_FILE = "SOURCE.json"
MODEL_INDEX = "model_index.json"
PIPELINE_MODULE = "pipeline"
DEFAULT_SHIFT = 12.0

# Wan 2.1 VAE latent statistics (the published LongCat-Video VAE carries the same values).
WAN21_LATENTS_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]  # fmt: skip
WAN21_LATENTS_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]  # fmt: skip

# What marks each subfolder as present and loadable; the tokenizer may be a sentencepiece or tokenizers file.
_MARKERS = {
    "dit": ("config.json",),
    "vae": ("config.json",),
    "text_encoder": ("config.json",),
    "tokenizer": ("tokenizer_config.json", "tokenizer.json", "spiece.model"),
    "scheduler": ("scheduler_config.json",),
}

# Text the tiny tokenizer learns its pieces from, besides the captions it is given.
_TINY_CORPUS = [
    "a red square moving across a blue background",
    "a green circle bouncing up and down on a white floor",
    "a yellow triangle spinning slowly in the middle of a black field",
    "colored bars sliding from left to right",
    "a small orange ball rolling past a purple wall",
    "noise patterns flickering in gray tones",
    "a bright light fading in and out over a dark scene",
    "stripes of cyan and magenta drifting down the frame",
]

PIPELINE_SHIM = '''"""The pipeline class that `diffusers.DiffusionPipeline.from_pretrained` loads.

Used with `trust_remote_code=True`; the pipeline itself lives in the installed `longcat` package.
"""

from longcat.pipeline import LongCatVideoPipeline

__all__ = ["LongCatVideoPipeline"]
'''


class BaseModelError(ValueError):
    """A base-model directory or setting that cannot be used; the message names the path or key."""


def base_model_dir(cfg: Mapping) -> Path:
    """Where the workflow materialises the base model: `{results}/base_model`."""
    return Path(cfg.get("results", "results")) / "base_model"


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


def resolve(cfg: Mapping) -> Path:
    """The directory holding the published layout for `base_model.kind` dir or hf (hf downloads it once).

    kind tiny has no source: `write_tiny_base_model` writes it into `{results}/base_model` directly.
    """
    section = cfg.get("base_model") or {}
    kind = section.get("kind")
    if kind == "dir":
        source = section.get("dir")
        if not source:
            raise BaseModelError(
                "base_model.dir: expected a directory for base_model.kind dir, found nothing"
            )
        return check_layout(Path(source).expanduser().resolve())
    if kind == "hf":
        hf = section.get("hf") or {}
        if not hf.get("id"):
            raise BaseModelError(
                "base_model.hf.id: expected a Hugging Face repository id for base_model.kind hf"
            )
        return check_layout(download_hf(hf["id"], hf.get("revision", "main")))
    if kind == "tiny":
        raise BaseModelError("base_model.kind tiny has no source directory; write_tiny_base_model writes it")
    raise BaseModelError(f"base_model.kind: expected one of tiny, dir, hf, found {kind!r}")


def download_hf(repo_id: str, revision: str = "main") -> Path:
    """Download the published layout's files of a Hugging Face repository into the Hugging Face cache."""
    from huggingface_hub import snapshot_download

    patterns = [f"{name}/*" for name in SUBFOLDERS] + [MODEL_INDEX]
    logger.info(
        "downloading %s@%s (%s) into the Hugging Face cache", repo_id, revision, ", ".join(SUBFOLDERS)
    )
    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))


def tiny_captions(config: Mapping) -> list[str]:
    """Captions the tiny tokenizer learns from: the demo clips' captions when the source is the demo."""
    source = config.get("source") or {}
    if source.get("kind") != "demo":
        return []
    from longcat.demo import plan_clips

    demo = source.get("demo") or {}
    return [clip.caption for clip in plan_clips(int(demo.get("num_clips", 12)), int(demo.get("seed", 0)))]


def base_model_params(config: Mapping) -> dict:
    """What decides the bytes of `{results}/base_model`: the settings of the configured kind only.

    The base_model rule's params, so that editing an unrelated key never rebuilds the base model (and with
    it every cache and training run downstream).
    """
    section = config.get("base_model") or {}
    kind = section.get("kind")
    if kind == "tiny":
        return {"kind": kind, "tiny": dict(section.get("tiny") or {}), "captions": tiny_captions(config)}
    if kind == "dir":
        return {"kind": kind, "dir": section.get("dir")}
    return {"kind": kind, "hf": dict(section.get("hf") or {})}


def prepare_base_model(cfg: Mapping, out_dir: str | Path, captions: Sequence[str] = ()) -> Path:
    """Materialise `base_model` at `out_dir`: a tiny model written there, or links to the resolved source."""
    section = cfg.get("base_model") or {}
    kind = section.get("kind")
    if kind == "tiny":
        return write_tiny_base_model(out_dir, section.get("tiny") or {}, captions)
    source = resolve(cfg)
    record = {"kind": kind, "path": str(source)}
    if kind == "hf":
        record.update(id=section["hf"]["id"], revision=section["hf"].get("revision", "main"))
    return link_base_model(source, out_dir, record)


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


def write_pipeline_files(directory: str | Path, tokenizer_class: str = "T5Tokenizer") -> None:
    """Write `model_index.json` and the `pipeline.py` entry point that diffusers' loader needs."""
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
    _write_text_atomically(directory / MODEL_INDEX, json.dumps(index, indent=2) + "\n")
    _write_text_atomically(directory / f"{PIPELINE_MODULE}.py", PIPELINE_SHIM)


def tiny_dit_config(tiny_cfg: Mapping) -> dict:
    """The published `dit/config.json` keys at the tiny sizes of `base_model.tiny`."""
    return {
        "in_channels": 16,
        "out_channels": 16,
        "hidden_size": int(tiny_cfg.get("hidden_size", 64)),
        "depth": int(tiny_cfg.get("depth", 2)),
        "num_heads": int(tiny_cfg.get("num_heads", 4)),
        "caption_channels": int(tiny_cfg.get("text_dim", 32)),
        "mlp_ratio": 4,
        "adaln_tembed_dim": int(tiny_cfg.get("adaln_tembed_dim", 32)),
        "frequency_embedding_size": 256,
        "patch_size": [1, 2, 2],
        "enable_flashattn3": False,
        "enable_flashattn2": False,
        "enable_xformers": False,
        "enable_bsa": False,
        "bsa_params": {"sparsity": 0.9375, "chunk_3d_shape_q": [4, 4, 4], "chunk_3d_shape_k": [4, 4, 4]},
        "cp_split_hw": None,
        "text_tokens_zero_pad": True,
    }


def train_tiny_tokenizer(captions: Sequence[str], vocab_size: int = 256):
    """A T5-style tokenizer (pad 0, eos 1, unk 2, unigram pieces) learned in-process from the captions."""
    import sentencepiece
    from transformers import T5Tokenizer

    from longcat.text import prompt_clean

    corpus = [prompt_clean(text) for text in [*captions, *_TINY_CORPUS] if text.strip()]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def write_tiny_base_model(out_dir: str | Path, tiny_cfg: Mapping, captions: Sequence[str] = ()) -> Path:
    """Write a random tiny LongCat-Video (DiT, Wan VAE, umT5, tokenizer, scheduler) in the published layout.

    Same classes and file formats as the 13.6B model, so the same loaders serve both. Deterministic given
    `tiny_cfg["seed"]` and the captions.
    """
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    from longcat.model import LongCatVideoTransformer3DModel
    from longcat.model.loading import save_dit

    seed = int(tiny_cfg.get("seed", 0))
    text_dim = int(tiny_cfg.get("text_dim", 32))
    text_heads = 4 if text_dim % 4 == 0 else 1

    def fill(tmp: Path) -> None:
        tokenizer = train_tiny_tokenizer(captions)
        tokenizer.save_pretrained(tmp / "tokenizer")

        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(tokenizer),
                d_model=text_dim,
                d_kv=text_dim // text_heads,
                d_ff=2 * text_dim,
                num_layers=2,
                num_heads=text_heads,
                relative_attention_num_buckets=32,
                feed_forward_proj="gated-gelu",
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                decoder_start_token_id=tokenizer.pad_token_id,
            )
        )
        text_encoder.save_pretrained(tmp / "text_encoder")

        torch.manual_seed(seed + 1)
        vae = AutoencoderKLWan(
            base_dim=8,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            latents_mean=WAN21_LATENTS_MEAN,
            latents_std=WAN21_LATENTS_STD,
        )
        vae.save_pretrained(tmp / "vae")

        torch.manual_seed(seed + 2)
        dit = LongCatVideoTransformer3DModel(**tiny_dit_config(tiny_cfg))
        save_dit(dit, tmp / "dit")

        FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=DEFAULT_SHIFT).save_pretrained(
            tmp / "scheduler"
        )
        (tmp / SOURCE_FILE).write_text(json.dumps({"kind": "tiny", **dict(tiny_cfg)}, sort_keys=True) + "\n")
        write_pipeline_files(tmp, tokenizer_class=type(tokenizer).__name__)

    return write_dir_atomically(Path(out_dir), fill)


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


def _write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_dir_atomically(out_dir: Path, fill) -> Path:
    """Build a directory beside `out_dir` with `fill(tmp)`, then swap it in: never a half-written result."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)
        fill(tmp)
        if out_dir.is_symlink() or out_dir.is_file():
            out_dir.unlink()
        elif out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
            shutil.rmtree(old)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
