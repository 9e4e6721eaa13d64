"""Typed view of the `train` section of the workflow config, with the paths a run needs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from longcat.flow import SIGMA_SAMPLERS

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
ACTIVATION_CHECKPOINTING = ("all", "selective", "every", "off")
MIXED_PRECISION = ("no", "bf16")


class TrainConfigError(ValueError):
    """A `train` setting that cannot work, named with its key and the value found."""


@dataclass(frozen=True)
class TrainConfig:
    run: str = "default"
    gpus: int = 0
    num_processes: int = 1
    nodes: int = 1
    main_process_ip: str | None = None
    main_process_port: int = 29500
    gpu_type: str = "h100"
    assumed_mfu: float | None = None
    mixed_precision: str = "bf16"
    learning_rate: float = 1.0e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.01
    adam_epsilon: float = 1.0e-8
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_train_steps: int = 1000
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    checkpointing_steps: int = 2500
    checkpoints_total_limit: int = 3
    async_checkpoint: bool = True
    validation_every_n_steps: int = 0
    num_validation_videos: int = 1
    caption_dropout: float = 0.1
    sigma_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    flow_shift: float | None = None  # None: the base model scheduler's shift
    conditioned_fraction: float = 0.0
    num_cond_latents: int = 1
    activation_checkpointing: str = "all"
    activation_checkpointing_every: int = 2
    compile: bool = False
    reshard_after_forward: bool = True
    cpu_offload: bool = False
    dataloader_num_workers: int = 2
    max_nonfinite_steps: int = 10
    collective_timeout_s: int = 1800
    seed: int = 42
    validation_prompts: list[str] = field(default_factory=list)
    validation_inference_steps: int = 50
    validation_guidance_scale: float = 4.0

    @classmethod
    def from_dict(cls, section: dict[str, Any], where: str = "train") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise TrainConfigError(f"{where}: unknown keys {unknown}; expected some of {sorted(known)}")
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in section:
                continue
            values[f.name] = _coerce(f, section[f.name], where)
        config = cls(**values)
        config.validate(where)
        return config

    def validate(self, where: str = "train") -> None:
        choices = {
            "sigma_sampling": SIGMA_SAMPLERS,
            "lr_scheduler": LR_SCHEDULERS,
            "activation_checkpointing": ACTIVATION_CHECKPOINTING,
            "mixed_precision": MIXED_PRECISION,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise TrainConfigError(
                    f"{where}.{key}: expected one of {allowed}, found {getattr(self, key)!r}"
                )
        positive = (
            "num_processes",
            "nodes",
            "max_train_steps",
            "train_batch_size",
            "gradient_accumulation_steps",
            "checkpointing_steps",
            "checkpoints_total_limit",
            "activation_checkpointing_every",
            "max_nonfinite_steps",
            "collective_timeout_s",
            "validation_inference_steps",
        )
        for key in positive:
            if getattr(self, key) < 1:
                raise TrainConfigError(
                    f"{where}.{key}: expected an integer >= 1, found {getattr(self, key)!r}"
                )
        for key in ("caption_dropout", "conditioned_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise TrainConfigError(
                    f"{where}.{key}: expected a fraction in [0, 1], found {getattr(self, key)!r}"
                )
        if self.learning_rate <= 0:
            raise TrainConfigError(f"{where}.learning_rate: expected > 0, found {self.learning_rate!r}")
        if self.flow_shift is not None and self.flow_shift <= 0:
            raise TrainConfigError(f"{where}.flow_shift: expected > 0, found {self.flow_shift!r}")
        if self.gpus == 0 and self.mixed_precision != "no":
            raise TrainConfigError(
                f"{where}.mixed_precision: CPU training (gpus: 0) runs in float32; expected 'no', "
                f"found {self.mixed_precision!r}"
            )

    @property
    def world_size(self) -> int:
        return self.num_processes * self.nodes

    @property
    def on_gpu(self) -> bool:
        return self.gpus > 0


def _coerce(f: dataclasses.Field, value: Any, where: str) -> Any:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    try:
        if kind == "int":
            if isinstance(value, bool) or int(value) != value:
                raise TypeError
            return int(value)
        if kind == "float" or (kind == "float | None" and value is not None):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind == "bool":
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind == "str":
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError):
        raise TrainConfigError(f"{where}.{f.name}: expected {kind}, found {value!r}") from None
    return value


@dataclass(frozen=True)
class RunPaths:
    """Where a run reads its inputs and writes its state."""

    run_dir: Path
    vae_cache: Path
    text_cache: Path
    base_model: Path

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.run_dir / "tb"

    @property
    def validation(self) -> Path:
        return self.run_dir / "validation"

    @property
    def final(self) -> Path:
        return self.run_dir / "final"

    @property
    def done(self) -> Path:
        return self.run_dir / "train.done"


def load_workflow_config(path: str | Path) -> dict[str, Any]:
    with open(path) as handle:
        config = yaml.safe_load(handle)
    if not isinstance(config, dict) or "train" not in config:
        raise TrainConfigError(f"{path}: expected a workflow config with a 'train' section")
    return config


RUN_CONFIG_SECTIONS = ("results", "cache_dir", "runs_dir", "frames", "cache", "base_model", "train")


def run_config(config: dict[str, Any]) -> dict[str, Any]:
    """The sections a training run reads: its own, and those that name its caches and base model.

    Sampling prompts and the data source are left out, so changing them does not retrain (new data
    reaches training through new cache shards).
    """
    return _plain({key: config[key] for key in RUN_CONFIG_SECTIONS if key in config})


def write_run_config(config: dict[str, Any], path: str | Path, paths: dict[str, str] | None = None) -> None:
    """Write `run_config(config)` as YAML, atomically, with the run's input paths when given.

    Cache keys depend on more of the workflow config than training reads (the tiny tokenizer learns
    from the source's captions), so the workflow records the directories it built under `run_paths`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = run_config(config)
    if paths:
        content["run_paths"] = {key: str(value) for key, value in paths.items()}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(content, sort_keys=False))
    tmp.replace(path)


def _plain(value: Any) -> Any:
    # Snakemake's config holds its own mapping types; YAML wants builtins.
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
