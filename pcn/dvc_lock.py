"""Bring DVC's lock up to date after a Snakemake run, so that both front ends agree.

Snakemake keeps its own bookkeeping (output times, ``.snakemake/metadata``); DVC
decides from ``dvc.lock``. Without this, a Snakemake run leaves ``dvc.lock``
behind and ``dvc repro`` would redo the whole DAG. The Snakefile's ``onsuccess``
calls :func:`commit_stages_that_ran`: ``dvc commit`` for every stage instance
whose outputs were written by this run.

``dvc commit`` re-stamps the single-file outputs it moves into its cache, which
would make them newer than their dependants and so stale to Snakemake. The
outputs' times are put back afterwards; DVC then re-hashes them once, finds the
same content, and both front ends report nothing to do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from pcn.stages import Stage, expand

# Outputs written this long before the run started still count as written by it
# (a cluster node's clock and a shared file system's time stamps may lag).
CLOCK_SLACK_NS = 5 * 10**9


def _stamps(path: Path) -> dict[Path, tuple[int, int]]:
    """(atime, mtime) in ns of an output and, for a folder, of everything in it (links skipped)."""
    files = [path, *path.rglob("*")] if path.is_dir() else [path]
    return {p: (st.st_atime_ns, st.st_mtime_ns) for p in files if not p.is_symlink() for st in [p.stat()]}


def stages_that_ran(
    root: Path, stages: Iterable[Stage], started_ns: int
) -> tuple[list[dict], dict[Path, tuple[int, int]]]:
    """Stage instances whose outputs all exist and were all written since ``started_ns``, and
    the times of those outputs' files (read once: the commit puts them back)."""
    ran, times = [], {}
    for stage in stages:
        for inst in expand(stage):
            outs = [root / o for o in inst["outs"]]
            if not outs or not all(o.exists() for o in outs):
                continue
            stamps = [_stamps(o) for o in outs]
            if all(max((m for _, m in st.values()), default=0) >= started_ns - CLOCK_SLACK_NS for st in stamps):
                ran.append(inst)
                for st in stamps:
                    times.update(st)
    return ran, times


def commit_stages_that_ran(root: Path, stages: Iterable[Stage], started_ns: int) -> str:
    """``dvc commit`` the stage instances this run wrote, keeping every output's time.

    Returns a one-line account for the Snakemake log. Does nothing outside a DVC
    repository or without the ``dvc`` command.
    """
    if not (root / ".dvc").is_dir():
        return "dvc.lock: not a DVC repository, nothing recorded"
    dvc = shutil.which("dvc")
    if dvc is None:
        return "dvc.lock: the dvc command is not on PATH, nothing recorded"
    ran, times = stages_that_ran(root, stages, started_ns)
    if not ran:
        return "dvc.lock: no stage ran, nothing recorded"
    try:
        done = subprocess.run(
            [dvc, "commit", "--force", "--quiet", *(i["name"] for i in ran)],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        for p, (atime, mtime) in times.items():
            if p.exists():
                os.utime(p, ns=(atime, mtime))
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        return f"dvc.lock: `dvc commit` failed ({last}); `dvc repro` will redo these stages"
    return f"dvc.lock: recorded {len(ran)} stage run(s) for `dvc repro`/`dvc status`"
