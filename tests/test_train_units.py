"""Training pieces on their own: config, sampler, objective, schedule, estimates and the FSDP plan."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import train_settings

from longcat.config import ConfigError, load_config
from longcat.flow import noise_latents, sampling_sigmas, shift_sigmas, training_sigmas
from longcat.settings import Train, load_settings
from longcat.train.data import BucketedSampler
from longcat.train.estimate import dit_parameter_counts, estimate_run, latent_shape_for
from longcat.train.objective import per_sample_loss
from longcat.train.parallelize import analytic_rank_numel, checkpointed_block_indices
from longcat.train.schedule import lr_factor
from longcat.train.tasks import TASKS

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "longcat_dit"
FULL = json.loads((FIXTURES / "full_state_dict_shapes.json").read_text())


def train_from_config(**train) -> Train:
    """The `train` settings of the embedded config with `train` keys set in the raw config (checked)."""
    config = load_config()
    config["train"].update(train)
    return load_settings(config).train


def test_config_rejects_bad_values_with_the_key_and_value():
    with pytest.raises(ConfigError, match=r"train\.lr_scheduler: expected one of .* found 'exponential'"):
        train_from_config(lr_scheduler="exponential")
    with pytest.raises(ConfigError, match=r"train\.max_train_steps: expected type integer, found 'many'"):
        train_from_config(max_train_steps="many")
    with pytest.raises(ConfigError, match=r"train\.learning_rat: unknown key"):
        train_from_config(learning_rat=1e-4)
    with pytest.raises(ConfigError, match=r"mixed_precision: CPU training"):
        train_from_config(gpus=0, mixed_precision="bf16")
    cfg = train_from_config(gpus=8, num_processes=8, nodes=2, mixed_precision="bf16")
    assert cfg.world_size == 16
    with pytest.raises(
        ConfigError, match=r"train\.continuation_fraction: expected at most 1 - .* \(0.4\), found 0.7"
    ):
        train_from_config(image_to_video_fraction=0.6, continuation_fraction=0.7)
    with pytest.raises(ConfigError, match=r"train\.continuation_latents\[0\]: expected minimum 2"):
        train_from_config(continuation_latents=[1])


def test_launch_command_one_node_and_several():
    from longcat.train.launch import launch_command

    one = launch_command(train_settings(gpus=0, num_processes=2, nodes=1, mixed_precision="no"))
    assert "--num_processes 2 --num_machines 1" in one and "--main_process_port 0" in one
    assert "PET_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1" in one
    assert one.endswith("-m longcat.train")
    two = launch_command(train_settings(gpus=8, num_processes=8, nodes=2, mixed_precision="bf16"))
    assert two.startswith(
        "srun --nodes 2 --ntasks 2 --ntasks-per-node 1 --overlap --kill-on-bad-exit=1 --gres gpu:8 bash -c"
    )
    assert "--num_processes 16 --num_machines 2" in two
    assert "$SLURM_NODEID" in two and "scontrol show hostnames" in two


def test_sampler_batches_one_shape_split_across_ranks_and_repeats_per_seed():
    shapes = [(16, 3, 4, 6)] * 7 + [(16, 2, 6, 4)] * 5
    ranks = [BucketedSampler(shapes, 2, 2, rank, seed=1) for rank in range(2)]
    epoch0 = [sampler.epoch(0) for sampler in ranks]
    assert len(epoch0[0]) == len(epoch0[1]) == ranks[0].batches_per_rank == 2
    seen = [item.index for batches in epoch0 for batch in batches for item in batch]
    assert len(seen) == len(set(seen)) == 8
    for batches in epoch0:
        for batch in batches:
            assert len({shapes[item.index] for item in batch}) == 1
    assert epoch0[0] == BucketedSampler(shapes, 2, 2, 0, seed=1).epoch(0)
    assert epoch0[0] != ranks[0].epoch(1) or epoch0[0] != ranks[0].epoch(2)
    assert ranks[0].epoch(3, start=1) == ranks[0].epoch(3)[1:]


def test_caption_dropout_rate_is_close_to_config():
    sampler = BucketedSampler([(16, 1, 2, 2)] * 2000, 1, 1, 0, seed=3, caption_dropout=0.1)
    dropped = sum(batch[0].drop_caption for batch in sampler.epoch(0))
    assert 150 < dropped < 250


def test_flow_batch_matches_longcat_convention():
    latents = torch.randn(2, 16, 3, 4, 4)
    noise = torch.randn_like(latents)
    sigmas = torch.tensor([0.25, 0.75])
    batch = noise_latents(latents, sigmas, noise)
    torch.testing.assert_close(batch.noisy[1], 0.25 * latents[1] + 0.75 * noise[1])
    torch.testing.assert_close(batch.target, latents - noise)
    torch.testing.assert_close(batch.timestep, torch.tensor([250.0, 750.0]))
    assert per_sample_loss(batch.target, batch).abs().max() == 0

    conditioned = noise_latents(latents, sigmas, noise, num_cond_latents=1)
    torch.testing.assert_close(conditioned.noisy[:, :, 0], latents[:, :, 0])
    assert conditioned.timestep.shape == (2, 3) and (conditioned.timestep[:, 0] == 0).all()
    wrong_on_clean_frame = conditioned.target.clone()
    wrong_on_clean_frame[:, :, 0] += 100
    assert per_sample_loss(wrong_on_clean_frame, conditioned).abs().max() == 0


def test_micro_batches_train_the_configured_mix_of_tasks_and_repeat_on_resume():
    from longcat.train.build import micro_batch_generator
    from longcat.train.objective import draw_micro_batch

    cfg = train_settings(image_to_video_fraction=0.3, continuation_fraction=0.2, continuation_latents=(2, 4))
    cpu = torch.device("cpu")

    def draws(latent_frames: int, count: int = 2000):
        shape = (1, 16, latent_frames, 4, 4)
        return [
            draw_micro_batch(shape, micro_batch_generator(7, 0, index, cpu), cfg, 1.0)
            for index in range(count)
        ]

    five = draws(5)
    shares = {task: sum(draw.task == task for draw in five) / len(five) for task in TASKS}
    assert shares == pytest.approx(
        {"text_to_video": 0.5, "image_to_video": 0.3, "continuation": 0.2}, abs=0.04
    )
    assert {draw.num_cond_latents for draw in five if draw.task == "image_to_video"} == {1}
    assert {draw.num_cond_latents for draw in five if draw.task == "continuation"} == {2, 4}
    assert {draw.num_cond_latents for draw in five if draw.task == "text_to_video"} == {0}
    # A clip of 3 latent frames continues from 2 only; one of 2 frames has no room for a continuation.
    assert {draw.num_cond_latents for draw in draws(3, 500) if draw.task == "continuation"} == {2}
    assert {draw.task for draw in draws(2, 500)} == {"text_to_video", "image_to_video"}
    # The same (seed, rank, micro-batch) draws the same: a resumed run repeats its steps.
    again = draw_micro_batch((1, 16, 5, 4, 4), micro_batch_generator(7, 0, 11, cpu), cfg, 1.0)
    assert (again.task, again.num_cond_latents) == (five[11].task, five[11].num_cond_latents)
    assert torch.equal(again.noise, five[11].noise) and torch.equal(again.sigmas, five[11].sigmas)


def test_the_heldout_slice_is_a_property_of_each_key():
    from longcat.train.heldout import heldout_rank, split_heldout

    @dataclass(frozen=True)
    class Sample:
        sample_id: str

    samples = [Sample(f"videos/clip-{index:05d}.mp4") for index in range(4000)]
    training, heldout = split_heldout(samples, 0.05)
    assert len(heldout) == pytest.approx(200, abs=45) and len(training) + len(heldout) == 4000
    assert [heldout_rank(sample.sample_id) for sample in heldout] == sorted(
        heldout_rank(s.sample_id) for s in heldout
    )
    # More data later, or a part of it: each key stays on its side.
    grown_training, grown_heldout = split_heldout(
        [*samples, *(Sample(f"new-{i}.mp4") for i in range(500))], 0.05
    )
    assert set(heldout) <= set(grown_heldout) and set(training) <= set(grown_training)
    assert split_heldout(samples[::3], 0.05)[1] == [sample for sample in heldout if sample in samples[::3]]
    assert split_heldout(samples, 0.0) == (samples, [])


def test_sigma_sampling_and_shift():
    generator = torch.Generator().manual_seed(0)
    sigmas = training_sigmas(20000, generator, "logit_normal", shift=1.0)
    assert 0 < sigmas.min() and sigmas.max() < 1 and abs(sigmas.median().item() - 0.5) < 0.02
    shifted = training_sigmas(20000, torch.Generator().manual_seed(0), "logit_normal", shift=12.0)
    assert abs(shifted.median().item() - 12 * 0.5 / (1 + 11 * 0.5)) < 0.02
    assert shift_sigmas(torch.tensor([0.0, 1.0]), 12.0).tolist() == [0.0, 1.0]
    uniform = training_sigmas(20000, generator, "uniform")
    assert abs(uniform.mean().item() - 0.5) < 0.02


def test_default_training_sigmas_visit_where_the_sampler_steps():
    """The 50-step sampler at shift 12 spends 7.7% of its steps below σ = 0.5; training must too."""
    assert train_from_config().sigma_sampling == "uniform"
    sampler = sampling_sigmas(50, 12.0)[:-1]
    trained = training_sigmas(
        200_000, torch.Generator().manual_seed(0), train_from_config().sigma_sampling, shift=12.0
    )
    for threshold in (0.1, 0.25, 0.5, 0.75, 0.9, 0.99):
        steps_below = (sampler < threshold).float().mean().item()
        trained_below = (trained < threshold).float().mean().item()
        assert abs(trained_below - steps_below) < 0.02, (threshold, trained_below, steps_below)
    assert 0.001 <= trained.min() and trained.max() <= 1.0
    # The logit-normal option leaves the low σ almost untrained under the same shift.
    logit_normal = training_sigmas(200_000, torch.Generator().manual_seed(0), "logit_normal", shift=12.0)
    assert (logit_normal < 0.5).float().mean().item() < 0.01


def test_lr_schedule_warmup_constant_and_cosine():
    assert [lr_factor(s, 4, 100, "constant") for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(4, 4, 104, "cosine") == 1.0
    assert math.isclose(lr_factor(54, 4, 104, "cosine"), 0.5)
    assert lr_factor(104, 4, 104, "cosine") == 0.0


def test_activation_checkpointing_choices():
    assert checkpointed_block_indices(6, "all", 1) == [0, 1, 2, 3, 4, 5]
    assert checkpointed_block_indices(6, "every", 2) == [0, 2, 4]
    assert checkpointed_block_indices(6, "off", 2) == []
    assert checkpointed_block_indices(6, "selective", 2) == [0, 1, 2, 3, 4, 5]
    cfg = train_from_config(activation_checkpointing="selective", compile=True, mixed_precision="no")
    assert cfg.activation_checkpointing == "selective" and cfg.compile
    with pytest.raises(ConfigError, match=r"train\.compile: expected type boolean, found 'yes'"):
        train_from_config(compile="yes", mixed_precision="no")
    assert train_from_config(attention_backend="sdpa_cudnn").attention_backend == "sdpa_cudnn"
    with pytest.raises(ConfigError, match=r"train\.attention_backend: expected one of .* found 'xformers'"):
        train_from_config(attention_backend="xformers")


def test_parameter_count_and_flops_of_the_published_model():
    counts = dit_parameter_counts(FULL["config"])
    assert counts["total"] == FULL["num_parameters"] == 13_581_071_424
    shape = latent_shape_for(93, 480, 832)
    eight_gpus = {"gpus": 8, "num_processes": 8, "mixed_precision": "bf16", "gpu_type": "h100"}
    cfg = train_from_config(**eight_gpus, activation_checkpointing="all", assumed_mfu=0.4)
    estimate = estimate_run(FULL["config"], shape, cfg, "h100")
    assert estimate["tokens_per_sample"] == 37_440
    assert 6.3 < estimate["pflop_per_sample"] < 6.4
    assert 15 < estimate["step_seconds"] < 17
    a100 = estimate_run(FULL["config"], shape, cfg, "a100")  # not the configured card: its typical MFU
    assert a100["assumed_mfu"] == 0.5 and 38 < a100["step_seconds"] < 43
    no_ac = estimate_run(
        FULL["config"], shape, train_from_config(**eight_gpus, activation_checkpointing="off"), "h100"
    )
    assert estimate["fits"] and not no_ac["fits"]
    selective_cfg = train_from_config(**eight_gpus, activation_checkpointing="selective", assumed_mfu=0.4)
    selective = estimate_run(FULL["config"], shape, selective_cfg, "h100")
    # 48 kept self-attention outputs of 37,440 x 4096 bf16 values each, plus their logsumexp.
    extra = selective["memory_gib"]["activations"] - estimate["memory_gib"]["activations"]
    assert 13.5 < extra < 14.0 and selective["fits"]


def test_dry_run_estimates_step_time_per_frame_bucket(tmp_path, monkeypatch):
    from longcat.config import REPO_ROOT
    from longcat.paths import RunLayout
    from longcat.settings import load_run_settings
    from longcat.train import dry_run

    settings = load_run_settings(load_config(REPO_ROOT / "config" / "longcat-13b.yaml"))
    cfg = settings.train
    paths = RunLayout(tmp_path / "run", tmp_path / "base_model", tmp_path / "vae", tmp_path / "text")

    # No cache yet: each configured frame count in the first resolution bucket, 480x832.
    report = dry_run.dry_run_report(settings, paths)
    buckets = {bucket["frames"]: bucket for bucket in report["bucket_estimates"]}
    assert list(buckets) == [93, 73, 49] and report["mean_step_seconds"] is None
    assert (buckets[93]["latent_shape"], buckets[93]["tokens_per_sample"]) == ([16, 24, 60, 104], 37_440)
    assert (buckets[73]["latent_shape"], buckets[73]["tokens_per_sample"]) == ([16, 19, 60, 104], 29_640)
    for frames, bucket in buckets.items():
        expected = estimate_run(FULL["config"], latent_shape_for(frames, 480, 832), cfg, cfg.gpu_type)
        assert bucket["step_seconds"] == pytest.approx(expected["step_seconds"])
        assert bucket["communication"] == expected["communication"]
    assert 0.65 < buckets[73]["step_seconds"] / buckets[93]["step_seconds"] < 0.75

    # With a cache: the histogram of cached shapes, each with its step time, and their mean.
    cached = {"16x24x60x104": 10, "16x19x60x104": 30}
    data = {"ready": True, "samples": 40, "failed_samples": 0, "buckets": cached}
    data |= {"frames": {"93": 10, "73": 30}, "time_stretched_samples": 0}
    data |= {"optimizer_steps_per_epoch": 5, "epochs": 2.0}
    monkeypatch.setattr(dry_run, "data_report", lambda *_: data)
    report = dry_run.dry_run_report(settings, paths)
    step = {bucket["frames"]: bucket["step_seconds"] for bucket in report["bucket_estimates"]}
    assert [bucket["samples"] for bucket in report["bucket_estimates"]] == [10, 30]
    assert report["mean_step_seconds"] == pytest.approx((10 * step[93] + 30 * step[73]) / 40)
    text = dry_run.format_report(report)
    assert "samples per frame count: 93 frames: 10, 73 frames: 30" in text
    assert f"bucket 16x19x60x104 (73 frames, 29,640 tokens): 30 samples, {step[73]:.1f} s/step" in text
    # The step time's parts, and where each comes from: the MFU measured on one GPU, FSDP2 modelled.
    assert f"a step of the 93-frame bucket: {step[93]:.2f} s =" in text
    assert (
        "at 46.6% MFU (train.assumed_mfu, measured on one H100 80GB: 4 full-width blocks, no communication)"
        in text
    )
    assert (
        "FSDP2 communication, modelled: 47.5 GB all-gathered + 47.5 GB reduce-scattered per GPU per step at "
        "360 GB/s: 0.26 s, of which 0.006 s not hidden behind compute" in text
    )


def _fake_rank_numel(world_size: int, rank: int) -> int:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from longcat.model import LongCatVideoTransformer3DModel
    from longcat.train.parallelize import apply_activation_checkpointing, apply_fsdp

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        with torch.device("meta"):
            model = LongCatVideoTransformer3DModel.from_config(FULL["config"])
        apply_activation_checkpointing(model, "all")
        apply_fsdp(model, init_device_mesh("cpu", (world_size,)), torch.bfloat16)
        return sum(param.to_local().numel() for param in model.parameters())
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("rank", [0, 7])
def test_fsdp_plan_of_the_full_model_on_8_ranks_matches_the_analytic_shards(rank):
    shapes = {name: tuple(shape) for name, shape in FULL["state_dict"].items()}
    expected = analytic_rank_numel(shapes, 8, rank)
    assert _fake_rank_numel(8, rank) == expected
    # fp32 master weights: about 1/8 of 13.58B parameters x 4 bytes per rank.
    assert abs(expected * 4 - FULL["num_parameters"] * 4 / 8) < 1e6


def fake_checkpoint(path: Path) -> Path:
    """A directory laid out like a finished DCP checkpoint: `.metadata`, a shard and an RNG file."""
    path.mkdir(parents=True)
    for name in (".metadata", "__0_0.distcp", "rng-rank0.pt"):
        (path / name).write_bytes(b"x")
    return path


def test_a_checkpoint_deletion_killed_part_way_leaves_only_complete_step_dirs(tmp_path, monkeypatch):
    """A kill during pruning must not leave a half-deleted `step-N` that resuming would pick.

    `rmtree` is made to delete one file and then fail, as a process killed mid-deletion would; every
    `step-N` left must still hold its `.metadata`, and the next prune clears what the kill left.
    """
    from longcat.paths import checkpoint_dirs, latest_checkpoint
    from longcat.train import checkpoint
    from longcat.train.checkpoint import Checkpointer

    root = tmp_path / "checkpoints"
    checkpointer = Checkpointer.__new__(Checkpointer)
    checkpointer.root, checkpointer.keep_last, checkpointer.rank = root, 2, 0
    for step in (1, 2):
        fake_checkpoint(root / f"step-{step}")

    real_rmtree = checkpoint.shutil.rmtree

    def killed_rmtree(path, *args, **kwargs):
        sorted(Path(path).iterdir())[0].unlink()
        raise KeyboardInterrupt("killed mid-deletion")

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        checkpointer._finish(None, fake_checkpoint(root / "step-3.partial"), root / "step-3")
    for path in checkpoint_dirs(root):
        assert (path / ".metadata").is_file(), f"{path.name} is listed as a checkpoint but is incomplete"
    assert latest_checkpoint(root) == root / "step-3"

    monkeypatch.setattr(checkpoint.shutil, "rmtree", real_rmtree)
    checkpointer._finish(None, fake_checkpoint(root / "step-4.partial"), root / "step-4")
    assert sorted(path.name for path in root.iterdir()) == ["step-3", "step-4"]


def test_removing_a_checkpoint_replaces_an_old_leftover_of_the_same_name(tmp_path):
    """A `.deleting-step-N` left by an earlier kill does not block deleting a newer `step-N`."""
    from longcat.train.checkpoint import remove_checkpoint

    leftover = fake_checkpoint(tmp_path / ".deleting-step-5")
    remove_checkpoint(fake_checkpoint(tmp_path / "step-5"))
    assert not leftover.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("backend, expected", [("auto", "sdpa"), ("sdpa_cudnn", "sdpa_cudnn")])
def test_the_trained_model_runs_the_configured_attention_kernel(tiny_base_model, backend, expected):
    import torch.distributed as dist
    from conftest import free_port

    from longcat.train.build import build_model

    cfg = train_settings(attention_backend=backend, activation_checkpointing="selective", compile=False)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        model = build_model(tiny_base_model, cfg, torch.device("cpu"))
    finally:
        dist.destroy_process_group()
    assert model.attention_backend == expected
