"""Writing the data stage's parquet tables: atomically, so a reader never sees half a table."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from longcat.files import atomic_write


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write a zstd-compressed parquet file through a temp file beside `path`, renamed over it."""
    atomic_write(path, lambda handle: pq.write_table(table, handle, compression="zstd"))
