"""`python -m longcat.train --config FILE [--dry-run] [--resume DIR]`, one process per GPU (or CPU rank).

Launch with `accelerate launch --multi_gpu --num_processes N -m longcat.train ...` (or torchrun); the
`train` rule builds that command from the config. FILE is a run's `train_config.yaml` (or a whole
workflow config); the paths default to those of `longcat.paths.Layout`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import yaml

from longcat.config import ConfigError
from longcat.paths import Layout, RunLayout
from longcat.settings import load_run_settings, load_settings

log = logging.getLogger("longcat.train")

EXIT_WRITE_FAILED = 74  # sysexits EX_IOERR: a log, TensorBoard or checkpoint write failed (a full disk)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m longcat.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a run's train_config.yaml or a workflow config")
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
    from longcat.train.metrics import LogHandler

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
        handlers=[LogHandler(sys.stderr)],
    )
    return rank


def stopped_by(failed: Exception, step: int, checkpoints: Path) -> str:
    """The message of a run a failed write stopped: what failed, where, and where it resumes."""
    from longcat.paths import latest_checkpoint

    latest = latest_checkpoint(checkpoints)
    resume = (
        f"the last complete checkpoint is {latest}: make room (or move runs_dir), then run again to "
        "resume from it"
        if latest is not None
        else "there is no complete checkpoint yet: make room (or move runs_dir), then run again"
    )
    return f"training stopped at step {step}: {failed}. {resume}"


def run_layout(args: argparse.Namespace, default: RunLayout) -> RunLayout:
    """The layout of the settings, with the paths given on the command line (the workflow gives them all)."""
    return RunLayout(
        run_dir=args.run_dir or default.run_dir,
        base_model=args.base_model or default.base_model,
        vae_cache=args.vae_cache or default.vae_cache,
        text_cache=args.text_cache or default.text_cache,
        init_from=default.init_from,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = setup_logging()
    with open(args.config) as handle:
        config = yaml.safe_load(handle)
    try:
        settings = load_run_settings(config, origin=args.config)
        # A whole workflow config also names the sample prompts that empty validation_prompts fall back to.
        sample_prompts = load_settings(config, args.config).sample.prompts if "sample" in config else ()
    except ConfigError as error:
        log.error("%s", error)
        return 2
    cfg = settings.train
    paths = run_layout(args, Layout.from_settings(settings).train_run)

    if args.dry_run:
        if rank == 0:
            from longcat.train.dry_run import dry_run_report, format_report

            report = dry_run_report(settings, paths)
            sys.stdout.write(format_report(report) + "\n" + json.dumps(report) + "\n")
        return 0

    from longcat.cache.reader import CacheReader
    from longcat.cache.spec import CacheError
    from longcat.files import WriteFailed
    from longcat.train.changes import RunRefused
    from longcat.train.loop import StopRequest, Trainer
    from longcat.train.preflight import training_set_problem
    from longcat.train.record import run_identity

    stop = StopRequest()
    # Before any process group: every rank finds the same caches, so each stops on its own, and only
    # rank 0 says why.
    try:
        source = CacheReader(paths.vae_cache, paths.text_cache)
        source.check()
        problem = training_set_problem(source, cfg)
    except CacheError as error:
        problem = str(error)
    if problem:
        if rank == 0:
            log.error("training data: %s", problem)
        return 2
    try:
        trainer = Trainer(cfg, paths, source, sample_prompts, run_identity(settings), args.resume)
    except RunRefused as error:
        if rank == 0:
            log.error("%s", error)
        return 2
    try:
        return trainer.run(stop)
    except WriteFailed as failed:
        try:
            log.error("%s", stopped_by(failed, trainer.progress.step, paths.checkpoints))
        except WriteFailed:
            pass  # the log's own disk is full: the exit status is all that can be said
        return EXIT_WRITE_FAILED
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
