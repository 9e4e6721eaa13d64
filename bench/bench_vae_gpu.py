"""VAE cache throughput on one GPU: clips/s through the real shard encoder, decode overlapped.

Runs longcat.encoders.cache_vae_shard (ffmpeg decode threads ahead of the encoder, batches of same-shape
clips, posterior mean, normalisation, bf16 parts written in the background, the final shard) over
synthetic 6.2 s 720p clips made with ffmpeg (93 frames at 15 fps), with a randomly initialised full-size
`AutoencoderKLWan()` (the default config is the Wan 2.1 VAE; nothing is downloaded) in bf16 at
93x480x832. Also times the encoder alone on decoded clips, to show whether decoding keeps up. One JSON
line per encoder setting.

    python bench/bench_vae_gpu.py --gpu                 # one setting (flags below), about 1 minute
    python bench/bench_vae_gpu.py --gpu --matrix        # MATRIX settings, 16 clips each, under 8 minutes
                                                        # (settings not started by --time-limit are skipped)
    python bench/bench_vae_gpu.py --matrix              # CPU smoke run of every setting: tiny VAE, 17x64x112

`--speed` measures against config/longcat-13b.yaml's VAE settings (the baseline, first) in one process:
the encoder alone at 93 frames for SPEED_VARIANTS (with `--profile FILE`, the baseline's kernels), then
torch.compile with the best of them; each variant's latents against a float32 reference encode of the
same 17 frames (TF32 off), passing when its relative L2 error is at most PARITY_SLACK times the
baseline's; the whole shard job (decode overlapped) for the baseline and the best; both again at 73
frames (5 s sources); and the decode alone at 8 and 16 workers, to see whether the CPU keeps up with the
best encoder. One JSON line per measurement; a failed one prints its error and the rest go on; a summary
line before the compile step and again after it.

    python bench/bench_vae_gpu.py --gpu --speed         # about 3 minutes on an H200, compile included
    python bench/bench_vae_gpu.py --speed --no-compile  # CPU smoke run of every step but the compile
"""

import argparse
import copy
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan

from longcat.cache.format import VAE_INDEX_SCHEMA
from longcat.cache.writer import FailureLimit, ShardWriter
from longcat.config import REPO_ROOT, load_config
from longcat.data.frames import decode_clip, frame_plan
from longcat.data.local import LocalSource
from longcat.data.metadata import plan_columns
from longcat.encoders.decode import decode_ahead, decode_row
from longcat.encoders.dtypes import compute_dtype
from longcat.encoders.vae import cache_vae_shard, encode_batch, memory_format, prepare_vae
from longcat.paths import CacheLayout
from longcat.settings import Cache, Frames, load_settings

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
    directory.mkdir(parents=True, exist_ok=True)
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


def encode_rate(vae, options: Cache, frames: np.ndarray, device) -> dict:
    """The encoder alone with `options`: one warm-up batch (kernels, autotuning, compilation), then
    about 4 clips timed."""
    dtype = compute_dtype(device)
    vae = prepare_vae(vae, options)
    batch = [frames] * options.vae_batch_size
    start = time.perf_counter()
    encode_batch(vae, batch, device, dtype, memory_format(options))
    synchronize(device)
    warmup = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    calls = max(1, 4 // options.vae_batch_size)
    start = time.perf_counter()
    for _ in range(calls):
        latents = encode_batch(vae, batch, device, dtype, memory_format(options))
    synchronize(device)
    return {
        "latent_shape": list(latents.shape[1:]),
        "encode_only_clips_per_s": round(calls * options.vae_batch_size / (time.perf_counter() - start), 3),
        "warmup_s": round(warmup, 1),
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1)
        if device.type == "cuda"
        else None,
    }


def shard_rate(vae, options: Cache, frames: Frames, rows, scratch: Path, device, workers: int) -> float:
    """Clips/s of the whole shard job over `rows` (decode overlapped, parts written, shard assembled)."""
    out = Path(tempfile.mkdtemp(prefix="shard-", dir=scratch))
    writer = ShardWriter(CacheLayout(out), "00000", VAE_INDEX_SCHEMA, {})
    start = time.perf_counter()
    cache_vae_shard(
        rows,
        prepare_vae(vae, options),
        frames,
        LocalSource(scratch),
        writer,
        store_dtype=torch.bfloat16,
        device=device,
        cache=dataclasses.replace(options, decode_workers=workers),
        limit=FailureLimit(max_fraction=0.0),
        ffmpeg_threads=max(1, (os.cpu_count() or 1) // workers),
    )
    synchronize(device)
    return len(rows) / (time.perf_counter() - start)


def measure(vae, options: Cache, frames, rows, scratch: Path, setup, device, workers: int) -> dict:
    """Encode-only clips/s on one decoded clip repeated, then clips/s of a whole shard of `rows`."""
    encoded = encode_rate(vae, options, frames, device)
    clips_per_s = shard_rate(vae, options, typed_frames(setup["frames"]), rows, scratch, device, workers)
    return {
        "latent_shape": encoded["latent_shape"],
        "clips_per_s": round(clips_per_s, 3),
        "encode_only_clips_per_s": encoded["encode_only_clips_per_s"],
        "hours_for_523k_on_8": hours_on_8(clips_per_s),
        "peak_gpu_mem_gb": encoded["peak_gpu_mem_gb"],
    }


def hours_on_8(clips_per_s: float) -> float:
    return round(CLIPS_TO_ENCODE_IN_24H_ON_8_GPUS / (8 * clips_per_s) / 3600, 1)


def make_rows(scratch: Path, sources: list[Path], count: int, prefix: str, row: dict) -> list[dict]:
    """`count` metadata rows over `sources`, each under a name of its own (hard links)."""
    rows = []
    for index in range(count):
        name = f"{prefix}-{index:04d}.mp4"
        os.link(sources[index % len(sources)], scratch / name)
        rows.append({**row, "key": name})
    return rows


def source_row(setup: dict, seconds: float) -> dict:
    """A metadata row of a clip of `seconds` at 30 fps, with the frame plan the metadata stage stores."""
    width, height = setup["size"]
    frame_count = int(seconds * 30)
    row = {"width": width, "height": height, "fps": 30.0, "frame_count": frame_count} | {
        "duration": frame_count / 30,
        "aspect_ratio": width / height,
    }
    return row | plan_columns(frame_plan(row, typed_frames(setup["frames"])))


# --speed: the encoder settings tried against the real job's (config/longcat-13b.yaml), then
# torch.compile with the best of them; the clips per timed shard job, the parity clip's frames.
# The baseline is the real job's encoder eager (its other settings as configured): what compiling it is
# measured against.
REAL_CACHE = dataclasses.replace(
    load_settings(load_config(REPO_ROOT / "config" / "longcat-13b.yaml")).cache, vae_compile=False
)
SPEED_VARIANTS = [
    {"vae_batch_size": 2},
    {"vae_batch_size": 4},
    {"cudnn_benchmark": True},
    {"vae_batch_size": 2, "cudnn_benchmark": True},
    {"vae_batch_size": 4, "cudnn_benchmark": True},
]
SPEED_SETUP = {
    True: {"size": (1280, 720), "seconds": 6.2, "short_seconds": 5.0, "parity_frames": 17, "job_clips": 12}
    | {"frames": {**GPU_SETUP["frames"], "frame_buckets": [93, 73]}},
    False: {"size": (160, 90), "seconds": 2.0, "short_seconds": 0.8, "parity_frames": 9, "job_clips": 3}
    | {"frames": {**CPU_SETUP["frames"], "frame_buckets": [17, 9]}},
}
# A variant passes when its latents are no further from the float32 reference than the baseline's (the
# real job's bf16 path) times this.
PARITY_SLACK = 1.25


def reference_latents(vae_fp32, clip: np.ndarray, device) -> torch.Tensor:
    """float32 latents of the plain diffusers encoder, TF32 off: the reference of the parity check."""
    saved = (
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    try:
        return encode_batch(vae_fp32, [clip], device, torch.float32)[0].float()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved[:2]
        torch.backends.cudnn.benchmark = saved[2]


def parity(vae, options: Cache, clip: np.ndarray, reference: torch.Tensor, device) -> dict:
    """The first latent of a batch of `clip` with `options` against the float32 reference."""
    batch = [clip] * options.vae_batch_size
    latent = encode_batch(vae, batch, device, compute_dtype(device), memory_format(options))[0].float()
    error = latent - reference
    return {
        "max_abs_error": round(error.abs().max().item(), 5),
        "rel_l2_error": round((error.norm() / reference.norm()).item(), 6),
    }


def write_profile(vae, options: Cache, clip: np.ndarray, device, path: Path) -> dict:
    """The kernels of one encode with `options`, most time first, as the profiler tabulates them."""
    from torch.profiler import ProfilerActivity, profile

    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as profiler:
        encode_batch(
            vae, [clip] * options.vae_batch_size, device, compute_dtype(device), memory_format(options)
        )
        synchronize(device)
    sort_by = "device_time_total" if on_gpu else "cpu_time_total"
    path.write_text(profiler.key_averages().table(sort_by=sort_by, row_limit=40, max_name_column_width=90))
    return {"profile": str(path)}


def settings_of(options: Cache) -> dict:
    keys = ("vae_batch_size", "cudnn_benchmark", "channels_last", "fused_rms_norm", "vae_compile")
    return {key: getattr(options, key) for key in keys}


class SpeedRun:
    """The --speed sequence (module docstring) and what it has measured so far."""

    def __init__(self, args):
        self.args = args
        self.on_gpu = args.gpu
        self.setup = SPEED_SETUP[self.on_gpu]
        self.device = torch.device("cuda" if self.on_gpu else "cpu")
        self.started = time.perf_counter()
        self.base = dataclasses.replace(REAL_CACHE, decode_workers=args.workers)
        self.frames = typed_frames(self.setup["frames"])
        self.encode = {}  # options -> encoder alone at the long clips' frames, with parity
        self.encode_short = {}  # options -> encoder alone at the short clips' frames
        self.job = {}  # options -> clips/s of the shard job over the long clips
        self.job_short = {}
        self.decode = {}  # decode workers -> clips/s of the decode alone

    def step(self, name: str, measure_step, options: Cache | None = None, **labels) -> dict | None:
        """One measurement as a JSON line; None when it failed or the time limit had passed."""
        result = {"bench": "vae_speed", "step": name, **labels}
        if options is not None:
            result |= settings_of(options)
        step_start = time.perf_counter()
        value = None
        if step_start - self.started > self.args.time_limit:
            result["skipped"] = f"--time-limit {self.args.time_limit:.0f} s reached"
        else:
            try:
                value = measure_step()
                result |= value
            except Exception as error:  # a failed step (out of memory, a compile error) must not end the rest
                result["error"] = f"{type(error).__name__}: {str(error)[:500]}"
                if self.on_gpu:
                    torch.cuda.empty_cache()
            result["seconds"] = round(time.perf_counter() - step_start, 1)
        print(json.dumps(result), flush=True)
        return value

    def best(self) -> Cache:
        """The fastest encoder setting whose latents pass the parity check."""
        tolerance = self.tolerance()
        passing = [options for options, value in self.encode.items() if value["rel_l2_error"] <= tolerance]
        return max(passing, key=lambda options: self.encode[options]["encode_only_clips_per_s"])

    def tolerance(self) -> float:
        return PARITY_SLACK * self.encode[self.base]["rel_l2_error"]

    def run(self) -> None:
        setup, device = self.setup, self.device
        torch.manual_seed(0)
        model = AutoencoderKLWan() if self.on_gpu else AutoencoderKLWan(**TINY_VAE)
        vae_fp32 = copy.deepcopy(model).to(device, torch.float32).eval()
        vae = model.to(device, compute_dtype(device)).eval()
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            long_row, short_row = (
                source_row(setup, setup["seconds"]),
                source_row(setup, setup["short_seconds"]),
            )
            long_plan, short_plan = frame_plan(long_row, self.frames), frame_plan(short_row, self.frames)
            long_sources = make_sources(scratch, 2, setup["size"], setup["seconds"])
            short_sources = make_sources(scratch / "short", 1, setup["size"], setup["short_seconds"])
            clip = decode_clip(str(long_sources[0]), long_plan)
            short_clip = decode_clip(str(short_sources[0]), short_plan)
            parity_clip = np.ascontiguousarray(clip[: setup["parity_frames"]])
            reference = reference_latents(vae_fp32, parity_clip, device)
            del vae_fp32
            long_rows = make_rows(scratch, long_sources, setup["job_clips"], "long", long_row)
            short_rows = make_rows(scratch, short_sources, setup["job_clips"], "short", short_row)
            long_labels = {"frames": [long_plan.num_frames, long_plan.height, long_plan.width]}
            short_labels = {"frames": [short_plan.num_frames, short_plan.height, short_plan.width]}

            def encode(options: Cache) -> None:
                value = self.step(
                    "encode",
                    lambda: (
                        encode_rate(vae, options, clip, device)
                        | parity(vae, options, parity_clip, reference, device)
                    ),
                    options,
                    **long_labels,
                    baseline=options == self.base,
                )
                if value is not None:
                    self.encode[options] = value

            def job(options: Cache, rows: list[dict], labels: dict) -> float | None:
                value = self.step(
                    "shard_job",
                    lambda: {
                        "clips": len(rows),
                        "clips_per_s": round(
                            shard_rate(vae, options, self.frames, rows, scratch, device, self.args.workers), 3
                        ),
                    },
                    options,
                    **labels,
                )
                return value and value["clips_per_s"]

            # The baseline first (the real job's settings), then the others, each with its parity.
            encode(self.base)
            if self.base not in self.encode:
                return
            if self.args.compile_only:
                # torch.compile of the real job's settings as they are (no autotune), at 93 and 73 frames.
                compiled = dataclasses.replace(self.base, vae_compile=True)
                encode(compiled)
                self.job[compiled] = job(compiled, long_rows, long_labels)
                self.encode_short[compiled] = self.step(
                    "encode", lambda: encode_rate(vae, compiled, short_clip, device), compiled, **short_labels
                )
                self.job_short[compiled] = job(compiled, short_rows, short_labels)
                encode(dataclasses.replace(compiled, vae_batch_size=2))
                self.summarize()
                return
            if self.args.profile is not None:
                self.step(
                    "profile",
                    lambda: write_profile(vae, self.base, clip, device, self.args.profile),
                    self.base,
                    **long_labels,
                )
            for variant in SPEED_VARIANTS:
                encode(dataclasses.replace(self.base, **variant))
            best = self.best()
            for options in dict.fromkeys([self.base, best]):
                self.job[options] = job(options, long_rows, long_labels)
                self.encode_short[options] = self.step(
                    "encode",
                    lambda options=options: encode_rate(vae, options, short_clip, device),
                    options,
                    **short_labels,
                )
            self.job_short[best] = job(best, short_rows, short_labels)
            for workers in DECODE_WORKERS[self.on_gpu]:
                self.decode[workers] = self.step(
                    "decode",
                    lambda workers=workers: decode_rate(long_rows, self.frames, scratch, workers),
                    **long_labels,
                    decode_workers=workers,
                )
            # Compiled last, with the best setting so far: its compile may take what time is left.
            self.summarize()
            if not self.args.no_compile:
                compiled = dataclasses.replace(best, vae_compile=True)
                encode(compiled)
                if compiled in self.encode and self.best() == compiled:
                    self.job[compiled] = job(compiled, long_rows, long_labels)
                self.summarize()

    def summarize(self) -> None:
        """A summary line of what has been measured (printed again when the compile step has run)."""
        base, best = self.base, self.best()
        rate = self.encode[best]["encode_only_clips_per_s"]
        fastest_decode = max(
            ((value or {}).get("clips_per_s") or 0 for value in self.decode.values()), default=0
        )
        summary = {
            "bench": "vae_speed_summary",
            "device": device_name(self.device),
            "baseline": settings_of(base),
            "baseline_encode_only_clips_per_s": self.encode[base]["encode_only_clips_per_s"],
            "best": settings_of(best),
            "best_encode_only_clips_per_s": rate,
            "best_over_baseline": round(rate / self.encode[base]["encode_only_clips_per_s"], 3),
            "parity_tolerance_rel_l2": round(self.tolerance(), 6),
            "shard_job_clips_per_s": {"baseline": self.job.get(base), "best": self.job.get(best)},
            "frames_73": {
                "baseline_encode_only_clips_per_s": (self.encode_short.get(base) or {}).get(
                    "encode_only_clips_per_s"
                ),
                "best_encode_only_clips_per_s": (self.encode_short.get(best) or {}).get(
                    "encode_only_clips_per_s"
                ),
                "best_shard_job_clips_per_s": self.job_short.get(best),
            },
            "decode_clips_per_s": {
                str(workers): (value or {}).get("clips_per_s") for workers, value in self.decode.items()
            },
            "decode_keeps_up_with_best_encode": fastest_decode >= rate,
        }
        if self.job.get(best):
            summary["hours_for_523k_on_8_at_best_job"] = hours_on_8(self.job[best])
        summary["seconds"] = round(time.perf_counter() - self.started, 1)
        print(json.dumps(summary), flush=True)


# Decode workers tried by --speed (one ffmpeg process each, the cores shared among them).
DECODE_WORKERS = {True: (8, 16), False: (1, 2)}
TINY_VAE = {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1}


def decode_rate(rows, frames: Frames, source_dir: Path, workers: int) -> dict:
    """Clips/s of the shard job's decode alone: `workers` threads, each driving ffmpeg, in row order."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    source = LocalSource(source_dir)

    def decode(row):
        return decode_row(row, frames, source, threads, source_dir / ".scratch")

    start = time.perf_counter()
    decoded = sum(clip.frames is not None for clip in decode_ahead(rows, decode, workers))
    return {
        "clips": len(rows),
        "decoded": decoded,
        "clips_per_s": round(len(rows) / (time.perf_counter() - start), 3),
    }


def device_name(device) -> str:
    return torch.cuda.get_device_name() if device.type == "cuda" else "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="full-size VAE on cuda in bf16 at 93x480x832")
    parser.add_argument("--matrix", action="store_true", help="every setting in MATRIX, one JSON line each")
    parser.add_argument("--speed", action="store_true", help="the real job's settings against others")
    parser.add_argument("--no-compile", action="store_true", help="--speed without its torch.compile step")
    parser.add_argument(
        "--compile-only",
        action="store_true",
        help="--speed: the real job's settings eager and compiled (93 and 73 frames, batch 1 and 2) only",
    )
    parser.add_argument("--profile", type=Path, help="--speed: write the baseline encode's kernel table here")
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
    if args.speed:
        SpeedRun(args).run()
        return
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
    vae = AutoencoderKLWan() if args.gpu else AutoencoderKLWan(**TINY_VAE)
    vae = vae.to(device, compute_dtype(device)).eval()

    width, height = setup["size"]
    row = source_row(setup, setup["seconds"])
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        sources = make_sources(scratch, 4, setup["size"], setup["seconds"])
        plan = frame_plan(row, typed_frames(setup["frames"]))
        frames = decode_clip(str(sources[0]), plan)
        rows = make_rows(scratch, sources, clips, "clip", row)

        for options in settings:
            result = {
                "bench": "vae_gpu" if args.gpu else "vae_cpu_smoke",
                "device": device_name(device),
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
