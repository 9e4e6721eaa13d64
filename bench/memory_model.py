"""Estimated per-GPU memory of a 13.6B LongCat-Video full finetune on 8x80 GB at 93x480x832.

One JSON line: a row per (batch size, activation checkpointing, CPU offload) with the parts of the
estimate (longcat.train.memory.memory_per_gpu) and whether it fits. `--markdown` prints the table instead.
"""

from __future__ import annotations

import argparse
import json
import sys

from longcat.train.estimate import PUBLISHED_DIT_CONFIG, dit_parameter_counts, latent_shape_for, video_tokens
from longcat.train.memory import memory_per_gpu

WORLD_SIZE = 8
CARD_GIB = 80.0


def rows() -> list[dict]:
    counts = dit_parameter_counts(PUBLISHED_DIT_CONFIG)
    tokens = video_tokens(latent_shape_for(93, 480, 832))
    table = []
    for batch in (1, 2, 4):
        for checkpointing, every in (("all", 1), ("selective", 1), ("every", 2), ("off", 1)):
            for offload in (False, True):
                memory = memory_per_gpu(
                    counts, 4096, 48, tokens, WORLD_SIZE, batch, checkpointing, every, offload, bf16=True
                )
                table.append(
                    {
                        "batch_per_gpu": batch,
                        "activation_checkpointing": checkpointing
                        if checkpointing != "every"
                        else "every 2nd",
                        "cpu_offload": offload,
                        **{f"{part}_gib": round(value, 1) for part, value in memory.items()},
                        "fits_80gb": memory["total"] <= 0.95 * CARD_GIB,
                    }
                )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    table = rows()
    if args.markdown:
        header = "| batch/GPU | AC | offload | states | working | activations | total GiB | fits 80 GB |"
        lines = [header, "|---|---|---|---|---|---|---|---|"]
        for row in table:
            lines.append(
                f"| {row['batch_per_gpu']} | {row['activation_checkpointing']} | {row['cpu_offload']} | "
                f"{row['sharded_states_gib']} | {row['working_params_gib']} | {row['activations_gib']} | "
                f"{row['total_gib']} | {'yes' if row['fits_80gb'] else 'no'} |"
            )
        sys.stdout.write("\n".join(lines) + "\n")
    else:
        result = {"bench": "memory_model", "model_parameters": 13_581_071_424, "world_size": WORLD_SIZE}
        sys.stdout.write(json.dumps({**result, "shape": "93x480x832", "rows": table}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
