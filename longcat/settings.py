"""The workflow config as typed, frozen objects, one per stage, built once from the checked config.

`config/schema.yaml` is the single source of keys, types, defaults and documentation: `load_settings`
checks the config against it (one line naming the first bad key), fills the schema's defaults, and
builds these objects from the result. The classes declare fields only, never defaults; a test keeps
their fields equal to the schema's keys. The library receives these objects, never the raw dict.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from longcat.config import SCHEMA, ConfigError, check_config, fill_defaults, load_yaml
from longcat.vae_frames import is_frame_count


@dataclass(frozen=True)
class Demo:
    num_clips: int
    seed: int


@dataclass(frozen=True)
class Source:
    kind: str
    path: str | None
    bucket: str | None
    prefix: str
    region: str | None
    endpoint_url: str | None
    inventory: str | None
    list_workers: int
    follow_symlinks: bool

    def identity(self) -> dict:
        """Where the clips are (not how they are listed): the probe and shard history is kept per source,
        so a config of another source never takes this one's shard assignments or probe records."""
        if self.kind == "local":
            return {"kind": self.kind, "path": self.path}
        return {
            "kind": self.kind,
            "endpoint_url": self.endpoint_url,
            "bucket": self.bucket,
            "prefix": self.prefix,
        }


@dataclass(frozen=True)
class Probe:
    chunks: int
    workers: int
    min_width: int
    min_height: int
    decode_check: bool
    max_caption_bytes: int


@dataclass(frozen=True)
class Frames:
    num_frames: int
    fps: float
    frame_buckets: tuple[int, ...]
    short_clip: str
    max_stretch: float
    resolution: int
    buckets: tuple[tuple[int, int], ...] | None

    def __post_init__(self):
        # Refused here, before any job, what the frame plan and the VAE would refuse later.
        if not is_frame_count(self.num_frames):
            raise ConfigError(
                f"frames.num_frames: expected 4k+1 (the VAE compresses time 4x: 17, 49, 73, 93, ...), "
                f"found {self.num_frames}"
            )
        for index, count in enumerate(self.frame_buckets):
            if not is_frame_count(count) or count > self.num_frames:
                raise ConfigError(
                    f"frames.frame_buckets[{index}]: expected 4k+1 and at most frames.num_frames "
                    f"({self.num_frames}), found {count}"
                )


@dataclass(frozen=True)
class Shards:
    size: int
    exclude: str | None


@dataclass(frozen=True)
class TinyModel:
    seed: int
    hidden_size: int
    depth: int
    num_heads: int
    text_dim: int
    adaln_tembed_dim: int


@dataclass(frozen=True)
class HubModel:
    id: str
    revision: str


@dataclass(frozen=True)
class BaseModel:
    kind: str
    tiny: TinyModel
    dir: str | None
    hf: HubModel | None

    def identity(self) -> dict:
        """What decides the base model's bytes: the settings of its kind only (the base_model rule's
        params and part of every cache key), so that editing another kind's keys rebuilds nothing."""
        return {"kind": self.kind, self.kind: settings_dict(getattr(self, self.kind))}


@dataclass(frozen=True)
class Cache:
    dtype: str
    max_tokens: int
    decode_workers: int
    vae_batch_size: int
    cudnn_benchmark: bool
    channels_last: bool
    fused_rms_norm: bool
    max_failed_fraction: float
    vae_compile: bool


@dataclass(frozen=True)
class Train:
    run: str
    gpus: int
    num_processes: int
    nodes: int
    mixed_precision: str
    learning_rate: float
    lr_scheduler: str
    lr_warmup_steps: int
    max_train_steps: int
    train_batch_size: int
    gradient_accumulation_steps: int
    max_grad_norm: float
    checkpointing_steps: int
    checkpoints_total_limit: int
    async_checkpoint: bool
    validation_every_n_steps: int
    num_validation_videos: int
    caption_dropout: float
    seed: int
    main_process_ip: str | None
    main_process_port: int
    gpu_type: str
    assumed_mfu: float | None
    assumed_bus_bandwidth_gbps: float | None
    adam_beta1: float
    adam_beta2: float
    adam_weight_decay: float
    adam_epsilon: float
    sigma_sampling: str
    logit_mean: float
    logit_std: float
    flow_shift: float | None
    init_from: str | None
    image_to_video_fraction: float
    continuation_fraction: float
    continuation_latents: tuple[int, ...]
    heldout_fraction: float
    heldout_eval_samples: int
    heldout_every_n_steps: int
    heldout_sigmas: tuple[float, ...]
    ema_decay: float | None
    ema_export: str
    ema_validation: bool
    activation_checkpointing: str
    activation_checkpointing_every: int
    compile: bool
    attention_backend: str
    reshard_after_forward: bool
    cpu_offload: bool
    memory_gb: int
    time_limit_minutes: int
    dataloader_num_workers: int
    max_nonfinite_steps: int
    collective_timeout_s: int
    validation_prompts: tuple[str, ...]
    validation_inference_steps: int
    validation_guidance_scale: float

    def __post_init__(self):
        if self.gpus == 0 and self.mixed_precision != "no":
            raise ConfigError(
                f"train.mixed_precision: CPU training (gpus: 0) runs in float32; expected 'no', "
                f"found {self.mixed_precision!r}"
            )
        # Settings built from part of a section (the estimate's) leave the others None.
        if (self.image_to_video_fraction or 0) + (self.continuation_fraction or 0) > 1:
            raise ConfigError(
                "train.continuation_fraction: expected at most 1 - train.image_to_video_fraction "
                f"({1 - self.image_to_video_fraction:g}), found {self.continuation_fraction:g}"
            )

    @property
    def world_size(self) -> int:
        return self.num_processes * self.nodes

    @property
    def exported_weights(self) -> str:
        """What the run's model holds: raw (the trained weights), ema (their average) or both (the
        average's model in ema/ beside); raw without a weight average."""
        return "raw" if self.ema_decay is None else self.ema_export

    @property
    def on_gpu(self) -> bool:
        return self.gpus > 0


@dataclass(frozen=True)
class Sample:
    prompts: tuple[str, ...]
    num_frames: int | None
    num_inference_steps: int
    guidance_scale: float

    def __post_init__(self):
        if self.num_frames is not None and not is_frame_count(self.num_frames):
            raise ConfigError(
                f"sample.num_frames: expected 4k+1 (the VAE compresses time 4x: 17, 49, 73, 93, ...), "
                f"found {self.num_frames}"
            )


@dataclass(frozen=True)
class Estimate:
    vae_clips_per_s: float
    text_captions_per_s: float


@dataclass(frozen=True)
class Settings:
    results: str
    cache_dir: str
    runs_dir: str
    source: Source
    demo: Demo | None
    probe: Probe
    frames: Frames
    shards: Shards
    base_model: BaseModel
    cache: Cache
    train: Train
    sample: Sample
    estimate: Estimate


# The sections a training run reads: its own, and those that name its caches and base model. Sampling
# prompts and the data source are left out, so changing them does not retrain.
RUN_SECTIONS = ("results", "cache_dir", "runs_dir", "frames", "cache", "base_model", "train")


@dataclass(frozen=True)
class RunSettings:
    results: str
    cache_dir: str
    runs_dir: str
    frames: Frames
    cache: Cache
    base_model: BaseModel
    train: Train


def load_settings(config: Mapping, origin: str = "config") -> Settings:
    """Check `config` against the schema, fill its defaults, and build the typed settings."""
    check_config(config, SCHEMA, origin)
    try:
        return build(Settings, fill_defaults(plain(config)))
    except ConfigError as error:  # a rule across keys that the schema cannot state
        raise ConfigError(f"{origin} key {error}") from None


def load_run_settings(config: Mapping, origin: str = "run config") -> RunSettings:
    """The settings a training run reads (`RUN_SECTIONS`), from a run config or a whole workflow config."""
    schema = load_yaml(SCHEMA)
    run_schema = {
        **schema,
        "required": list(RUN_SECTIONS),
        "properties": {key: schema["properties"][key] for key in RUN_SECTIONS},
    }
    sections = {key: value for key, value in plain(config).items() if key in RUN_SECTIONS}
    check_config(sections, run_schema, origin)
    return build(RunSettings, fill_defaults(sections, run_schema))


def settings_dict(value: Any) -> Any:
    """Any settings object as plain values (e.g. for YAML, JSON or a cache spec)."""
    if dataclasses.is_dataclass(value):
        return {field.name: settings_dict(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [settings_dict(item) for item in value]
    return value


def plain(value: Any) -> Any:
    """Builtin dicts and lists all the way down (Snakemake's config holds its own mapping types)."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return copy.copy(value)


def build(cls: type, values: Mapping) -> Any:
    """Build dataclass `cls` from checked, default-filled `values`, recursing into nested sections."""
    hints = typing.get_type_hints(cls)
    return cls(
        **{
            field.name: _convert(hints[field.name], values.get(field.name))
            for field in dataclasses.fields(cls)
        }
    )


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return _convert(next(arg for arg in typing.get_args(hint) if arg is not type(None)), value)
    if dataclasses.is_dataclass(hint):
        return build(hint, value)
    if typing.get_origin(hint) is tuple:
        return tuple(_convert(typing.get_args(hint)[0], item) for item in value)
    if hint is float:
        return float(value)
    return value
