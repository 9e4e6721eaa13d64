"""Paths that the workflow's train rules ask for and that depend on what a run has written so far."""

from __future__ import annotations


def latest_export_dir(run_dir: str) -> str:
    """`{run_dir}/exports/step-N` for the run's latest checkpoint step-N (the `export` target)."""
    from longcat.train.checkpoint import latest_checkpoint

    latest = latest_checkpoint(f"{run_dir}/checkpoints")
    if latest is None:
        raise FileNotFoundError(f"export: no checkpoint under {run_dir}/checkpoints; train first")
    return f"{run_dir}/exports/{latest.name}"
