"""Which project files a stage opens: the check that every file a stage reads is declared.

With ``PCN_AUDIT_DIR`` set, every process that imports ``pcn`` (a stage's ``pcn <verb>``
and the training job it starts) records each file it reads and writes inside the working
directory, through a Python audit hook (the ``open`` event, which ``open()``, ``os.open``,
``io.open_code`` and imports raise), and at exit writes them to
``$PCN_AUDIT_DIR/<pid>.json`` with the stage instance it ran for (``PCN_AUDIT_STAGE``, set
by the stage and inherited by its jobs).
tests/test_pipeline.py compares them with the stage table's declared inputs and outputs.
Off (and free) unless the variable is set.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path

AUDIT_DIR_ENV = "PCN_AUDIT_DIR"
AUDIT_STAGE_ENV = "PCN_AUDIT_STAGE"

_read: set[str] = set()  # project-relative paths of regular files opened for reading
_written: set[str] = set()  # ... opened for writing (a stage may read back what it wrote)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _writes(mode, flags) -> bool:
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def _hook(event: str, args: tuple) -> None:
    if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.fsdecode(args[0])
    mode = args[1] if len(args) > 1 else None
    flags = args[2] if len(args) > 2 else None
    rel = os.path.relpath(os.path.abspath(path), _ROOT)
    if rel.startswith(".."):
        return
    if _writes(mode, flags):
        _written.add(rel)
    elif os.path.isfile(path):  # not a folder, nor an import hook's pseudo-path
        _read.add(rel)


def _write() -> None:
    record = {
        "pid": os.getpid(),
        "argv": sys.argv,
        "stage": os.environ.get(AUDIT_STAGE_ENV),
        "read": sorted(_read),
        "written": sorted(_written),
    }
    out = Path(os.environ[AUDIT_DIR_ENV]) / f"{os.getpid()}.json"
    with open(out, "w") as f:  # outside the project: not recorded
        json.dump(record, f)


_ROOT = os.getcwd()


def install() -> None:
    """Start recording (once per process) when ``PCN_AUDIT_DIR`` names a folder."""
    if os.environ.get(AUDIT_DIR_ENV) and not getattr(install, "done", False):
        install.done = True
        sys.addaudithook(_hook)
        atexit.register(_write)


install()  # every process that imports pcn (pcn/__init__.py imports this module)
