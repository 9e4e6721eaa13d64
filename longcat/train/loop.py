"""The training loop: FSDP2 over the DiT, flow matching on cached latents, DCP checkpoints, export."""

from __future__ import annotations

import datetime
import logging
import math
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from longcat.files import atomic_write_text
from longcat.flow import scheduler_shift
from longcat.paths import RunLayout, latest_checkpoint
from longcat.settings import Train, settings_dict
from longcat.train.build import (
    apply_optimizer_settings,
    build_model,
    init_distributed,
    make_optimizer,
    micro_batch_generator,
)
from longcat.train.changes import change_lines
from longcat.train.checkpoint import (
    Checkpointer,
    full_model_state_dict,
    load_checkpoint,
)
from longcat.train.data import CacheSource, TrainLoader
from longcat.train.ema import WeightAverage
from longcat.train.estimate import CARDS, train_flops_per_sample, video_tokens
from longcat.train.evaluation import Evaluation
from longcat.train.heldout import split_heldout
from longcat.train.metrics import Metrics, peak_memory_gib, per_sample_scalars
from longcat.train.objective import dit_inputs, draw_micro_batch, per_sample_loss
from longcat.train.record import RunRecord
from longcat.train.schedule import make_scheduler
from longcat.train.tasks import TASKS

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # sysexits EX_TEMPFAIL: a checkpoint was saved on a signal; run again to resume


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class Progress:
    step: int = 0
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    history: list[float] = field(default_factory=list)


class StopRequest:
    """SIGTERM / SIGUSR1 (Slurm preemption, `--signal`) ask for a checkpoint and a clean exit."""

    def __init__(self):
        self.signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        log.warning("received %s: saving a checkpoint after this step", signal.Signals(signum).name)


class Trainer:
    """One process of a run: `cfg` is the run's `train` settings, `paths` its layout, `source` the cached
    samples; `sample_prompts` (the workflow's sample.prompts) stand in for empty validation_prompts."""

    def __init__(
        self,
        cfg: Train,
        paths: RunLayout,
        source: CacheSource,
        sample_prompts: Sequence[str] = (),
        identity: Mapping[str, Any] | None = None,
        resume: Path | None = None,
    ):
        """`identity` is what shapes the weights besides `cfg` (`record.run_identity`: the base model
        and the caches; a test without them passes none); `resume` a checkpoint (default: the run's
        latest). A start the run cannot take raises RunRefused before anything is built."""
        self.cfg = cfg
        self.paths = paths
        self.checkpoint = resume or latest_checkpoint(paths.checkpoints)
        self.record = RunRecord(
            cfg, identity or {}, self.checkpoint, paths.init_from, paths.base_model, source.shards
        )
        self.rank, self.world_size, self.device = init_distributed(cfg)
        torch.manual_seed(cfg.seed)
        self.source = source
        training, heldout = split_heldout(source.samples, cfg.heldout_fraction)
        self.loader = TrainLoader(
            source,
            cfg.train_batch_size,
            self.world_size,
            self.rank,
            cfg.seed,
            cfg.caption_dropout,
            cfg.dataloader_num_workers,
            samples=training,
        )
        # A resumed run's weights come from its checkpoint; a new one starts from init_from or the base.
        weights = paths.init_from if self.checkpoint is None else None
        self.model = build_model(paths.base_model, cfg, self.device, weights)
        self.optimizer = make_optimizer(self.model, cfg)
        # From step 0's weights; a resumed run loads the checkpoint's average into it.
        self.average = WeightAverage(self.model, cfg.ema_decay) if cfg.ema_decay is not None else None
        self.scheduler = make_scheduler(
            self.optimizer, cfg.lr_warmup_steps, cfg.max_train_steps, cfg.lr_scheduler
        )
        # One shift for training, validation and the exported scheduler: the run's, else the base model's.
        self.flow_shift = cfg.flow_shift if cfg.flow_shift is not None else scheduler_shift(paths.base_model)
        self.progress = Progress()
        self.checkpointer = Checkpointer(
            paths.checkpoints,
            cfg.checkpoints_total_limit,
            cfg.async_checkpoint,
            datetime.timedelta(seconds=cfg.collective_timeout_s),
        )
        dit_config = dict(self.model.config)
        self.hidden, self.depth = dit_config["hidden_size"], dit_config["depth"]
        self.patch = tuple(dit_config["patch_size"])
        self.num_params = sum(p.numel() for p in self.model.parameters())
        recorded = ((self.record.saved or {}).get("heldout") or {}).get("evaluated")
        self.evaluation = Evaluation(
            cfg,
            paths,
            source,
            training,
            heldout,
            recorded,
            sample_prompts,
            self.flow_shift,
            self.device,
            self.rank,
            self.world_size,
            self.average,
        )

    def trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.progress.step,
            "nonfinite_in_row": self.progress.nonfinite_in_row,
            "nonfinite_total": self.progress.nonfinite_total,
            "scheduler": self.scheduler.state_dict(),
            "loader": self.loader.state_dict(),
        }

    def resume(self) -> None:
        """Load the checkpoint, apply the config's optimizer settings, and open the record's new segment."""
        if self.checkpoint is not None:
            state = load_checkpoint(
                self.checkpoint, self.model, self.optimizer, self.trainer_state(), self.average_state()
            )
            self.progress.step = int(state["step"])
            self.progress.nonfinite_in_row = int(state["nonfinite_in_row"])
            self.progress.nonfinite_total = int(state["nonfinite_total"])
            self.scheduler.load_state_dict(state["scheduler"])
            apply_optimizer_settings(self.optimizer, self.scheduler, self.cfg)
            self.loader.load_state_dict(state["loader"], self.record.saved_world_size)
            saved = self.record.saved
            moved = self.loader.resume_epoch(saved["data"]["epoch_samples"]) if saved else None
            if self.rank == 0:
                log.info("resumed from %s at step %d", self.checkpoint, self.progress.step)
                for key, (old, new) in (self.record.start.changed if self.record.start else {}).items():
                    log.warning("applied from step %d on: %s %s -> %s", self.progress.step + 1, key, old, new)
                if moved:
                    log.warning("%s", moved)
        data, heldout = self.loader.data_state(), self.evaluation.record()
        self.record.open(self.progress.step, self.world_size, data, heldout)

    def average_state(self) -> dict[str, torch.Tensor] | None:
        return self.average.state_dict() if self.average is not None else None

    def save(self) -> Path:
        record = self.record.at(self.progress.step, self.loader.data_state())
        return self.checkpointer.save(
            self.progress.step, self.model, self.optimizer, self.trainer_state(), record, self.average_state()
        )

    def micro_step(self, batch: dict[str, Any], micro_index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        """Forward and backward of one micro-batch; its losses, σ and task."""
        cfg = self.cfg
        latents = batch["latents"].to(self.device, non_blocking=True)
        generator = micro_batch_generator(cfg.seed, self.rank, micro_index, self.device)
        draw = draw_micro_batch(latents.shape, generator, cfg, self.flow_shift, self.device)
        text, mask = batch["text_states"].to(self.device), batch["text_mask"].to(self.device)
        flow, inputs = dit_inputs(latents, text, mask, draw.sigmas, draw.noise, draw.num_cond_latents)
        losses = per_sample_loss(self.model(**inputs), flow)
        (losses.mean() / cfg.gradient_accumulation_steps).backward()
        return losses.detach(), flow.sigmas.detach(), draw.task

    def run(self, stop: StopRequest | None = None) -> int:
        cfg = self.cfg
        self.resume()
        metrics = Metrics(self.paths.tensorboard, self.rank == 0, self.progress.step, cfg.max_train_steps)
        metrics.hparams(settings_dict(cfg) | {"flow_shift": self.flow_shift}, self.progress.step)
        if self.record.start is not None and self.record.start.changed:
            changed = "\n".join(change_lines(self.record.start.changed))
            metrics.text(self.progress.step, "config/changed", changed)
        card = CARDS.get(cfg.gpu_type) if cfg.on_gpu else None
        batches = iter(self.loader)
        try:
            self.evaluation.at_start(self.model, self.progress.step, metrics)
            while self.progress.step < cfg.max_train_steps:
                scalars = self.train_step(batches, card)
                self.progress.step += 1
                self.checkpointer.check()
                metrics.step(self.progress.step, scalars)
                step = self.progress.step
                stopping = self.stop_requested(stop)
                if step % cfg.checkpointing_steps == 0 or step == cfg.max_train_steps or stopping:
                    self.save()
                self.evaluation.after_step(self.model, step, metrics)
                if stopping:
                    self.checkpointer.wait()
                    log.warning("stopped by signal at step %d; exit %d to be run again", step, EXIT_PREEMPTED)
                    return EXIT_PREEMPTED
            self.checkpointer.wait()
            self.export()
            return 0
        finally:
            metrics.close()

    def stop_requested(self, stop: StopRequest | None) -> bool:
        flag = torch.tensor(
            [1.0 if stop is not None and stop.signal is not None else 0.0], device=self.device
        )
        dist.all_reduce(flag)
        return bool(flag.item() > 0)

    def train_step(self, batches, card) -> dict[str, float | torch.Tensor]:
        cfg = self.cfg
        started = time.perf_counter()
        data_wait = 0.0
        rows, tokens, dropped = [], 0, 0
        self.optimizer.zero_grad(set_to_none=True)
        for micro in range(cfg.gradient_accumulation_steps):
            waited = time.perf_counter()
            batch = next(batches)
            data_wait += time.perf_counter() - waited
            micro_index = self.progress.step * cfg.gradient_accumulation_steps + micro
            micro_losses, micro_sigmas, task = self.micro_step(batch, micro_index)
            # Per sample: σ, loss, task.
            tasks = torch.full_like(micro_sigmas, TASKS.index(task), dtype=torch.float32)
            rows.append(torch.stack([micro_sigmas.float(), micro_losses.float(), tasks], dim=1))
            tokens += video_tokens(tuple(batch["latents"].shape[1:]), self.patch) * len(micro_losses)
            dropped += batch["dropped_captions"]
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        grad_norm = float(grad_norm)

        local = torch.cat(rows)
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        everything = torch.cat(gathered)
        totals = torch.tensor([float(tokens), data_wait, dropped], device=self.device, dtype=torch.float64)
        dist.all_reduce(totals)
        loss = float(everything[:, 1].mean())

        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
            self.scheduler.step()
            if self.average is not None:
                self.average.update()
            self.progress.nonfinite_in_row = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.progress.nonfinite_in_row += 1
            self.progress.nonfinite_total += 1
            log.warning(
                "step %d: non-finite loss %s or grad norm %s; step skipped (%d in a row, %d in all)",
                self.progress.step + 1,
                loss,
                grad_norm,
                self.progress.nonfinite_in_row,
                self.progress.nonfinite_total,
            )
            if self.progress.nonfinite_in_row >= cfg.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"{self.progress.nonfinite_in_row} steps in a row had a non-finite loss or gradient "
                    f"(limit train.max_nonfinite_steps={cfg.max_nonfinite_steps}); stopping. Lower the "
                    "learning rate or resume from an earlier checkpoint."
                )

        seconds = time.perf_counter() - started
        samples = everything.shape[0]
        scalars = {
            "train/loss": loss,
            "train/grad_norm": grad_norm,
            "train/lr": self.optimizer.param_groups[0]["lr"],
            "train/nonfinite_steps": float(self.progress.nonfinite_total),
            "perf/step_seconds": seconds,
            "perf/samples_per_second": samples / seconds,
            "perf/tokens_per_second": float(totals[0]) / seconds,
            "perf/data_wait_fraction": float(totals[1]) / self.world_size / seconds,
            "perf/peak_memory_gib": peak_memory_gib(self.device),
            "train/dropped_captions": float(totals[2]) / samples,
        }
        if card is not None:
            tokens_per_sample = int(totals[0]) // samples
            flops = samples * train_flops_per_sample(
                self.num_params, tokens_per_sample, self.hidden, self.depth
            )
            scalars["perf/mfu"] = flops / seconds / (card.bf16_tflops * 1e12 * self.world_size)
        scalars |= per_sample_scalars(everything.tolist())
        if finite:
            self.progress.history.append(loss)
        scalars["train/sigma"] = everything[:, 0].cpu()
        return scalars

    def export(self) -> None:
        """Gather the full weights (and the average, as train.ema_export asks), write the published
        layout to `final/`, then `train.done`."""
        exported = self.cfg.exported_weights
        trained = full_model_state_dict(self.model) if exported != "ema" else None
        average = self.average.full_state_dict(self.rank) if exported != "raw" else None
        if self.rank == 0:
            from longcat.export import export_model

            record = self.record.at(self.progress.step, self.loader.data_state())
            export_model(
                trained if trained is not None else average,
                self.paths.base_model,
                self.paths.final,
                flow_shift=self.flow_shift,
                record=record | {"weights": "ema" if trained is None else "raw"},
                max_sequence_length=self.source.max_tokens,
                average=average if exported == "both" else None,
            )
            atomic_write_text(self.paths.done, f"step {self.progress.step}\n")
            log.info("exported the model to %s", self.paths.final)
        dist.barrier()
