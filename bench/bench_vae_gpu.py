"""VAE cache throughput on one GPU: clips/s through the real shard encoder, decode overlapped.

Runs longcat.encoders.cache_vae_shard (ffmpeg decode threads ahead of the encoder, batches of same-shape
clips, posterior mean, normalisation, bf16 parts written in the background, the final shard) over
synthetic 5 s 720p clips made with ffmpeg, with a randomly initialised full-size `AutoencoderKLWan()`
(the default config is the Wan 2.1 VAE; nothing is downloaded) in bf16 at 93x480x832. Also times the
encoder alone on decoded clips, to show whether decoding keeps up. One JSON line per encoder setting.

    python bench/bench_vae_gpu.py --gpu                 # one setting (flags below), about 1 minute
    python bench/bench_vae_gpu.py --gpu --matrix        # MATRIX settings, 16 clips each, under 8 minutes
                                                        # (settings not started by --time-limit are skipped)
    python bench/bench_vae_gpu.py --matrix              # CPU smoke run of every setting: tiny VAE, 17x64x112
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

from longcat.cache.format import VAE_INDEX_SCHEMA
from longcat.cache.writer import FailureLimit, ShardWriter
from longcat.config import load_config
from longcat.data.frames import decode_clip, frame_plan
from longcat.data.local import LocalSource
from longcat.encoders.dtypes import compute_dtype
from longcat.encoders.vae import cache_vae_shard, encode_batch, memory_format, prepare_vae
from longcat.paths import CacheLayout
from longcat.settings import Cache, load_settings

CLIPS_TO_ENCODE_IN_24H_ON_8_GPUS = 523_325

GPU_SETUP = {
    "size": (1280, 720),
    "seconds": 6.2,  # 93 frames at 15 fps need 6.2 s of source
    "frames": {"num_frames": 93, "fps": 15, "frame_buckets": [93], "short_clip": "fallback"}
    | {"buckets": [[480, 832], [832, 480], [624, 624]]},
}
CPU_SETUP = {
    "size": (160, 90),
    "seconds": 2.0,
    "frames": {"num_frames": 17, "fps": 15, "frame_buckets": [17], "short_clip": "fallback"}
    | {"buckets": [[64, 112], [112, 64], [80, 80]]},
}


def encode_options(
    batch_size: int, cudnn_benchmark: bool = False, channels_last: bool = False, fused_rms_norm: bool = False
) -> Cache:
    """One encoder setting (the cache section's speed keys); `measure` sets the decode workers (--workers)."""
    cache = load_settings(load_config()).cache
    return dataclasses.replace(
        cache,
        vae_batch_size=batch_size,
        cudnn_benchmark=cudnn_benchmark,
        channels_last=channels_last,
        fused_rms_norm=fused_rms_norm,
        decode_workers=1,
    )


# The baseline, the levers one at a time, then together (with and without cuDNN's autotuner, which is
# not bit-reproducible) at batch sizes 2 and 4.
MATRIX = [
    encode_options(batch_size=1),
    encode_options(batch_size=1, cudnn_benchmark=True),
    encode_options(batch_size=1, channels_last=True),
    encode_options(batch_size=1, channels_last=True, fused_rms_norm=True),
    encode_options(batch_size=4),
    encode_options(batch_size=4, channels_last=True, fused_rms_norm=True),
    encode_options(batch_size=4, cudnn_benchmark=True, channels_last=True, fused_rms_norm=True),
    encode_options(batch_size=2, cudnn_benchmark=True, channels_last=True, fused_rms_norm=True),
]


def typed_frames(section: dict):
    """The typed `frames` settings of the embedded config with `section` in place of its own."""
    return load_settings({**load_config(), "frames": section}).frames


def make_sources(
    directory: Path, count: int, size: tuple[int, int], seconds: float, rate: int = 30
) -> list[Path]:
    paths = []
    for index in range(count):
        path = directory / f"source-{index}.mp4"
        pattern = f"testsrc2=size={size[0]}x{size[1]}:rate={rate}:duration={seconds},noise=alls=12:allf=t"
        subprocess.run(
            ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i", pattern]
            + ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", str(path)],
            check=True,
        )
        paths.append(path)
    return paths


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(vae, options: Cache, frames, rows, scratch: Path, setup, device, workers: int) -> dict:
    """Encode-only clips/s on one decoded clip repeated, then clips/s of a whole shard of `rows`."""
    dtype = compute_dtype(device)
    vae = prepare_vae(vae, options)
    batch = [frames] * options.vae_batch_size
    encode_batch(vae, batch, device, dtype, memory_format(options))  # warm-up: kernels, autotuning, allocator
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    calls = max(1, 4 // options.vae_batch_size)
    start = time.perf_counter()
    for _ in range(calls):
        latents = encode_batch(vae, batch, device, dtype, memory_format(options))
    synchronize(device)
    encode_only = calls * options.vae_batch_size / (time.perf_counter() - start)

    out = Path(tempfile.mkdtemp(prefix="shard-", dir=scratch))
    writer = ShardWriter(CacheLayout(out), "00000", VAE_INDEX_SCHEMA, {})
    start = time.perf_counter()
    cache_vae_shard(
        rows,
        vae,
        typed_frames(setup["frames"]),
        LocalSource(scratch),
        writer,
        store_dtype=torch.bfloat16,
        device=device,
        cache=dataclasses.replace(options, decode_workers=workers),
        limit=FailureLimit(max_fraction=0.0),
        ffmpeg_threads=max(1, (os.cpu_count() or 1) // workers),
    )
    synchronize(device)
    clips_per_s = len(rows) / (time.perf_counter() - start)
    return {
        "latent_shape": list(latents.shape[1:]),
        "clips_per_s": round(clips_per_s, 3),
        "encode_only_clips_per_s": round(encode_only, 3),
        "hours_for_523k_on_8": round(CLIPS_TO_ENCODE_IN_24H_ON_8_GPUS / (8 * clips_per_s) / 3600, 1),
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1)
        if device.type == "cuda"
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="full-size VAE on cuda in bf16 at 93x480x832")
    parser.add_argument("--matrix", action="store_true", help="every setting in MATRIX, one JSON line each")
    parser.add_argument(
        "--clips", type=int, default=None, help="clips per timed shard (GPU: 24, 16 with --matrix; CPU: 4)"
    )
    parser.add_argument("--workers", type=int, default=8, help="decode threads, one ffmpeg process each")
    parser.add_argument(
        "--batch-size", type=int, default=1, help="clips per encode call (cache.vae_batch_size)"
    )
    parser.add_argument(
        "--cudnn-benchmark", action="store_true", help="let cuDNN autotune (not bit-reproducible)"
    )
    parser.add_argument("--channels-last", action="store_true", help="channels_last_3d weights and input")
    parser.add_argument("--fused-rms-norm", action="store_true", help="one rms_norm kernel per encoder norm")
    parser.add_argument(
        "--time-limit", type=float, default=380.0, help="seconds after which no new setting starts"
    )
    args = parser.parse_args()

    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device visible")
    setup = GPU_SETUP if args.gpu else CPU_SETUP
    device = torch.device("cuda" if args.gpu else "cpu")
    clips = args.clips or ((16 if args.matrix else 24) if args.gpu else 4)
    if args.matrix:
        settings = MATRIX
    else:
        settings = [
            encode_options(args.batch_size, args.cudnn_benchmark, args.channels_last, args.fused_rms_norm)
        ]
    started = time.perf_counter()
    if args.gpu:
        vae = AutoencoderKLWan()
    else:
        vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    vae = vae.to(device, compute_dtype(device)).eval()

    width, height = setup["size"]
    frame_count = int(setup["seconds"] * 30)
    row = {"width": width, "height": height, "fps": 30.0, "frame_count": frame_count}
    row |= {"duration": frame_count / 30, "aspect_ratio": width / height}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        sources = make_sources(scratch, 4, setup["size"], setup["seconds"])
        plan = frame_plan(row, typed_frames(setup["frames"]))
        frames = decode_clip(str(sources[0]), plan)
        # Each row needs its own key: link the sources under distinct names.
        rows = []
        for index in range(clips):
            name = f"clip-{index:04d}.mp4"
            os.link(sources[index % len(sources)], scratch / name)
            rows.append({**row, "key": name})

        for options in settings:
            result = {
                "bench": "vae_gpu" if args.gpu else "vae_cpu_smoke",
                "device": torch.cuda.get_device_name() if args.gpu else "cpu",
                "frames": [plan.num_frames, plan.height, plan.width],
                "source": f"{width}x{height} {setup['seconds']}s 30fps h264",
                "clips": clips,
                "decode_workers": args.workers,
                "vae_batch_size": options.vae_batch_size,
                "cudnn_benchmark": options.cudnn_benchmark,
                "channels_last": options.channels_last,
                "fused_rms_norm": options.fused_rms_norm,
            }
            setting_start = time.perf_counter()
            if setting_start - started > args.time_limit:
                result["skipped"] = f"--time-limit {args.time_limit:.0f} s reached"
            else:
                try:
                    result |= measure(vae, options, frames, rows, scratch, setup, device, args.workers)
                except torch.OutOfMemoryError as error:
                    result["error"] = f"out of memory: {str(error).splitlines()[0]}"
                    torch.cuda.empty_cache()
                result["seconds"] = round(time.perf_counter() - setting_start, 1)
            json.dump(result, sys.stdout)
            sys.stdout.write("\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
