"""One front end at a time in a project.

Two front ends running the DAG at once (``snakemake``, then ``dvc repro`` in another shell)
both wrote the same outputs and metrics, and both exited 0.  The front end that runs holds
an exclusive ``flock`` on ``.pcn/frontend.lock`` and writes into it who it is: ``pcn run``
for the whole run, the Snakefile's ``onstart`` for a ``snakemake`` started by hand, and
each stage of a bare ``dvc repro`` (which has no start hook) while it runs.  The holder's
pid is exported in ``PCN_FRONT_END``: its own jobs (SLURM ones too) are not refused.  A
second front end is refused in one line naming the holder; the kernel frees the lock of a
process that died, however it died, and the next front end takes it over with a message.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from pcn.errors import UserError

LOCK = Path(".pcn/frontend.lock")
ENV = "PCN_FRONT_END"
_HELD: dict[str, int] = {}  # lock path -> fd, held for the life of this process or a stage


class FrontEndBusy(UserError):
    """Another front end runs the DAG in this project."""


def acquire(name: str, echo=print) -> bool:
    """Hold the project's front-end lock for ``name`` (until :func:`release` or exit) and
    export this process as the holder; False when a front end above this process (named in
    the environment) already holds it.  Raises :class:`FrontEndBusy` when another holds it."""
    if os.environ.get(ENV) or str(LOCK.resolve()) in _HELD:
        return False
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = describe(os.pread(fd, 4096, 0))
        os.close(fd)
        raise FrontEndBusy(
            f"{LOCK}: another front end runs in this project: {holder or 'unknown'}; "
            "wait for it or stop it, then run again"
        ) from None
    previous = describe(os.pread(fd, 4096, 0))
    if previous:
        echo(f"{name}: taking over {LOCK} from {previous}, which is no longer running")
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    holder = {"front_end": name, "pid": os.getpid(), "host": socket.gethostname(), "since": since}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    _HELD[str(LOCK.resolve())] = fd
    os.environ[ENV] = str(os.getpid())
    return True


def held_fd() -> int | None:
    """The descriptor of the lock this process holds, to pass to the engine it starts: the
    engine then holds the lock too, and a killed ``pcn run`` leaves it held, not free."""
    return _HELD.get(str(LOCK.resolve()))


def release() -> None:
    """Give the lock back cleanly (an empty file: nothing to take over)."""
    fd = _HELD.pop(str(LOCK.resolve()), None)
    if fd is not None:
        os.ftruncate(fd, 0)
        os.close(fd)
        if os.environ.get(ENV) == str(os.getpid()):
            del os.environ[ENV]


def describe(raw: bytes) -> str:
    try:
        h = json.loads(raw)
        return f"{h['front_end']} (pid {h['pid']} on {h['host']}, since {h['since']})"
    except (ValueError, KeyError, TypeError):
        return ""
