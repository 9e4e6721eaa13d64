"""Encode one shard's clips to normalised VAE latents (the `cache_vae_shard` job).

Clips of one shape are encoded a few at a time (the Wan encoder walks a clip 4 frames at a time, too
little work to fill a large GPU on its own), and finished latents are written by a background thread
while the next batch encodes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from longcat.cache.format import STATUS_FAILED, STATUS_OK, VAE_INDEX_SCHEMA
from longcat.cache.spec import CacheError, cache_key, checked_spec, vae_cache_spec
from longcat.cache.writer import FailureLimit, ShardWriter, failure_limit
from longcat.data.metadata import stored_plan
from longcat.data.sources import TransientSourceError, sanitize
from longcat.encoders.decode import DecodedClip, decode_ahead, decode_row, read_shard_rows, same_shape_batches
from longcat.encoders.dtypes import compute_dtype, torch_dtype
from longcat.encoders.write_behind import WriteBehind, to_host
from longcat.flow import encode_latents, vae_pixels
from longcat.paths import CacheLayout
from longcat.settings import Cache, Frames, Settings

log = logging.getLogger(__name__)


def memory_format(cache: Cache) -> torch.memory_format:
    """The 5D layout of the VAE's weights and input that `cache.channels_last` asks for."""
    return torch.channels_last_3d if cache.channels_last else torch.contiguous_format


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


# Graphs one compiled encoder may hold: Wan's encoder walks a clip in chunks (the first frame, then 4 at a
# time, the frame cache filling up), three input shapes per clip shape and batch size, and a shard holds
# clips of several buckets.
VAE_COMPILED_GRAPHS = 64


def prepare_vae(vae, cache: Cache):
    """Set the VAE up as the cache's speed settings ask (`channels_last`, `fused_rms_norm`, `vae_compile`)
    and cuDNN's autotuner (`cudnn_benchmark`, process-wide). None of them is in the cache key: they
    change latents by float rounding at most. May be called again with other settings."""
    torch.backends.cudnn.benchmark = cache.cudnn_benchmark
    encoder = getattr(vae.encoder, "_orig_mod", vae.encoder)  # compiled by an earlier call
    _swap_rms_norms(encoder, cache.fused_rms_norm)
    # Whole-clip encodes: tiling would split the frame, slicing would undo the batch.
    vae.disable_tiling()
    vae.disable_slicing()
    # Channels innermost (or not) for the 3D convolutions and the 2D ones of the frame-wise downsamplers.
    layouts = {
        5: memory_format(cache),
        4: torch.channels_last if cache.channels_last else torch.contiguous_format,
    }
    for parameter in vae.parameters():
        if parameter.dim() in layouts:
            parameter.data = parameter.data.contiguous(memory_format=layouts[parameter.dim()])
    vae.encoder = encoder
    if cache.vae_compile:
        # Static shapes: each chunk shape gets kernels of its own (dynamic ones would be generic), and
        # each new shape costs a compile, once per process.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, VAE_COMPILED_GRAPHS)
        vae.encoder = torch.compile(encoder, dynamic=False)
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
    return encode_latents(vae, vae_pixels(pixels, dtype).contiguous(memory_format=memory_format))


@dataclass
class _LatentBatch:
    """Latents on their way to the host: `ready` fires when `latents` (pinned on a GPU run) hold them."""

    clips: list[DecodedClip]
    latents: torch.Tensor
    ready: torch.cuda.Event | None = None


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


def _encode_rows(todo, decode, vae, writer, store_dtype, device, dtype, cache, progress) -> None:
    """Decode ahead, encode in same-shape batches and hand the parts to the writer, in row order."""
    workers, batch_size = cache.decode_workers, cache.vae_batch_size
    with WriteBehind() as writes:
        decoded = decode_ahead(todo, decode, workers, window=2 * workers + batch_size)
        for batch in same_shape_batches(decoded, batch_size):
            if batch[0].frames is None:
                clip = batch[0]
                log.warning("%s: skipped: %s", clip.sample_id, clip.reason)
                writes.submit(
                    writer.add, {"sample_id": clip.sample_id, "status": STATUS_FAILED, "reason": clip.reason}
                )
            else:
                latents = encode_batch(
                    vae, [clip.frames for clip in batch], device, dtype, memory_format(cache)
                )
                host, ready = to_host(latents, store_dtype)
                writes.submit(_write_batch, writer, _LatentBatch(batch, host, ready))
            progress.update(len(batch))


def cache_vae_shard(
    rows: list[dict],
    vae,
    frames: Frames,
    source,
    writer: ShardWriter,
    store_dtype: torch.dtype,
    device: torch.device,
    cache: Cache,
    limit: FailureLimit,
    ffmpeg_threads: int = 0,
) -> None:
    """Encode every row not already done by an earlier attempt, then assemble the shard.

    `cache` gives the batch size, decode workers and layout; `vae` is expected to be in that layout
    already (`prepare_vae`). `ffmpeg_threads` 0 lets each ffmpeg process choose. Clips are streamed to
    the writer's scratch dir. When the source does not answer, the job stops with TransientSourceError
    and writes no shard: the samples done so far stay as parts, and a plain rerun goes on from them.
    More failed clips than `limit` allows stop it with CacheError (`ShardWriter.check_failures`), and so
    does a row whose stored frame plan is not the one `frames` gives (`stored_plan`).
    """
    for row in rows:  # a shard list planned under other frame settings stops here, before any decode
        try:
            stored_plan(row, frames)
        except CacheError as error:
            raise CacheError(f"{writer.tensors_path}: {error}") from None
    todo = [row for row in rows if row["key"] not in writer.done]
    dtype = compute_dtype(device)

    def decode(row):
        return decode_row(row, frames, source, ffmpeg_threads, writer.scratch_dir)

    progress = tqdm(
        total=len(rows), initial=len(rows) - len(todo), desc=writer.tensors_path.name, unit="clip"
    )
    try:
        _encode_rows(todo, decode, vae, writer, store_dtype, device, dtype, cache, progress)
    except TransientSourceError as error:
        raise TransientSourceError(
            f"{writer.tensors_path.name}: stopped because the source did not answer ({sanitize(error)}). "
            f"The {len(writer.done)} samples done are kept in {writer.partial_dir}: a plain rerun of the "
            "same target goes on from there."
        ) from None
    progress.close()
    writer.finish((row["key"] for row in rows), limit)


def run_vae_shard(
    settings: Settings,
    shard_list: str | Path,
    cache: CacheLayout,
    shard: str,
    base_model: str | Path,
    device: torch.device,
    threads: int,
) -> None:
    """The whole `cache_vae_shard` job: load the VAE, encode the shard's clips, write the shard.

    `threads` is the job's CPU allotment, shared by the decode_workers ffmpeg processes.
    """
    from longcat.basemodel.loader import load_components
    from longcat.data.open_source import open_source

    spec = checked_spec(cache.root, vae_cache_spec(settings))
    rows = read_shard_rows(shard_list)
    with ShardWriter(cache, shard, VAE_INDEX_SCHEMA, {"cache_key": cache_key(spec)}) as writer:
        if writer.finished(row["key"] for row in rows):
            log.info("%s: written by another job of this shard meanwhile; left as it is", writer.tensors_path)
            return
        vae = load_components(base_model, device, compute_dtype(device), components=("vae",))["vae"]
        cache_vae_shard(
            rows,
            prepare_vae(vae, settings.cache),
            settings.frames,
            open_source(settings.source),
            writer,
            store_dtype=torch_dtype(spec["dtype"]),
            device=device,
            cache=settings.cache,
            limit=failure_limit(settings, shard),
            ffmpeg_threads=max(1, threads // settings.cache.decode_workers),
        )
