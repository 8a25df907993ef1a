"""A watch over the worker processes a library forks and then waits on without looking back.

FFCV's ``DatasetWriter`` forks its writers and polls a shared counter until every sample is
written: a writer that dies (``OSError: [Errno 28] No space left on device``) left it
waiting for ever.  Inside :func:`watch_workers` a thread notices a forked child that ended
with an error within a second, stops the others, and a signal raises :class:`WorkerDied`
in the main thread, interrupting its wait, with the dead worker's last error line.  The
workers' stderr goes through a pipe so that their tracebacks do not reach the user: what
they printed is passed on only when all went well.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.process
import multiprocessing.util
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator

POLL_S = 0.2
WAKE = signal.SIGUSR1  # sent to the main thread to end its wait
_ERROR_LINE = re.compile(r"^[\w.]+(Error|Exception)\b.*")


class WorkerDied(RuntimeError):
    """A forked worker ended with an error while the main thread waited on it."""


class _Pipe:
    """The write end of the workers' stderr pipe (an object: after-fork hooks are weakly held)."""

    def __init__(self, fd: int):
        self.fd = fd


def _stderr_to_pipe(pipe: _Pipe) -> None:
    os.dup2(pipe.fd, 2)


def _children() -> list:
    # Not active_children(): it drops the children that already ended, and a worker that
    # died between two looks would never be seen.  _children holds them until the next
    # Process.start() or active_children() call.
    return list(getattr(multiprocessing.process, "_children", ())) or multiprocessing.active_children()


def _drain(fd: int, out: list[str]) -> None:
    with os.fdopen(fd, "r", errors="replace", closefd=False) as f:
        for line in f:
            out.append(line)


def _last_error(lines: list[str]) -> str | None:
    found = [line.strip() for line in lines if _ERROR_LINE.match(line.strip())]
    return found[-1] if found else None


@contextlib.contextmanager
def watch_workers(what: str) -> Iterator[None]:
    """Run the block with the processes it forks watched; a worker that fails raises
    :class:`WorkerDied` naming ``what`` and the worker's error.  Outside the main thread
    (no signal can reach it there) the block runs unwatched."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {id(p) for p in _children()}
    read_fd, write_fd = os.pipe()
    pipe = _Pipe(write_fd)
    multiprocessing.util.register_after_fork(pipe, _stderr_to_pipe)
    printed: list[str] = []
    reader = threading.Thread(target=_drain, args=(read_fd, printed), daemon=True)
    reader.start()
    stop, dead = threading.Event(), []

    def watch() -> None:
        seen: dict[int, multiprocessing.process.BaseProcess] = {}
        while not stop.wait(POLL_S):
            seen.update({p.pid: p for p in _children() if id(p) not in before})
            failed = [p for p in seen.values() if p.exitcode not in (None, 0)]
            if failed:
                for p in seen.values():
                    if p.exitcode is None:
                        p.terminate()  # the others would wait on the dead one's turn to write
                for p in seen.values():
                    p.join(timeout=5)
                dead.append(failed[0].exitcode)
                signal.pthread_kill(threading.main_thread().ident, WAKE)
                return

    def on_wake(signum, frame):
        raise WorkerDied(f"{what}: {_last_error(printed) or f'a worker process ended with exit code {dead[0]}'}")

    previous = signal.signal(WAKE, on_wake)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        stop.set()
        watcher.join()
        signal.signal(WAKE, previous)
        del pipe  # unregisters the after-fork hook
        os.close(write_fd)
        reader.join(timeout=5)  # EOF once the workers, which hold the write end too, are gone
        os.close(read_fd)
        if ok and printed:
            sys.stderr.write("".join(printed))
