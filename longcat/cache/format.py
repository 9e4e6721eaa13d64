"""The cache's file format: index schemas, sample statuses, checksums, safetensors written and read by hand.

Safetensors files are written here rather than by the safetensors package, which sorts tensors by name:
a shard keeps its samples in shard-list order, and its bytes depend on nothing but its samples. They are
read here too, with plain reads into memory the caller owns, so that the bytes checked are the bytes used.

Every cached tensor has a checksum (XXH3-64) of its dtype, shape and bytes: in its index row
(`checksum`) for a shard's samples, in the file's metadata for the empty caption. Index files carry
parquet's page checksums.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from longcat.cache.spec import CacheError
from longcat.files import atomic_write

EMPTY_TEXT_TENSOR = "empty"

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
        ("checksum", pa.uint64()),  # of the sample's tensor (`checksum`); null for a failed sample
    ]
)
TEXT_INDEX_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("text_len", pa.int32()),
        ("checksum", pa.uint64()),
    ]
)

_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
_TORCH_DTYPES = {code: name for name, code in _SAFETENSORS_DTYPES.items()}
CHECKSUM_KEY = "checksum"  # the metadata key of a lone tensor's checksum (the empty caption's)


def checksum(dtype: str, shape: Sequence[int], data) -> int:
    """XXH3-64 of one tensor's safetensors dtype code, shape and bytes: a flipped bit in its header entry
    or in its data changes it. It hashes tens of GB/s (zlib's CRC-32 about 3 GB/s, several times the
    cost of reading a warm sample: bench/RESULTS.md)."""
    digest = xxhash.xxh3_64(f"{dtype}{list(shape)}".encode("ascii"))
    digest.update(data)
    return digest.intdigest()


def nonfinite_count(tensor) -> int:
    """How many NaN or infinite values a floating tensor holds: one sum when there are none (a NaN or an
    infinity makes the sum non-finite; torch sums bf16 and fp16 in float32)."""
    import torch

    if torch.isfinite(tensor.sum()):
        return 0
    # The sum also overflows for huge finite values: count exactly.
    return int(tensor.numel() - torch.isfinite(tensor).sum())


@dataclass(frozen=True)
class TensorBytes:
    """One tensor as safetensors stores it: dtype code, shape, raw little-endian bytes."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    @property
    def checksum(self) -> int:
        return checksum(self.dtype, self.shape, self.data)


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


def safetensors_header(entries: list[tuple[str, str, tuple[int, ...], int]], metadata: Mapping) -> bytes:
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
        handle.write(safetensors_header(entries, metadata))
        for _, tensor in tensors:
            handle.write(tensor.data)

    atomic_write(path, write)


def read_safetensors_header(path: str | Path) -> tuple[dict, int]:
    """(header, data start) of a safetensors file, checked against the file's size."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return _checked_header(handle, path)
    except FileNotFoundError:
        raise CacheError(f"{path}: missing") from None


def _checked_header(handle, path: Path) -> tuple[dict, int]:
    try:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CacheError(f"{path}: truncated ({len(prefix)} bytes), not a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        size = os.fstat(handle.fileno()).st_size
        if length > size - 8:
            raise CacheError(f"{path}: header of {length} bytes does not fit in a {size}-byte file")
        header = json.loads(handle.read(length))
        data_start = 8 + length
        end = max(
            (entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0
        )
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        raise CacheError(f"{path}: unreadable safetensors header: {error!r}") from None
    if data_start + end != size:
        raise CacheError(
            f"{path}: expected {data_start + end} bytes from its header, found {size} (truncated?)"
        )
    return header, data_start


class TensorFile:
    """An open safetensors file of the cache: its checked header, and tensors read by name into memory of
    their own with plain positioned reads (no memory map, so safe to share across forked processes)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb", buffering=0)
        except FileNotFoundError:
            raise CacheError(f"{self.path}: missing") from None
        try:
            self.header, self.data_start = _checked_header(self._file, self.path)
        except BaseException:
            self._file.close()
            raise

    @property
    def metadata(self) -> dict:
        return self.header.get("__metadata__") or {}

    def names(self) -> list[str]:
        """The tensors' names in file order."""
        tensors = [
            (entry["data_offsets"][0], name) for name, entry in self.header.items() if name != "__metadata__"
        ]
        return [name for _, name in sorted(tensors)]

    def read(self, name: str, with_checksum: bool = True):
        """(tensor, its checksum or None): CacheError when the file has no such tensor or ends early."""
        import torch

        entry = self.header.get(name) if name != "__metadata__" else None
        if not isinstance(entry, dict):
            raise CacheError(f"{self.path}: no tensor {name!r}")
        try:
            code, shape, (begin, end) = (
                entry["dtype"],
                [int(d) for d in entry["shape"]],
                entry["data_offsets"],
            )
            dtype = getattr(torch, _TORCH_DTYPES[code])
            if not 0 <= begin <= end or (end - begin) != dtype.itemsize * _product(shape):
                raise ValueError(f"{end - begin} bytes for a {code} tensor of shape {shape}")
        except (KeyError, TypeError, ValueError) as error:
            raise CacheError(f"{self.path}: bad header entry for {name!r}: {error!r}") from None
        buffer = torch.empty(end - begin, dtype=torch.uint8)
        view = buffer.numpy()
        done = 0
        while done < len(view):
            count = os.preadv(self._file.fileno(), [view[done:]], self.data_start + begin + done)
            if count == 0:
                raise CacheError(f"{self.path}: ends inside tensor {name!r} (truncated)")
            done += count
        return buffer.view(dtype).reshape(shape), checksum(code, shape, view) if with_checksum else None

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _product(shape: Sequence[int]) -> int:
    result = 1
    for dim in shape:
        result *= dim
    return result


def read_index(path: str | Path, schema: pa.Schema, columns: Sequence[str] | None = None) -> pa.Table:
    """An index file's columns, checked: parquet's page checksums, the column types, a checksum on every
    ok sample. CacheError naming the file otherwise."""
    columns = list(columns or schema.names)
    try:
        with pq.ParquetFile(path, page_checksum_verification=True) as file:
            found = file.schema_arrow
            for name in columns:
                expected = schema.field(name).type
                if found.get_field_index(name) < 0 or found.field(name).type != expected:
                    kind = found.field(name).type if found.get_field_index(name) >= 0 else "none"
                    raise CacheError(
                        f"{path}: unreadable index: expected a column {name!r} of {expected}, found {kind}"
                        + (" (an index of cache format 1)" if name == "checksum" else "")
                    )
            table = file.read(columns=columns)
        table.validate(full=True)
    except FileNotFoundError:
        raise CacheError(f"{path}: missing") from None
    except (OSError, ValueError, pa.ArrowException) as error:
        raise CacheError(f"{path}: unreadable index: {error}") from None
    if "checksum" in columns and "status" in columns:
        ok = pc.equal(table["status"], STATUS_OK)
        if table.filter(ok)["checksum"].null_count:
            raise CacheError(f"{path}: unreadable index: an ok sample without a checksum")
    return table
