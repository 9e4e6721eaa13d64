"""Encoded tensors on their way to disk while the GPU goes on: a pinned copy to the host, then the shard
writer on one background thread."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

import torch


def to_host(tensor: torch.Tensor, store_dtype: torch.dtype) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """`tensor` in `store_dtype` on the host, copied without waiting on a GPU run: wait on the event (when
    there is one) before reading the copy."""
    stored = tensor.to(store_dtype)
    if stored.device.type != "cuda":
        return stored, None
    host = torch.empty(stored.shape, dtype=store_dtype, pin_memory=True)
    host.copy_(stored, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return host, ready


class WriteBehind:
    """Runs writes on one thread, in the order given, while the caller encodes the next batch.

    At most `depth` writes wait (they hold tensors in memory). A write that failed raises in the caller,
    at a later `submit` or when the block ends; leaving the block waits for every write.
    """

    def __init__(self, depth: int = 2):
        self.depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="write")
        self._pending: deque = deque()

    def submit(self, write, *args) -> None:
        self._pending.append(self._pool.submit(write, *args))
        while len(self._pending) > self.depth or (self._pending and self._pending[0].done()):
            self._pending.popleft().result()

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        try:
            while self._pending and error_type is None:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True)
