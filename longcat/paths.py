"""Every file and directory the workflow reads or writes, from the settings: the rules and the library
both ask here, so a path has one definition.

    {results}/demo_clips/ (the demo's source.path)    {results}/manifest.parquet, unpaired.parquet
    {results}/metadata/part-CCC.parquet               {results}/metadata.parquet, rejected.parquet
    {results}/shards/assignments.parquet              {results}/shards/shard-NNNNN.parquet
    {results}/store/<source key>/...                  history a relist reuses (not a rule output)
    {results}/base_model/<key>/                       {results}/logs/...
    {results}/estimate.{json,txt}
    {results}/report/data/, report/caches/            figures and tables of `snakemake --report`
    {results}/benchmarks/...                          Snakemake's per-job benchmark tables
    {results}/workflow-id                             names the workflow as its caches' owner
    {cache_dir}/vae/<key>/shard-NNNNN.{safetensors,index.parquet}, spec.json, owner.json
    {cache_dir}/text/<key>/..., empty.safetensors        {results}/verify_cache.json
    {runs_dir}/<run>/train_config.yaml, checkpoints/step-N/, tb/, validation/, final/, train.done,
                     exports/step-N/, samples/, logs/, report/

Methods that take a shard, chunk or step accept a Snakemake wildcard pattern too ("{shard}").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from longcat.cache.spec import CacheSettings, cache_key, text_cache_spec, vae_cache_spec

STEP_DIR = re.compile(r"^step-(\d+)$")
SHARD_ID_WIDTH = 5
EMPTY_TEXT_FILE = "empty.safetensors"


def shard_id(index: int) -> str:
    return f"{index:0{SHARD_ID_WIDTH}d}"


def chunk_id(index: int) -> str:
    return f"{index:03d}"


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Complete checkpoints (`step-N`) under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [path for _, path in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    found = checkpoint_dirs(root)
    return found[-1] if found else None


@dataclass(frozen=True)
class CacheLayout:
    """One cache directory: `{cache_dir}/{kind}/{key}/`."""

    root: Path

    @property
    def spec(self) -> Path:
        return self.root / "spec.json"

    def tensors(self, shard: str) -> Path:
        return self.root / f"shard-{shard}.safetensors"

    def index(self, shard: str) -> Path:
        return self.root / f"shard-{shard}.index.parquet"

    def partial(self, shard: str) -> Path:
        """Finished samples of an unfinished shard job (not a rule output: Snakemake would delete it)."""
        return self.root / f".partial-shard-{shard}"

    def lock(self, shard: str) -> Path:
        """Held by the job that writes the shard (`longcat.cache.ownership.ShardLock`)."""
        return self.root / f".lock-shard-{shard}"

    @property
    def empty_text(self) -> Path:
        return self.root / EMPTY_TEXT_FILE


@dataclass(frozen=True)
class RunLayout:
    """Where one training run reads its inputs and writes its state."""

    run_dir: Path
    base_model: Path
    vae_cache: Path
    text_cache: Path
    init_from: Path | None = None  # the model step 0 starts from when not the base model

    @property
    def train_config(self) -> Path:
        return self.run_dir / "train_config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    def checkpoint(self, step: int | str) -> Path:
        return self.checkpoints / f"step-{step}"

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

    @property
    def samples(self) -> Path:
        return self.run_dir / "samples"

    def export(self, step: int | str) -> Path:
        return self.run_dir / "exports" / f"step-{step}"

    def report(self, name: str) -> Path:
        """A figure or page of the run's report (`report/NAME`), drawn from tb/ and the videos."""
        return self.run_dir / "report" / name

    def log(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"

    def failed_log(self, name: str, attempt: str) -> Path:
        """Where the log of a failed `attempt` is kept: Snakemake empties `log(name)` before each try."""
        return self.run_dir / "logs" / f"{name}.{attempt}.log"


@dataclass(frozen=True)
class Layout:
    """All paths of one workflow config."""

    results: Path
    cache_dir: Path
    runs_dir: Path
    run: str
    source_key: str | None  # None for a run's settings, which name no source
    base_model_key: str
    vae_key: str
    text_key: str
    init_from: str | None = None

    @classmethod
    def from_settings(cls, settings: CacheSettings) -> Layout:
        """From a workflow's `Settings` or a run's `RunSettings` (both name the run and the caches)."""
        source = getattr(settings, "source", None)
        return cls(
            results=Path(settings.results),
            cache_dir=Path(settings.cache_dir),
            runs_dir=Path(settings.runs_dir),
            run=settings.train.run,
            source_key=cache_key(source.identity()) if source is not None else None,
            base_model_key=cache_key(settings.base_model.identity()),
            vae_key=cache_key(vae_cache_spec(settings)),
            text_key=cache_key(text_cache_spec(settings)),
            init_from=settings.train.init_from,
        )

    # ---- data stage
    @property
    def manifest(self) -> Path:
        return self.results / "manifest.parquet"

    @property
    def unpaired(self) -> Path:
        """Captions the listing found without a video of the same stem."""
        return self.results / "unpaired.parquet"

    def metadata_part(self, chunk: str) -> Path:
        return self.results / "metadata" / f"part-{chunk}.parquet"

    @property
    def store(self) -> Path:
        """The data stage's history of one source (`Source.identity`), outside the rule outputs, which
        Snakemake deletes: what a relist reuses. Another source in the same results has its own."""
        return self.results / "store" / str(self.source_key)

    def probe_store(self, chunk: str) -> Path:
        """Probe records a relist reuses by etag."""
        return self.store / "probe" / f"part-{chunk}.parquet"

    @property
    def metadata(self) -> Path:
        return self.results / "metadata.parquet"

    @property
    def rejected(self) -> Path:
        return self.results / "rejected.parquet"

    @property
    def failed_rejected(self) -> Path:
        """The rejects of a metadata job that accepted no clip, beside its log: Snakemake deletes the
        outputs of a failed job, `rejected` among them."""
        return self.results / "logs" / "metadata.rejected.parquet"

    @property
    def assignments(self) -> Path:
        return self.results / "shards" / "assignments.parquet"

    @property
    def assignment_store(self) -> Path:
        return self.store / "assignments.parquet"

    def shard_list(self, shard: str) -> Path:
        return self.results / "shards" / f"shard-{shard}.parquet"

    @property
    def base_model(self) -> Path:
        """The base model in the published layout, in a directory keyed by what makes it
        (`BaseModel.identity`): two configs in one checkout each read their own."""
        return self.results / "base_model" / self.base_model_key

    @property
    def estimate(self) -> Path:
        """The pre-launch estimate as JSON (`estimate_text`: the same, for people)."""
        return self.results / "estimate.json"

    @property
    def estimate_text(self) -> Path:
        return self.results / "estimate.txt"

    def data_report(self, name: str) -> Path:
        """A figure or table of the data stage's report: `{results}/report/data/NAME`."""
        return self.results / "report" / "data" / name

    def cache_report(self, name: str) -> Path:
        """A figure or table of the caches' report: `{results}/report/caches/NAME`."""
        return self.results / "report" / "caches" / name

    def cache_benchmark(self, kind: str, shard: str) -> Path:
        """Snakemake's benchmark table of one cache shard job (kind vae or text), under its cache key:
        `{results}/benchmarks/cache_{kind}/<key>/shard-NNNNN.tsv`."""
        key = {"vae": self.vae_key, "text": self.text_key}[kind]
        return self.results / "benchmarks" / f"cache_{kind}" / key / f"shard-{shard}.tsv"

    def log(self, name: str) -> Path:
        """`{results}/logs/{name}.log` for the jobs before training."""
        return self.results / "logs" / f"{name}.log"

    # ---- caches
    @property
    def vae_cache(self) -> CacheLayout:
        return CacheLayout(self.cache_dir / "vae" / self.vae_key)

    @property
    def text_cache(self) -> CacheLayout:
        return CacheLayout(self.cache_dir / "text" / self.text_key)

    @property
    def workflow_id(self) -> Path:
        """The id that names this workflow as the owner of its cache directories
        (`longcat.cache.ownership`); a copy of the results keeps it."""
        return self.results / "workflow-id"

    @property
    def cache_verify_report(self) -> Path:
        """What `snakemake verify_cache` found damaged in the two caches and removed (it always runs)."""
        return self.results / "verify_cache.json"

    # ---- training and sampling
    @property
    def train_run(self) -> RunLayout:
        return RunLayout(
            run_dir=self.runs_dir / self.run,
            base_model=self.base_model,
            vae_cache=self.vae_cache.root,
            text_cache=self.text_cache.root,
            init_from=self.init_from_model,
        )

    @property
    def init_from_run(self) -> str | None:
        """The run `train.init_from` names, when it names a run rather than a directory."""
        if self.init_from is None or "/" in self.init_from:
            return None
        return self.init_from

    @property
    def init_from_model(self) -> Path | None:
        """The model `train.init_from` names: a run's final model (a run name), or a directory in the
        published layout (a path, which holds a `/`)."""
        if self.init_from is None:
            return None
        if self.init_from_run is not None:
            return self.other_run(self.init_from_run).final
        return Path(self.init_from)

    def other_run(self, run: str) -> RunLayout:
        """Where run `run` keeps its files (its inputs may be another config's)."""
        return RunLayout(self.runs_dir / run, self.base_model, self.vae_cache.root, self.text_cache.root)
