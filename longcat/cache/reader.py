"""Reading the caches training needs: random access to one sample's latent and caption embedding.

Only the shards' index files are read up front; tensors are read lazily through safetensors' memory-mapped
access, with a bounded set of open files.
"""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from longcat.cache.format import (
    EMPTY_TEXT_TENSOR,
    STATUS_OK,
    TEXT_INDEX_SCHEMA,
    VAE_INDEX_SCHEMA,
    read_safetensors_header,
)
from longcat.cache.spec import CacheError, cache_key, read_spec
from longcat.paths import CacheLayout


class CachedSample(NamedTuple):
    sample_id: str  # the source key
    shard: str  # "00000"
    latent_shape: tuple[int, int, int, int]  # (C, T, H, W)
    text_len: int
    fps: float


def _shard_of(index_path: Path) -> str:
    return index_path.name.removeprefix("shard-").removesuffix(".index.parquet")


class CacheReader:
    """Random access to cached samples by id, across all shards of one VAE and one text cache directory.

    Builds an in-memory index from the shards' index files only; tensors are read lazily, one sample at a
    time, through safetensors' memory-mapped access. A sample is listed when both caches hold it as ok.
    """

    def __init__(self, vae_dir: str | Path, text_dir: str | Path, max_open_files: int = 64):
        self.vae_dir = Path(vae_dir)
        self.text_dir = Path(text_dir)
        self.max_open_files = max_open_files
        self._handles: OrderedDict[Path, object] = OrderedDict()
        for directory in (self.vae_dir, self.text_dir):
            if not directory.is_dir():
                raise CacheError(f"{directory}: cache directory missing; build it with `snakemake cache`")

        vae = self._read_indexes(self.vae_dir, ["sample_id", "status", "latent_shape", "fps"])
        text = self._read_indexes(self.text_dir, ["sample_id", "status", "text_len"])
        ok_vae = vae.filter(pc.equal(vae["status"], STATUS_OK)).drop_columns(["status"])
        ok_vae = ok_vae.append_column("order", pa.array(range(ok_vae.num_rows), pa.int64()))
        ok_text = text.filter(pc.equal(text["status"], STATUS_OK)).drop_columns(["status"])
        # A sample is usable when both caches hold it, in the same shard (both come from one shard list).
        keys = ok_vae.select(["shard", "sample_id", "order"])
        matched = keys.join(ok_text, ["shard", "sample_id"], join_type="inner")
        matched = matched.take(pc.sort_indices(matched["order"]))
        joined = ok_vae.take(matched["order"]).append_column("text_len", matched["text_len"])

        sample_ids = joined["sample_id"].to_pylist()
        shards = joined["shard"].to_pylist()
        self._shard_of: dict[str, str] = dict(zip(sample_ids, shards, strict=True))
        if len(self._shard_of) != len(sample_ids):
            seen: dict[str, str] = {}
            for sample_id, shard in zip(sample_ids, shards, strict=True):
                if sample_id in seen:
                    raise CacheError(
                        f"{self.vae_dir}: sample {sample_id!r} is in shards {seen[sample_id]} and {shard}; "
                        "shard lists must not share keys"
                    )
                seen[sample_id] = shard
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
        failed = vae.filter(pc.not_equal(vae["status"], STATUS_OK))
        self.failed = dict(zip(failed["sample_id"].to_pylist(), failed["shard"].to_pylist(), strict=True))

    @staticmethod
    def _read_indexes(directory: Path, columns: list[str]) -> pa.Table:
        """All index files of a cache directory as one table, with a `shard` column."""

        def read(index_path: Path) -> pa.Table:
            try:
                table = pq.read_table(index_path, columns=columns)
            except (OSError, pa.ArrowException) as error:
                raise CacheError(f"{index_path}: unreadable index: {error}") from None
            return table.append_column(
                "shard", pa.array([_shard_of(index_path)] * table.num_rows, pa.string())
            )

        paths = sorted(directory.glob("shard-*.index.parquet"))
        with ThreadPoolExecutor(max_workers=8) as pool:
            tables = list(pool.map(read, paths))
        schema = VAE_INDEX_SCHEMA if "latent_shape" in columns else TEXT_INDEX_SCHEMA
        empty = pa.table(
            {name: pa.array([], schema.field(name).type) for name in columns}
            | {"shard": pa.array([], pa.string())}
        )
        return pa.concat_tables(tables) if tables else empty

    def __getstate__(self):
        # Open file handles do not cross process boundaries (DataLoader workers reopen their own).
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        return state

    def _open(self, path: Path):
        from safetensors import safe_open

        handle = self._handles.get(path)
        if handle is None:
            try:
                handle = safe_open(str(path), framework="pt")
            except FileNotFoundError:
                raise CacheError(f"{path}: missing; rebuild it with `snakemake cache`") from None
            except Exception as error:
                raise CacheError(f"{path}: unreadable: {error}") from None
            self._handles[path] = handle
            if len(self._handles) > self.max_open_files:
                self._handles.popitem(last=False)
        else:
            self._handles.move_to_end(path)
        return handle

    def _get(self, directory: Path, shard: str, name: str):
        path = CacheLayout(directory).tensors(shard)
        handle = self._open(path)
        try:
            return handle.get_tensor(name)
        except Exception as error:
            raise CacheError(f"{path}: cannot read sample {name!r}: {error}") from None

    def latent(self, sample_id: str):
        """The normalised latent [16, T, H, W] of a sample, in the cache's dtype."""
        if sample_id not in self._shard_of:
            raise KeyError(f"{sample_id!r} is not an ok sample of {self.vae_dir}")
        return self._get(self.vae_dir, self._shard_of[sample_id], sample_id)

    def text(self, sample_id: str):
        """The unpadded caption embedding [L, C] of a sample."""
        if sample_id not in self._shard_of:
            raise KeyError(f"{sample_id!r} is not an ok sample of {self.text_dir}")
        return self._get(self.text_dir, self._shard_of[sample_id], sample_id)

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
        return self._open(path).get_tensor(EMPTY_TEXT_TENSOR)

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
            index_shards = {_shard_of(path) for path in directory.glob("shard-*.index.parquet")}
            tensor_shards = {
                path.name.removeprefix("shard-").removesuffix(".safetensors")
                for path in directory.glob("shard-*.safetensors")
            }
            for shard in sorted(index_shards ^ tensor_shards):
                missing = layout.tensors(shard) if shard in index_shards else layout.index(shard)
                raise CacheError(f"{missing}: missing beside its shard")
            for shard in sorted(tensor_shards):
                header, _ = read_safetensors_header(layout.tensors(shard))
                if (header.get("__metadata__") or {}).get("cache_key") != directory.name:
                    raise CacheError(
                        f"{layout.tensors(shard)}: written for cache key "
                        f"{(header.get('__metadata__') or {}).get('cache_key')!r}, not {directory.name}"
                    )
        vae_shards = {sample.shard for sample in self.samples} | set(self.failed.values())
        text = CacheLayout(self.text_dir)
        text_shards = {_shard_of(path) for path in self.text_dir.glob("shard-*.index.parquet")}
        for shard in sorted(vae_shards - text_shards):
            raise CacheError(f"{text.index(shard)}: missing; the VAE cache has it")
        if not text.empty_text.is_file():
            raise CacheError(f"{text.empty_text}: missing (the empty-caption embedding)")
        read_safetensors_header(text.empty_text)
