"""Which project files a stage opens: the check that every file a stage reads is declared.

With ``PCN_AUDIT_DIR`` set, every process that imports ``pcn`` (a stage's ``pcn <verb>``
and the training job it starts) records each file it opens inside the working directory,
through a Python audit hook (the ``open`` event, which ``open()``, ``io.open_code`` and
imports raise), and at exit writes them to ``$PCN_AUDIT_DIR/<pid>.json`` with the stage
instance it ran for (``PCN_AUDIT_STAGE``, set by the stage and inherited by its jobs).
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

_opened: dict[str, str] = {}  # project-relative path -> mode of the first open


def _hook(event: str, args: tuple) -> None:
    if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.fsdecode(args[0])
    mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
    try:
        rel = os.path.relpath(os.path.abspath(path), _ROOT)
    except ValueError:
        return
    if not rel.startswith(".."):
        _opened.setdefault(rel, mode)


def _write() -> None:
    record = {"pid": os.getpid(), "argv": sys.argv, "stage": os.environ.get(AUDIT_STAGE_ENV), "opened": _opened}
    out = Path(os.environ[AUDIT_DIR_ENV]) / f"{os.getpid()}.json"
    with open(out, "w") as f:  # recorded too, but outside the project
        json.dump(record, f)


_ROOT = os.getcwd()


def install() -> None:
    """Start recording (once per process) when ``PCN_AUDIT_DIR`` names a folder."""
    if os.environ.get(AUDIT_DIR_ENV) and not getattr(install, "done", False):
        install.done = True
        sys.addaudithook(_hook)
        atexit.register(_write)
