"""The one rule a run follows when its config changed between two starts (`check_start`).

On every start from a checkpoint, against the record it holds (`longcat.train.record`):
- A change of what shapes the trained weights (the base model, the caches' specs, FIXED_KEYS) is
  refused: one message lists each key, old -> new, and the ways forward (a new `train.run`, optionally
  `train.init_from` the old run's weights).
- OPTIMIZER_KEYS changed are applied to the optimizer from the resumed step on (AdamW's moments are
  kept); RUN_KEYS changed are applied. Both are logged and recorded in the new segment of the record.
- A finished run (its checkpoint is at its max_train_steps) takes no change but a larger
  `max_train_steps`, which continues it: anything else would train nothing, so it is refused, and so
  is data added since it trained.
- A run cannot be shortened below the step its checkpoint holds.
The workflow applies the same rule when it builds the DAG (rules/common.smk), so a refused change stops
`snakemake train` before any job, and the train job applies it again on the files it finds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from longcat.params import flatten
from longcat.settings import Train, settings_dict

# What a step computes: refused on resume.
FIXED_KEYS = frozenset(
    {
        "seed",
        "train_batch_size",
        "gradient_accumulation_steps",
        "caption_dropout",
        "sigma_sampling",
        "logit_mean",
        "logit_std",
        "flow_shift",
        "image_to_video_fraction",
        "continuation_fraction",
        "continuation_latents",
        "heldout_fraction",
        "ema_decay",
        "mixed_precision",
        "init_from",
    }
)
# The optimizer's hyperparameters and schedule: applied from the resumed step on.
OPTIMIZER_KEYS = frozenset(
    {
        "learning_rate",
        "lr_scheduler",
        "lr_warmup_steps",
        "adam_beta1",
        "adam_beta2",
        "adam_weight_decay",
        "adam_epsilon",
        "max_grad_norm",
    }
)
# How long, where and how fast the run goes, and what it shows: applied from the resumed step on.
# The world size is one of them: a checkpoint reshards onto any number of ranks (the global batch, and
# so each step's samples, change with it, and the record says so).
RUN_KEYS = frozenset(
    {
        "run",
        "gpus",
        "num_processes",
        "nodes",
        "max_train_steps",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "async_checkpoint",
        "validation_every_n_steps",
        "num_validation_videos",
        "validation_prompts",
        "validation_inference_steps",
        "validation_guidance_scale",
        "heldout_eval_samples",
        "heldout_every_n_steps",
        "heldout_sigmas",
        "ema_export",
        "ema_validation",
        "main_process_ip",
        "main_process_port",
        "gpu_type",
        "assumed_mfu",
        "assumed_bus_bandwidth_gbps",
        "activation_checkpointing",
        "activation_checkpointing_every",
        "compile",
        "attention_backend",
        "reshard_after_forward",
        "cpu_offload",
        "dataloader_num_workers",
        "memory_gb",
        "time_limit_minutes",
        "max_nonfinite_steps",
        "collective_timeout_s",
    }
)


class RunRefused(RuntimeError):
    """The config asks a run for something it cannot do; the message says what and the ways forward."""


def fixed_part(train: Mapping) -> dict[str, Any]:
    """The FIXED_KEYS of a train section (settings or a record's)."""
    return {key: train.get(key) for key in sorted(FIXED_KEYS)}


def differences(old: Mapping, new: Mapping, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """{"a.b": (old, new)} for every leaf that differs, is added or removed (None stands for absent)."""
    before, after = flatten(old, prefix), flatten(new, prefix)
    return {
        key: (before.get(key), after.get(key))
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    }


def show(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value)


def change_lines(changes: Mapping[str, tuple[Any, Any]]) -> list[str]:
    return [f"  {key}: {show(old)} -> {show(new)}" for key, (old, new) in changes.items()]


@dataclass
class Start:
    """What a start from a checkpoint applies: the changed settings, by kind, each old -> new."""

    optimizer: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    run: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def changed(self) -> dict[str, tuple[Any, Any]]:
        return {**self.optimizer, **self.run}


def is_finished(record: Mapping) -> bool:
    return int(record["step"]) >= int(record["train"]["max_train_steps"])


def new_run(record: Mapping) -> str:
    """How to start a new run instead, from the weights of the run `record` describes."""
    run = record["run"]
    weights = (
        f"train.init_from: {run} (its final model)"
        if is_finished(record)
        else f"train.init_from naming a model of it (`snakemake export` writes its latest checkpoint to "
        f"{run}/exports/step-{record['step']} in runs_dir)"
    )
    return (
        f"start a new run: set train.run to a new name (e.g. {run}-2), and to start it from this run's "
        f"weights with a fresh optimizer, {weights}"
    )


def check_start(
    record: Mapping,
    identity: Mapping,
    cfg: Train,
    where: str,
    shards: Callable[[], Sequence[str]] = tuple,
) -> Start:
    """The rule of this module for a run whose checkpoint holds `record`, started with `identity` (see
    `run_identity`) and train settings `cfg`; `shards()` gives the cache shards there are now, asked
    only of a finished run. Returns what the start applies, or raises RunRefused; `where` names the
    checkpoint."""
    run = record["run"]
    step = int(record["step"])
    now = settings_dict(cfg)
    fixed = differences(
        {**record["identity"], "train": fixed_part(record["train"])}, {**identity, "train": fixed_part(now)}
    )
    if fixed:
        raise RunRefused(
            "\n".join(
                [
                    f"run {run} ({where}, step {step}) was trained with other settings than the config now "
                    "gives; these shape the trained weights and cannot change within a run:",
                    *change_lines(fixed),
                    f"Either restore them, or {new_run(record)}.",
                ]
            )
        )
    start = Start()
    for key, change in differences(record["train"], now).items():
        top = key.split(".")[0]
        (start.optimizer if top in OPTIMIZER_KEYS else start.run)[f"train.{key}"] = change
    if cfg.max_train_steps < step:
        raise RunRefused(
            f"run {run} ({where}) is at step {step}, past train.max_train_steps {cfg.max_train_steps}: a "
            f"run cannot be shortened. Set train.max_train_steps to {record['train']['max_train_steps']} "
            f"again; `snakemake export` writes a model of its latest checkpoint, and "
            f"`python -m longcat.train.export` of any kept one."
        )
    if not is_finished(record) or cfg.max_train_steps > step:
        return start
    new_shards = sorted(set(shards()) - set(record["data"]["shards"]))
    if start.changed or new_shards:
        lines = [
            f"run {run} ({where}) finished at step {step} (train.max_train_steps {step}); since then:",
            *change_lines(start.changed),
        ]
        if new_shards:
            lines.append(f"  data: {len(new_shards)} new cache shards ({shard_list(new_shards)})")
        lines += [
            "A finished run trains no more steps, so none of this would be applied. Either continue this "
            f"run with it: raise train.max_train_steps (settings apply from step {step + 1}, new data joins "
            f"at the next epoch); or {new_run(record)}. Restoring the settings leaves the run as it is "
            "(`snakemake cache` builds the caches of new shards without training)."
        ]
        raise RunRefused("\n".join(lines))
    return start


def shard_list(shards: Sequence[str], shown: int = 6) -> str:
    more = f", ... {len(shards) - shown} more" if len(shards) > shown else ""
    return ", ".join(shards[:shown]) + more
