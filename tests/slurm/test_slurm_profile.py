"""The cluster profile against a real Slurm: what each rule asks for, and that jobs really run there."""

import re
import shlex
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import train_settings
from safetensors.torch import load_file

from longcat.data.demo import DEMO_REJECTS
from longcat.train.launch import launch_command

REPO = Path(__file__).resolve().parents[2]

GPU_SNAKEFILE = f"""
from longcat.config import load_yaml
from longcat.settings import load_settings
from longcat.train.launch import slurm_resources, train_threads

REAL = load_settings(load_yaml("{REPO}/config/longcat-13b.yaml")).train

rule all:
    input: "train.done", "gpu8.txt"

rule gpu8:
    output: "gpu8.txt"
    resources: gpu=8
    shell: "echo ${{{{CUDA_VISIBLE_DEVICES:-none}}}} > {{output}}"

rule train:
    output: "train.done"
    threads: train_threads(REAL)
    resources: **slurm_resources(REAL)
    shell: "echo ${{{{CUDA_VISIBLE_DEVICES:-none}}}} > {{output}}"
"""


def _rule_of(job):
    # The plugin tags each job with --comment rule_<name>[_wildcards_<values>].
    return job["Comment"].removeprefix("rule_").split("_wildcards_")[0]


def test_gpu_requests_reach_slurm(tmp_path, slurm_snakemake, submitted_jobs):
    # A rule asking for gpu=8 gets 8 GPUs for the job; the real job's training asks for 8 per node on
    # exclusive nodes, its memory and time limit, with USR1 ten minutes before the limit.
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
    assert int(train["MinCPUsNode"]) == 40  # 8 processes, each with 4 loader workers
    assert train["MinMemoryNode"] == "500G" and train["TimeLimit"] == "2-00:00:00"
    # Slurm hands the allocated devices to the job as on a real GPU node.
    for name in ("gpu8.txt", "train.done"):
        assert (tmp_path / name).read_text().split() == ["0,1,2,3,4,5,6,7"]


@pytest.mark.skipif(not (REPO / "rules" / "data.smk").exists(), reason="rules/data.smk not written yet")
def test_metadata_runs_every_job_on_slurm(demo_dir, slurm_snakemake, submitted_jobs):
    result = slurm_snakemake("--directory", str(demo_dir), "--profile", "slurm", "metadata")
    assert result.returncode == 0, result.stderr[-3000:]

    jobs = submitted_jobs()
    assert jobs and all(job["JobState"] == "COMPLETED" for job in jobs), jobs
    # Every job Snakemake announced as a (non-local) rule ran as a Slurm job of that rule.
    on_slurm = Counter(_rule_of(job) for job in jobs)
    announced = Counter(re.findall(r"^rule (\w+):$", result.stderr, flags=re.MULTILINE))
    assert on_slurm == announced
    assert on_slurm["probe_chunk"] == 4  # probe.chunks in the embedded default

    metadata = pd.read_parquet(demo_dir / "results" / "metadata.parquet")
    rejected = pd.read_parquet(demo_dir / "results" / "rejected.parquet")
    # source.demo.num_clips in the embedded default, and the demo's broken videos
    assert len(metadata) == 12 and len(rejected) == len(DEMO_REJECTS)


@pytest.mark.skipif(not (REPO / "rules" / "train.smk").exists(), reason="rules/train.smk not written yet")
def test_train_on_slurm_then_incremental_reruns(demo_dir, slurm_snakemake, submitted_jobs, trained_demo):
    # The outputs of a local `snakemake train` from a clean directory (conftest's session fixture), copied
    # with their times and Snakemake's records, less the training and one shard of each cache. The data
    # stage ran on Slurm in the test above; here Slurm rebuilds the two shards and trains.
    shutil.rmtree(demo_dir)
    shutil.copytree(trained_demo, demo_dir, symlinks=True, ignore=shutil.ignore_patterns("runs"))
    vae_shards, text_shards = (
        sorted((demo_dir / "cache" / kind).glob("*/shard-*.safetensors")) for kind in ("vae", "text")
    )
    assert len(vae_shards) == len(text_shards) == 3  # 12 demo clips, 4 per shard
    vae_shards[1].unlink()
    text_shards[2].unlink()

    def run(target):
        result = slurm_snakemake("--directory", str(demo_dir), "--profile", "slurm", "--jobs", "3", target)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result

    first = run("train")
    jobs = submitted_jobs()
    states = [(job["Comment"], job["JobState"]) for job in jobs]
    kept = {path.name: path.read_text()[-3000:] for path in _kept_logs(demo_dir / "runs" / "demo")}
    assert all(job["JobState"] == "COMPLETED" for job in jobs), (states, kept)
    on_slurm = Counter(_rule_of(job) for job in jobs)
    assert on_slurm == Counter(re.findall(r"^rule (\w+):$", first.stderr, flags=re.MULTILINE))
    assert on_slurm == Counter(cache_vae_shard=1, cache_text_shard=1, train=1)
    # The demo trains on CPU processes: its job asks for what the demo needs, none of a GPU node.
    train = next(job for job in jobs if _rule_of(job) == "train")
    assert train.get("TresPerNode", "") in ("", "(null)") and train["NumNodes"] == "1", train
    assert train["OverSubscribe"] != "NO" and train["MinMemoryNode"] == "8000M", train
    assert int(train["MinCPUsNode"]) == 4 and train["TimeLimit"] == "01:00:00", train
    assert (demo_dir / "runs" / "demo" / "train.done").exists()
    # The shards the cluster rebuilt hold the bytes of the local run's.
    for shard in (vae_shards[1], text_shards[2]):
        assert shard.read_bytes() == (trained_demo / shard.relative_to(demo_dir)).read_bytes(), shard

    def submitted_since(ids):
        return [job for job in submitted_jobs() if job["JobId"] not in ids]

    # A rerun submits nothing.
    seen = {job["JobId"] for job in submitted_jobs()}
    assert "Nothing to be done" in run("train").stderr
    assert submitted_since(seen) == []

    # A missing cache shard is not rebuilt for a training that is up to date...
    vae_shards[0].unlink()
    run("train")
    assert submitted_since(seen) == []
    # ...but asking for the caches submits exactly one job, for that shard.
    run("cache")
    new = submitted_since(seen)
    assert [_rule_of(job) for job in new] == ["cache_vae_shard"]
    shard_id = vae_shards[0].name.removeprefix("shard-").removesuffix(".safetensors")
    assert new[0]["Comment"].endswith("_wildcards_" + shard_id)
    assert vae_shards[0].exists()

    # The same final model as the local `snakemake train` of the same config.
    on_cluster, local = (
        load_file(directory / "runs" / "demo" / "final" / "dit" / "diffusion_pytorch_model.safetensors")
        for directory in (demo_dir, trained_demo)
    )
    assert on_cluster.keys() == local.keys()
    for name, tensor in on_cluster.items():
        torch.testing.assert_close(tensor, local[name], rtol=0, atol=0, msg=name)


PREEMPT_CONFIG = """
train:
  run: preempt
  max_train_steps: 200
  checkpointing_steps: 20
  validation_every_n_steps: 0
"""


def _wait_for(condition, what, timeout, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            output = process.stdout.read().decode(errors="replace")
            pytest.fail(
                f"Snakemake exited ({process.returncode}) while waiting for {what}:\n{output[-4000:]}"
            )
        time.sleep(1)
    pytest.fail(f"no {what} after {timeout} s")


def _kept_logs(run):
    """The logs the train rule kept of failed attempts (`RunLayout.failed_log`), oldest first."""
    return sorted(run.glob("logs/train.*.log"))


def _checkpoint_steps(run):
    return [int(path.parent.name.removeprefix("step-")) for path in run.glob("checkpoints/step-*/.metadata")]


def test_training_stopped_by_slurm_resumes_from_the_step_it_stopped_at(
    demo_dir, slurm_cluster, slurm_snakemake_command, submitted_jobs
):
    # Two stops, each followed by a resume from the step it stopped at, not from a periodic checkpoint:
    # - the warning Slurm sends ten minutes before the time limit (`--signal=USR1@600`) to every
    #   process of the job's steps; the train job fails (exit 75) and Snakemake's retry resumes;
    # - a hard preemption, `scontrol requeue`: SIGTERM to every process of the job, loader workers
    #   included, SIGKILL after KillWait (30 s here); Slurm runs the same job again.
    # Reuses the caches of the tests above; a new run name.
    configfile = demo_dir / "preempt.yaml"
    configfile.write_text(PREEMPT_CONFIG)
    run = demo_dir / "runs" / "preempt"
    command, env = slurm_snakemake_command(
        "train", "--directory", str(demo_dir), "--profile", "slurm", "--configfile", str(configfile)
    )
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as sm:

        def running_train_job(other_than=None):
            jobs = [job for job in submitted_jobs() if _rule_of(job) == "train"]
            running = (job["JobId"] for job in jobs if job["JobState"] == "RUNNING")
            return next((job_id for job_id in running if job_id != other_than), None)

        first_job = _wait_for(running_train_job, "running train job", 600, sm)
        _wait_for(lambda: _checkpoint_steps(run), "first checkpoint", 300, sm)
        slurm_cluster.run("scancel", "--signal=USR1", first_job)

        retry_job = _wait_for(lambda: running_train_job(other_than=first_job), "the retry", 600, sm)
        stopped = max(_checkpoint_steps(run))
        _wait_for(lambda: max(_checkpoint_steps(run)) > stopped, "a checkpoint of the retry", 300, sm)
        slurm_cluster.run("scontrol", "requeue", retry_job)

        # Slurm holds a requeued job for two minutes (Reason=BeginTime); the test lets it start at once.
        def requeued():
            job = next(job for job in submitted_jobs() if job["JobId"] == retry_job)
            return job["JobState"] == "PENDING" and job["Restarts"] == "1"

        _wait_for(requeued, "the requeued job", 120, sm)
        slurm_cluster.run("scontrol", "update", f"JobId={retry_job}", "StartTime=now")
        output, _ = sm.communicate(timeout=600)
    output = output.decode(errors="replace")
    assert sm.returncode == 0, output[-4000:]

    trains = [job for job in submitted_jobs() if _rule_of(job) == "train"]
    assert [job["JobState"] for job in trains] == ["FAILED", "COMPLETED"], trains
    assert trains[1]["Restarts"] == "1", trains[1]
    assert (run / "train.done").is_file() and (run / "final" / "model_index.json").is_file()
    # Each stop's log outlives the attempt after it, which writes the log anew.
    kept = _kept_logs(run)
    assert len(kept) == 2, kept
    warned, preempted = (path.read_text() for path in kept)
    assert "received SIGUSR1: saving a checkpoint" in warned, warned[-3000:]
    assert "received SIGTERM: saving a checkpoint" in preempted, preempted[-3000:]

    # One TensorBoard event file per training process: each resume starts after the step its
    # predecessor logged last, which it saved on the way out.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def loss_steps(path):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        return [event.step for event in events.Scalars("train/loss")]

    first, retried, requeued = (
        loss_steps(path) for path in sorted((run / "tb").glob("events.out.tfevents.*"))
    )
    assert 20 <= first[-1] < retried[-1] < 200, (first[-3:], retried[-3:])
    assert retried[0] == first[-1] + 1, (first[-3:], retried[:3])
    assert requeued[0] == retried[-1] + 1, (retried[-3:], requeued[:3])
    assert requeued[-1] == 200


def test_multi_node_training_is_one_job_of_n_nodes(
    demo_dir, slurm_cluster, slurm_snakemake, slurm_snakemake_command, submitted_jobs
):
    # The test cluster has one node: a two-node job is accepted but stays pending, so the test reads
    # it from Slurm and the plugin's log, then cancels it. The job's shell command is from a dry run.
    # The caches the tests above built (a quick "Nothing to be done" after them).
    assert slurm_snakemake("cache", "--directory", str(demo_dir), "--profile", "slurm").returncode == 0
    configfile = demo_dir / "two-nodes.yaml"
    configfile.write_text(
        "train: {run: two-nodes, gpus: 8, num_processes: 8, nodes: 2, mixed_precision: bf16,"
        " memory_gb: 512, time_limit_minutes: 2880}\n"
    )
    # `--configfile` takes several files: the target goes first.
    args = ("train", "--directory", str(demo_dir), "--profile", "slurm", "--configfile", str(configfile))
    dry = slurm_snakemake(*args, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    cfg = train_settings(gpus=8, num_processes=8, nodes=2, mixed_precision="bf16")
    srun = "srun --nodes 2 --ntasks 2 --ntasks-per-node 1 --overlap --kill-on-bad-exit=1 --gres gpu:8 bash -c"
    assert launch_command(cfg).startswith(srun)
    (line,) = [line for line in (dry.stdout + dry.stderr).splitlines() if srun in line]
    shell = line.strip().removeprefix("Shell command: ")
    assert shell == (
        f"trap '' TERM; {launch_command(cfg)} --config runs/two-nodes/train_config.yaml"
        f" --run-dir runs/two-nodes --base-model {only_base_model(demo_dir)}"
        f" --vae-cache {_cache_dir(demo_dir, 'vae')} --text-cache {_cache_dir(demo_dir, 'text')}"
        " > runs/two-nodes/logs/train.log 2>&1 || { status=$?; cp runs/two-nodes/logs/train.log"
        " runs/two-nodes/logs/train.$(date -u +%Y%m%dT%H%M%SZ).exit-$status.log; exit $status; }"
    )

    command, env = slurm_snakemake_command(*args, "--retries", "0", "--verbose")
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as sm:

        def pending_train_job():
            jobs = [job for job in submitted_jobs() if _rule_of(job) == "train"]
            return next((job for job in jobs if job["Reason"] not in ("", "None")), None)

        job = _wait_for(pending_train_job, "pending train job", 300, sm)
        slurm_cluster.run("scancel", job["JobId"])
        output, _ = sm.communicate(timeout=300)
    output = output.decode(errors="replace")
    assert sm.returncode != 0  # cancelled
    assert job["JobState"] == "PENDING" and job["Reason"].startswith("Partition"), job  # NodeLimit or Config
    assert job["NumNodes"] == "2-2" and job["TresPerNode"] == "gres:gpu:8" and job["OverSubscribe"] == "NO"

    call = re.search(r"sbatch call: (sbatch .*?) --wrap=", output)
    assert call, output[-3000:]
    options = shlex.split(call.group(1))
    assert options[options.index("--comment") + 1] == "rule_train"
    assert options[options.index("--comment") + 2 :] == [
        "-p",
        "debug",
        "-t",
        "2880",
        "--mem",
        "512000",
        "--nodes=2",
        "--cpus-per-task=16",
        "--exclusive",
        "--signal=USR1@600",
        "-D",
        str(demo_dir),
        "--gres=gpu:8",
    ]


def only_base_model(demo_dir):
    (model,) = (demo_dir / "results" / "base_model").iterdir()
    return f"results/base_model/{model.name}"


def _cache_dir(demo_dir, kind):
    (key,) = [path.name for path in (demo_dir / "cache" / kind).iterdir() if path.is_dir()]
    return f"cache/{kind}/{key}"
