"""`pcn rehearse`: the paper scale's DAG, capped, on miniature copies of the real datasets."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pcn.config import raw_params, resolve
from pcn.dag.preflight import check_datasets
from pcn.dag.rehearsal import (
    CAPS_FILE,
    check_data_root,
    check_shapes,
    cluster_answers,
    local_engine_args,
    memory_mb,
    prepare_workspace,
    rehearsal_params,
)
from pcn.dag.stages import build_stages
from pcn.errors import UserError
from pcn.io import write_json


def rehearse(args) -> int:
    repo = Path.cwd()
    if not CAPS_FILE.is_file():
        raise UserError(f"{CAPS_FILE}: not found (run `pcn rehearse` from the repository root)")
    work = Path(args.work).absolute()
    t0 = time.perf_counter()
    if args.data_root:
        data_root = Path(args.data_root).absolute()
        check_data_root(data_root)
    else:
        # ImageNet's val boxes as Kaggle's CSV (the default), image-net.org's XML, or none
        data_root = work / ("datasets" if args.boxes == "csv" else f"datasets-{args.boxes}-boxes")
        if not data_root.is_dir():
            from pcn.data.demo.miniature import write_miniatures

            print(
                f"rehearse: writing miniature copies of ImageNet, ImageNet-v2, ADE20k and COCO to {data_root}",
                flush=True,
            )
            write_miniatures(data_root, boxes=args.boxes)
    slurm = args.engine == "slurm" or (args.engine == "auto" and cluster_answers())
    if args.engine == "slurm" and not cluster_answers():
        raise UserError(
            "--engine slurm: no SLURM cluster answers (sinfo); start one with scripts/slurm-cluster.sh start"
        )
    params = rehearsal_params(
        raw_params(args.params), yaml.safe_load(CAPS_FILE.read_text()), data_root, slurm=slurm, quick=args.quick
    )
    prepare_workspace(repo, work, params)
    resolved = resolve(params, "rehearsal params")
    print(check_datasets(resolved, (s.name for s in build_stages(resolved))), flush=True)  # before the first stage
    engine = ["--profile", "slurm"] if slurm else local_engine_args(memory_mb())
    # --keep-going: one failing stage must not hide the others' failures; the target comes
    # before the engine's flags, which take lists
    cmd = [
        sys.executable,
        "-m",
        "pcn.cli",
        "run",
        "--engine",
        "snakemake",
        "--cores",
        str(os.cpu_count() or 2),
        "all",
        "--keep-going",
        *engine,
    ]
    how = f"SLURM ({params['scales']['paper']['launcher']['tasks']}-task DDP)" if slurm else "local cores"
    print(
        f"rehearse: paper scale{' (quick: no grid)' if args.quick else ''} on {how}, data {data_root}, "
        f"workspace {work}",
        flush=True,
    )
    rc = subprocess.call(cmd, cwd=work)
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise UserError(
            f"the rehearsal's DAG failed (exit {rc}) after {seconds:.0f} s; "
            f"see {work}/logs/<stage>.log and {work}/.snakemake/log/"
        )
    data_pass = None
    if args.data_pass:
        from pcn.data.sample_pass import run_pass

        # rare per-image failures: many augmented samples through each training loader
        with contextlib.chdir(work):  # the workspace's .beton files, read as its stages do
            data_pass = run_pass(resolve(params, "rehearsal params"), args.data_pass)
        print(
            f"rehearse: data pass, {args.data_pass} augmented samples through each of "
            f"{len(data_pass['loaders'])} training loaders in {data_pass['seconds']:.0f} s: no failure",
            flush=True,
        )
    seconds = time.perf_counter() - t0
    checks = check_shapes(work, data_root, resolve(params).segmentation_classes)
    write_json(
        work / "metrics" / "rehearsal.json",
        {
            "seconds": round(seconds, 1),
            "engine": "slurm" if slurm else "local",
            "quick": args.quick,
            "data_root": str(data_root),
            "data_pass": data_pass,
            "checks": {k: {"ok": ok, "found": found} for k, (ok, found) in checks.items()},
        },
    )
    for name, (ok, found) in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: {found}")
    failed = [name for name, (ok, _) in checks.items() if not ok]
    if failed:
        raise UserError(f"the rehearsal ran, but its metrics do not have the paper scale's shape: {', '.join(failed)}")
    print(f"rehearse: every paper-scale stage ran in {seconds / 60:.1f} min; report: {work}/reports/report.html")
    return 0
