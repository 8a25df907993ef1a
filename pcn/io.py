"""File output that a failed or killed stage cannot leave half-written.

Everything a stage publishes goes through here: it is written under a temporary
name next to its destination and renamed into place only when complete, so a
later run never trusts a partial file or folder.

A destination that is a symbolic link (``data/ffcv`` linked to scratch, the usual cluster
set-up) stays one: the write happens at the link's target, its temporary name beside the
target, on the target's filesystem.

No path a user types makes a stage replace what it did not write: an output is never the
workspace or a folder holding it, never an input of the command or a folder holding one,
and a folder is replaced only when it is empty or the same stage's output
(:func:`check_output_folder`).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcn.errors import UserError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NEARLY_FULL_BYTES = 1 << 20  # a write that failed with less free than this failed for want of it


class DiskFull(UserError):
    """An output's filesystem (or quota) is full: one line naming the output and the free space."""


OUTPUT_MARKER = ".pcn-output"  # in a folder a stage published: the verb that wrote it
# Written into an output folder by others than its stage, and no reason to keep it: the
# marker, and the file Snakemake touches in each directory output after its job.
_BOOKKEEPING = (OUTPUT_MARKER, ".snakemake_timestamp")


@dataclass(frozen=True)
class FolderOwner:
    """The stage whose output a published folder is: ``verb`` goes in the folder's marker.
    ``kinds`` (patterns of its top-level entries) and ``signature`` (an entry it always
    writes) recognise the stage's folder written before the marker existed."""

    verb: str
    kinds: tuple[str, ...] = ()
    signature: str | None = None


def _forms(path: str | Path) -> set[Path]:
    """The path as typed (absolute) and as the links resolve: replacing either loses it."""
    return {Path(os.path.abspath(path)), Path(os.path.realpath(path))}


def check_output(path: str | Path, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse an output (file or folder) that is the workspace or a folder holding it, or
    that is one of the command's ``inputs`` or a folder holding one: its replacement would
    destroy the project or what the command reads (``--out .``, ``--metrics params.yaml``)."""
    outs = _forms(path)
    with contextlib.suppress(OSError):  # a removed working directory has nothing left to lose
        work = Path(os.path.realpath(os.getcwd()))
        for out in outs:
            if out == work or out in work.parents:
                what = "is" if out == work else "holds"
                raise UserError(f"{path}: {what} the workspace {work}; expected an output path inside it")
    for inp in inputs:
        for i in _forms(inp):
            for out in outs:
                if out == i:
                    raise UserError(f"{path}: is an input of this command; expected an output path of its own")
                if out in i.parents:
                    raise UserError(f"{path}: holds {inp}, an input of this command; expected a path of its own")


def check_output_folder(path: str | Path, owner: FolderOwner, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse, before any work, an output folder its stage may not replace: one
    :func:`check_output` refuses, a file, or a non-empty folder holding anything but
    ``owner``'s own output.  :func:`atomic_path` checks again before it replaces the folder."""
    check_output(path, inputs)
    real = Path(os.path.realpath(path))
    if not real.exists():
        return
    if not real.is_dir():
        raise UserError(f"{path}: is a file; expected pcn {owner.verb}'s output folder (or nothing) there")
    entries = sorted(e for e in os.listdir(real) if e not in _BOOKKEEPING)
    marked = (real / OUTPUT_MARKER).is_file()
    verb = (real / OUTPUT_MARKER).read_text().strip() if marked else owner.verb
    if verb != owner.verb:
        raise UserError(f"{path}: is pcn {verb}'s output; expected an empty folder or pcn {owner.verb}'s own output")
    # Marked or not, it holds only the kinds of file the stage writes.  An unmarked folder
    # (written before the marker existed, or by a writer that does not mark) must also hold
    # the stage's signature file, so that a real dataset laid out like the demo is not taken
    # for the demo's output.
    foreign = [e for e in entries if not any(fnmatch.fnmatch(e, k) for k in owner.kinds)]
    if foreign:
        raise UserError(
            f"{path}: holds {foreign[0]!r}, which pcn {owner.verb} does not write; "
            f"expected an empty folder or pcn {owner.verb}'s own output"
        )
    if entries and not marked and owner.signature and owner.signature not in entries:
        raise UserError(
            f"{path}: lacks {owner.signature}, which pcn {owner.verb} writes; "
            f"expected an empty folder or pcn {owner.verb}'s own output"
        )


def check_writable(path: str | Path) -> None:
    """Refuse, before any work, an output whose folder cannot be written (a read-only
    filesystem, a folder without write permission), rather than fail after the work."""
    folder = Path(os.path.realpath(path)).parent
    while not os.path.lexists(folder):
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"{path}: {folder} is a file; expected a folder there")
    if os.access(folder, os.W_OK | os.X_OK):
        return
    why = "is on a read-only filesystem" if _read_only(folder) else "is not writable by this user"
    raise UserError(f"{path}: cannot be written: {folder} {why}; expected a writable folder")


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


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
def atomic_path(
    path: str | Path,
    directory: bool = False,
    owner: FolderOwner | None = None,
    inputs: Iterable[str | Path] = (),
) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success it replaces ``path``.

    The sibling's name carries this host and pid, so the next writer of ``path`` removes
    what a killed one left (a SIGKILL runs no cleanup) and leaves a live writer's alone.
    Links are followed (in ``path`` and its folders): the sibling is the target's.
    ``path`` is checked against the workspace and the command's ``inputs``
    (:func:`check_output`) before and again just before it is replaced; a folder of an
    ``owner`` also against its contents (:func:`check_output_folder`), and it is published
    with the owner's marker.
    """
    shown, inputs = path, tuple(inputs)
    check = (lambda: check_output_folder(shown, owner, inputs)) if owner else (lambda: check_output(shown, inputs))
    check()
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
        check()  # the destination may have changed during the work
        if directory:
            if owner is not None:
                (tmp / OUTPUT_MARKER).write_text(f"{owner.verb}\n")
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
    except DiskFull as exc:  # an inner writer's: name its file where it was going, not in the sibling
        raise DiskFull(str(exc).replace(str(tmp), str(path))) from None
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


def read_json(path: str | Path) -> Any:
    """A JSON file a stage reads (a metrics file): one line naming it when it is missing or
    not valid JSON (truncated by a full disk, edited by hand), never a silent gap."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" (line {exc.lineno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) else ""
        raise UserError(f"{path}: not valid JSON{where}; rerun the stage that writes it") from None


def read_yaml(path: str | Path, error: type[Exception] = ValueError, hint: str = "") -> Any:
    """The parsed YAML file; a missing or malformed file raises ``error`` in one line naming
    the file (and the line of a syntax error)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found{hint}")
    try:
        return yaml.load(path.read_text(), Loader=_unique_key_loader(path, error))  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise error(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None


def _unique_key_loader(path: Path, error: type[Exception]):
    """PyYAML's SafeLoader, refusing a key written twice in one mapping: PyYAML keeps the
    last silently, so a second `pretrain:` section would replace the first with defaults."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise error(f"{path}: key {key!r} is written twice, at lines {seen[key]} and {line}; keep one")
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def _plain(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
