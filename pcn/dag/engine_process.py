"""Run a DAG engine (Snakemake, DVC) so that stopping ``pcn run`` stops everything under it.

Snakemake on a SIGTERM or SIGINT of its own process waits for its running jobs, which
may train for hours; a signal to the whole process group instead reaches every job,
and each stage then cancels the training job it submitted. So the engine runs in a
session of its own and every stop signal ``pcn run`` receives is passed to that
whole group. A second Ctrl-C kills the group outright (local training jobs then stop
by themselves: ``pcn.train.watchdog``).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_engine(cmd: Sequence[str], env: Mapping[str, str], echo=print) -> int:
    """Run ``cmd`` in its own process group; return its exit code (128 + signal when stopped)."""
    proc = subprocess.Popen(list(cmd), env=dict(env), start_new_session=True)
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
