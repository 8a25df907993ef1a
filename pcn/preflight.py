"""Every dataset check of every stage the scale runs, before the first stage starts.

A stage reads its datasets only when it runs, which at the paper scale may be hours in (the
attention stage comes last).  :func:`check_datasets` looks, in seconds, for every folder and
annotation file the scale's stages will read, in their official layouts (docs/datasets.md),
and names the first one missing in one line with the stage that needs it.  ``pcn run``,
``pcn rehearse`` and the Snakefile's ``onstart`` (a bare ``snakemake``) call it first.
The stages still check every file themselves as they read it; this catches what is absent.
"""

from __future__ import annotations

from pathlib import Path

from pcn.config import Params
from pcn.errors import DatasetError
from pcn.stages import ffcv_splits


def _imagenet(p: Params) -> list[tuple[Path, str]]:
    inet = p.data.path("imagenet")
    return [
        (inet / "train", "ImageNet train, one folder per class (<wnid>/*.JPEG)"),
        (inet / "val", "ImageNet val sorted into class folders (<wnid>/*.JPEG)"),
    ]


def _needs(p: Params) -> dict[str, list[tuple[Path, str]]]:
    """stage -> [(path, what it must be)] for the stages that read datasets."""
    from pcn.analysis.attention import LOC_CSV, VOC_DIR
    from pcn.transfer.datasets import COCO_SPLITS

    v2 = [(p.data.path("imagenet_v2"), "ImageNet-v2 matched-frequency, one folder per class index (0..999)")]
    ade, coco = p.data.path("ade20k"), p.data.path("coco")
    ade_needs = [
        (ade / kind / split, f"ADE20k {kind}/{split}/")
        for kind in ("images", "annotations")
        for split in ("training", "validation")
    ]
    coco_needs = [(coco / folder, f"COCO {folder}/ images") for folder in COCO_SPLITS.values()] + [
        (coco / "annotations" / f"instances_{folder}.json", f"COCO's {folder} instances")
        for folder in COCO_SPLITS.values()
    ]
    needs = {
        "convert": _imagenet(p) + (v2 if "v2" in ffcv_splits(p) else []),
        "evaluate": _imagenet(p)[1:] + v2,
        "attention": _imagenet(p),
        "segmentation": ade_needs,
        "segmentation_scratch": ade_needs,
        "detection": coco_needs,
        "detection_scratch": coco_needs,
    }
    if p.attention.require_boxes:
        inet = p.data.path("imagenet")
        needs["attention"] = needs["attention"] + [
            ((inet / LOC_CSV, inet / VOC_DIR), f"ImageNet val boxes ({LOC_CSV} or {VOC_DIR}/; attention.require_boxes)")
        ]
    return needs


def check_datasets(params: Params) -> str:
    """Raise DatasetError naming the first missing dataset path of a stage the DAG runs; a
    line saying what was checked otherwise."""
    from pcn.stages import build_stages

    if params.data.source == "demo":
        return "datasets: the demo_data stage writes them"
    names = {s.name for s in build_stages(params)}
    checked = 0
    for stage, needs in _needs(params).items():
        if stage not in names:
            continue
        for path, what in needs:
            alternatives = path if isinstance(path, tuple) else (path,)
            checked += 1
            if not any(_present(a) for a in alternatives):
                shown = " or ".join(str(a) for a in alternatives)
                raise DatasetError(
                    f"{shown}: missing; stage {stage} reads {what} (data.root = {params.data.root}; docs/datasets.md)"
                )
    return f"datasets: the {checked} folders and files the scale's stages read are there"


def _present(path: Path) -> bool:
    if path.suffix:  # an annotation file
        return path.is_file()
    return path.is_dir() and any(path.iterdir())
