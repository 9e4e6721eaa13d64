"""The command line that starts a training job: `accelerate launch` (torchrun underneath), one per node."""

from __future__ import annotations

import shlex

from longcat.train.config import TrainConfig

# torchrun forwards these to the training processes (Slurm sends SIGUSR1 before preemption with
# `--signal=USR1@SECONDS`; without forwarding, the launcher dies of it and leaves its workers running),
# then waits this long for them to finish the step and save a checkpoint before killing them.
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
SHUTDOWN_TIMEOUT_S = 900
FIRST_NODE = '"$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"'


def launch_command(cfg: TrainConfig, python: str = "python") -> str:
    """`accelerate launch ... -m longcat.train`; the caller appends the training arguments.

    One node: a free rendezvous port is picked at start (port 0), so runs on one machine do not collide.
    Several nodes: one launcher per node through `srun`, each with its Slurm node id as machine rank,
    meeting at `main_process_ip:main_process_port` (default: the allocation's first node).
    """
    processes = cfg.num_processes * cfg.nodes
    launcher = [
        "env",
        f"PET_SIGNALS_TO_HANDLE={FORWARDED_SIGNALS}",
        f"TORCH_ELASTIC_SHUTDOWN_TIMEOUT={SHUTDOWN_TIMEOUT_S}",
        python,
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
    return shlex.join(
        ["srun", "--nodes", str(cfg.nodes), "--ntasks-per-node", "1", "bash", "-c", per_node, "launch"]
    )
