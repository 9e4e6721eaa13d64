"""Export a trained DiT as a self-contained model in the published layout.

The result holds the trained `dit/` (safetensors; shards + index above `max_shard_size`) beside the untouched
`vae/`, `text_encoder/`, `tokenizer/` and `scheduler/` (hard-linked where the filesystem allows, copied
otherwise, never symlinked) and `model_index.json`. It loads with `LongCatVideoPipeline.from_pretrained(dir)`
and with `diffusers.DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from longcat.basemodel.layout import SUBFOLDERS, check_layout, tokenizer_class_name, write_pipeline_files
from longcat.files import write_dir_atomically

logger = logging.getLogger(__name__)

COPIED_SUBFOLDERS = tuple(name for name in SUBFOLDERS if name != "dit")
AVERAGE_DIR = "ema"  # beside the trained weights, the model of their average (train.ema_export: both)


def _link_or_copy(src: str, dst: str) -> str:
    # Resolved first: a Hugging Face cache holds links into its blob store, and a hard link to a
    # symbolic link would still be a symbolic link.
    src = os.path.realpath(src)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def write_scheduler_shift(scheduler_dir: Path, flow_shift: float) -> None:
    """Set `shift` in `scheduler_dir/scheduler_config.json`, a new file (never through a hard link)."""
    path = scheduler_dir / "scheduler_config.json"
    config = json.loads(path.read_text())
    config["shift"] = float(flow_shift)
    path.unlink()
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def build_dit(state_dict: Mapping[str, torch.Tensor], config: Mapping, where: str = "the config"):
    """A DiT of architecture `config` holding the tensors of `state_dict`; names and shapes must match."""
    from longcat.model import LongCatVideoTransformer3DModel

    with torch.device("meta"):
        model = LongCatVideoTransformer3DModel.from_config(dict(config))
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(f"DiT state dict does not match {where}: {error}") from None
    return model


def export_model(
    dit,
    base_dir: str | Path,
    out_dir: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_size: str = "5GB",
    flow_shift: float | None = None,
    record: Mapping | None = None,
    max_sequence_length: int | None = None,
    average=None,
) -> Path:
    """Write `out_dir` in the published layout with `dit` (a model or a full state dict) as the transformer.

    `record`, the run's record of the steps that made the weights (`longcat.train.record`), is written
    beside them as `training.yaml`; `max_sequence_length`, the caption length the DiT was trained with
    (cache.max_tokens), goes into `model_index.json`, and the pipeline pads captions to it. `average`
    (a weight average, like `dit`) makes `out_dir/ema/` a whole model of its own beside the trained one.

    A state dict must match the base model's `dit/config.json` exactly; a model brings its own config.
    `flow_shift`, when given, is the shift the model was trained with: the exported scheduler samples with
    it (the base model's scheduler is kept otherwise).
    The model itself is left as it is (tensors are converted to `dtype` one at a time while writing).
    `out_dir` appears complete or not at all; an existing `out_dir` is replaced.
    """
    from longcat.model.loading import read_dit_config, save_dit

    base_dir = check_layout(base_dir)

    def as_model(weights):
        if not isinstance(weights, Mapping):
            return weights
        config_path = base_dir / "dit" / "config.json"
        return build_dit(weights, read_dit_config(config_path.parent), where=str(config_path))

    def write(tmp: Path, weights, weights_record: Mapping | None) -> None:
        save_dit(as_model(weights), tmp / "dit", max_shard_size=max_shard_size, dtype=dtype)
        for name in COPIED_SUBFOLDERS:
            shutil.copytree(base_dir / name, tmp / name, copy_function=_link_or_copy)
        if flow_shift is not None:
            write_scheduler_shift(tmp / "scheduler", flow_shift)
        write_pipeline_files(tmp, tokenizer_class_name(base_dir), max_sequence_length)
        if weights_record is not None:
            from longcat.train.record import EXPORTED_RECORD_FILE, write_record

            write_record(tmp, weights_record, EXPORTED_RECORD_FILE)

    def fill(tmp: Path) -> None:
        write(tmp, dit, record)
        if average is not None:
            (tmp / AVERAGE_DIR).mkdir()
            write(tmp / AVERAGE_DIR, average, None if record is None else {**record, "weights": "ema"})

    logger.info("exporting the model to %s (dit in %s, other parts from %s)", out_dir, dtype, base_dir)
    return write_dir_atomically(Path(out_dir), fill)
