"""A one-node Slurm cluster on loopback for the tests: munged, slurmctld and slurmd in a scratch directory.

The node declares 8 GPUs through a gres.conf whose File= lines name dummy character devices, so
Slurm allocates and exports CUDA_VISIBLE_DEVICES as it does on a real GPU node. There is no
accounting database (sacct does not work): Snakemake's Slurm executor must be run with
`--slurm-status-command squeue`, and MinJobAge keeps finished jobs visible to squeue for 10 minutes.
`SlurmdParameters=config_overrides` lets the node declare the CPUs and memory of a real GPU node,
so the cluster profile's resource requests are scheduled unchanged on a small machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PARTITION = "debug"
CLUSTER_NAME = "longcat-test"
NUM_GPUS = 8
NODE_CPUS = 128
NODE_MEMORY_MB = 1_000_000
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "srun")
PACKAGES = ("slurm-wlm", "munge")
# Snakemake's jobstep executor drops SLURM_* variables (SLURM_CONF too) before its nested srun, so
# clients inside a job find the config only at the default path: the cluster links it there while it runs.
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")


class ClusterUnavailable(RuntimeError):
    """The cluster cannot run here (not root, packages missing, daemons refuse to start)."""


def _which_all(names) -> list[str]:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [name for name in names if shutil.which(name, path=search) is None]


def ensure_packages() -> None:
    """Install Debian's slurm-wlm and munge when a daemon or client is missing (needs root and apt)."""
    if not _which_all(DAEMONS + CLIENTS):
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable("Slurm tests need root to install slurm-wlm/munge and to run the daemons")
    if shutil.which("apt-get") is None:
        raise ClusterUnavailable(
            f"missing {', '.join(_which_all(DAEMONS + CLIENTS))} and no apt-get to install them"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        result = subprocess.run(command, env=env, capture_output=True, text=True)
    missing = _which_all(DAEMONS + CLIENTS)
    if missing:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ClusterUnavailable(f"could not install {', '.join(PACKAGES)} (still missing {missing}): {tail}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class SlurmCluster:
    root: Path
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    @property
    def env(self) -> dict[str, str]:
        """Environment for clients (sbatch, squeue, snakemake) that talk to this cluster."""
        # The interpreter running the tests first, as in an activated virtual environment: jobs inherit it.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", ""), "/usr/sbin"])
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": path}

    def write_config(self) -> None:
        for sub in ("munge", "state", "spool", "log", "dev"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        devices = []
        for index in range(NUM_GPUS):
            device = self.root / "dev" / f"nvidia{index}"
            if not device.exists():
                subprocess.run(["mknod", str(device), "c", "1", "3"], check=True)
            devices.append(device)
        ctld_port, slurmd_port = _free_port(), _free_port()
        log = self.root / "log"
        self.conf.write_text(
            "\n".join(
                [
                    f"ClusterName={CLUSTER_NAME}",
                    f"SlurmctldHost={self.node}(127.0.0.1)",
                    f"SlurmctldPort={ctld_port}",
                    f"SlurmdPort={slurmd_port}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={self.munge_socket}",
                    f"StateSaveLocation={self.root / 'state'}",
                    f"SlurmdSpoolDir={self.root / 'spool'}",
                    f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
                    f"SlurmdPidFile={self.root / 'slurmd.pid'}",
                    f"SlurmctldLogFile={log / 'slurmctld.log'}",
                    f"SlurmdLogFile={log / 'slurmd.log'}",
                    "SlurmctldDebug=info",
                    "SlurmdDebug=info",
                    # Containers have no usable cgroup hierarchy for Slurm: track by process tree.
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "MpiDefault=none",
                    "SchedulerType=sched/backfill",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core_Memory",
                    "GresTypes=gpu",
                    "SlurmdParameters=config_overrides",
                    "ReturnToService=2",
                    "MinJobAge=600",
                    # Seconds between SIGTERM and SIGKILL (requeue, preemption): time to save a checkpoint.
                    "KillWait=30",
                    "InactiveLimit=0",
                    f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB} "
                    f"Gres=gpu:{NUM_GPUS} State=UNKNOWN",
                    f"PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        (self.root / "gres.conf").write_text(
            "".join(f"NodeName={self.node} Name=gpu File={device}\n" for device in devices)
        )

    def _start(self, name: str, *args: str) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        process = subprocess.Popen(
            [shutil.which(name, path="/usr/sbin:/usr/bin:/sbin") or name, *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        time.sleep(0.5)
        if process.poll() is not None:
            raise ClusterUnavailable(f"{name} exited with status {process.returncode}: {self.logs(name)}")

    def logs(self, name: str, lines: int = 15) -> str:
        text = ""
        for path in sorted((self.root / "log").glob(f"{name}*")):
            text += path.read_text(errors="replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    def link_system_conf(self) -> None:
        # A link left by an interrupted earlier run (dangling, or to another test cluster) is replaced.
        if SYSTEM_CONF.is_symlink() and (
            not SYSTEM_CONF.exists() or f"ClusterName={CLUSTER_NAME}" in SYSTEM_CONF.read_text()
        ):
            SYSTEM_CONF.unlink()
        if SYSTEM_CONF.exists() or SYSTEM_CONF.is_symlink():
            raise ClusterUnavailable(f"{SYSTEM_CONF} already exists; refusing to replace a real Slurm config")
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.symlink_to(self.conf)

    def start(self, timeout: float = 60) -> None:
        self.write_config()
        self.link_system_conf()
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["mungekey", "--create", "--force"], check=True, capture_output=True)
        self._start(
            "munged",
            "--foreground",
            "--force",
            f"--socket={self.munge_socket}",
            f"--pid-file={self.root / 'munge' / 'munged.pid'}",
            f"--log-file={self.root / 'log' / 'munged.log'}",
            f"--seed-file={self.root / 'munge' / 'munged.seed'}",
        )
        self._start("slurmctld", "-D", "-c", "-f", str(self.conf))
        self._start("slurmd", "-D", "-f", str(self.conf), "-N", self.node)
        self.wait_idle(timeout)

    def wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            result = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
            state = result.stdout.strip()
            if state == "idle":
                return
            for process in self.processes:
                if process.poll() is not None:
                    raise ClusterUnavailable(f"{process.args[0]} died: {self.logs('slurm')}")
            time.sleep(1)
        raise ClusterUnavailable(f"node not idle after {timeout}s (state {state!r}): {self.logs('slurm')}")

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld remembers (MinJobAge keeps finished ones), as `scontrol show job` fields."""
        output = self.run("scontrol", "show", "job", "--oneliner").stdout
        jobs = []
        for line in output.splitlines():
            if not line.strip() or line.startswith("No jobs"):
                continue
            fields = {}
            for token in line.split():
                name, _, value = token.partition("=")
                fields[name] = value
            jobs.append(fields)
        return jobs

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()
        if SYSTEM_CONF.is_symlink() and SYSTEM_CONF.resolve() == self.conf.resolve():
            SYSTEM_CONF.unlink()
