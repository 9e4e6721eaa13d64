"""Per-shard caches of VAE latents and text embeddings: keys, file format, resumable writer and reader.

Layout, one directory per cache key (a hash of everything that changes the bytes):

    {cache_dir}/vae/<key>/spec.json                      what made the cache (its hash is <key>)
    {cache_dir}/vae/<key>/shard-NNNNN.safetensors        one tensor per sample, named by its source key
    {cache_dir}/vae/<key>/shard-NNNNN.index.parquet      one row per sample: status, reason, shape, ...
    {cache_dir}/text/<key>/...                           the same for text, plus empty.safetensors

A shard job writes each finished sample to `.partial-shard-NNNNN/` first, so a killed job resumes where it
stopped; the final files are assembled from the parts in shard order, with no timestamps, so they are
byte-identical to those of an uninterrupted run. This module imports torch only when a tensor is touched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from longcat.buckets import resolution_buckets

log = logging.getLogger(__name__)

# Bump when the decode, normalisation or file layout changes: old caches then get a new key.
CACHE_FORMAT = 1

EMPTY_TEXT_FILE = "empty.safetensors"
EMPTY_TEXT_TENSOR = "empty"
SPEC_FILE = "spec.json"

STATUS_OK = "ok"
STATUS_FAILED = "failed"

VAE_INDEX_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("num_frames", pa.int32()),
        ("fps", pa.float64()),
        ("bucket_height", pa.int32()),
        ("bucket_width", pa.int32()),
        ("latent_shape", pa.list_(pa.int32())),
    ]
)
TEXT_INDEX_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("text_len", pa.int32()),
    ]
)

_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


class CacheError(RuntimeError):
    """A cache directory or shard that cannot be used as it is; the message names the file."""


# ---------------------------------------------------------------- keys


def _model_identity(config: Mapping, with_tokenizer: bool) -> dict:
    """What decides the base model's bytes (longcat.basemodel.base_model_params).

    The tiny model's tokenizer is learnt from the demo captions; the VAE does not depend on them.
    """
    from longcat.basemodel import base_model_params

    identity = base_model_params(config)
    if not with_tokenizer:
        identity.pop("captions", None)
    return identity


def vae_cache_spec(config: Mapping) -> dict:
    """Everything that changes the bytes of a VAE cache shard (and nothing that does not)."""
    frames = config["frames"]
    return {
        "kind": "vae",
        "format": CACHE_FORMAT,
        "model": _model_identity(config, with_tokenizer=False),
        "frames": {
            "num_frames": int(frames["num_frames"]),
            "fps": float(frames["fps"]),
            "frame_buckets": sorted({int(count) for count in frames.get("frame_buckets") or []}),
            "short_clip": frames.get("short_clip", "fallback"),
            # The largest time stretch allowed (1.0: clips are sampled at exactly fps).
            "max_stretch": float(frames["max_stretch"]) if frames.get("short_clip") == "stretch" else 1.0,
            "resolution": frames.get("resolution"),
            "buckets": [list(bucket) for bucket in resolution_buckets(frames)],
        },
        "dtype": config["cache"]["dtype"],
    }


def text_cache_spec(config: Mapping) -> dict:
    """Everything that changes the bytes of a text cache shard."""
    return {
        "kind": "text",
        "format": CACHE_FORMAT,
        "model": _model_identity(config, with_tokenizer=True),
        "max_tokens": int(config["cache"]["max_tokens"]),
        "dtype": config["cache"]["dtype"],
    }


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def cache_key(spec: Mapping) -> str:
    """A short, stable hash of the spec: the name of the cache directory."""
    return hashlib.sha256(canonical_json(spec).encode("utf-8")).hexdigest()[:16]


def write_spec(path: str | Path, spec: Mapping) -> None:
    atomic_write_bytes(path, (json.dumps(spec, sort_keys=True, indent=2) + "\n").encode("utf-8"))


def read_spec(cache_dir: str | Path) -> dict:
    path = Path(cache_dir, SPEC_FILE)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheError(f"{path}: missing; every cache directory holds the spec.json that made it") from None
    except ValueError as error:
        raise CacheError(f"{path}: not valid JSON: {error}") from None


# ---------------------------------------------------------------- atomic files


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: str | Path, write) -> None:
    """Write through `write(handle)` into a temp file beside `path`, fsync, rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic_write(path, lambda handle: handle.write(data))


def write_index(path: str | Path, rows: list[dict], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    _atomic_write(path, lambda handle: pq.write_table(table, handle, compression="zstd"))


# ---------------------------------------------------------------- safetensors, written by hand


@dataclass(frozen=True)
class TensorBytes:
    """One tensor as safetensors stores it: dtype code, shape, raw little-endian bytes."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes


def tensor_bytes(tensor) -> TensorBytes:
    """A CPU copy of a torch tensor in safetensors form."""
    import torch

    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in _SAFETENSORS_DTYPES:
        raise CacheError(
            f"cannot cache a {tensor.dtype} tensor; expected one of {sorted(_SAFETENSORS_DTYPES)}"
        )
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return TensorBytes(
        _SAFETENSORS_DTYPES[dtype], tuple(tensor.shape), flat.view(torch.uint8).numpy().tobytes()
    )


def _safetensors_header(entries: list[tuple[str, str, tuple[int, ...], int]], metadata: Mapping) -> bytes:
    """The length-prefixed JSON header; entries are (name, dtype, shape, nbytes) in file order."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, dtype, shape, nbytes in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
    return struct.pack("<Q", len(encoded)) + encoded


def write_safetensors(path: str | Path, tensors: list[tuple[str, TensorBytes]], metadata: Mapping) -> None:
    """A safetensors file with the tensors in the given order (safetensors' own writer reorders them)."""
    entries = [(name, t.dtype, t.shape, len(t.data)) for name, t in tensors]

    def write(handle):
        handle.write(_safetensors_header(entries, metadata))
        for _, tensor in tensors:
            handle.write(tensor.data)

    _atomic_write(path, write)


def read_safetensors_header(path: str | Path) -> tuple[dict, int]:
    """(header, data start) of a safetensors file, checked against the file's size."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CacheError(f"{path}: truncated ({len(prefix)} bytes), not a safetensors file")
            (length,) = struct.unpack("<Q", prefix)
            size = os.fstat(handle.fileno()).st_size
            if length > size - 8:
                raise CacheError(f"{path}: header of {length} bytes does not fit in a {size}-byte file")
            header = json.loads(handle.read(length))
    except FileNotFoundError:
        raise CacheError(f"{path}: missing") from None
    except ValueError as error:
        raise CacheError(f"{path}: unreadable safetensors header: {error}") from None
    data_start = 8 + length
    end = max(
        (entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0
    )
    if data_start + end != size:
        raise CacheError(
            f"{path}: expected {data_start + end} bytes from its header, found {size} (truncated?)"
        )
    return header, data_start


def _part_row(path: Path) -> dict:
    """The index row a per-sample part file carries (its header is checked against its size)."""
    header, _ = read_safetensors_header(path)
    return json.loads(header["__metadata__"]["row"])


# ---------------------------------------------------------------- writer


class ShardWriter:
    """Builds one shard's safetensors and index from per-sample parts that survive a crash.

    `done` holds the rows of samples finished by earlier attempts; `add` records a new one; `finish`
    assembles the shard in the order given, writes the index and removes the parts.
    """

    def __init__(
        self, tensors_path: str | Path, index_path: str | Path, schema: pa.Schema, metadata: Mapping
    ):
        self.tensors_path = Path(tensors_path)
        self.index_path = Path(index_path)
        self.schema = schema
        self.metadata = dict(metadata)
        shard_name = self.tensors_path.name.removesuffix(".safetensors")
        self.partial_dir = self.tensors_path.parent / f".partial-{shard_name}"
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        for path in (self.tensors_path, self.index_path):
            for stale in path.parent.glob(f".{path.name}.tmp-*"):
                stale.unlink(missing_ok=True)  # a temp file of a job killed while writing
        self.done: dict[str, dict] = {}
        for part in sorted(self.partial_dir.glob("*.safetensors")):
            try:
                row = _part_row(part)
            except (CacheError, KeyError, ValueError):
                log.warning("%s: unreadable part from an earlier attempt, encoding that sample again", part)
                part.unlink()
                continue
            self.done[row["sample_id"]] = row
        if self.done:
            log.info("%s: resuming, %d samples already done", self.tensors_path.name, len(self.done))

    def _part_path(self, sample_id: str) -> Path:
        return self.partial_dir / (hashlib.sha1(sample_id.encode("utf-8")).hexdigest() + ".safetensors")

    def add(self, row: dict, tensor=None) -> None:
        """Record one sample: its index row (with `sample_id` and `status`) and its tensor when it has one."""
        tensors = [(row["sample_id"], tensor_bytes(tensor))] if tensor is not None else []
        write_safetensors(self._part_path(row["sample_id"]), tensors, {"row": canonical_json(row)})
        self.done[row["sample_id"]] = row

    def finish(self, sample_ids: Iterable[str]) -> None:
        """Assemble the shard from the parts, in `sample_ids` order, then drop the parts."""
        sample_ids = list(sample_ids)
        missing = [sample_id for sample_id in sample_ids if sample_id not in self.done]
        if missing:
            raise CacheError(
                f"{self.tensors_path}: {len(missing)} samples not encoded yet, e.g. {missing[0]!r}"
            )
        rows, entries, sources = [], [], []
        for sample_id in sample_ids:
            part = self._part_path(sample_id)
            header, data_start = read_safetensors_header(part)
            rows.append(json.loads(header["__metadata__"]["row"]))
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                begin, end = entry["data_offsets"]
                entries.append((name, entry["dtype"], tuple(entry["shape"]), end - begin))
                sources.append((part, data_start + begin, end - begin))

        def write(handle):
            handle.write(_safetensors_header(entries, self.metadata))
            for part, offset, nbytes in sources:
                with open(part, "rb") as source:
                    source.seek(offset)
                    shutil.copyfileobj(_Limited(source, nbytes), handle, length=1 << 22)

        _atomic_write(self.tensors_path, write)
        write_index(self.index_path, rows, self.schema)
        shutil.rmtree(self.partial_dir)


class _Limited:
    """A reader of at most `remaining` bytes of `handle`, for copyfileobj."""

    def __init__(self, handle, remaining: int):
        self.handle = handle
        self.remaining = remaining

    def read(self, size: int = -1) -> bytes:
        size = self.remaining if size < 0 else min(size, self.remaining)
        data = self.handle.read(size)
        self.remaining -= len(data)
        return data


def write_empty_text(path: str | Path, embedding, metadata: Mapping) -> None:
    write_safetensors(path, [(EMPTY_TEXT_TENSOR, tensor_bytes(embedding))], metadata)


# ---------------------------------------------------------------- reader


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
        path = directory / f"shard-{shard}.safetensors"
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
            raise CacheError(
                f"{self.text_dir / SPEC_FILE}: max_tokens: expected an integer >= 1, found {max_tokens!r}"
            )
        return max_tokens

    def empty_text(self):
        """The embedding [L0, C] of the empty caption (caption dropout, unconditional sampling)."""
        path = self.text_dir / EMPTY_TEXT_FILE
        return self._open(path).get_tensor(EMPTY_TEXT_TENSOR)

    def check(self) -> None:
        """Raise CacheError naming the file for a spec/key mismatch, a missing or truncated shard."""
        for directory, kind in ((self.vae_dir, "vae"), (self.text_dir, "text")):
            spec = read_spec(directory)
            if spec.get("kind") != kind:
                raise CacheError(
                    f"{directory / SPEC_FILE}: expected a {kind} cache spec, found {spec.get('kind')!r}"
                )
            if cache_key(spec) != directory.name:
                raise CacheError(
                    f"{directory / SPEC_FILE}: its key is {cache_key(spec)}, but the directory is named "
                    f"{directory.name}; the spec was edited or the directory renamed"
                )
            index_shards = {_shard_of(path) for path in directory.glob("shard-*.index.parquet")}
            tensor_shards = {
                path.name.removeprefix("shard-").removesuffix(".safetensors")
                for path in directory.glob("shard-*.safetensors")
            }
            for shard in sorted(index_shards ^ tensor_shards):
                missing = "safetensors" if shard in index_shards else "index.parquet"
                raise CacheError(f"{directory / f'shard-{shard}.{missing}'}: missing beside its shard")
            for shard in sorted(tensor_shards):
                header, _ = read_safetensors_header(directory / f"shard-{shard}.safetensors")
                if (header.get("__metadata__") or {}).get("cache_key") != directory.name:
                    raise CacheError(
                        f"{directory / f'shard-{shard}.safetensors'}: written for cache key "
                        f"{(header.get('__metadata__') or {}).get('cache_key')!r}, not {directory.name}"
                    )
        vae_shards = {sample.shard for sample in self.samples} | set(self.failed.values())
        text_shards = {_shard_of(path) for path in self.text_dir.glob("shard-*.index.parquet")}
        for shard in sorted(vae_shards - text_shards):
            raise CacheError(
                f"{self.text_dir / f'shard-{shard}.index.parquet'}: missing; the VAE cache has it"
            )
        if not (self.text_dir / EMPTY_TEXT_FILE).is_file():
            raise CacheError(f"{self.text_dir / EMPTY_TEXT_FILE}: missing (the empty-caption embedding)")
        read_safetensors_header(self.text_dir / EMPTY_TEXT_FILE)
