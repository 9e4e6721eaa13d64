"""What a run shows besides its training loss: the held-out loss (`longcat.train.heldout`) and the
validation videos (`longcat.train.validation`), with the trained weights or, with train.ema_validation,
their average. The trainer hands it the model after each step."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from longcat.settings import Train
from longcat.train.heldout import HeldoutLoss, evaluated_samples
from longcat.train.validation import Validator, most_common_shape, validation_prompts

if TYPE_CHECKING:
    from longcat.paths import RunLayout
    from longcat.train.data import CacheSample, CacheSource
    from longcat.train.ema import WeightAverage
    from longcat.train.metrics import Metrics

log = logging.getLogger(__name__)


class Evaluation:
    """The held-out loss and the validation videos of one run: `heldout` are the samples that never train
    (by hash order), `recorded` the held-out samples the run's record names as evaluated (None: a new
    run), `training` the samples that train."""

    def __init__(
        self,
        cfg: Train,
        paths: RunLayout,
        source: CacheSource,
        training: Sequence[CacheSample],
        heldout: Sequence[CacheSample],
        recorded: Sequence[str] | None,
        sample_prompts: Sequence[str],
        flow_shift: float,
        device: torch.device,
        rank: int,
        world_size: int,
        average: WeightAverage | None,
    ):
        self.cfg = cfg
        self.average = average if cfg.ema_validation else None
        self.heldout_count = len(heldout)
        self.evaluated = evaluated_samples(heldout, cfg.heldout_eval_samples, recorded)
        if cfg.heldout_fraction and not heldout and rank == 0:
            log.warning(
                "train.heldout_fraction %s holds out none of the %d samples: no held-out loss or videos",
                cfg.heldout_fraction,
                len(source.samples),
            )
        self.heldout_loss = None
        if cfg.heldout_every_n_steps and self.evaluated:
            self.heldout_loss = HeldoutLoss(
                source,
                tuple(self.evaluated),
                cfg.heldout_sigmas,
                cfg.continuation_latents,
                device,
                rank,
                world_size,
            )
        self.validator = None
        if cfg.validation_every_n_steps:
            frames = {sample.sample_id: sample.latent_shape[1] for sample in source.samples}
            # The held-out videos come from the first evaluated clip of the longest length trained there.
            clip = max(self.evaluated, key=frames.__getitem__) if self.evaluated else None
            self.validator = Validator(
                prompts=tuple(
                    validation_prompts(cfg.validation_prompts, sample_prompts, cfg.num_validation_videos)
                ),
                num_inference_steps=cfg.validation_inference_steps,
                guidance_scale=cfg.validation_guidance_scale,
                seed=cfg.seed,
                flow_shift=flow_shift,
                out_dir=paths.validation,
                base_model=paths.base_model,
                latent_shape=most_common_shape(sample.latent_shape for sample in training),
                max_tokens=source.max_tokens,
                fps=source.fps,
                source=source,
                heldout_clip=clip,
                continuation_latents=cfg.continuation_latents,
                device=device,
                dtype=torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float32,
                rank=rank,
            )

    def record(self) -> dict[str, Any]:
        """What the run's record says of its held-out slice."""
        return {"samples": self.heldout_count, "evaluated": list(self.evaluated)}

    def weights(self, model: torch.nn.Module):
        """The weights the held-out loss and the videos use: the average with train.ema_validation."""
        return self.average.swapped_in(model) if self.average is not None else contextlib.nullcontext()

    def at_start(self, model: torch.nn.Module, step: int, metrics: Metrics) -> None:
        """The held-out loss before the first step of a new run."""
        if self.heldout_loss is not None and step == 0:
            with self.weights(model):
                self.heldout_loss.log(model, step, metrics)

    def after_step(self, model: torch.nn.Module, step: int, metrics: Metrics) -> None:
        """The held-out loss and the videos, at the steps their settings name."""
        cfg = self.cfg
        heldout = self.heldout_loss is not None and step % cfg.heldout_every_n_steps == 0
        videos = self.validator is not None and step % cfg.validation_every_n_steps == 0
        if heldout or videos:
            with self.weights(model):
                if heldout:
                    self.heldout_loss.log(model, step, metrics)
                if videos:
                    self.validator(model, step, metrics)
