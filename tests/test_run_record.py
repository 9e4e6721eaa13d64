"""The rule a run follows when its config changed between two starts (longcat.train.record), and the
loader's rule for data added to the caches mid-run."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import train_settings, workflow_settings
from test_train_loop import Sample

from longcat.settings import Train, settings_dict
from longcat.train.changes import FIXED_KEYS, OPTIMIZER_KEYS, RUN_KEYS, RunRefused, check_start
from longcat.train.data import TrainLoader
from longcat.train.record import run_identity


def record_of(cfg: Train, step: int, shards=("00000", "00001")) -> dict:
    """A checkpoint's record as the trainer writes it (`RunRecord.at`)."""
    return {
        "run": cfg.run,
        "step": step,
        "identity": run_identity(workflow_settings()),
        "train": settings_dict(cfg),
        "init_from": None,
        "data": {"samples": 8, "shards": list(shards), "epoch": 0, "epoch_samples": {}},
        "segments": [],
    }


def start(record: dict, cfg: Train, shards=("00000", "00001"), settings=None):
    identity = run_identity(settings or workflow_settings())
    return check_start(record, identity, cfg, "runs/demo/checkpoints/step-N", lambda: shards)


def test_every_train_key_has_a_rule():
    fields = {field.name for field in dataclasses.fields(Train)}
    assert FIXED_KEYS | OPTIMIZER_KEYS | RUN_KEYS == fields
    assert not (FIXED_KEYS & OPTIMIZER_KEYS or FIXED_KEYS & RUN_KEYS or OPTIMIZER_KEYS & RUN_KEYS)


def test_optimizer_and_run_settings_are_applied_on_resume():
    recorded = record_of(train_settings(max_train_steps=160), step=40)
    changed = train_settings(max_train_steps=160, learning_rate=1e-6, adam_beta2=0.95, num_processes=4)
    applied = start(recorded, changed)
    assert applied.optimizer == {"train.learning_rate": (0.003, 1e-6), "train.adam_beta2": (0.999, 0.95)}
    assert applied.run == {"train.num_processes": (2, 4)}
    assert start(recorded, train_settings(max_train_steps=160)).changed == {}


def test_a_change_of_what_shapes_the_weights_is_refused_with_old_and_new():
    recorded = record_of(train_settings(max_train_steps=160), step=40)
    frames = dataclasses.replace(workflow_settings().frames, num_frames=33, frame_buckets=(33, 17))
    settings = dataclasses.replace(workflow_settings(), frames=frames)
    with pytest.raises(RunRefused) as refused:
        start(recorded, train_settings(max_train_steps=160, seed=7, learning_rate=1e-6), settings=settings)
    message = str(refused.value)
    assert "train.seed: 42 -> 7" in message
    assert "vae_cache.frames.num_frames: 17 -> 33" in message
    assert "learning_rate" not in message  # applied, not refused: only the refused keys are listed
    assert "set train.run to a new name (e.g. demo-2)" in message and "train.init_from" in message


def test_a_finished_run_continues_only_when_its_steps_are_raised():
    recorded = record_of(train_settings(max_train_steps=160), step=160)
    with pytest.raises(RunRefused, match=r"finished at step 160(.|\n)*train.learning_rate: 0.003 -> 1e-06"):
        start(recorded, train_settings(max_train_steps=160, learning_rate=1e-6))
    continued = start(recorded, train_settings(max_train_steps=200, learning_rate=1e-6))
    assert continued.changed == {
        "train.learning_rate": (0.003, 1e-6),
        "train.max_train_steps": (160, 200),
    }
    # Nothing changed: the run exports again (what `--forcerun train` asks for).
    assert start(recorded, train_settings(max_train_steps=160)).changed == {}
    with pytest.raises(RunRefused, match="past train.max_train_steps 100: a run cannot be shortened"):
        start(recorded, train_settings(max_train_steps=100))


def test_data_added_after_a_run_finished_is_refused_and_mid_run_joins():
    shards = ("00000", "00001", "00002", "00003")
    finished = record_of(train_settings(max_train_steps=160), step=160)
    with pytest.raises(RunRefused, match="data: 2 new cache shards \\(00002, 00003\\)"):
        start(finished, train_settings(max_train_steps=160), shards=shards)

    def never():
        raise AssertionError("a run in progress takes new data without asking for the shards")

    in_progress = record_of(train_settings(max_train_steps=160), step=40)
    identity = run_identity(workflow_settings())
    assert check_start(in_progress, identity, train_settings(max_train_steps=160), "x", never).changed == {}


class Shapes:
    """A source of `count` samples of one shape, 4 to a shard (zeros: only the order matters here)."""

    max_tokens = 4

    def __init__(self, count: int):
        self.samples = [Sample(f"clip-{i:02d}", f"{i // 4:05d}", (16, 2, 4, 4), 2) for i in range(count)]
        self.shards = sorted({sample.shard for sample in self.samples})

    def latent(self, sample_id):
        return torch.zeros(16, 2, 4, 4)

    def text(self, sample_id):
        return torch.zeros(2, 8)

    def empty_text(self):
        return torch.zeros(1, 8)


def epoch_order(loader: TrainLoader) -> list[list[int]]:
    return [[item.index for item in batch] for batch in loader.sampler.epoch(loader.epoch, 0, loader.members)]


def test_samples_added_while_stopped_join_at_the_next_epoch():
    before = TrainLoader(Shapes(8), 1, 1, 0, seed=3, num_workers=0)
    before.position = 2
    saved, data = before.state_dict(), before.data_state()

    grown = TrainLoader(Shapes(16), 1, 1, 0, seed=3, num_workers=0)
    grown.load_state_dict(saved, world_size_then=1)
    message = grown.resume_epoch(data["epoch_samples"])
    assert "8 samples more" in message and "new shards: 00002, 00003" in message
    # The epoch goes on exactly as it would have without the new samples...
    assert epoch_order(grown) == epoch_order(before) and grown.epoch_batches == before.epoch_batches
    # ...and the next one draws from all of them.
    grown.position = grown.epoch_batches - 1
    batches = iter(grown)
    next(batches)
    assert grown.epoch == 1 and grown.members is None and grown.epoch_batches == 16


def test_samples_gone_since_the_checkpoint_start_the_next_epoch():
    before = TrainLoader(Shapes(8), 1, 1, 0, seed=3, num_workers=0)
    before.position = 2
    shrunk = TrainLoader(Shapes(6), 1, 1, 0, seed=3, num_workers=0)
    shrunk.load_state_dict(before.state_dict(), world_size_then=1)
    message = shrunk.resume_epoch(before.data_state()["epoch_samples"])
    assert "00001: 4 -> 2" in message and (shrunk.epoch, shrunk.position) == (1, 0)


def test_a_resume_on_another_world_size_goes_on_from_the_same_batch_of_the_epoch():
    loader = TrainLoader(Shapes(16), 1, 4, 0, seed=3, num_workers=0)
    loader.load_state_dict({"epoch": 0, "position": 3, "num_samples": 16}, world_size_then=2)
    assert loader.position == 1  # 3 batches on each of 2 ranks: the epoch's first 6, so 1 on each of 4


def test_the_config_readme_states_the_rule_of_every_train_key():
    from conftest import REPO

    text = (REPO / "config" / "README.md").read_text()
    applied = text.split("**Applied from the resumed step on")[1].split("- **Refused**")[0]
    refused = text.split("- **Refused**")[1].split("- **A finished run**")[0]
    assert [key for key in sorted(OPTIMIZER_KEYS | RUN_KEYS) if f"`{key}`" not in applied] == []
    assert [key for key in sorted(FIXED_KEYS) if f"`{key}`" not in refused] == []


def test_a_run_started_from_weights_that_held_out_less_says_so(tmp_path):
    """A clip is held out when its key's hash falls under the fraction: a run holding out more than the
    run its weights come from evaluates clips those weights trained on, and its record says so."""
    from longcat.train.record import EXPORTED_RECORD_FILE, init_from_record, write_record

    cfg = train_settings(heldout_fraction=0.01)
    write_record(tmp_path, record_of(cfg, 40), EXPORTED_RECORD_FILE)
    assert init_from_record(tmp_path, 0.01) == {"model": str(tmp_path), "run": cfg.run, "step": 40}
    assert "heldout" not in init_from_record(tmp_path, 0.005)
    note = init_from_record(tmp_path, 0.05)["heldout"]
    assert "held out train.heldout_fraction 0.01, this run 0.05" in note
    assert "includes clips the starting weights trained on" in note
    assert init_from_record(tmp_path / "elsewhere", 0.05) == {"model": str(tmp_path / "elsewhere")}
