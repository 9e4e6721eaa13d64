"""Reading the caches training needs: random access to one sample's latent and caption embedding.

Only the shards' index files are read up front; tensors are read lazily, one sample at a time, with a
bounded set of open files. Every tensor read is checked against the checksum its index row holds (the
writer keeps no NaN or infinite tensor, so a sample that passes is finite); a damaged one stops training
with an error naming the file, the sample and the fix.
"""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from longcat.cache.format import (
    CHECKSUM_KEY,
    EMPTY_TEXT_TENSOR,
    STATUS_OK,
    TEXT_INDEX_SCHEMA,
    VAE_INDEX_SCHEMA,
    TensorFile,
    read_index,
    read_safetensors_header,
)
from longcat.cache.spec import CacheError, cache_key, read_spec
from longcat.data.rejects import count_reasons, reasons_text, split_cache_failure
from longcat.paths import CacheLayout


class CachedSample(NamedTuple):
    sample_id: str  # the source key
    shard: str  # "00000"
    latent_shape: tuple[int, int, int, int]  # (C, T, H, W)
    text_len: int
    fps: float


REBUILD = "`snakemake cache` rebuilds it"


def _shard_of(index_path: Path) -> str:
    return index_path.name.removeprefix("shard-").removesuffix(".index.parquet")


def stored_shards(directory: Path) -> tuple[set[str], set[str]]:
    """The shard ids of a cache directory's index files and of its tensors files."""
    index_shards = {_shard_of(path) for path in directory.glob("shard-*.index.parquet")}
    tensor_shards = {
        path.name.removeprefix("shard-").removesuffix(".safetensors")
        for path in directory.glob("shard-*.safetensors")
    }
    return index_shards, tensor_shards


def repair_hint(path: Path) -> str:
    """How to get rid of a damaged cache file: `snakemake cache` rebuilds only what is missing."""
    if path.name.startswith("shard-"):
        layout, shard = CacheLayout(path.parent), path.name.removeprefix("shard-").split(".")[0]
        files = f"{layout.tensors(shard).name} and {layout.index(shard).name}"
    else:
        files = path.name
    return (
        f"`snakemake verify_cache` removes every damaged shard (or delete {files} in {path.parent}), "
        "then `snakemake cache` rebuilds what is missing"
    )


def damaged(path: Path, problem: str) -> CacheError:
    return CacheError(f"{path}: {problem}. {repair_hint(path)}")


def read_indexes(directory: Path, schema: pa.Schema, columns: list[str]) -> pa.Table:
    """`columns` of all index files of a cache directory as one table, with a `shard` column."""

    def read(index_path: Path) -> pa.Table:
        try:
            table = read_index(index_path, schema, columns)
        except CacheError as error:
            raise CacheError(f"{error}. {repair_hint(index_path)}") from None
        return table.append_column("shard", pa.array([_shard_of(index_path)] * table.num_rows, pa.string()))

    paths = sorted(Path(directory).glob("shard-*.index.parquet"))
    with ThreadPoolExecutor(max_workers=8) as pool:
        tables = list(pool.map(read, paths))
    empty = pa.table(
        {name: pa.array([], schema.field(name).type) for name in columns}
        | {"shard": pa.array([], pa.string())}
    )
    return pa.concat_tables(tables) if tables else empty


def describe_contents(vae_dir: str | Path, text_dir: str | Path) -> str:
    """What the two caches hold, from their shards' index files: per cache, its samples by status, then
    its failed samples by reason, with an example and the fix of each."""
    lines = []
    for name, directory, schema in (
        ("VAE", vae_dir, VAE_INDEX_SCHEMA),
        ("text", text_dir, TEXT_INDEX_SCHEMA),
    ):
        table = read_indexes(Path(directory), schema, ["sample_id", "status", "reason"])
        failed = table.filter(pc.not_equal(table["status"], STATUS_OK)).to_pylist()
        shards = len(pc.unique(table["shard"]))
        ok = table.num_rows - len(failed)
        lines.append(
            f"{name} cache {directory}: {table.num_rows:,} samples in {shards:,} shards, {ok:,} ok, "
            f"{len(failed):,} failed" + (" by reason:" if failed else "")
        )
        if failed:
            rows = ((row["sample_id"], *split_cache_failure(row["reason"])) for row in failed)
            lines.append(reasons_text(count_reasons(rows)))
    return "\n".join(lines)


def _newest_shards(*tables: pa.Table) -> dict[str, int]:
    """Per sample id, the highest shard that holds it in any of `tables`, ok or failed."""
    newest: dict[str, int] = {}
    for table in tables:
        for sample_id, shard in zip(table["sample_id"].to_pylist(), table["shard"].to_pylist(), strict=True):
            newest[sample_id] = max(newest.get(sample_id, -1), int(shard))
    return newest


class CacheReader:
    """Random access to cached samples by id, across all shards of one VAE and one text cache directory.

    Builds an in-memory index from the shards' index files only; tensors are read lazily, one sample at a
    time. A sample is listed when both caches hold it as ok. `verify=False` skips the checksum and
    finite-value checks of every read (bench/bench_cache_read.py measures what they cost).
    """

    def __init__(
        self, vae_dir: str | Path, text_dir: str | Path, max_open_files: int = 64, verify: bool = True
    ):
        self.vae_dir = Path(vae_dir)
        self.text_dir = Path(text_dir)
        self.max_open_files = max_open_files
        self.verify = verify
        self._handles: OrderedDict[Path, TensorFile] = OrderedDict()
        for directory in (self.vae_dir, self.text_dir):
            if not directory.is_dir():
                raise CacheError(f"{directory}: cache directory missing; build it with `snakemake cache`")

        vae = read_indexes(
            self.vae_dir, VAE_INDEX_SCHEMA, ["sample_id", "status", "latent_shape", "fps", "checksum"]
        )
        text = read_indexes(self.text_dir, TEXT_INDEX_SCHEMA, ["sample_id", "status", "text_len", "checksum"])
        ok_vae = vae.filter(pc.equal(vae["status"], STATUS_OK)).drop_columns(["status"])
        ok_vae = ok_vae.append_column("order", pa.array(range(ok_vae.num_rows), pa.int64()))
        ok_text = text.filter(pc.equal(text["status"], STATUS_OK)).drop_columns(["status"])
        # A sample is usable when both caches hold it, in the same shard (both come from one shard list).
        keys = ok_vae.select(["shard", "sample_id", "order"])
        ok_text = ok_text.rename_columns({"checksum": "text_checksum"})
        matched = keys.join(ok_text, ["shard", "sample_id"], join_type="inner")
        matched = matched.take(pc.sort_indices(matched["order"]))
        joined = ok_vae.take(matched["order"]).append_column("text_len", matched["text_len"])
        # A key cached in several shards is several versions of one object (a replaced object gets a
        # new shard when relisted): the newest shard's is the one to train on, and when it failed the
        # key does not train: an older version never stands in for the object that replaced it.
        newest = _newest_shards(vae, text)
        current = [
            row
            for row, (sample_id, shard) in enumerate(
                zip(joined["sample_id"].to_pylist(), joined["shard"].to_pylist(), strict=True)
            )
            if int(shard) == newest[sample_id]
        ]
        if len(current) < joined.num_rows:
            joined, matched = joined.take(current), matched.take(current)
        # The checksums as arrays: a dict of Python ints per sample would be copied into every loader worker.
        self._latent_checksum = joined["checksum"].to_numpy().astype(np.uint64)
        self._text_checksum = matched["text_checksum"].to_numpy().astype(np.uint64)

        sample_ids = joined["sample_id"].to_pylist()
        shards = joined["shard"].to_pylist()
        self._position: dict[str, int] = {sample_id: index for index, sample_id in enumerate(sample_ids)}
        shapes = pc.list_flatten(joined["latent_shape"]).to_numpy().reshape(-1, 4).tolist()
        self.samples: list[CachedSample] = list(
            map(
                CachedSample._make,
                zip(
                    sample_ids,
                    shards,
                    map(tuple, shapes),
                    joined["text_len"].to_pylist(),
                    joined["fps"].to_pylist(),
                    strict=True,
                ),
            )
        )
        # Every shard the VAE cache indexes, whatever its samples' status: the data a run has seen.
        self.shards: list[str] = sorted(set(vae["shard"].to_pylist()))
        failed = vae.filter(pc.not_equal(vae["status"], STATUS_OK))
        self.failed = dict(zip(failed["sample_id"].to_pylist(), failed["shard"].to_pylist(), strict=True))

    def __getstate__(self):
        # Open file handles do not cross process boundaries (DataLoader workers reopen their own).
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        return state

    def _open(self, path: Path) -> TensorFile:
        handle = self._handles.get(path)
        if handle is None:
            try:
                handle = TensorFile(path)
            except CacheError as error:
                raise CacheError(f"{error}. {repair_hint(path)}") from None
            except OSError as error:
                raise damaged(path, f"unreadable: {error}") from None
            self._handles[path] = handle
            if len(self._handles) > self.max_open_files:
                self._handles.popitem(last=False)[1].close()
        else:
            self._handles.move_to_end(path)
        return handle

    def _read(self, path: Path, name: str, expected_checksum: int | None):
        """One tensor, checked against its checksum unless `verify` is off.

        A matching checksum proves the bytes are those the writer stored, and the writer stores no NaN or
        infinite value (it records such a sample as failed): no finite check is needed here.
        `snakemake verify_cache` checks both.
        """
        handle = self._open(path)  # its errors name the file and the fix already
        try:
            tensor, digest = handle.read(name, with_checksum=self.verify)
        except (CacheError, OSError) as error:
            raise damaged(path, f"cannot read sample {name!r}: {error}") from None
        if self.verify:
            if digest != expected_checksum:
                raise damaged(
                    path,
                    f"sample {name!r} is damaged: its checksum is {digest:016x}, its index row says "
                    + ("none" if expected_checksum is None else f"{expected_checksum:016x}"),
                )
        return tensor

    def _sample(self, sample_id: str, directory: Path) -> int:
        position = self._position.get(sample_id)
        if position is None:
            raise KeyError(f"{sample_id!r} is not an ok sample of {directory}")
        return position

    def latent(self, sample_id: str):
        """The normalised latent [16, T, H, W] of a sample, in the cache's dtype."""
        position = self._sample(sample_id, self.vae_dir)
        path = CacheLayout(self.vae_dir).tensors(self.samples[position].shard)
        return self._read(path, sample_id, int(self._latent_checksum[position]))

    def text(self, sample_id: str):
        """The unpadded caption embedding [L, C] of a sample."""
        position = self._sample(sample_id, self.text_dir)
        path = CacheLayout(self.text_dir).tensors(self.samples[position].shard)
        return self._read(path, sample_id, int(self._text_checksum[position]))

    @property
    def fps(self) -> float:
        """The frame rate the latents were sampled at (the VAE spec's `frames.fps`)."""
        fps = (read_spec(self.vae_dir).get("frames") or {}).get("fps")
        if not isinstance(fps, int | float) or isinstance(fps, bool) or fps <= 0:
            spec = CacheLayout(self.vae_dir).spec
            raise CacheError(f"{spec}: frames.fps: expected a number > 0, found {fps!r}")
        return float(fps)

    @property
    def max_tokens(self) -> int:
        """The token limit the captions were encoded with (the text spec's `max_tokens`)."""
        max_tokens = read_spec(self.text_dir).get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            spec = CacheLayout(self.text_dir).spec
            raise CacheError(f"{spec}: max_tokens: expected an integer >= 1, found {max_tokens!r}")
        return max_tokens

    def empty_text(self):
        """The embedding [L0, C] of the empty caption (caption dropout, unconditional sampling)."""
        path = CacheLayout(self.text_dir).empty_text
        expected = self._open(path).metadata.get(CHECKSUM_KEY)
        return self._read(path, EMPTY_TEXT_TENSOR, int(expected) if str(expected).isdigit() else None)

    def check(self) -> None:
        """Raise CacheError naming the file for a spec/key mismatch, a missing or truncated shard."""
        for directory, kind in ((self.vae_dir, "vae"), (self.text_dir, "text")):
            layout = CacheLayout(directory)
            spec = read_spec(directory)
            if spec.get("kind") != kind:
                raise CacheError(f"{layout.spec}: expected a {kind} cache spec, found {spec.get('kind')!r}")
            if cache_key(spec) != directory.name:
                raise CacheError(
                    f"{layout.spec}: its key is {cache_key(spec)}, but the directory is named "
                    f"{directory.name}; the spec was edited or the directory renamed"
                )
            index_shards, tensor_shards = stored_shards(directory)
            for shard in sorted(index_shards ^ tensor_shards):
                missing = layout.tensors(shard) if shard in index_shards else layout.index(shard)
                raise CacheError(f"{missing}: missing beside its shard; {REBUILD}")
            for shard in sorted(tensor_shards):
                try:
                    header, _ = read_safetensors_header(layout.tensors(shard))
                except CacheError as error:
                    raise CacheError(f"{error}. {repair_hint(layout.tensors(shard))}") from None
                if (header.get("__metadata__") or {}).get("cache_key") != directory.name:
                    raise CacheError(
                        f"{layout.tensors(shard)}: written for cache key "
                        f"{(header.get('__metadata__') or {}).get('cache_key')!r}, not {directory.name}"
                    )
        vae_shards = {sample.shard for sample in self.samples} | set(self.failed.values())
        text = CacheLayout(self.text_dir)
        text_shards = {_shard_of(path) for path in self.text_dir.glob("shard-*.index.parquet")}
        for shard in sorted(vae_shards - text_shards):
            raise CacheError(f"{text.index(shard)}: missing; the VAE cache has it; {REBUILD}")
        if not text.empty_text.is_file():
            raise CacheError(f"{text.empty_text}: missing (the empty-caption embedding); {REBUILD}")
        try:
            read_safetensors_header(text.empty_text)
        except CacheError as error:
            raise CacheError(f"{error}. {repair_hint(text.empty_text)}") from None
