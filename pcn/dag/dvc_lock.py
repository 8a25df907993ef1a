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

The commit goes through DVC's Python API in one pass: ``dvc commit A B ...`` on the
command line commits each target on its own, parsing ``dvc.yaml`` and rewriting
``dvc.lock`` once per target (about 80 s for the demo's 30 stages, nearly all of it
YAML), where one pass reads them once and writes the lock once (about 20 s).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterable
from itertools import groupby
from pathlib import Path

from pcn.dag.dvc_view import expand
from pcn.dag.stage import Stage

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


def dvc_commit(root: Path, names: list[str]) -> None:
    """``dvc commit --force`` of the named stage instances, reading ``dvc.yaml`` and writing
    each lock file once (what ``Repo.commit`` does for all stages, for these only)."""
    # DVC's internal Python API (its public one, dvc.api, cannot commit): pinned below 4 in pyproject.toml
    from dvc.repo import Repo, lock_repo

    dvc_log = logging.getLogger("dvc")  # its INFO lines ("Updating lock file"): the caller reports
    level = dvc_log.level
    dvc_log.setLevel(logging.WARNING)
    try:
        # DVC resolves some paths against the working directory, as its command line runs in the repo
        with contextlib.chdir(root), Repo(str(root)) as repo, lock_repo(repo):
            wanted = set(names)
            stages = [s for s in repo.index.stages if s.name in wanted]
            unknown = wanted - {s.name for s in stages}
            if unknown:
                raise KeyError(f"no such stage in {root / 'dvc.yaml'}: {', '.join(sorted(unknown))}")
            for stage in stages:
                stage.save()
                stage.commit()
            for dvcfile, group in groupby(sorted(stages, key=lambda s: s.path), key=lambda s: s.dvcfile):
                dvcfile.dump_stages(list(group), update_pipeline=False)
    finally:
        dvc_log.setLevel(level)


def commit_stages_that_ran(root: Path, stages: Iterable[Stage], started_ns: int) -> str:
    """``dvc commit`` the stage instances this run wrote, keeping every output's time.

    Returns a one-line account for the Snakemake log. Does nothing outside a DVC
    repository or without DVC installed.
    """
    if not (root / ".dvc").is_dir():
        return "dvc.lock: not a DVC repository, nothing recorded"
    if importlib.util.find_spec("dvc") is None:
        return "dvc.lock: DVC is not installed here, nothing recorded"
    ran, times = stages_that_ran(root, stages, started_ns)
    if not ran:
        return "dvc.lock: no stage ran, nothing recorded"
    try:
        dvc_commit(root, [i["name"] for i in ran])
    except Exception as e:  # noqa: BLE001  (reported in the log; the run itself succeeded)
        last = (str(e).strip() or type(e).__name__).splitlines()[-1]
        return f"dvc.lock: committing failed ({last}); `dvc repro` will redo these stages"
    finally:
        for p, (atime, mtime) in times.items():
            if p.exists():
                os.utime(p, ns=(atime, mtime))
    return f"dvc.lock: recorded {len(ran)} stage run(s) for `dvc repro`/`dvc status`"
