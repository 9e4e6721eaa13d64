"""The held-out slice of the data and the loss on it: the standard way to see whether a finetune helps.

A clip is held out when a hash of its key falls under `train.heldout_fraction`: a property of the key
alone, so the same clips stay out of training across resumes, world sizes and data added mid-run, and
a run's held-out clips were never trained on by it. The loss on some of them (`train.heldout_eval_samples`,
the first by hash, fixed in the run's record) is computed every `train.heldout_every_n_steps` steps at
fixed σ with fixed noise per clip, for each task (text-to-video, image-to-video, continuation): the same
weights give the same numbers at every call, whatever the number of ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import xxhash

from longcat.flow import pad_captions
from longcat.train.objective import cond_latents_for, dit_inputs, per_sample_loss, sigma_bucket
from longcat.train.tasks import TASKS

if TYPE_CHECKING:
    from longcat.train.data import CacheSample, CacheSource
    from longcat.train.metrics import Metrics

log = logging.getLogger(__name__)


def heldout_rank(sample_id: str) -> float:
    """Where a key falls in [0, 1): a stable hash of the key alone."""
    return xxhash.xxh3_64_intdigest(f"heldout:{sample_id}".encode()) / 2**64


def split_heldout(
    samples: Sequence[CacheSample], fraction: float
) -> tuple[list[CacheSample], list[CacheSample]]:
    """(the samples that train, the held-out ones by hash order) for `train.heldout_fraction`."""
    heldout = sorted((s for s in samples if heldout_rank(s.sample_id) < fraction), key=_rank_of)
    out = {sample.sample_id for sample in heldout}
    return [sample for sample in samples if sample.sample_id not in out], heldout


def _rank_of(sample: CacheSample) -> float:
    return heldout_rank(sample.sample_id)


def evaluated_samples(
    heldout: Sequence[CacheSample], count: int, recorded: Sequence[str] | None
) -> list[str]:
    """The held-out samples the loss is computed on: those the run's record names when they are still
    there and as many as `count` asks for, else the first `count` by hash."""
    present = {sample.sample_id for sample in heldout}
    if recorded is not None and len(recorded) == min(count, len(heldout)) and set(recorded) <= present:
        return list(recorded)
    return [sample.sample_id for sample in heldout[:count]]


def fixed_noise(sample_id: str, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """The held-out noise of a clip: the same at every evaluation, on every rank and world size."""
    generator = torch.Generator(device="cpu").manual_seed(
        xxhash.xxh3_64_intdigest(f"noise:{sample_id}".encode())
    )
    return torch.randn(tuple(shape), generator=generator).to(device)


@dataclass(frozen=True)
class HeldoutLoss:
    """The held-out loss of one run: `sample_ids` of `source` at `sigmas`, for every task a clip is long
    enough for (continuation with the most clean latents `continuation_latents` allows)."""

    source: CacheSource
    sample_ids: tuple[str, ...]
    sigmas: tuple[float, ...]
    continuation_latents: tuple[int, ...]
    device: torch.device
    rank: int
    world_size: int

    def jobs(self) -> list[tuple[str, str, int]]:
        """(task, sample id, clean latents) of every forward pass group, in a fixed order."""
        shapes = {sample.sample_id: sample.latent_shape for sample in self.source.samples}
        jobs = []
        for task in TASKS:
            for sample_id in self.sample_ids:
                counts = cond_latents_for(task, shapes[sample_id][1], self.continuation_latents)
                if counts:
                    jobs.append((task, sample_id, counts[-1]))
        return jobs

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        """Mean loss per task and σ bucket (`heldout_loss/<task>/<bucket>`, and `/mean` over the σ).

        Collective: ranks take the jobs in turn, and each runs as many forward passes as the busiest
        (the sharded DiT gathers its weights in every forward); a rank without a job of its own repeats
        the first and drops the result.
        """
        jobs = self.jobs()
        per_rank = -(-len(jobs) // self.world_size)
        mine = jobs[self.rank :: self.world_size]
        results = torch.full((per_rank, len(self.sigmas)), float("nan"), device=self.device)
        sigmas = torch.tensor(self.sigmas, dtype=torch.float32, device=self.device)
        model.eval()
        try:
            for slot in range(per_rank):
                task, sample_id, num_cond = mine[slot] if slot < len(mine) else jobs[0]
                losses = self.losses(model, sample_id, sigmas, num_cond)
                if slot < len(mine):
                    results[slot] = losses
        finally:
            model.train()
        gathered = [torch.empty_like(results) for _ in range(self.world_size)]
        dist.all_gather(gathered, results)
        by_job = {
            job: gathered[index % self.world_size][index // self.world_size] for index, job in enumerate(jobs)
        }
        return self.summary(by_job)

    def losses(self, model, sample_id: str, sigmas: torch.Tensor, num_cond: int) -> torch.Tensor:
        """The loss of one clip at each σ, one forward pass per σ (the training's batch of one)."""
        latents = self.source.latent(sample_id).float().to(self.device)[None]
        text, mask = pad_captions([self.source.text(sample_id).float()], self.source.max_tokens)
        noise = fixed_noise(sample_id, latents.shape, self.device)
        losses = []
        for sigma in sigmas:
            flow, inputs = dit_inputs(
                latents, text.to(self.device), mask.to(self.device), sigma[None], noise, num_cond
            )
            losses.append(per_sample_loss(model(**inputs), flow)[0])
        return torch.stack(losses)

    def summary(self, by_job: dict[tuple[str, str, int], torch.Tensor]) -> dict[str, float]:
        scalars: dict[str, Any] = {}
        for task in TASKS:
            rows = [losses for (job_task, _, _), losses in by_job.items() if job_task == task]
            if not rows:
                continue
            mean = torch.stack(rows).mean(dim=0)
            buckets: dict[str, list[float]] = {}
            for sigma, value in zip(self.sigmas, mean.tolist(), strict=True):
                buckets.setdefault(sigma_bucket(sigma), []).append(value)
            for bucket, values in buckets.items():
                scalars[f"heldout_loss/{task}/{bucket}"] = sum(values) / len(values)
            scalars[f"heldout_loss/{task}/mean"] = float(mean.mean())
        return scalars

    def log(self, model: torch.nn.Module, step: int, metrics: Metrics) -> dict[str, float]:
        """Evaluate and write the scalars at `step` (rank 0); returns them."""
        scalars = self(model)
        metrics.scalars(step, scalars)
        if self.rank == 0:
            shown = ", ".join(
                f"{task} {scalars[f'heldout_loss/{task}/mean']:.4f}"
                for task in TASKS
                if f"heldout_loss/{task}/mean" in scalars
            )
            log.info("step %d: held-out loss %s", step, shown)
        return scalars
