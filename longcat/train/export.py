"""`python -m longcat.train.export --checkpoint DIR --base-model DIR --out DIR`: a checkpoint, published.

Runs in one process on the CPU: DCP reads the sharded checkpoint whatever the number of ranks that wrote it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from longcat.train.checkpoint import load_model_weights_offline
from longcat.train.record import read_record

log = logging.getLogger(__name__)


def export_checkpoint(
    checkpoint: str | Path,
    base_model: str | Path,
    out_dir: str | Path,
    flow_shift: float | None = None,
    max_sequence_length: int | None = None,
    weights: str = "raw",
) -> Path:
    """Export a checkpoint's trained weights (`weights` raw), its weight average (ema), or both, the
    average then in `out_dir/ema/` (train.ema_export)."""
    from longcat.export import export_model
    from longcat.model import LongCatVideoTransformer3DModel

    config = LongCatVideoTransformer3DModel.load_config(Path(base_model) / "dit")

    def load(average: bool):
        with torch.device("meta"):
            model = LongCatVideoTransformer3DModel.from_config(config)
        model.to_empty(device="cpu")
        return load_model_weights_offline(checkpoint, model, average=average)

    record = read_record(checkpoint)
    first = "ema" if weights == "ema" else "raw"
    return export_model(
        load(average=first == "ema"),
        base_model,
        out_dir,
        flow_shift=flow_shift,
        record=None if record is None else {**record, "weights": first},
        max_sequence_length=max_sequence_length,
        average=load(average=True) if weights == "both" else None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m longcat.train.export", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoints/step-N directory")
    parser.add_argument("--base-model", type=Path, required=True, help="the base model the run started from")
    parser.add_argument("--out", type=Path, required=True, help="output directory (replaced if it exists)")
    parser.add_argument(
        "--flow-shift", type=float, help="the run's train.flow_shift, when it overrides the base model's"
    )
    parser.add_argument(
        "--max-sequence-length", type=int, help="the caption length it trained with (cache.max_tokens)"
    )
    parser.add_argument(
        "--weights",
        choices=("raw", "ema", "both"),
        default="raw",
        help="the trained weights, their average (train.ema_decay), or both (train.ema_export)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = export_checkpoint(
        args.checkpoint, args.base_model, args.out, args.flow_shift, args.max_sequence_length, args.weights
    )
    log.info("exported %s to %s", args.checkpoint, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
