"""The base_model rule's work: the configured base model, in the published layout, at one directory.

`tiny` writes a random model there; `dir` and `hf` link the subfolders of the resolved source there (never
copying tens of gigabytes) and record where they came from in `SOURCE.json`. Everything downstream loads
that directory through `longcat.basemodel.loader.load_components`, the same code for the 13.6B model and
the tiny one.
"""

from __future__ import annotations

from pathlib import Path

from longcat.basemodel.layout import link_base_model, resolve
from longcat.basemodel.tiny import write_tiny_base_model
from longcat.settings import BaseModel


def prepare_base_model(base_model: BaseModel, out_dir: str | Path) -> Path:
    """Materialise `base_model` at `out_dir`: a tiny model written there, or links to the resolved source."""
    if base_model.kind == "tiny":
        return write_tiny_base_model(out_dir, base_model.tiny)
    source = resolve(base_model)
    record = {"kind": base_model.kind, "path": str(source)}
    if base_model.kind == "hf":
        record.update(id=base_model.hf.id, revision=base_model.hf.revision)
    return link_base_model(source, out_dir, record)
