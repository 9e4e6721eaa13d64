"""The workflow's frame: Snakefile, shared helpers, targets, profiles, rule graph, Makefile and CI entry."""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from bench_dag import bench_config, write_cache_outputs, write_data_stage  # noqa: E402


def snakemake(*args, cwd=REPO, env=None, timeout=300):
    command = [sys.executable, "-m", "snakemake", *args]
    return subprocess.run(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def test_snakefile_fits_one_screen():
    text = (REPO / "Snakefile").read_text()
    assert len(text.splitlines()) <= 40
    assert 'min_version("9.0")' in text
    assert "configfile:" in text and "include: " in text and "rule all:" in text


def test_user_targets_exist():
    result = snakemake("--list-target-rules")
    assert result.returncode == 0, result.stdout[-3000:]
    targets = set(result.stdout.split())
    assert {"all", "metadata", "shards", "cache", "cache_vae", "cache_text"} <= targets


def test_nothing_reaches_s3_at_parse_time(tmp_path):
    # The real job's config with an S3 endpoint where nothing listens: parsing and planning must not
    # touch it (the Snakefile is parsed again in every cluster job).
    override = tmp_path / "closed.yaml"
    override.write_text(yaml.safe_dump({"source": {"endpoint_url": "http://127.0.0.1:9"}}))
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIAPARSETIME", "AWS_SECRET_ACCESS_KEY": "parse-time-secret"}
    start = time.monotonic()
    result = snakemake(
        "metadata",
        "-n",
        "--directory",
        str(tmp_path),
        "--configfile",
        str(REPO / "config" / "longcat-13b.yaml"),
        str(override),
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert time.monotonic() - start < 60
    assert re.search(r"^manifest\s+1$", result.stdout, flags=re.MULTILINE)
    assert re.search(r"^probe_chunk\s+64$", result.stdout, flags=re.MULTILINE)


def test_cache_plan_follows_the_shard_checkpoint_and_reruns_nothing(tmp_path):
    # Tables of a finished data stage (50 clips, 10 per shard) without any video: `cache` plans one
    # VAE and one text job per shard; with every cache file present, nothing is left to do.
    configfile = bench_config(tmp_path, shard_size=10)
    data = write_data_stage(tmp_path, rows=50, shard_size=10)
    args = ("cache", "-n", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--configfile")
    plan = snakemake(*args, str(configfile), cwd=tmp_path)
    assert plan.returncode == 0, plan.stdout[-3000:]
    assert data["shards"] == 5
    counts = dict(re.findall(r"^(cache_\w+_shard)\s+(\d+)$", plan.stdout, flags=re.MULTILINE))
    assert counts == {"cache_vae_shard": "5", "cache_text_shard": "5"}
    assert not re.search(r"^rule (manifest|probe_chunk|metadata|shard_index|shard_list):", plan.stdout, re.M)

    write_cache_outputs(tmp_path)
    rerun = snakemake(*args, str(configfile), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert "Nothing to be done" in rerun.stdout


@pytest.mark.parametrize("style, head", [("dot", "digraph snakemake_dag"), ("mermaid-js", "flowchart TB")])
def test_rule_graph_renders(style, head):
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "all", "--rulegraph", style],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert head in result.stdout
    assert "manifest" in result.stdout and "probe_chunk" in result.stdout
    if style == "dot" and shutil.which("dot"):
        svg = subprocess.run(
            ["dot", "-Tsvg"], input=result.stdout, capture_output=True, text=True, check=True
        )
        assert "<svg" in svg.stdout


def test_committed_rule_graph_exists():
    assert "<svg" in (REPO / "docs" / "rulegraph.svg").read_text()
    assert "flowchart TB" in (REPO / "docs" / "rulegraph.mmd").read_text()


def test_profile_slurm_resolves_from_the_repository_root(tmp_path):
    assert (REPO / "slurm").resolve() == (REPO / "profiles" / "slurm").resolve()
    result = snakemake("--profile", "slurm", "metadata", "-n", "--directory", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Using profiles slurm and workflow specific profile" in result.stdout
    assert "slurm_partition=cpu" in result.stdout


def test_default_profile_does_not_fight_the_cluster_profile():
    # profiles/default is loaded with --profile slurm too and overrides its top-level keys.
    default = yaml.safe_load((REPO / "profiles" / "default" / "config.v8+.yaml").read_text())
    slurm = yaml.safe_load((REPO / "profiles" / "slurm" / "config.v8+.yaml").read_text())
    for key in set(default) & set(slurm):
        assert default[key] == slurm[key], f"{key}: default {default[key]!r}, slurm {slurm[key]!r}"
    assert not {"executor", "jobs", "resources", "default-resources", "set-resources"} & set(default)


def test_cluster_profile_follows_the_plugin_rules():
    profile = (REPO / "profiles" / "slurm" / "config.v8+.yaml").read_text()
    data = yaml.safe_load(profile)
    assert data["executor"] == "slurm"
    assert {"jobs", "latency-wait", "retries", "rerun-incomplete"} <= set(data)
    for rule, resources in data["set-resources"].items():
        if "gpu" in resources or "gpu" in str(resources.get("gres", "")):
            assert "tasks" not in resources, f"{rule}: tasks on a GPU rule becomes --ntasks-per-gpu"
    # The train job asks for what its config says (longcat.train.launch.slurm_resources); the profile
    # adds the partition and drops the rule's own GPU count, which --gpus would ask for again.
    assert data["set-resources"]["train"]["gpu"] == 0
    from longcat.config import load_config
    from longcat.settings import load_settings
    from longcat.train.launch import slurm_resources

    real = slurm_resources(load_settings(load_config(REPO / "config" / "longcat-13b.yaml")).train)
    demo = slurm_resources(load_settings(load_config()).train)
    assert real["gres"] == "gpu:8" and "gres" not in demo
    assert "--exclusive" in real["slurm_extra"] and "--exclusive" not in demo["slurm_extra"]
    # USR1 to every process of the job's steps (not "B:", the batch shell alone) reaches the launcher.
    assert all("--signal=USR1@600" in resources["slurm_extra"] for resources in (real, demo))
    assert (real["mem_mb"], real["runtime"], demo["mem_mb"], demo["runtime"]) == (512_000, 2880, 8000, 60)


def test_make_test_fails_when_pytest_collects_nothing():
    result = subprocess.run(
        # -o: judge the pytest step alone, without redoing the setup if pyproject.toml changed.
        [
            "make",
            "-s",
            "-o",
            ".venv/.setup-done",
            "test",
            "PYTEST_ARGS=-q -k no_such_test_zzz tests/test_envs.py",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "pytest collected no tests" in result.stderr


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert os.access(REPO / ".ci" / "run", os.X_OK)
    assert "set -euo pipefail" in ci
    commands = [line for line in ci.splitlines() if line and not line.startswith("#")]
    assert commands[-1] == "make test"
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
