"""Probe cost on a local S3 server: bounded ranged reads + first-frame decode vs full download + OpenCV.

Makes a few distinct 5 s clips of 480p-1080p at camera-like bitrates (x264 ultrafast, 2-8 Mbit/s, light
film grain so the encoder spends them, index at the head or the end), uploads them under `--n` keys to
moto's S3 server on 127.0.0.1, then probes every key both ways at the same concurrency, counting the
bytes each GET returns. Two modes:

- `loopback`: straight to moto; bandwidth is free, so per-request costs dominate.
- `emulated`: through a byte-counting proxy on 127.0.0.1 that holds each response's first byte until
  `--latency-ms` after its request and caps each connection at `--bandwidth-mbps` megabytes per second
  (defaults: S3 from an instance in the same region).

Prints one JSON line per method per mode and one with the ratios per mode.
Goal: <= 5% of the bytes and >= 5x faster.

    python bench/bench_probe.py            # n=200, both modes
    python bench/bench_probe.py --n 20 --modes emulated
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# (width, height, fps, bitrate, index at the head): bitrates of phone and camera footage.
CLIP_SHAPES = [
    (854, 480, 30, "2M", False),
    (1280, 720, 30, "4M", True),
    (1920, 1080, 30, "8M", False),
    (480, 854, 25, "2M", True),
    (1280, 720, 24, "4M", False),
    (1920, 1080, 25, "8M", True),
    (960, 540, 30, "3M", False),
    (1080, 1920, 30, "8M", False),
]
PATTERNS = ["testsrc2", "mandelbrot", "smptebars", "life", "testsrc", "rgbtestsrc", "cellauto", "testsrc2"]


def make_clips(directory: Path, distinct: int, seconds: float) -> list[Path]:
    paths = []
    for index in range(distinct):
        width, height, fps, bitrate, faststart = CLIP_SHAPES[index % len(CLIP_SHAPES)]
        pattern = PATTERNS[index % len(PATTERNS)]
        path = directory / f"clip-{index}.mp4"
        command = [
            "ffmpeg", "-nostdin", "-v", "error", "-y",
            "-f", "lavfi", "-i", f"{pattern}=size={width}x{height}:rate={fps}", "-t", str(seconds),
            "-vf", "noise=alls=12:allf=t", "-pix_fmt", "yuv420p",
            "-c:v", "libx264", "-preset", "ultrafast",
            "-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate,
            "-g", str(fps * 2),
        ]  # fmt: skip
        if faststart:
            command += ["-movflags", "+faststart"]
        subprocess.run([*command, str(path)], check=True)
        paths.append(path)
    return paths


class ByteCounter:
    def __init__(self):
        self.total = 0
        self.lock = threading.Lock()

    def add(self, count: int) -> None:
        with self.lock:
            self.total += count


def probe_ranged(client, bucket: str, keys: list[str], sizes: dict, workers: int, decode_check: bool) -> dict:
    from longcat.probe import probe_video
    from longcat.source import S3Source

    counter = ByteCounter()

    class CountingS3(S3Source):
        def read_range(self, key, start, end):
            data = super().read_range(key, start, end)
            counter.add(len(data))
            return data

    source = CountingS3(bucket, client=client)
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda key: probe_video(source, key, sizes[key], decode_check)[0], keys))
    wall = time.perf_counter() - started
    assert all(result["num_frames"] > 0 and result["width"] > 0 for result in results)
    return {"bytes": counter.total, "wall_s": wall}


def probe_download_opencv(client, bucket: str, keys: list[str], workers: int) -> dict:
    import cv2

    counter = ByteCounter()

    def probe(key):
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        counter.add(len(body))
        with tempfile.NamedTemporaryFile(suffix=".mp4") as handle:
            handle.write(body)
            handle.flush()
            capture = cv2.VideoCapture(handle.name)
            try:
                return (
                    int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                    int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                    capture.get(cv2.CAP_PROP_FPS),
                    int(capture.get(cv2.CAP_PROP_FRAME_COUNT)),
                )
            finally:
                capture.release()

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(probe, keys))
    wall = time.perf_counter() - started
    assert all(frames > 0 and width > 0 for width, _, _, frames in results)
    return {"bytes": counter.total, "wall_s": wall}


def serve_s3(port: int, stop) -> None:
    """moto's S3 server in its own process, so its CPU does not compete with the probes for the GIL."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    stop.wait()
    server.stop()


def serve_network(
    port: int, upstream_port: int, latency_s: float, bytes_per_s: float, lifetime_s: float, stop, counted
) -> None:
    """A TCP proxy that behaves like a network link to S3: a first-byte delay per request, a bandwidth cap
    per connection. It counts the bytes it returns into `counted` and stops on `stop` or after `lifetime_s`.
    """

    async def pipe_requests(reader, writer, state) -> None:
        while data := await reader.read(256 * 1024):
            if state["requested_at"] is None:
                state["requested_at"] = asyncio.get_running_loop().time()
            writer.write(data)
            await writer.drain()
        writer.close()

    async def pipe_responses(reader, writer, state) -> None:
        loop = asyncio.get_running_loop()
        send_at = 0.0
        while data := await reader.read(256 * 1024):
            if state["requested_at"] is not None:
                first_byte_at = state["requested_at"] + latency_s
                state["requested_at"] = None
                await asyncio.sleep(max(0.0, first_byte_at - loop.time()))
                send_at = loop.time()
            # Pace the connection: each chunk leaves no earlier than the cap allows.
            await asyncio.sleep(max(0.0, send_at - loop.time()))
            send_at = max(send_at, loop.time()) + len(data) / bytes_per_s
            writer.write(data)
            await writer.drain()
            with counted.get_lock():
                counted.value += len(data)
        writer.close()

    async def connect(client_reader, client_writer) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        state = {"requested_at": None}
        try:
            await asyncio.gather(
                pipe_requests(client_reader, upstream_writer, state),
                pipe_responses(upstream_reader, client_writer, state),
            )
        except (ConnectionError, OSError):
            client_writer.close()
            upstream_writer.close()

    async def run() -> None:
        server = await asyncio.start_server(connect, "127.0.0.1", port)
        deadline = asyncio.get_running_loop().time() + lifetime_s
        async with server:
            while not stop.is_set() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)

    asyncio.run(run())


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the S3 server on 127.0.0.1:{port} did not start within {timeout} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_process(target, *args) -> multiprocessing.Process:
    process = multiprocessing.Process(target=target, args=args, daemon=True)
    process.start()
    return process


def stop_process(process: multiprocessing.Process) -> None:
    process.join(timeout=10)
    if process.is_alive():
        process.terminate()
        process.join(timeout=5)


def measure(client, bucket, keys, sizes, args, counted=None) -> dict:
    """Both methods, one after the other, at the same concurrency; bytes as the proxy saw them too."""
    results = {}
    for method in ("ranged_reads", "download_opencv"):
        if counted is not None:
            counted.value = 0
        if method == "ranged_reads":
            result = probe_ranged(client, bucket, keys, sizes, args.workers, not args.no_decode_check)
        else:
            result = probe_download_opencv(client, bucket, keys, args.workers)
        if counted is not None:
            result["wire_bytes"] = counted.value
        results[method] = result
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="objects to probe")
    parser.add_argument("--distinct", type=int, default=8, help="distinct clips behind the objects")
    parser.add_argument("--seconds", type=float, default=5.0, help="clip length")
    parser.add_argument("--workers", type=int, default=8, help="concurrent probes, both methods")
    parser.add_argument("--no-decode-check", action="store_true", help="skip reading the first video sample")
    parser.add_argument(
        "--modes", default="loopback,emulated", help="comma-separated: loopback, emulated (the network proxy)"
    )
    parser.add_argument("--latency-ms", type=float, default=20.0, help="emulated first-byte latency")
    parser.add_argument(
        "--bandwidth-mbps", type=float, default=100.0, help="emulated cap per connection, in MB/s"
    )
    args = parser.parse_args()
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if not modes or set(modes) - {"loopback", "emulated"}:
        parser.error(f"--modes: expected loopback and/or emulated, found {args.modes!r}")

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    from longcat.source import s3_client

    s3_port, proxy_port = free_port(), free_port()
    stop = multiprocessing.Event()
    counted = multiprocessing.Value("q", 0)
    processes = [start_process(serve_s3, s3_port, stop)]
    if "emulated" in modes:
        processes.append(
            start_process(
                serve_network,
                proxy_port,
                s3_port,
                args.latency_ms / 1000,
                args.bandwidth_mbps * 1e6,
                1800.0,
                stop,
                counted,
            )
        )
    results = {}
    try:
        wait_for_port(s3_port)
        pool = max(10, args.workers * 2)
        client = s3_client("us-east-1", f"http://127.0.0.1:{s3_port}", max_pool=pool)
        bucket = "bench-probe"
        client.create_bucket(Bucket=bucket)
        with tempfile.TemporaryDirectory() as scratch:
            clips = make_clips(Path(scratch), min(args.distinct, args.n), args.seconds)
            bodies = [path.read_bytes() for path in clips]
        keys, sizes = [], {}
        for index in range(args.n):
            key = f"videos/{index % 10}/clip-{index:04d}.mp4"
            body = bodies[index % len(bodies)]
            client.put_object(Bucket=bucket, Key=key, Body=body)
            keys.append(key)
            sizes[key] = len(body)
        for mode in modes:
            if mode == "loopback":
                results[mode] = measure(client, bucket, keys, sizes, args)
            else:
                wait_for_port(proxy_port)
                proxied = s3_client("us-east-1", f"http://127.0.0.1:{proxy_port}", max_pool=pool)
                results[mode] = measure(proxied, bucket, keys, sizes, args, counted)
    finally:
        stop.set()
        for process in processes:
            stop_process(process)

    total_size = sum(sizes.values())
    common = {
        "n": args.n,
        "distinct_clips": len(bodies),
        "workers": args.workers,
        "mean_object_bytes": round(total_size / args.n),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
    }
    for mode, by_method in results.items():
        network = {"mode": mode}
        if mode == "emulated":
            network.update(latency_ms=args.latency_ms, bandwidth_mbps_per_connection=args.bandwidth_mbps)
        for method, result in by_method.items():
            line = {
                "bench": "probe",
                "method": method,
                **network,
                **common,
                "bytes_per_video": round(result["bytes"] / args.n),
                "bytes_fraction": round(result["bytes"] / total_size, 4),
                "wall_s": round(result["wall_s"], 3),
                "videos_per_s": round(args.n / result["wall_s"], 1),
            }
            if "wire_bytes" in result:
                line["wire_bytes_per_video"] = round(result["wire_bytes"] / args.n)
            if method == "ranged_reads":
                line["decode_check"] = not args.no_decode_check
            print(json.dumps(line))
        ours, seed = by_method["ranged_reads"], by_method["download_opencv"]
        bytes_ratio = ours["bytes"] / seed["bytes"]
        speedup = seed["wall_s"] / ours["wall_s"]
        print(
            json.dumps(
                {
                    "bench": "probe_ratio",
                    **network,
                    "n": args.n,
                    "decode_check": not args.no_decode_check,
                    "bytes_ratio": round(bytes_ratio, 4),
                    "speedup": round(speedup, 2),
                    "goal_bytes_le_5pct": bytes_ratio <= 0.05,
                    "goal_speedup_ge_5x": speedup >= 5,
                }
            )
        )


if __name__ == "__main__":
    main()
