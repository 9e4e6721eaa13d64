"""Where a run's inputs are, from the workflow config (the same rules `rules/common.smk` follows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longcat.train.config import RunPaths, TrainConfig


def run_paths(
    workflow_config: dict[str, Any],
    cfg: TrainConfig,
    run_dir: Path | None = None,
    base_model: Path | None = None,
    vae_cache: Path | None = None,
    text_cache: Path | None = None,
) -> RunPaths:
    """Explicit arguments first, then the `run_paths` the workflow recorded, then the config's own rules."""
    from longcat.cache import cache_key, text_cache_spec, vae_cache_spec

    recorded = {key: Path(value) for key, value in (workflow_config.get("run_paths") or {}).items()}
    run_dir = run_dir or recorded.get("run_dir")
    base_model = base_model or recorded.get("base_model")
    vae_cache = vae_cache or recorded.get("vae_cache")
    text_cache = text_cache or recorded.get("text_cache")
    cache_dir = Path(workflow_config.get("cache_dir", "cache"))
    return RunPaths(
        run_dir=run_dir or Path(workflow_config.get("runs_dir", "runs")) / cfg.run,
        base_model=base_model or Path(workflow_config.get("results", "results")) / "base_model",
        vae_cache=vae_cache or cache_dir / "vae" / cache_key(vae_cache_spec(workflow_config)),
        text_cache=text_cache or cache_dir / "text" / cache_key(text_cache_spec(workflow_config)),
    )
