"""Encode one shard: videos to normalised VAE latents, captions to unpadded umT5 embeddings.

Decoding runs ahead of encoding: a few threads each drive one ffmpeg process per clip (the pixel work
happens in those processes) and hand finished arrays to the encoder through a bounded window, in shard
order, so the accelerator never waits on ffmpeg and memory stays bounded.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from longcat.cache import (
    STATUS_FAILED,
    STATUS_OK,
    TEXT_INDEX_SCHEMA,
    VAE_INDEX_SCHEMA,
    CacheError,
    ShardWriter,
    cache_key,
    read_spec,
    text_cache_spec,
    vae_cache_spec,
    write_empty_text,
)
from longcat.frames import ClipRejected, FramePlan, decode_clip, frame_plan
from longcat.source import SourceError, sanitize

log = logging.getLogger(__name__)

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"cache.dtype: expected one of {sorted(_TORCH_DTYPES)}, found {name!r}") from None


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU, fp32 on CPU (CPU bf16 convolutions are slow and less exact)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


# ---------------------------------------------------------------- reading clips


@contextmanager
def local_copy(source, key: str, temp_dir: str | None = None) -> Iterator[str]:
    """A local path to `key`: the file itself for a local source, else a temp copy deleted after use."""
    root = getattr(source, "root", None)
    if root is not None:
        yield str(Path(root, key))
        return
    suffix = Path(key).suffix or ".mp4"
    handle, path = tempfile.mkstemp(suffix=suffix, prefix="longcat-clip-", dir=temp_dir)
    try:
        with os.fdopen(handle, "wb") as output:
            output.write(source.read_all(key))
        yield path
    finally:
        os.unlink(path)


@dataclass
class DecodedClip:
    sample_id: str
    plan: FramePlan | None
    frames: np.ndarray | None  # [F, H, W, 3] uint8
    reason: str | None = None


def decode_row(row: Mapping, frames_cfg: Mapping, source, threads: int, temp_dir: str | None) -> DecodedClip:
    """Plan and decode one metadata row; a clip that cannot be used comes back with its reason."""
    sample_id = row["key"]
    try:
        plan = frame_plan(row, frames_cfg)
        with local_copy(source, sample_id, temp_dir) as path:
            frames = decode_clip(path, plan, threads=threads)
    except ClipRejected as rejected:
        return DecodedClip(sample_id, None, None, str(rejected))
    except (SourceError, OSError) as error:  # this clip's failure, not the shard's
        return DecodedClip(sample_id, None, None, f"reading the clip failed: {sanitize(error)}")
    return DecodedClip(sample_id, plan, frames)


def decode_ahead(
    rows: list[Mapping], decode: Callable[[Mapping], DecodedClip], workers: int
) -> Iterator[DecodedClip]:
    """Decode rows on `workers` threads, at most 2 x workers clips in flight, yielded in row order."""
    window = max(1, 2 * workers)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        pending: deque = deque()
        rows_left = iter(rows)
        for row in rows_left:
            pending.append(pool.submit(decode, row))
            if len(pending) >= window:
                break
        while pending:
            clip = pending.popleft().result()
            next_row = next(rows_left, None)
            if next_row is not None:
                pending.append(pool.submit(decode, next_row))
            yield clip


# ---------------------------------------------------------------- VAE


def normalise_latents(latents: torch.Tensor, vae) -> torch.Tensor:
    """`(z - mean) * (1 / std)` with the VAE config's statistics, as the LongCat pipeline does."""
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=latents.device).view(shape)
    inverse_std = 1.0 / torch.tensor(vae.config.latents_std, dtype=torch.float32, device=latents.device).view(
        shape
    )
    return (latents.float() - mean) * inverse_std


@torch.no_grad()
def encode_frames(vae, frames: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 frames [F, H, W, 3] -> normalised posterior-mean latent [16, T, H/8, W/8] in float32."""
    pixels = torch.from_numpy(frames).to(device, non_blocking=True)
    # Scale in float32, then round to the compute dtype once.
    pixels = (pixels.permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1.0).to(dtype)
    posterior = vae.encode(pixels).latent_dist
    return normalise_latents(posterior.mode(), vae)[0]


def read_shard_rows(shard_list: str | Path) -> list[dict]:
    rows = pq.read_table(shard_list).to_pylist()
    if rows and "key" not in rows[0]:
        raise CacheError(f"{shard_list}: expected a `key` column in the shard list, found {sorted(rows[0])}")
    return rows


def cache_vae_shard(
    rows: list[dict],
    vae,
    frames_cfg: Mapping,
    source,
    writer: ShardWriter,
    store_dtype: torch.dtype,
    device: torch.device,
    decode_workers: int = 2,
    ffmpeg_threads: int = 0,
    temp_dir: str | None = None,
) -> None:
    """Encode every row not already done by an earlier attempt, then assemble the shard."""
    todo = [row for row in rows if row["key"] not in writer.done]
    dtype = compute_dtype(device)

    def decode(row):
        return decode_row(row, frames_cfg, source, ffmpeg_threads, temp_dir)

    progress = tqdm(
        total=len(rows), initial=len(rows) - len(todo), desc=writer.tensors_path.name, unit="clip"
    )
    for clip in decode_ahead(todo, decode, decode_workers):
        if clip.frames is None:
            log.warning("%s: skipped: %s", clip.sample_id, clip.reason)
            writer.add({"sample_id": clip.sample_id, "status": STATUS_FAILED, "reason": clip.reason})
        else:
            latent = encode_frames(vae, clip.frames, device, dtype).to(store_dtype)
            writer.add(
                {
                    "sample_id": clip.sample_id,
                    "status": STATUS_OK,
                    "reason": None,
                    "num_frames": clip.plan.num_frames,
                    "fps": clip.plan.fps,
                    "bucket_height": clip.plan.height,
                    "bucket_width": clip.plan.width,
                    "latent_shape": list(latent.shape),
                },
                latent,
            )
        progress.update()
    progress.close()
    writer.finish(row["key"] for row in rows)


# ---------------------------------------------------------------- text


def cache_text_shard(
    rows: list[dict],
    tokenizer,
    text_encoder,
    max_tokens: int,
    writer: ShardWriter,
    store_dtype: torch.dtype,
    batch_size: int = 16,
) -> None:
    """Encode the caption of every row not already done, unpadded [L_i, C], then assemble the shard."""
    from longcat.text import encode_prompts

    todo = [row for row in rows if row["key"] not in writer.done]
    for row in todo:
        if row.get("caption") is None:
            writer.add({"sample_id": row["key"], "status": STATUS_FAILED, "reason": "no caption text"})
    captioned = [row for row in todo if row.get("caption") is not None]
    for start in tqdm(range(0, len(captioned), batch_size), desc=writer.tensors_path.name, unit="batch"):
        batch = captioned[start : start + batch_size]
        embeddings = encode_prompts(tokenizer, text_encoder, [row["caption"] for row in batch], max_tokens)
        for row, embedding in zip(batch, embeddings.unpadded, strict=True):
            writer.add(
                {
                    "sample_id": row["key"],
                    "status": STATUS_OK,
                    "reason": None,
                    "text_len": int(embedding.shape[0]),
                },
                embedding.to(store_dtype),
            )
    writer.finish(row["key"] for row in rows)


# ---------------------------------------------------------------- entry points for the rules


def _checked_spec(spec_path: str | Path, expected: dict) -> dict:
    spec = read_spec(Path(spec_path).parent)
    if spec != expected:
        raise CacheError(
            f"{spec_path}: does not match the config (key {cache_key(expected)}); rerun `snakemake cache`"
        )
    return spec


def run_vae_shard(
    config: Mapping,
    shard_list: str,
    spec_path: str,
    base_model: str,
    tensors_path: str,
    index_path: str,
    device: torch.device,
    demo_dir: str | None = None,
    threads: int = 1,
) -> None:
    """The whole `cache_vae_shard` job: load the VAE, encode the shard's clips, write the shard.

    `threads` is the job's CPU allotment, shared by the decode_workers ffmpeg processes.
    """
    from longcat.basemodel import load_components
    from longcat.source import open_source

    spec = _checked_spec(spec_path, vae_cache_spec(config))
    rows = read_shard_rows(shard_list)
    writer = ShardWriter(tensors_path, index_path, VAE_INDEX_SCHEMA, {"cache_key": cache_key(spec)})
    vae = load_components(base_model, device, compute_dtype(device), components=("vae",))["vae"]
    workers = int(config["cache"].get("decode_workers", 2))
    cache_vae_shard(
        rows,
        vae,
        config["frames"],
        open_source(config["source"], demo_dir=demo_dir),
        writer,
        store_dtype=torch_dtype(spec["dtype"]),
        device=device,
        decode_workers=workers,
        ffmpeg_threads=max(1, threads // workers),
    )


def load_text_components(base_model: str, device: torch.device):
    from longcat.basemodel import load_components

    loaded = load_components(
        base_model, device, compute_dtype(device), components=("tokenizer", "text_encoder")
    )
    return loaded["tokenizer"], loaded["text_encoder"]


def run_text_shard(
    config: Mapping,
    shard_list: str,
    spec_path: str,
    base_model: str,
    tensors_path: str,
    index_path: str,
    device: torch.device,
) -> None:
    """The whole `cache_text_shard` job."""
    spec = _checked_spec(spec_path, text_cache_spec(config))
    rows = read_shard_rows(shard_list)
    writer = ShardWriter(tensors_path, index_path, TEXT_INDEX_SCHEMA, {"cache_key": cache_key(spec)})
    tokenizer, text_encoder = load_text_components(base_model, device)
    cache_text_shard(rows, tokenizer, text_encoder, spec["max_tokens"], writer, torch_dtype(spec["dtype"]))


def run_empty_text(
    config: Mapping, spec_path: str, base_model: str, output: str, device: torch.device
) -> None:
    """The embedding of the empty caption, for caption dropout and unconditional sampling."""
    from longcat.text import encode_prompts

    spec = _checked_spec(spec_path, text_cache_spec(config))
    tokenizer, text_encoder = load_text_components(base_model, device)
    embedding = encode_prompts(tokenizer, text_encoder, [""], spec["max_tokens"]).unpadded[0]
    write_empty_text(output, embedding.to(torch_dtype(spec["dtype"])), {"cache_key": cache_key(spec)})
