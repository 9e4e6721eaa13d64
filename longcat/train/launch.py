"""The command line that starts a training job: `accelerate launch` (torchrun underneath), one per node."""

from __future__ import annotations

import shlex
import signal
import threading

from longcat.settings import Train

# torchrun forwards these to the training processes (Slurm sends SIGUSR1 before preemption with
# `--signal=USR1@SECONDS`; without forwarding, the launcher dies of it and leaves its workers running),
# then waits this long for them to finish the step and save a checkpoint before killing them.
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
SHUTDOWN_TIMEOUT_S = 900
FIRST_NODE = '"$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"'


def launch_command(cfg: Train, python: str = "python") -> str:
    """`accelerate launch ... -m longcat.train`; the caller appends the training arguments.

    One process in all: `torchrun --standalone`, the launcher underneath accelerate's.
    One node: a free rendezvous port is picked at start (port 0), so runs on one machine do not collide.
    Several nodes: one launcher per node through `srun`, each with its Slurm node id as machine rank,
    meeting at `main_process_ip:main_process_port` (default: the allocation's first node).
    """
    processes = cfg.num_processes * cfg.nodes
    environment = [
        "env",
        f"PET_SIGNALS_TO_HANDLE={FORWARDED_SIGNALS}",
        f"TORCH_ELASTIC_SHUTDOWN_TIMEOUT={SHUTDOWN_TIMEOUT_S}",
        python,
    ]
    if processes == 1:
        # accelerate refuses `--multi_gpu` with one process, and without it sets up no process group:
        # torchrun, which accelerate runs underneath, starts the one process with its rendezvous.
        torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
        return shlex.join([*environment, *torchrun, "-m", "longcat.train"])
    launcher = [
        *environment,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        str(cfg.nodes),
        "--mixed_precision",
        cfg.mixed_precision,
        "--dynamo_backend",
        "no",
    ]
    if cfg.nodes == 1:
        return shlex.join([*launcher, "--main_process_port", "0", "-m", "longcat.train"])
    launcher += ["--main_process_port", str(cfg.main_process_port)]
    # Expanded by each node's shell, not by the one that runs srun: node 0 of the allocation hosts the
    # rendezvous unless main_process_ip names another address.
    address = shlex.quote(cfg.main_process_ip) if cfg.main_process_ip else FIRST_NODE
    per_node = f'{shlex.join(launcher)} --main_process_ip {address} --machine_rank "$SLURM_NODEID"'
    per_node += ' -m longcat.train "$@"'
    return shlex.join([*srun_per_node(cfg), "bash", "-c", per_node, "launch"])


def srun_per_node(cfg: Train) -> list[str]:
    """`srun` for one launcher per node, run from the job's shell on the allocation's first node.

    That shell is itself inside a job step (Snakemake's job process runs under `srun`), which holds
    the first node's CPUs and GPUs: `--overlap` lets the launchers' step share them instead of
    waiting for them forever. `--kill-on-bad-exit` ends every node's launcher when one fails, so a
    lost node fails the job at once rather than at the collective timeout.
    """
    command = ["srun", "--nodes", str(cfg.nodes), "--ntasks", str(cfg.nodes), "--ntasks-per-node", "1"]
    command += ["--overlap", "--kill-on-bad-exit=1"]
    if cfg.gpus:
        command += ["--gres", f"gpu:{cfg.gpus}"]
    return command


def train_threads(cfg: Train) -> int:
    """CPUs of the training job on each node: a training process and its loader workers per process."""
    return cfg.num_processes * (1 + cfg.dataloader_num_workers)


def slurm_resources(cfg: Train) -> dict[str, int | str]:
    """What the training job asks Slurm for, from the config, so that the demo's job is as small as the
    demo (CPU processes) and the real one takes whole GPU nodes. The profile adds the partition.

    `gres` is per node, so one entry serves one node or several. The CPUs are `train_threads`, asked for
    as such: Snakemake caps a rule's threads at the submitting host's `--cores` (the default profile's
    `all`), which says nothing of a GPU node. Ten minutes before the time limit Slurm sends USR1 to every
    process of the job's steps (no `B:`, which would signal only the batch shell): training saves a
    checkpoint and exits, and Snakemake's retry resumes the run.
    """
    resources: dict[str, int | str] = {
        "cpus_per_task": train_threads(cfg),
        "mem_mb": cfg.memory_gb * 1000,
        "runtime": cfg.time_limit_minutes,
        "slurm_extra": "--signal=USR1@600",
    }
    if cfg.gpus:
        resources.update(gres=f"gpu:{cfg.gpus}", slurm_extra="--exclusive --signal=USR1@600")
    return resources


def ignore_usr1() -> None:
    """Let SIGUSR1 pass by this process and the commands it starts, unless they handle it themselves.

    Slurm delivers `--signal=USR1@SECONDS` (and `scancel --signal=USR1`) to every process of the job
    step: the Snakemake process that runs the `train` job and the job's shell are among them, and USR1
    ends a process that does not handle it. Were they to exit, the step would end and take the training
    processes with it before their checkpoint is written. An ignored signal stays ignored in child
    processes; the launcher and the training processes install handlers of their own.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
