"""A local training job ends when the stage that launched it is killed outright.

submitit's local controller is meant to outlive the Python session that started
it. A stage that is terminated cancels its job itself (``launch.cancel_on_termination``),
but a SIGKILL (the OOM killer, ``kill -9`` of a front end's process group) gives
it no chance: the job would train on, unwatched, into ``results/``. So the stage
names itself in the job's environment and every local rank watches it; once it
is gone the rank exits, leaving the last checkpoint for the rerun to resume
from. SLURM jobs are not watched: there the scheduler owns them, and the results
folder's lock stops a second trainer.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

STAGE_ENV = "PCN_LAUNCHING_STAGE"  # "<pid>:<start time>", set by the stage before it submits
POLL_S = 2.0


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat): with
    the pid it names one process, even after the pid is reused. None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name, which may hold spaces


def stage_identity() -> str | None:
    """This process as the stage a local job watches (None where /proc is unavailable)."""
    started = _start_time(os.getpid())
    return f"{os.getpid()}:{started}" if started else None


def stage_alive(identity: str) -> bool:
    pid, started = identity.split(":", 1)
    return _start_time(int(pid)) == started


@contextlib.contextmanager
def launching_stage_named(local: bool) -> Iterator[None]:
    """Around a local submission: the job's environment (copied by submitit's controller)
    names this process as the stage it watches."""
    identity = stage_identity() if local else None
    if identity is None:
        yield
        return
    previous = os.environ.get(STAGE_ENV)
    os.environ[STAGE_ENV] = identity
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(STAGE_ENV, None)
        else:
            os.environ[STAGE_ENV] = previous


def watch_launching_stage(poll_s: float = POLL_S) -> threading.Thread | None:
    """In a local rank: exit this process once the stage named by ``PCN_LAUNCHING_STAGE`` is gone."""
    identity = os.environ.get(STAGE_ENV)
    if not identity or os.environ.get("SUBMITIT_EXECUTOR") != "local":
        return None

    def watch() -> None:
        while stage_alive(identity):
            time.sleep(poll_s)
        print(
            f"the stage that launched this job (pid {identity.split(':')[0]}) is gone: stopping; "
            "a rerun resumes from the last checkpoint",
            file=sys.stderr,
            flush=True,
        )
        os._exit(3)  # at once: the main thread may be inside a long step; checkpoints are atomic

    thread = threading.Thread(target=watch, name="pcn-stage-watchdog", daemon=True)
    thread.start()
    return thread
