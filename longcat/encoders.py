"""Encode one shard: videos to normalised VAE latents, captions to unpadded umT5 embeddings.

Decoding runs ahead of encoding: a few threads each drive one ffmpeg process per clip (the pixel work
happens in those processes) and hand finished arrays to the encoder through a bounded window, in shard
order, so the accelerator never waits on ffmpeg and memory stays bounded. Clips of one shape are encoded
a few at a time (the Wan encoder walks a clip 4 frames at a time, too little work to fill a large GPU on
its own), and finished latents are written by a background thread while the next batch encodes.
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
from longcat.flow import normalize_latents
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
    rows: list[Mapping], decode: Callable[[Mapping], DecodedClip], workers: int, window: int | None = None
) -> Iterator[DecodedClip]:
    """Decode rows on `workers` threads, at most `window` (2 x workers) clips in flight, in row order."""
    window = max(1, window or 2 * workers)
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


@dataclass(frozen=True)
class EncodeOptions:
    """Speed settings of the VAE encoder (`cache.vae_batch_size`, `cache.channels_last`,
    `cache.cudnn_benchmark`, `cache.fused_rms_norm`); not part of the cache key: they change latents by
    bf16 noise at most.
    """

    batch_size: int = 1
    channels_last: bool = False
    cudnn_benchmark: bool = False
    fused_rms_norm: bool = False

    @classmethod
    def from_config(cls, cache_cfg: Mapping) -> EncodeOptions:
        batch_size = cache_cfg.get("vae_batch_size", 1)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"cache.vae_batch_size: expected a positive integer, found {batch_size!r}")
        return cls(
            batch_size=batch_size,
            channels_last=bool(cache_cfg.get("channels_last", False)),
            cudnn_benchmark=bool(cache_cfg.get("cudnn_benchmark", False)),
            fused_rms_norm=bool(cache_cfg.get("fused_rms_norm", False)),
        )

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last_3d if self.channels_last else torch.contiguous_format


class FusedChannelRMSNorm(torch.nn.Module):
    """Wan's channel RMS norm, `normalize(x.float(), dim=1).to(x.dtype) * sqrt(C) * gamma`, as one
    `rms_norm` call, `x * rsqrt(mean(x^2)) * gamma`: the same function with one rounding instead of three,
    and on CUDA one fused pass over memory instead of about seven (at full resolution those passes cost
    about as much as the convolution they feed). Channels-last input makes the channel axis contiguous.
    """

    def __init__(self, original: torch.nn.Module):
        super().__init__()
        self.original = original
        # normalize clamps the norm at 1e-12, so mean(x^2) at 1e-24 / C.
        self.eps = 1e-24 / original.scale**2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma = self.original.gamma
        normalised = torch.nn.functional.rms_norm(
            x.movedim(1, -1), (x.shape[1],), weight=gamma.reshape(-1), eps=self.eps
        )
        return normalised.movedim(-1, 1)


def _fusable(module: torch.nn.Module) -> bool:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    bias = getattr(module, "bias", None)
    return isinstance(module, WanRMS_norm) and module.channel_first and isinstance(bias, float) and bias == 0


def _swap_rms_norms(encoder: torch.nn.Module, fused: bool) -> None:
    parents = [module for module in encoder.modules() if not isinstance(module, FusedChannelRMSNorm)]
    for parent in parents:
        for name, child in list(parent.named_children()):
            if fused and _fusable(child):
                setattr(parent, name, FusedChannelRMSNorm(child))
            elif not fused and isinstance(child, FusedChannelRMSNorm):
                setattr(parent, name, child.original)


def prepare_vae(vae, options: EncodeOptions):
    """Set the VAE up as the options ask (layout, fused norms) and cuDNN's autotuner (process-wide)."""
    torch.backends.cudnn.benchmark = options.cudnn_benchmark
    _swap_rms_norms(vae.encoder, options.fused_rms_norm)
    # Whole-clip encodes: tiling would split the frame, slicing would undo the batch.
    vae.disable_tiling()
    vae.disable_slicing()
    # Channels innermost (or not) for the 3D convolutions and the 2D ones of the frame-wise downsamplers.
    layouts = {
        5: options.memory_format,
        4: torch.channels_last if options.channels_last else torch.contiguous_format,
    }
    for parameter in vae.parameters():
        if parameter.dim() in layouts:
            parameter.data = parameter.data.contiguous(memory_format=layouts[parameter.dim()])
    return vae.eval()


@torch.inference_mode()
def encode_batch(
    vae,
    clips: list[np.ndarray],
    device: torch.device,
    dtype: torch.dtype,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """uint8 frames of one shape, each [F, H, W, 3] -> normalised posterior-mean latents
    [B, 16, T, H/8, W/8] in float32, on `device`. Samples do not interact: each equals its own encode.
    """
    on_gpu = device.type == "cuda"
    # One pinned staging buffer lets the upload overlap the encoder still running on the previous batch.
    host = torch.empty((len(clips), *clips[0].shape), dtype=torch.uint8, pin_memory=on_gpu)
    torch.stack([torch.from_numpy(frames) for frames in clips], out=host)
    pixels = host.to(device, non_blocking=on_gpu).permute(0, 4, 1, 2, 3)
    # Scale in float32, then round to the compute dtype once.
    pixels = (pixels.float() / 127.5 - 1.0).to(dtype).contiguous(memory_format=memory_format)
    posterior = vae.encode(pixels).latent_dist
    return normalize_latents(posterior.mode(), vae.config)


@dataclass
class _LatentBatch:
    """Latents on their way to the host: `ready` fires when `latents` (pinned on a GPU run) hold them."""

    clips: list[DecodedClip]
    latents: torch.Tensor
    ready: torch.cuda.Event | None = None


def _to_host(latents: torch.Tensor, store_dtype: torch.dtype) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    stored = latents.to(store_dtype)
    if stored.device.type != "cuda":
        return stored, None
    host = torch.empty(stored.shape, dtype=store_dtype, pin_memory=True)
    host.copy_(stored, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return host, ready


def _write_batch(writer: ShardWriter, batch: _LatentBatch) -> None:
    if batch.ready is not None:
        batch.ready.synchronize()
    for clip, latent in zip(batch.clips, batch.latents, strict=True):
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


def read_shard_rows(shard_list: str | Path) -> list[dict]:
    rows = pq.read_table(shard_list).to_pylist()
    if rows and "key" not in rows[0]:
        raise CacheError(f"{shard_list}: expected a `key` column in the shard list, found {sorted(rows[0])}")
    return rows


def same_shape_batches(clips: Iterator[DecodedClip], batch_size: int) -> Iterator[list[DecodedClip]]:
    """Runs of at most `batch_size` consecutive decoded clips of one frame shape; a failed clip comes
    alone (it has no frames) and does not break the run around it.
    """
    run: list[DecodedClip] = []
    for clip in clips:
        if clip.frames is None:
            yield [clip]
            continue
        if run and clip.frames.shape != run[0].frames.shape:
            yield run
            run = []
        run.append(clip)
        if len(run) == batch_size:
            yield run
            run = []
    if run:
        yield run


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
    options: EncodeOptions = EncodeOptions(),
) -> None:
    """Encode every row not already done by an earlier attempt, then assemble the shard.

    `vae` is expected to be in `options`' layout already (`prepare_vae`).
    """
    todo = [row for row in rows if row["key"] not in writer.done]
    dtype = compute_dtype(device)

    def decode(row):
        return decode_row(row, frames_cfg, source, ffmpeg_threads, temp_dir)

    progress = tqdm(
        total=len(rows), initial=len(rows) - len(todo), desc=writer.tensors_path.name, unit="clip"
    )
    # One writer thread keeps the parts in encode order; a short queue bounds the latents held in memory.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="write") as write_pool:
        writes: deque = deque()
        decoded = decode_ahead(todo, decode, decode_workers, window=2 * decode_workers + options.batch_size)
        for batch in same_shape_batches(decoded, options.batch_size):
            if batch[0].frames is None:
                clip = batch[0]
                log.warning("%s: skipped: %s", clip.sample_id, clip.reason)
                row = {"sample_id": clip.sample_id, "status": STATUS_FAILED, "reason": clip.reason}
                writes.append(write_pool.submit(writer.add, row))
            else:
                latents = encode_batch(
                    vae, [clip.frames for clip in batch], device, dtype, options.memory_format
                )
                host, ready = _to_host(latents, store_dtype)
                writes.append(write_pool.submit(_write_batch, writer, _LatentBatch(batch, host, ready)))
            while len(writes) > 2 or (writes and writes[0].done()):
                writes.popleft().result()  # re-raises a failed write here, in the shard's thread
            progress.update(len(batch))
        while writes:
            writes.popleft().result()
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
    options = EncodeOptions.from_config(config["cache"])
    vae = load_components(base_model, device, compute_dtype(device), components=("vae",))["vae"]
    vae = prepare_vae(vae, options)
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
        options=options,
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
