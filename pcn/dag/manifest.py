"""A dataset's files as a dependency: its stat listing, one line per file.

The real datasets live outside the repository and are too big to hash on every run (ImageNet
holds 1.33 M files), so neither front end could see a file change in them.  Each dataset the
DAG reads gets a listing ``data/manifests/<dataset>.tsv`` of (path, size, mtime in ns) per
file, sorted, built by a stat walk; the stages that read the dataset
(:func:`pcn.dag.preflight.reads`) depend on its listing.  A listing is rewritten only when its
content changed, so both DVC's hash of it and its time (Snakemake's test) change exactly
when a file in the dataset was added, removed, resized or touched.

Who walks: the Snakefile, once per ``snakemake`` invocation in its main process (a dry run
too; the jobs that re-read the Snakefile do not), and the ``dataset_manifest`` stage, which
DVC reruns at every ``dvc repro`` (``always_changed``: DVC has no start hook).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LISTER = "dataset_manifest"  # the stage that writes the listings
MANIFEST_DIR = "data/manifests"
# Directories scanned at once: a stat on a network filesystem waits on a server, and the
# waits overlap in threads (the syscalls release the GIL).
WALK_THREADS = 8


def manifest_path(dataset: str) -> str:
    """The listing of one dataset (a DATASET_DIRS key), relative to the project."""
    return f"{MANIFEST_DIR}/{dataset}.tsv"


def _scan(folder: str) -> tuple[list[tuple[str, int, int]], list[str]]:
    """One directory: its files' (path, size, mtime_ns) and its subdirectories (links followed)."""
    files, dirs = [], []
    with os.scandir(folder) as it:
        for entry in it:
            try:
                if entry.is_dir():
                    dirs.append(entry.path)
                    continue
                st = entry.stat()
                files.append((entry.path, st.st_size, st.st_mtime_ns))
            except FileNotFoundError:  # a dangling link: listed, so that fixing it shows too
                files.append((entry.path, -1, -1))
    return files, dirs


def walk(folder: str | Path, threads: int = WALK_THREADS) -> list[tuple[str, int, int]]:
    """Every file under ``folder`` as (path relative to it, size, mtime_ns), sorted by path; []
    for a missing folder.  Level by level, each level's directories scanned in ``threads``."""
    root = os.fspath(folder)
    if not os.path.isdir(root):
        return []
    seen = {_dir_id(root)}  # a linked folder met twice (a link cycle) is walked once
    out: list[tuple[str, int, int]] = []
    level = [root]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        while level:
            nxt = []
            for files, dirs in pool.map(_scan, level):
                out += files
                for d in dirs:
                    key = _dir_id(d)
                    if key not in seen:
                        seen.add(key)
                        nxt.append(d)
            level = nxt
    cut = len(root) + 1
    return sorted((p[cut:], size, mtime) for p, size, mtime in out)


def _dir_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def render(folder: str | Path, entries: list[tuple[str, int, int]]) -> str:
    """The listing's text: a header naming the folder, then one ``path<TAB>size<TAB>mtime_ns`` line a file."""
    lines = [f"# {folder}: {len(entries)} files; path, size in bytes, mtime in ns\n"]
    lines += [f"{p}\t{size}\t{mtime}\n" for p, size, mtime in entries]
    return "".join(lines)


def refresh(folder: str | Path, listing: str | Path) -> bool:
    """Write ``folder``'s listing to ``listing`` (atomically) if it differs from the one
    there; True when it was written.  An unchanged listing keeps its time."""
    from pcn.io import write_text

    text = render(folder, walk(folder))
    path = Path(listing)
    try:
        if path.read_text() == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    write_text(path, text)
    return True


def refresh_listings(params, listings) -> str:
    """Refresh each of ``listings`` (the ``dataset_manifest`` stage's outputs); one line
    saying which changed and how long the walk took."""
    t0 = time.perf_counter()
    names = [Path(out).stem for out in listings]
    changed = [n for n in names if refresh(params.data.path(n), manifest_path(n))]
    kept = [n for n in names if n not in changed]
    parts = [f"{', '.join(changed)} changed" if changed else "", f"{', '.join(kept)} unchanged" if kept else ""]
    return f"dataset listings: {'; '.join(x for x in parts if x)} ({time.perf_counter() - t0:.1f} s)"
