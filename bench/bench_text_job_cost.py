"""What a text-cache shard job pays before its first caption: interpreter start, imports, encoder load.

Snakemake runs each `cache_text_shard` job's script in a fresh Python process, so every shard starts the
interpreter, imports torch and transformers and loads the text encoder again. This runs the job's own
calls (`load_text_components`, `cache_text_shard`) in fresh processes, as the job does, over a shard
list of `--captions` captions with the demo's tiny base model on the CPU, and times each part; then the
same shard again in the same process, the encoder loaded (what a process shared by several shards would
pay per shard). The tiny model's weights take no time to read, so its load is what loading costs besides
the weights (transformers' modules, the tokenizer). One JSON line: the medians over `--runs` processes,
and the same costs modelled for the real job: umT5-XXL (11.4 GB of bf16 safetensors) read at the
bandwidths below, against the GPU encode of a real shard (config/longcat-13b.yaml's shards.size) and the
recipe's 523,325 clips. Snakemake's own work per job (scheduling, writing the script's preamble) is not
in it.

    python bench/bench_text_job_cost.py [--captions 64] [--runs 3]      # about a minute on 2 cores
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from longcat.config import REPO_ROOT, load_config
from longcat.settings import load_settings

# One job's calls in a fresh interpreter, as scripts/cache_text_shard.py makes them; prints the times.
CHILD = """
import json, sys, time
from pathlib import Path
started = time.time()
import torch
from longcat.cache.format import TEXT_INDEX_SCHEMA
from longcat.cache.writer import ShardWriter
from longcat.encoders.decode import read_shard_rows
from longcat.encoders.text import cache_text_shard, load_text_components
from longcat.paths import CacheLayout
imported = time.time()
base_model, shard_list, out = sys.argv[1:4]
tokenizer, encoder = load_text_components(base_model, torch.device("cpu"))
loaded = time.time()
rows = read_shard_rows(shard_list)
times = []
for shard in ("00000", "00001"):
    start = time.time()
    writer = ShardWriter(CacheLayout(Path(out)), shard, TEXT_INDEX_SCHEMA, {})
    cache_text_shard(rows, tokenizer, encoder, 512, writer, torch.bfloat16)
    times.append(time.time() - start)
print(json.dumps({"started": started, "imported": imported, "loaded": loaded, "encode_s": times}))
"""

# umT5-XXL's encoder: 5.68B parameters in bf16 (bench/bench_text_gpu.py builds it at random).
UMT5_XXL_BYTES = 11.4e9
# Captions per second of the text job on an H200, and clips per second of the VAE job (the config's
# estimate section; bench/RESULTS.md).
GPU_CAPTIONS_PER_S = 38.6
VAE_CLIPS_PER_S = 1.09
RECIPE_CLIPS = 523_325
# Read bandwidths the load is modelled at, GB/s: a network file system, one NVMe drive, the page cache
# (the model read before by another job on the node).
READ_GBPS = {"network_fs": 1.0, "nvme": 3.0, "page_cache": 10.0}
# Moving the weights to the GPU and starting CUDA, s: 11.4 GB at about 20 GB/s through PCIe 5, and a
# CUDA context (1-2 s on an H100); assumptions, not measured here.
TO_GPU_S = 11.4 / 20 + 1.5


def write_inputs(directory: Path, captions: int) -> tuple[Path, Path]:
    from longcat.basemodel.tiny import write_tiny_base_model
    from longcat.data.demo import DEMO_CAPTIONS
    from longcat.settings import TinyModel

    base_model = write_tiny_base_model(
        directory / "base_model",
        TinyModel(seed=0, hidden_size=64, depth=2, num_heads=4, text_dim=32, adaln_tembed_dim=32),
    )
    keys = [f"clip-{index:05d}.mp4" for index in range(captions)]
    text = [DEMO_CAPTIONS[index % len(DEMO_CAPTIONS)] for index in range(captions)]
    shard_list = directory / "shard-00000.parquet"
    pq.write_table(pa.table({"key": keys, "caption": text}), shard_list)
    return base_model, shard_list


def run_job(base_model: Path, shard_list: Path, out: Path) -> dict:
    launched = time.time()
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(base_model), str(shard_list), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    times = json.loads(child.stdout.strip().splitlines()[-1])
    return {
        "interpreter_s": times["started"] - launched,
        "import_s": times["imported"] - times["started"],
        "load_s": times["loaded"] - times["imported"],
        "encode_s": times["encode_s"][0],
        "encode_loaded_s": times["encode_s"][1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=64, help="captions encoded on the CPU per shard")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes; medians are reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        base_model, shard_list = write_inputs(scratch, args.captions)
        runs = [run_job(base_model, shard_list, scratch / f"out-{index}") for index in range(args.runs)]
    median = {key: round(statistics.median(run[key] for run in runs), 3) for key in runs[0]}
    # What stays for a real job on a GPU: the interpreter, imports and the load's fixed part as measured
    # here, then the encoder's weights read at each bandwidth and moved to the GPU, against the encode of
    # a real shard's captions.
    measured_fixed = median["interpreter_s"] + median["import_s"] + median["load_s"]
    real = load_settings(load_config(REPO_ROOT / "config" / "longcat-13b.yaml"))
    shards = math.ceil(RECIPE_CLIPS / real.shards.size)
    encode = real.shards.size / GPU_CAPTIONS_PER_S
    text_gpu_hours = RECIPE_CLIPS / GPU_CAPTIONS_PER_S / 3600
    vae_gpu_hours = RECIPE_CLIPS / VAE_CLIPS_PER_S / 3600
    modelled = {}
    for storage, gbps in READ_GBPS.items():
        fixed = measured_fixed + UMT5_XXL_BYTES / 1e9 / gbps + TO_GPU_S
        fixed_hours = shards * fixed / 3600
        modelled[storage] = {
            "read_gbps": gbps,
            "fixed_s": round(fixed, 1),
            "encode_s": round(encode, 1),
            "fixed_share_of_job": round(fixed / (fixed + encode), 3),
            "recipe_fixed_gpu_hours": round(fixed_hours, 2),
            "share_of_text_stage": round(fixed_hours / (fixed_hours + text_gpu_hours), 3),
            "share_of_both_caches": round(fixed_hours / (fixed_hours + text_gpu_hours + vae_gpu_hours), 4),
        }
    result = {
        "bench": "text_job_cost",
        "machine": f"{sys.platform} {os.cpu_count()} cpus",
        "captions": args.captions,
        "runs": args.runs,
        "tiny_model_cpu": median | {"fixed_s": round(measured_fixed, 3)},
        "shards": shards,
        "shard_size": real.shards.size,
        "umt5_xxl_modelled": modelled,
        "assumed": {
            "encoder_bytes": UMT5_XXL_BYTES,
            "gpu_captions_per_s": GPU_CAPTIONS_PER_S,
            "vae_clips_per_s": VAE_CLIPS_PER_S,
            "to_gpu_and_cuda_init_s": TO_GPU_S,
        },
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
