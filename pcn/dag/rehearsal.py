"""The paper-scale rehearsal: the paper scale's DAG, every stage once, on miniature data.

A user about to spend GPU-weeks wants to know that every paper-scale stage runs on
the real datasets' layouts before the first job is queued.  ``pcn rehearse`` proves
it on this machine:

1. the data: a folder holding the four datasets in their official layouts
   (``--data-root``), or miniature copies written by :mod:`pcn.data.demo.miniature`;
2. a workspace (``rehearsal/`` by default) that both front ends see as a checkout:
   links to the Snakefile, ``workflow/``, ``paper/``, ``pcn/`` (the stages depend on their code)
   and the slurm profile, and its
   own ``params.yaml``: the repository's, at scale ``paper``, with the caps of
   ``workflow/rehearsal.yaml`` merged onto ``scales.paper`` (a few steps per
   training, small batches, the CPU) and ``data.root`` pointed at the data;
3. ``pcn run --engine snakemake`` in the workspace: through the slurm profile with
   2-task DDP when a SLURM cluster answers, on local cores otherwise;
4. a check that the metrics have the paper scale's shape (every val image scored,
   150 ADE20k classes, COCO's own category and image ids).

The repository's own outputs (``data/``, ``results/``, ``metrics/``, ``mlflow.db``)
are never touched: every stage runs with the workspace as its working directory.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from pcn.config import DATASET_DIRS, deep_merge, resolve
from pcn.config.names import TRANSFER_TASKS, transfer_stage
from pcn.errors import UserError
from pcn.io import write_text

CAPS_FILE = Path("workflow/rehearsal.yaml")
# What a workspace links from the repository (read-only inputs of the DAG).
WORKSPACE_LINKS = ("Snakefile", "workflow", "paper", "pcn", "environment.yml", "slurm")
SLURM_TASKS = 2  # DDP ranks per training job on the test cluster
# Peak memory of one dense-transfer job on the CPU (measured: UperNet on S60, 4 crops of 512 px,
# 12.4 GB; Mask R-CNN on S60, 2 images at 800 x 1333, 10.6 GB); locally the rehearsal runs one
# at a time, so that two of them never share this machine's memory.
TRANSFER_PEAK_MB = 13_000
# what the local jobs together may declare: the rest is for Snakemake, the OS and the page cache
LOCAL_MEMORY_SHARE = 0.9
TRANSFER_STAGES = tuple(transfer_stage(t, init) for t in TRANSFER_TASKS for init in ("pretrained", "scratch"))


def local_engine_args(mem_total_mb: int) -> list[str]:
    """Snakemake flags of a local run: the jobs' declared memory may not pass 90% of the machine's."""
    return [
        "--resources",
        f"mem_mb={int(mem_total_mb * LOCAL_MEMORY_SHARE)}",
        "--set-resources",
        *(f"{s}:mem_mb={TRANSFER_PEAK_MB}" for s in TRANSFER_STAGES),
    ]


def memory_mb() -> int:
    """This machine's memory in MB (Linux)."""
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20


def rehearsal_params(raw: dict, caps: dict, data_root: Path, *, slurm: bool, quick: bool) -> dict:
    """The workspace's params.yaml: ``raw`` at scale paper with ``caps`` merged onto scales.paper."""
    out = copy.deepcopy(raw)
    out["scale"] = "paper"
    paper = deep_merge((out.get("scales") or {}).get("paper") or {}, caps)
    paper = deep_merge(paper, {"data": {"source": "real", "root": str(data_root.resolve())}})
    if slurm:
        paper = deep_merge(paper, {"launcher": {"kind": "slurm", "tasks": SLURM_TASKS}})
    if quick:  # the main line and the pretrained transfers: every paper-scale stage but the grid's
        paper = deep_merge(
            paper,
            {
                "experiments": {"enabled": False},
                "segmentation": {"init": ["pretrained"]},
                "detection": {"init": ["pretrained"]},
            },
        )
    out.setdefault("scales", {})["paper"] = paper
    resolve(out, "rehearsal params")  # a bad cap fails here, naming the key
    return out


def check_data_root(root: Path) -> None:
    """Each official folder must be there before anything is written: one line naming every
    missing one, so that one run tells all that is to be fetched."""
    missing = [(name, root / folder) for name, folder in DATASET_DIRS.items() if not (root / folder).is_dir()]
    if missing:
        listed = ", ".join(f"{path} ({name})" for name, path in missing)
        raise UserError(
            f"{listed}: missing ({len(missing)} of {len(DATASET_DIRS)} datasets; each in its official layout "
            "expected, see docs/datasets.md)"
        )


def prepare_workspace(repo: Path, work: Path, params: dict) -> None:
    work.mkdir(parents=True, exist_ok=True)
    for name in WORKSPACE_LINKS:
        link, target = work / name, (repo / name).resolve()
        if link.is_symlink() and link.resolve() == target:
            continue
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.exists():
            raise UserError(f"{link}: exists and is not a link to {target}; choose another --work folder")
        link.symlink_to(target)
    write_text(
        work / "params.yaml",
        "# Written by `pcn rehearse`: the paper scale, capped (workflow/rehearsal.yaml).\n"
        + yaml.safe_dump(params, sort_keys=False),
    )


def cluster_answers() -> bool:
    """True when a SLURM controller answers and has a usable node (`sinfo` on PATH)."""
    if not shutil.which("sinfo"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s.strip("*~#") in ("idle", "mix", "alloc") for s in out.stdout.split())


def _images(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def check_shapes(work: Path, data_root: Path, n_seg_classes: int) -> dict[str, Any]:
    """The paper scale's metrics shapes, checked against the data: name -> (ok, what was found)."""
    checks: dict[str, Any] = {}

    def load(rel: str) -> Any:
        path = work / rel
        return json.loads(path.read_text()) if path.is_file() else None

    ev = load("metrics/eval.json") or {}
    n_val = _images(data_root / DATASET_DIRS["imagenet"] / "val")
    n_v2 = _images(data_root / DATASET_DIRS["imagenet_v2"])
    checks["eval.n_images"] = (ev.get("n_images") == n_val, f"{ev.get('n_images')} of {n_val} val images")
    checks["eval.v2_n_images"] = (ev.get("v2_n_images") == n_v2, f"{ev.get('v2_n_images')} of {n_v2} v2 images")
    seg = load("metrics/segmentation.json") or {}
    per_class = seg.get("per_class_iou")
    n = len(per_class) if isinstance(per_class, (list, dict)) else None
    checks["segmentation.per_class_iou"] = (n == n_seg_classes, f"{n} entries, {n_seg_classes} classes")
    checks["detection.ids"] = _check_detection_ids(work, data_root)
    return checks


def _check_detection_ids(work: Path, data_root: Path) -> tuple[bool, str]:
    """The detection results file speaks COCO's category ids and the val file's image ids."""
    val = json.loads((data_root / DATASET_DIRS["coco"] / "annotations" / "instances_val2017.json").read_text())
    cats, images = {c["id"] for c in val["categories"]}, {im["id"] for im in val["images"]}
    found = sorted((work / "results" / "detection").glob("*results*.json"))
    if not found:
        return False, "no results file under results/detection/"
    dets = json.loads(found[0].read_text())
    bad_cat = {d["category_id"] for d in dets} - cats
    bad_img = {d["image_id"] for d in dets} - images
    ok = bool(dets) and not bad_cat and not bad_img
    return ok, (
        f"{len(dets)} detections in {found[0].name}; unknown category ids {sorted(bad_cat)[:5]}, "
        f"unknown image ids {sorted(bad_img)[:5]}"
    )
