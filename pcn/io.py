"""File output that a failed or killed stage cannot leave half-written.

Everything a stage publishes goes through here: it is written under a temporary
name next to its destination and renamed into place only when complete, so a
later run never trusts a partial file or folder.

A destination that is a symbolic link (``data/ffcv`` linked to scratch, the usual cluster
set-up) stays one: the write happens at the link's target, its temporary name beside the
target, on the target's filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pcn.errors import UserError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NEARLY_FULL_BYTES = 1 << 20  # a write that failed with less free than this failed for want of it


class DiskFull(UserError):
    """An output's filesystem (or quota) is full: one line naming the output and the free space."""


def _owner_tag() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _remove_dead_temps(path: Path) -> None:
    """Temporary siblings of ``path`` left by a killed writer on this host (its pid is gone)."""
    host = socket.gethostname()
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.{glob.escape(host)}-*.tmp"):
        pid = tmp.name[len(f".{path.name}.{host}-") :].split("-", 1)[0].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success it replaces ``path``.

    The sibling's name carries this host and pid, so the next writer of ``path`` removes
    what a killed one left (a SIGKILL runs no cleanup) and leaves a live writer's alone.
    Links are followed (in ``path`` and its folders): the sibling is the target's.
    """
    shown = path
    path = Path(os.path.realpath(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_temps(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_owner_tag()}-", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        full = _disk_full(shown, path.parent, exc)
        if full is None:
            raise
        raise full from None
    target = tmp if directory else tmp / path.name
    try:
        yield target
        if directory:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private; publish it like any folder
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, path)
    except DiskFull:
        raise
    except Exception as exc:
        full = _disk_full(shown, path.parent, exc, partial=tmp)
        if full is None:
            raise
        raise full from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _disk_full(shown: str | Path, folder: Path, exc: BaseException, partial: Path | None = None) -> DiskFull | None:
    """``exc`` as a :class:`DiskFull` if it failed for want of space, else None.  Beside the
    errno, a writer's own message (a dead FFCV worker's line) and, for writers that hide the
    errno (torch.save's RuntimeError), a filesystem left with under 1 MiB tell it.  The
    output needs more than the free space plus what its partial copy (removed next) holds."""
    free = _free_bytes(folder)
    if not (
        (isinstance(exc, OSError) and exc.errno in NO_SPACE)
        or "No space left on device" in str(exc)
        or "Disk quota exceeded" in str(exc)
        or (isinstance(exc, RuntimeError) and free is not None and free < NEARLY_FULL_BYTES)
    ):
        return None
    if free is None:
        where = "free space unknown"
    else:
        written = sum(f.stat().st_size for f in partial.rglob("*") if f.is_file()) if partial else 0
        where = f"it needs more than the {(free + written) / 1e6:.1f} MB free there"
    return DiskFull(f"{shown}: no space left on device ({where}); free some space or link the output elsewhere")


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def write_json(path: str | Path, obj: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_plain) + "\n")
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Rows of one shape as a CSV file (header from the first row), written atomically."""
    import csv
    import io

    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return write_text(path, buf.getvalue())


def read_yaml(path: str | Path, error: type[Exception] = ValueError, hint: str = "") -> Any:
    """The parsed YAML file; a missing or malformed file raises ``error`` in one line naming
    the file (and the line of a syntax error)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found{hint}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise error(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None


def _plain(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
