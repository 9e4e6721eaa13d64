"""The loader's worker processes leave the signals that ask training to stop to the training process."""

from __future__ import annotations

import os
import signal
import threading


def leave_stopping_to_the_trainer(worker_id: int) -> None:
    """A loader worker leaves the signals that ask training to stop to the training process.

    Slurm's hard preemption (`scontrol requeue`, a time limit without `--signal`) sends SIGTERM to
    every process of the job step, and `--signal=USR1` sends USR1 to each. torch's worker handler
    exits on a SIGTERM from anyone but its parent; the training process would then fail on the dead
    worker before it saves. Here USR1 is ignored, and SIGTERM is blocked and taken by a thread that
    ends the worker only when its parent sent it (as multiprocessing does to stop its workers at
    exit); the training process saves, then shuts its workers down itself.
    """
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    # Threads started from here on inherit the mask, so the SIGTERM waits for exit_on_parents_sigterm.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=exit_on_parents_sigterm, args=(os.getppid(),), daemon=True).start()


def exit_on_parents_sigterm(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)
