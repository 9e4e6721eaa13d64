"""VAE cache throughput on one GPU: clips/s through the real shard encoder, decode overlapped.

Runs longcat.encoders.cache_vae_shard (ffmpeg decode threads ahead of the encoder, posterior mean,
normalisation, bf16 parts and the final shard) over synthetic 5 s 720p clips made with ffmpeg, with a
randomly initialised full-size `AutoencoderKLWan()` (the default config is the Wan 2.1 VAE; nothing is
downloaded) in bf16 at 93x480x832. Also times the encoder alone on one decoded clip, to show whether
decoding keeps up. Prints one JSON line; finishes inside 5 minutes on one H100.

    python bench/bench_vae_gpu.py --gpu          # the real measurement
    python bench/bench_vae_gpu.py                # CPU smoke run: tiny VAE, 17x64x112
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

from longcat.cache import VAE_INDEX_SCHEMA, ShardWriter
from longcat.encoders import cache_vae_shard, compute_dtype, encode_frames
from longcat.frames import decode_clip, frame_plan
from longcat.source import LocalSource

CLIPS_TO_ENCODE_IN_24H_ON_8_GPUS = 523_325

GPU_SETUP = {
    "size": (1280, 720),
    "seconds": 5.0,
    "frames": {"num_frames": 93, "fps": 15, "frame_buckets": [93], "short_clip": "fallback"}
    | {"buckets": [[480, 832], [832, 480], [624, 624]]},
}
CPU_SETUP = {
    "size": (160, 90),
    "seconds": 2.0,
    "frames": {"num_frames": 17, "fps": 15, "frame_buckets": [17], "short_clip": "fallback"}
    | {"buckets": [[64, 112], [112, 64], [80, 80]]},
}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="full-size VAE on cuda in bf16 at 93x480x832")
    parser.add_argument(
        "--clips", type=int, default=None, help="clips in the timed shard (24 on GPU, 6 on CPU)"
    )
    parser.add_argument("--workers", type=int, default=8, help="decode threads, one ffmpeg process each")
    parser.add_argument(
        "--cudnn-benchmark", action="store_true", help="let cuDNN autotune (not bit-reproducible)"
    )
    args = parser.parse_args()

    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device visible")
    setup = GPU_SETUP if args.gpu else CPU_SETUP
    device = torch.device("cuda" if args.gpu else "cpu")
    clips = args.clips or (24 if args.gpu else 6)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
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
        plan = frame_plan(row, setup["frames"])

        frames = decode_clip(str(sources[0]), plan)
        encode_frames(vae, frames, device, compute_dtype(device))  # warm-up: kernels, allocator
        if args.gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(3):
            latent = encode_frames(vae, frames, device, compute_dtype(device))
        if args.gpu:
            torch.cuda.synchronize()
        encode_only = 3 / (time.perf_counter() - start)

        rows = [{**row, "key": sources[index % len(sources)].name} for index in range(clips)]
        # Each row needs its own key: link the sources under distinct names.
        for index, shard_row in enumerate(rows):
            name = f"clip-{index:04d}.mp4"
            os.link(scratch / shard_row["key"], scratch / name)
            shard_row["key"] = name
        out = scratch / "out"
        writer = ShardWriter(
            out / "shard-00000.safetensors", out / "shard-00000.index.parquet", VAE_INDEX_SCHEMA, {}
        )
        start = time.perf_counter()
        cache_vae_shard(
            rows,
            vae,
            setup["frames"],
            LocalSource(scratch),
            writer,
            store_dtype=torch.bfloat16,
            device=device,
            decode_workers=args.workers,
            ffmpeg_threads=max(1, (os.cpu_count() or 1) // args.workers),
        )
        if args.gpu:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start

    clips_per_s = clips / elapsed
    result = {
        "bench": "vae_gpu" if args.gpu else "vae_cpu_smoke",
        "device": torch.cuda.get_device_name() if args.gpu else "cpu",
        "frames": [plan.num_frames, plan.height, plan.width],
        "latent_shape": list(latent.shape),
        "source": f"{width}x{height} {setup['seconds']}s 30fps h264",
        "clips": clips,
        "decode_workers": args.workers,
        "cudnn_benchmark": args.cudnn_benchmark,
        "clips_per_s": round(clips_per_s, 3),
        "encode_only_clips_per_s": round(encode_only, 3),
        "hours_for_523k_on_8": round(CLIPS_TO_ENCODE_IN_24H_ON_8_GPUS / (8 * clips_per_s) / 3600, 1),
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1) if args.gpu else None,
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
