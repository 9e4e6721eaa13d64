"""The `slurm_cluster` fixture: a real one-node Slurm (munged, slurmctld, slurmd) for the session.

Skipped with the reason when it cannot run here (not root, packages not installable); CI runs as
root and gets the daemons. The daemons are stopped when the session ends.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .slurm_cluster import PARTITION, ClusterUnavailable, SlurmCluster, ensure_packages

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("Slurm tests need root (to install slurm-wlm/munge and run slurmctld/slurmd)")
    try:
        ensure_packages()
    except ClusterUnavailable as error:
        pytest.skip(str(error))
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except (ClusterUnavailable, subprocess.CalledProcessError) as error:
        cluster.stop()
        pytest.skip(f"Slurm daemons did not start here: {error}")
    yield cluster
    cluster.stop()


@pytest.fixture
def slurm_snakemake_command(slurm_cluster):
    """(command, env) that run Snakemake from the repository root (where `--profile slurm` resolves)
    against the test cluster."""

    def command(*args):
        env = {
            **slurm_cluster.env,
            "LONGCAT_SLURM_PARTITION": PARTITION,
            "LONGCAT_SLURM_GPU_PARTITION": PARTITION,
        }
        env.pop("LONGCAT_SLURM_ACCOUNT", None)
        argv = [
            sys.executable,
            "-m",
            "snakemake",
            *args,
            # The test cluster has no accounting database: no sacct, no account to guess.
            "--slurm-status-command",
            "squeue",
            "--slurm-no-account",
            "--slurm-init-seconds-before-status-checks",
            "2",
        ]
        return argv, env

    return command


@pytest.fixture
def slurm_snakemake(slurm_snakemake_command):
    """Run Snakemake against the test cluster and wait for it."""

    def run(*args, timeout=900):
        command, env = slurm_snakemake_command(*args)
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """One working directory per test module: later tests reuse the demo outputs of earlier ones."""
    return tmp_path_factory.mktemp("demo")


@pytest.fixture
def submitted_jobs(slurm_cluster):
    """Jobs submitted during the test, as `scontrol show job` fields."""
    before = {job["JobId"] for job in slurm_cluster.jobs()}

    def new_jobs():
        return [job for job in slurm_cluster.jobs() if job["JobId"] not in before]

    return new_jobs
