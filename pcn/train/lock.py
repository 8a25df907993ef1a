"""One trainer per results folder.

A training job (rank 0) holds an exclusive ``flock`` on ``<out_dir>/.trainer.lock`` for
as long as it trains, and writes into the file which job holds it.  A second trainer
started on the same folder (a rerun while an orphaned job still trains, two front ends
at once) is refused with one line naming the holder, instead of two jobs writing one
``last.pth``.  The kernel releases a ``flock`` when its process dies, however it dies,
so the lock of a killed job is free: the next trainer takes it over and says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".trainer.lock"


class FolderBusy(RuntimeError):
    """Another live job trains into this results folder."""


def _holder() -> dict:
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or "local"
    return {"job": job, "host": socket.gethostname(), "pid": os.getpid()}


@contextlib.contextmanager
def trainer_lock(out_dir: str | Path, stage: str, echo=print) -> Iterator[None]:
    path = Path(out_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(
                f"{out_dir}: {stage} is already being trained there by {_describe(fd)}; "
                "cancel that job (scancel, or kill its process) or wait for it"
            ) from None
        previous = _describe(fd)
        if previous:
            echo(f"[{stage}] taking over {out_dir} from {previous}, which is no longer running")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({**_holder(), "stage": stage}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # an empty lock file: released cleanly
    finally:
        os.close(fd)  # releases the flock


def _describe(fd: int) -> str:
    raw = os.pread(fd, 4096, 0)
    try:
        h = json.loads(raw)
        return f"job {h['job']} (pid {h['pid']} on {h['host']})"
    except (ValueError, KeyError, TypeError):
        return ""
