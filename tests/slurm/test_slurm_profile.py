"""The cluster profile against a real Slurm: what each rule asks for, and that jobs really run there."""

import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]

GPU_SNAKEFILE = """
rule all:
    input: "train.done", "gpu8.txt"

rule gpu8:
    output: "gpu8.txt"
    resources: gpu=8
    shell: "echo ${{CUDA_VISIBLE_DEVICES:-none}} > {output}"

rule train:
    output: "train.done"
    shell: "echo ${{CUDA_VISIBLE_DEVICES:-none}} > {output}"
"""


def _rule_of(job):
    # The plugin tags each job with --comment rule_<name>[_wildcards_<values>].
    return job["Comment"].removeprefix("rule_").split("_wildcards_")[0]


def test_gpu_requests_reach_slurm(tmp_path, slurm_snakemake, submitted_jobs):
    # A rule asking for gpu=8 gets 8 GPUs for the job; the profile's `train` entry asks for 8 per
    # node on one exclusive node, with USR1 ten minutes before the time limit.
    (tmp_path / "Snakefile").write_text(GPU_SNAKEFILE)
    result = slurm_snakemake(
        "--snakefile",
        str(tmp_path / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--profile",
        "slurm",
        "--workflow-profile",
        "none",
        "--slurm-jobname-prefix",
        "gputest",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = submitted_jobs()
    assert len(jobs) == 2, jobs
    assert all(job["JobState"] == "COMPLETED" for job in jobs), jobs
    by_rule = {_rule_of(job): job for job in jobs}
    gpu8, train = by_rule["gpu8"], by_rule["train"]
    assert gpu8["TresPerJob"] == "gres:gpu:8"
    assert train["TresPerNode"] == "gres:gpu:8"
    assert train["NumNodes"] == "1"
    assert train["OverSubscribe"] == "NO"  # --exclusive
    assert int(train["MinCPUsNode"]) == 64
    # Slurm hands the allocated devices to the job as on a real GPU node.
    for name in ("gpu8.txt", "train.done"):
        assert (tmp_path / name).read_text().split() == ["0,1,2,3,4,5,6,7"]


@pytest.mark.skipif(not (REPO / "rules" / "data.smk").exists(), reason="rules/data.smk not written yet")
def test_metadata_runs_every_job_on_slurm(tmp_path, slurm_snakemake, submitted_jobs):
    result = slurm_snakemake("--directory", str(tmp_path), "--profile", "slurm", "metadata")
    assert result.returncode == 0, result.stderr[-3000:]

    jobs = submitted_jobs()
    assert jobs and all(job["JobState"] == "COMPLETED" for job in jobs), jobs
    # Every job Snakemake announced as a (non-local) rule ran as a Slurm job of that rule.
    on_slurm = Counter(_rule_of(job) for job in jobs)
    announced = Counter(re.findall(r"^rule (\w+):$", result.stderr, flags=re.MULTILINE))
    assert on_slurm == announced
    assert on_slurm["probe_chunk"] == 4  # probe.chunks in the embedded default

    metadata = pd.read_parquet(tmp_path / "results" / "metadata.parquet")
    rejected = pd.read_parquet(tmp_path / "results" / "rejected.parquet")
    assert len(metadata) + len(rejected) == 12  # source.demo.num_clips in the embedded default
    assert len(metadata) > 0


@pytest.mark.skipif(not (REPO / "rules" / "train.smk").exists(), reason="rules/train.smk not written yet")
def test_train_on_slurm_then_incremental_reruns(tmp_path, slurm_snakemake, submitted_jobs):
    def run(target):
        result = slurm_snakemake("--directory", str(tmp_path), "--profile", "slurm", "--jobs", "3", target)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result

    first = run("train")
    jobs = submitted_jobs()
    assert all(job["JobState"] == "COMPLETED" for job in jobs), jobs
    on_slurm = Counter(_rule_of(job) for job in jobs)
    assert on_slurm == Counter(re.findall(r"^rule (\w+):$", first.stderr, flags=re.MULTILINE))
    shards = sorted((tmp_path / "results" / "shards").glob("shard-*.parquet"))
    assert len(shards) == 3  # 12 demo clips, 4 per shard
    assert on_slurm["cache_vae_shard"] == on_slurm["cache_text_shard"] == len(shards)
    assert on_slurm["train"] == 1
    train = next(job for job in jobs if _rule_of(job) == "train")
    assert (
        train["TresPerNode"] == "gres:gpu:8" and train["NumNodes"] == "1" and train["OverSubscribe"] == "NO"
    )
    assert (tmp_path / "runs" / "demo" / "train.done").exists()

    def submitted_since(ids):
        return [job for job in submitted_jobs() if job["JobId"] not in ids]

    # A rerun submits nothing.
    seen = {job["JobId"] for job in submitted_jobs()}
    assert "Nothing to be done" in run("train").stderr
    assert submitted_since(seen) == []

    # A missing cache shard is not rebuilt for a training that is up to date...
    latents = sorted((tmp_path / "cache" / "vae").glob("*/shard-*.safetensors"))
    latents[1].unlink()
    run("train")
    assert submitted_since(seen) == []
    # ...but asking for the caches submits exactly one job, for that shard.
    run("cache")
    new = submitted_since(seen)
    assert [_rule_of(job) for job in new] == ["cache_vae_shard"]
    assert new[0]["Comment"].endswith("_wildcards_" + latents[1].name[len("shard-") : -len(".safetensors")])
    assert latents[1].exists()
