"""`python -m longcat.train --config FILE [--dry-run] [--resume DIR]`, one process per GPU (or CPU rank).

Launch with `accelerate launch --multi_gpu --num_processes N -m longcat.train ...` (or torchrun); the
`train` rule builds that command from the config.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from longcat.train.config import TrainConfig, TrainConfigError, load_workflow_config
from longcat.train.paths import run_paths

log = logging.getLogger("longcat.train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m longcat.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="workflow config (YAML) with a 'train' section")
    parser.add_argument("--dry-run", action="store_true", help="check config and data, estimate, and exit")
    parser.add_argument(
        "--resume", type=Path, help="a checkpoint step-N directory (default: the latest of the run)"
    )
    parser.add_argument("--run-dir", type=Path, help="default: {runs_dir}/{train.run}")
    parser.add_argument("--base-model", type=Path, help="default: {results}/base_model")
    parser.add_argument("--vae-cache", type=Path, help="default: {cache_dir}/vae/<key of the config>")
    parser.add_argument("--text-cache", type=Path, help="default: {cache_dir}/text/<key of the config>")
    return parser.parse_args(argv)


def setup_logging() -> int:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return rank


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = setup_logging()
    workflow_config = load_workflow_config(args.config)
    try:
        cfg = TrainConfig.from_dict(workflow_config["train"], where=f"{args.config}: train")
    except TrainConfigError as error:
        log.error("%s", error)
        return 2
    paths = run_paths(workflow_config, cfg, args.run_dir, args.base_model, args.vae_cache, args.text_cache)

    if args.dry_run:
        if rank == 0:
            from longcat.train.dry_run import dry_run_report, format_report

            report = dry_run_report(workflow_config, cfg, paths)
            sys.stdout.write(format_report(report) + "\n" + json.dumps(report) + "\n")
        return 0

    from longcat.cache import CacheError, CacheReader
    from longcat.train.loop import StopRequest, Trainer

    stop = StopRequest()
    try:
        source = CacheReader(paths.vae_cache, paths.text_cache)
        source.check()
    except CacheError as error:
        log.error("training data: %s", error)
        return 2
    trainer = Trainer(cfg, paths, source, workflow_config)
    try:
        return trainer.run(args.resume, stop)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
