"""The cache's file format: index schemas, sample statuses, and safetensors written and checked by hand.

Safetensors files are written here rather than by the safetensors package, which sorts tensors by name:
a shard keeps its samples in shard-list order, and its bytes depend on nothing but its samples.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

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
