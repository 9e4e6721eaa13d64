"""FSDP2 training on 2 gloo processes: overfit, checkpoints, TensorBoard, validation video, export, resume.

The model, FSDP2, DCP, TensorBoard, the pipeline and ffmpeg are real; the cache is an in-memory stand-in
with the CacheReader interface (the data, not the code under test).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from conftest import TINY_MODEL, TRAIN_PROMPTS, free_port, train_settings

from longcat.paths import RunLayout
from longcat.settings import Train
from longcat.train.tasks import TASKS

TEXT_DIM = TINY_MODEL["text_dim"]


@dataclass(frozen=True)
class Sample:
    sample_id: str
    shard: str
    latent_shape: tuple[int, int, int, int]
    text_len: int


class MemoryCache:
    """Latents and captions in two shape buckets, with the CacheReader interface.

    Like latents of real clips, samples share structure (a pattern per bucket plus a small variation),
    which is what makes an overfit run's loss fall.
    """

    max_tokens = 8
    fps = 12.0  # not the model's 15: validation videos are written at the caches' rate

    def __init__(self, count: int = 8, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        shapes = [(16, 3, 4, 6), (16, 2, 6, 4)]
        patterns = {shape: torch.randn(shape, generator=generator) for shape in shapes}
        self.samples, self._latents, self._texts = [], {}, {}
        for index in range(count):
            shape = shapes[index % 2]
            sample_id = f"clip-{index:03d}"
            length = 3 + index % 4
            self.samples.append(Sample(sample_id, f"{index // 4:05d}", shape, length))
            self._latents[sample_id] = patterns[shape] + 0.1 * torch.randn(shape, generator=generator)
            self._texts[sample_id] = torch.randn(length, TEXT_DIM, generator=generator)
        self.shards = sorted({sample.shard for sample in self.samples})

    def latent(self, sample_id):
        return self._latents[sample_id]

    def text(self, sample_id):
        return self._texts[sample_id]

    def empty_text(self):
        return torch.zeros(1, TEXT_DIM)


def run_layout(work: Path) -> RunLayout:
    return RunLayout(work / "run", work / "base_model", work / "vae", work / "text")


def train_config(**overrides) -> Train:
    values = {
        "run": "test",
        "gpus": 0,
        "num_processes": 2,
        "mixed_precision": "no",
        "learning_rate": 3e-3,
        "lr_warmup_steps": 2,
        "max_train_steps": 20,
        "checkpointing_steps": 10,
        "checkpoints_total_limit": 2,
        "validation_every_n_steps": 0,
        "caption_dropout": 0.1,
        "flow_shift": 1.0,
        # Mid-range σ: the loss of 160 steps on these samples falls clearly (uniform σ, the default,
        # keeps drawing σ near 1, where the loss stays high; the overfit gate trains with it).
        "sigma_sampling": "logit_normal",
        "dataloader_num_workers": 1,
        "activation_checkpointing": "every",
        "collective_timeout_s": 120,
        "seed": 7,
        "validation_prompts": tuple(TRAIN_PROMPTS),
        "validation_inference_steps": 2,
        "validation_guidance_scale": 1.0,
        # Every task; clip-000, -005 and -007 held out by key hash; a weight average exported beside.
        "image_to_video_fraction": 0.25,
        "continuation_fraction": 0.25,
        "continuation_latents": (2,),
        "heldout_fraction": 0.1,
        "heldout_every_n_steps": 10,
        "heldout_sigmas": (0.25, 0.75),
        "ema_decay": 0.9,
        "ema_export": "both",
    }
    values.update(overrides)
    return train_settings(**values)


def _worker(rank: int, world_size: int, port: int, work: str, train: Train, resume: str | None) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    from longcat.train.loop import Trainer

    work = Path(work)
    trainer = Trainer(train, run_layout(work), MemoryCache(), resume=Path(resume) if resume else None)
    code = trainer.run()
    if rank == 0:
        resumed_at = trainer.progress.step - len(trainer.progress.history)
        (work / "result.json").write_text(
            json.dumps({"code": code, "resumed_at": resumed_at, "losses": trainer.progress.history})
        )
    torch.distributed.destroy_process_group()


def run_training(work: Path, world_size: int = 2, resume: Path | None = None, **overrides) -> dict:
    train = train_config(num_processes=world_size, **overrides)
    resume_arg = str(resume) if resume else None
    mp.spawn(
        _worker, args=(world_size, free_port(), str(work), train, resume_arg), nprocs=world_size, join=True
    )
    return json.loads((work / "result.json").read_text())


def workdir(tmp_path: Path, base_model: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "base_model").symlink_to(base_model)
    return tmp_path


def scalars(run: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {event.step: event.value for event in events.Scalars(tag)}


def read_video(path: Path) -> torch.Tensor:
    """The frames of an mp4 as float RGB [F, H, W, 3] in [0, 1]."""
    import av

    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return torch.tensor(frames).float() / 255


def test_overfit_checkpoints_tensorboard_validation_and_export(tmp_path, train_base_model):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    work = workdir(tmp_path, train_base_model)
    result = run_training(
        work,
        max_train_steps=160,
        checkpointing_steps=40,
        validation_every_n_steps=160,
        caption_dropout=0.0,
        heldout_every_n_steps=40,
    )
    assert result["code"] == 0
    losses = result["losses"]
    assert len(losses) == 160
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert last <= 0.5 * first, f"loss fell from {first:.3f} to {last:.3f}, less than 50%"

    run = work / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-120", "step-160"]
    assert (run / "checkpoints" / "step-160" / ".metadata").is_file()

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    expected = [
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "perf/samples_per_second",
        "perf/tokens_per_second",
    ]
    expected += ["perf/step_seconds", "perf/data_wait_fraction", "perf/peak_memory_gib"]
    for tag in expected:
        assert tag in scalars, tag
    assert len(events.Scalars("train/loss")) == 160
    assert any(tag.startswith("loss_by_sigma/") for tag in scalars)
    assert {f"loss_by_task/{task}" for task in TASKS} <= set(scalars)
    assert events.Tags()["images"], "validation frames missing from TensorBoard"
    assert "train/sigma" in events.Tags()["histograms"], "the σ histogram is missing from TensorBoard"

    # The held-out loss of clips that never trained, at fixed σ and noise: evaluated at step 0, then
    # every 40 steps, per task and σ bucket; it falls as the shared patterns are learnt.
    for task in TASKS:
        heldout = {event.step: event.value for event in events.Scalars(f"heldout_loss/{task}/mean")}
        assert sorted(heldout) == [0, 40, 80, 120, 160], task
        assert heldout[160] < 0.7 * heldout[0], (task, heldout)
        assert f"heldout_loss/{task}/0.25-0.50" in scalars and f"heldout_loss/{task}/0.75-1.00" in scalars
    record = yaml.safe_load((run / "final" / "training.yaml").read_text())
    assert record["heldout"] == {"samples": 3, "evaluated": ["clip-007", "clip-000", "clip-005"]}
    assert record["data"]["samples"] == 5 and record["data"]["latent_frames"] == {2: 2, 3: 3}

    import ffmpeg

    step_dir = run / "validation" / "step-160"
    names = ["heldout-clip", *(f"heldout-{task}" for task in TASKS), "video-00"]
    assert sorted(path.stem for path in step_dir.glob("*.mp4")) == sorted(names)
    for name in names:
        stream = ffmpeg.probe(str(step_dir / f"{name}.mp4"))["streams"][0]
        assert stream["avg_frame_rate"] == "12/1", name  # the caches' frame rate
        assert int(stream["nb_frames"]) == 9, name  # the held-out clip's 3 latent frames; 3 is the common
    # The conditioned videos start from the held-out clip's own first frames (kept clean); the
    # text-to-video one, from the same seed and caption, does not.
    clip, t2v, i2v, continuation = (
        read_video(step_dir / f"heldout-{name}.mp4")
        for name in ("clip", "text_to_video", "image_to_video", "continuation")
    )
    to_clip = {name: float((video[0] - clip[0]).square().mean()) for name, video in
               (("t2v", t2v), ("i2v", i2v), ("continuation", continuation))}  # fmt: skip
    assert to_clip["i2v"] < 0.1 * to_clip["t2v"] and to_clip["continuation"] < 0.1 * to_clip["t2v"], to_clip
    assert float((continuation[:5] - clip[:5]).square().mean()) < 0.1 * to_clip["t2v"]

    assert (run / "train.done").is_file()
    from longcat.pipeline import LongCatVideoPipeline
    from longcat.samples import trained_num_frames

    pipeline = LongCatVideoPipeline.from_pretrained(run / "final")
    # The caption length it trained with (the text cache's max_tokens), recorded and used.
    assert pipeline.config.max_sequence_length == MemoryCache.max_tokens
    assert pipeline.encode_prompt(TRAIN_PROMPTS[0])[0].shape[2] == MemoryCache.max_tokens
    # The sample rule's default length: the largest the run trained, 3 latent frames.
    assert trained_num_frames(run / "final", pipeline.vae_scale_factor_temporal) == 9
    # The weight average beside the trained weights, a model of its own.
    average = LongCatVideoPipeline.from_pretrained(run / "final" / "ema")
    assert yaml.safe_load((run / "final" / "ema" / "training.yaml").read_text())["weights"] == "ema"
    trained, averaged = pipeline.dit.state_dict(), average.dit.state_dict()
    assert trained.keys() == averaged.keys()
    assert any(not torch.equal(trained[name], averaged[name]) for name in trained)
    # The run overrides the base model's shift (12): the exported scheduler samples as it trained.
    assert json.loads((train_base_model / "scheduler" / "scheduler_config.json").read_text())["shift"] == 12.0
    assert pipeline.scheduler.config.shift == train_config().flow_shift == 1.0
    frames = pipeline(
        TRAIN_PROMPTS[0],
        num_frames=5,
        height=32,
        width=32,
        num_inference_steps=2,
        guidance_scale=1.0,
        output_type="pt",
    ).frames
    assert frames.shape[1:3] == (5, 3) and torch.isfinite(frames).all()


def checkpoint_weights(checkpoint: Path, base_model: Path, average: bool) -> dict[str, torch.Tensor]:
    from longcat.model import LongCatVideoTransformer3DModel
    from longcat.train.checkpoint import load_model_weights_offline

    model = LongCatVideoTransformer3DModel.from_config(
        LongCatVideoTransformer3DModel.load_config(base_model / "dit")
    )
    return load_model_weights_offline(checkpoint, model, average=average).state_dict()


def test_resume_continues_the_same_trajectory(tmp_path, train_base_model):
    """Every task, a held-out slice and a weight average: a run resumed at step 10 goes on exactly as the
    run that was not stopped, weights and average bit for bit, held-out losses alike."""
    straight = workdir(tmp_path / "straight", train_base_model)
    full = run_training(straight, max_train_steps=20)
    assert full["code"] == 0 and len(full["losses"]) == 20

    resumed = workdir(tmp_path / "resumed", train_base_model)
    result = run_training(resumed, resume=straight / "run" / "checkpoints" / "step-10", max_train_steps=20)
    assert result["resumed_at"] == 10
    assert len(result["losses"]) == 10
    torch.testing.assert_close(
        torch.tensor(result["losses"]), torch.tensor(full["losses"][10:]), rtol=0, atol=0
    )
    for average in (False, True):
        ours, theirs = (
            checkpoint_weights(work / "run" / "checkpoints" / "step-20", train_base_model, average)
            for work in (resumed, straight)
        )
        assert all(torch.equal(ours[name], theirs[name]) for name in theirs), f"average={average}"
    tag = "heldout_loss/text_to_video/mean"
    assert scalars(resumed / "run", tag)[20] == scalars(straight / "run", tag)[20]


def test_two_rank_checkpoint_resumes_on_one_rank(tmp_path, train_base_model):
    two = workdir(tmp_path / "two", train_base_model)
    run_training(two, max_train_steps=10, checkpointing_steps=10)
    one = workdir(tmp_path / "one", train_base_model)
    result = run_training(
        one,
        world_size=1,
        resume=two / "run" / "checkpoints" / "step-10",
        max_train_steps=12,
        checkpointing_steps=12,
    )
    assert result["code"] == 0 and result["resumed_at"] == 10 and len(result["losses"]) == 2
    assert all(torch.isfinite(torch.tensor(result["losses"])))


def _preempted_worker(rank: int, world_size: int, port: int, work: str, train: Train) -> None:
    """Rank 0 gets a real SIGTERM once step 5 is done, as Slurm signals a job before preempting it."""
    import signal
    import threading
    import time

    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    from longcat.train.loop import StopRequest, Trainer

    work = Path(work)
    stop = StopRequest()
    trainer = Trainer(train, run_layout(work), MemoryCache())

    def signal_when_ready():
        while trainer.progress.step < 5:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    if rank == 0:
        threading.Thread(target=signal_when_ready, daemon=True).start()
    code = trainer.run(stop)
    if rank == 0:
        (work / "result.json").write_text(json.dumps({"code": code, "step": trainer.progress.step}))
    torch.distributed.destroy_process_group()


def test_sigterm_saves_a_checkpoint_exits_for_requeue_and_the_rerun_resumes(tmp_path, train_base_model):
    from longcat.paths import latest_checkpoint
    from longcat.train.loop import EXIT_PREEMPTED

    work = workdir(tmp_path, train_base_model)
    # Held-out loss and weight average off: the stop and the requeue are what is tested here.
    quiet = {"heldout_every_n_steps": 0, "ema_decay": None}
    train = train_config(max_train_steps=1000, checkpointing_steps=500, **quiet)
    mp.spawn(_preempted_worker, args=(2, free_port(), str(work), train), nprocs=2, join=True)
    stopped = json.loads((work / "result.json").read_text())
    assert stopped["code"] == EXIT_PREEMPTED
    assert 5 <= stopped["step"] < 1000
    assert latest_checkpoint(work / "run" / "checkpoints").name == f"step-{stopped['step']}"

    result = run_training(work, max_train_steps=stopped["step"] + 3, checkpointing_steps=500, **quiet)
    assert result["code"] == 0 and result["resumed_at"] == stopped["step"] and len(result["losses"]) == 3


class PoisonedCache(MemoryCache):
    """Every latent holds a NaN, as a corrupt sample would."""

    def latent(self, sample_id):
        latent = super().latent(sample_id).clone()
        latent[0, 0, 0, 0] = float("nan")
        return latent


def _poisoned_worker(rank: int, world_size: int, port: int, work: str, train: Train) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    from longcat.train.loop import Trainer

    work = Path(work)
    Trainer(train, run_layout(work), PoisonedCache()).run()


def test_nonfinite_losses_are_skipped_then_stop_the_run(tmp_path, train_base_model):
    work = workdir(tmp_path, train_base_model)
    train = train_config(max_nonfinite_steps=3, collective_timeout_s=60, heldout_every_n_steps=0)
    with pytest.raises(mp.ProcessRaisedException, match="3 steps in a row had a non-finite loss"):
        mp.spawn(_poisoned_worker, args=(2, free_port(), str(work), train), nprocs=2, join=True)
    assert not (work / "run" / "checkpoints").exists()


def test_conditioned_tasks_and_gradient_accumulation(tmp_path, train_base_model):
    work = workdir(tmp_path, train_base_model)
    result = run_training(
        work,
        max_train_steps=4,
        gradient_accumulation_steps=2,
        image_to_video_fraction=0.5,
        continuation_fraction=0.5,
        checkpointing_steps=100,
        heldout_every_n_steps=0,
        ema_decay=None,
    )
    assert result["code"] == 0 and len(result["losses"]) == 4
    assert all(torch.isfinite(torch.tensor(result["losses"])))
    shares = {task: scalars(work / "run", f"train/tasks/{task}") for task in TASKS}
    # No text-to-video but where a clip is too short for continuation (2 latent frames, 2 clean).
    assert sum(shares["image_to_video"].values()) + sum(shares["continuation"].values()) > 0
    assert sorted(shares["text_to_video"]) == [1, 2, 3, 4]
