"""Seconds of a dataset listing's refresh (pcn/dag/manifest.py): the stat walk, the render
and the comparison with the listing on disk, per file, on the miniatures and on a larger
tree of empty files, with 1 and 8 walker threads (page cache warm: the second of two runs).

    python benchmarks/bench_manifest.py --out results_manifest.json

ImageNet's train and val (1.33 M files) cost about ``files x seconds per file`` on a local
disk; a network filesystem answers a stat in a round trip, which the threads overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from pcn.dag.manifest import refresh, walk
from pcn.machine.speed import sgemm_gflops

IMAGENET_FILES = 1_281_167 + 50_000  # train and val


def make_tree(root: Path, dirs: int, per_dir: int) -> Path:
    """``dirs`` class folders of ``per_dir`` empty files: the stat cost without the data."""
    for d in range(dirs):
        folder = root / f"n{d:08d}"
        folder.mkdir(parents=True)
        for i in range(per_dir):
            (folder / f"{i:06d}.JPEG").touch()
    return root


def time_refresh(folder: Path, threads: int, work: Path) -> dict:
    """The warm second of two runs: walk alone, and a whole refresh that finds nothing changed."""
    listing = work / f"{folder.name}-{threads}.tsv"
    for _ in range(2):
        t0 = time.perf_counter()
        n = len(walk(folder, threads=threads))
        walk_s = time.perf_counter() - t0
    refresh(folder, listing)
    t0 = time.perf_counter()
    refresh(folder, listing)
    refresh_s = time.perf_counter() - t0
    return {
        "folder": folder.name,
        "files": n,
        "threads": threads,
        "walk_s": walk_s,
        "refresh_s": refresh_s,
        "us_per_file": 1e6 * refresh_s / n,
        "imagenet_s": refresh_s / n * IMAGENET_FILES,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree-dirs", type=int, default=1000)
    ap.add_argument("--tree-per-dir", type=int, default=200)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from pcn.data.demo.miniature import write_miniatures

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mini = Path(write_miniatures(tmp / "datasets", progress=False)["root"])
        tree = make_tree(tmp / "tree", args.tree_dirs, args.tree_per_dir)
        for folder in (mini / "imagenet", mini / "imagenetv2-matched-frequency", tree):
            for threads in (1, 8):
                rows.append(time_refresh(folder, threads, tmp))
                print(json.dumps(rows[-1]))
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "sgemm_1thread_gflops": round(sgemm_gflops(), 1),
        "rows": rows,
    }
    print(f"sgemm 1 thread: {result['sgemm_1thread_gflops']} GFLOP/s")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
