"""Run a DAG engine (Snakemake, DVC) so that stopping ``pcn run`` stops everything under it.

Snakemake on a SIGTERM or SIGINT of its own process waits for its running jobs, which
may train for hours; a signal to the whole process group instead reaches every job,
and each stage then cancels the training job it submitted. So the engine runs in a
session of its own and every stop signal ``pcn run`` receives is passed to that
whole group. A second Ctrl-C kills the group outright (local training jobs then stop
by themselves: ``pcn.train.watchdog``).

A ``pcn run`` killed outright (SIGKILL: no handler runs) must not leave its engine running
unlocked beside a second front end.  So the engine holds the front-end lock itself (the
lock's descriptor is passed to it: the kernel frees an flock only when every holder has
closed it), and it is asked to stop when its parent dies (Linux's ``PR_SET_PDEATHSIG``):
Snakemake then lets its running jobs end, and the lock stays held until it exits.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _stop_with_parent(parent: int) -> None:
    """In the engine, before it runs: SIGTERM when the parent dies; exit if it already has."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)


def run_engine(cmd: Sequence[str], env: Mapping[str, str], echo=print, keep_fds: Sequence[int] = ()) -> int:
    """Run ``cmd`` in its own process group, holding the descriptors ``keep_fds`` (the
    front-end lock) and stopped when this process dies; return its exit code (128 + signal
    when stopped)."""
    parent = os.getpid()
    proc = subprocess.Popen(
        list(cmd),
        env=dict(env),
        start_new_session=True,
        pass_fds=tuple(keep_fds),
        preexec_fn=lambda: _stop_with_parent(parent),  # noqa: PLW1509 - only a prctl, no lock taken
    )
    received: list[int] = []

    def forward(signum, frame) -> None:
        first = not received
        received.append(signum)
        if first:
            echo(f"{signal.Signals(signum).name}: stopping {cmd[0]} and its jobs (again to kill them at once)")
        try:
            os.killpg(proc.pid, signum if first else signal.SIGKILL)
        except ProcessLookupError:  # the group has already ended
            pass

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        rc = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 + received[0] if received and rc != 0 else rc
