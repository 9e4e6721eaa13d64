"""A run's record: what trained the steps of a checkpoint, and of an exported model.

Every checkpoint holds the record of the steps it contains (`record.yaml`), and the exported model holds
the record of the steps that made it (`training.yaml`):

    run: demo
    step: 40                   steps trained (the checkpoint's step)
    identity: ...              what shapes the trained weights besides the train keys: the base model and
                               the two caches' specs (`run_identity`)
    train: ...                 every train setting of the latest start
    init_from: null            the weights step 0 started from, when not the base model's
    data: {samples, shards, epoch, epoch_samples, latent_frames}
    heldout: {samples, evaluated}  the clips held out (train.heldout_fraction), those the loss is taken on
    segments:                  one per start: steps, world size, samples, and what changed at its start
      - {from_step: 0, to_step: 20, world_size: 2, samples: 12, changed: {}}
      - {from_step: 20, to_step: 40, ..., changed: {train.learning_rate: [0.003, 1.0e-06]}}

What a start does with a changed config is `longcat.train.changes`'s rule.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from longcat.files import atomic_write_text
from longcat.settings import RUN_SECTIONS, RunSettings, Settings, Train, settings_dict
from longcat.train.changes import RunRefused, Start, change_lines, check_start, differences, show

log = logging.getLogger(__name__)

RECORD_FILE = "record.yaml"
EXPORTED_RECORD_FILE = "training.yaml"


def run_config(settings: Settings | RunSettings) -> dict[str, Any]:
    """The run sections as plain YAML-ready values (the content of a run's train_config.yaml). Of the
    cache section, only the settings that name the caches (their specs' keys): the cache jobs' own
    settings change no byte training reads, so changing one retrains nothing. Unset keys (None) are
    left out: the schema allows null only where null is also the default, and a section such as
    base_model.hf is an object or absent."""
    from longcat.cache.spec import text_cache_spec, vae_cache_spec

    config = {key: _set_keys(settings_dict(getattr(settings, key))) for key in RUN_SECTIONS}
    named = vae_cache_spec(settings).keys() | text_cache_spec(settings).keys()
    config["cache"] = {key: value for key, value in config["cache"].items() if key in named}
    return config


def _set_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _set_keys(item) for key, item in value.items() if item is not None}
    return value


def run_identity(settings: RunSettings) -> dict[str, Any]:
    """What shapes a run's trained weights besides its train keys: the base model and both caches'
    specs (the model part of each spec is the base model's, so it is named once)."""
    from longcat.cache.spec import text_cache_spec, vae_cache_spec

    def spec(made: dict) -> dict:
        return {key: value for key, value in made.items() if key not in ("kind", "model")}

    return {
        "base_model": settings.base_model.identity(),
        "vae_cache": spec(vae_cache_spec(settings)),
        "text_cache": spec(text_cache_spec(settings)),
    }


def new_segment(step: int, world_size: int, samples: int, start: Start | None) -> dict[str, Any]:
    return {
        "from_step": step,
        "to_step": step,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "world_size": world_size,
        "samples": samples,
        "changed": {key: [old, new] for key, (old, new) in (start.changed if start else {}).items()},
    }


def read_record(directory: str | Path, name: str = RECORD_FILE) -> dict[str, Any] | None:
    """The record in a checkpoint or exported model directory; None when it has none."""
    path = Path(directory, name)
    if not path.is_file():
        return None
    record = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(record, dict) or not {"run", "step", "identity", "train", "data"} <= record.keys():
        raise RunRefused(f"{path}: not a run record (expected run, step, identity, train and data)")
    return record


def write_record(directory: str | Path, record: Mapping, name: str = RECORD_FILE) -> Path:
    path = Path(directory, name)
    atomic_write_text(path, yaml.safe_dump(dict(record), sort_keys=False, allow_unicode=True))
    return path


def check_init_from(model: Path, base_model: Path, identity: Mapping) -> None:
    """Refuses a `train.init_from` model that is missing, of another architecture, or trained from
    another base model than this run's (its VAE and text encoder would not be the caches')."""
    from longcat.model.loading import read_dit_config

    if not (model / "dit" / "config.json").is_file():
        raise RunRefused(
            f"train.init_from: {model} holds no model in the published layout (no dit/config.json); "
            "name a run that finished (its final/ model) or a model directory such as a run's exports/step-N"
        )
    record = read_record(model, EXPORTED_RECORD_FILE)
    if record is not None and identity and record["identity"]["base_model"] != identity["base_model"]:
        raise RunRefused(
            f"train.init_from: {model} was trained from base model {show(record['identity']['base_model'])}; "
            f"this run's base model is {show(identity['base_model'])}"
        )

    def architecture(dit_dir: Path) -> dict:
        return {key: value for key, value in read_dit_config(dit_dir).items() if not key.startswith("_")}

    ours, theirs = architecture(base_model / "dit"), architecture(model / "dit")
    if ours != theirs:
        lines = change_lines(differences(ours, theirs))
        raise RunRefused(
            "\n".join([f"train.init_from: {model}/dit is not of the base model's architecture:", *lines])
        )


def init_from_record(model: Path | None, heldout_fraction: float) -> dict[str, Any] | None:
    """What step 0 of a run started from: the model, the run and step that made it when it says, and
    when that run held out less than this one (`heldout_fraction`), a note that this run's held-out
    loss includes clips those weights trained on."""
    if model is None:
        return None
    made_by = read_record(model, EXPORTED_RECORD_FILE)
    if made_by is None:
        return {"model": str(model)}
    entry = {"model": str(model), "run": made_by["run"], "step": made_by["step"]}
    # A clip is held out when its key's hash falls under the fraction: a slice lies within the starting
    # run's own held-out slice exactly when its fraction is no larger.
    theirs = float((made_by.get("train") or {}).get("heldout_fraction") or 0.0)
    if heldout_fraction > theirs:
        entry["heldout"] = (
            f"run {made_by['run']} held out train.heldout_fraction {theirs:g}, this run "
            f"{heldout_fraction:g}: the held-out loss includes clips the starting weights trained on, "
            "and shows less than a slice never trained on would"
        )
    return entry


class RunRecord:
    """A trainer's record of its run: the record of the checkpoint it starts from, checked against the
    config (`changes.check_start`, which raises RunRefused), then kept with a segment for this start
    (`open`) and written with every checkpoint and export (`at`)."""

    def __init__(
        self,
        cfg: Train,
        identity: Mapping[str, Any],
        checkpoint: Path | None,
        init_from: Path | None,
        base_model: Path,
        shards: Sequence[str],
    ):
        """`identity` is `run_identity` of the settings (a test without them passes none: the saved one
        stands); `shards` the cache shards there are now."""
        self.cfg = cfg
        self.started_from: dict[str, Any] | None = None  # init_from_record, for a run at step 0
        self.saved = read_record(checkpoint) if checkpoint is not None else None
        self.identity = dict(identity) or (self.saved or {}).get("identity", {})
        self.start: Start | None = None
        self.record: dict[str, Any] = {}
        if checkpoint is None:
            if init_from is not None:
                check_init_from(init_from, base_model, self.identity)
                self.started_from = init_from_record(init_from, cfg.heldout_fraction)
                if "heldout" in self.started_from:
                    log.warning("train.init_from: %s", self.started_from["heldout"])
        elif self.saved is None:
            log.warning("checkpoint %s holds no run record: its settings cannot be checked", checkpoint)
        else:
            self.start = check_start(self.saved, self.identity, cfg, str(checkpoint), lambda: shards)

    @property
    def saved_world_size(self) -> int | None:
        """How many ranks wrote the checkpoint (None: not recorded)."""
        segments = (self.saved or {}).get("segments") or [{}]
        return segments[-1].get("world_size")

    def open(self, step: int, world_size: int, data: Mapping[str, Any], heldout: Mapping[str, Any]) -> None:
        """Start this start's segment at `step`, with the loader's `data` (`TrainLoader.data_state`) and
        the held-out slice (`Evaluation.record`: how many held out, the ones evaluated)."""
        segment = new_segment(step, world_size, data["samples"], self.start)
        if self.saved is None:
            self.record = {
                "run": self.cfg.run,
                "step": step,
                "identity": self.identity,
                "train": settings_dict(self.cfg),
                "init_from": self.started_from if step == 0 else None,
                "data": dict(data),
                "heldout": dict(heldout),
                "segments": [segment],
            }
        else:
            segments = [*self.saved["segments"], segment]
            self.record = {
                **self.saved,
                "train": settings_dict(self.cfg),
                "heldout": dict(heldout),
                "segments": segments,
            }

    def at(self, step: int, data: Mapping[str, Any]) -> dict[str, Any]:
        """The record of the steps trained up to `step`."""
        segments = [*self.record["segments"][:-1], {**self.record["segments"][-1], "to_step": step}]
        return {**self.record, "step": step, "data": dict(data), "segments": segments}
