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

from pcn.config import DATASET_DIRS, GRID_STUDIES, Params
from pcn.config.names import TRANSFER_TASKS, transfer_stage
from pcn.data.splits import ffcv_splits
from pcn.errors import DatasetError


def reads(p: Params) -> dict[str, tuple[str, ...]]:
    """stage -> the datasets it reads (DATASET_DIRS keys): the one table of who reads what.
    check_datasets looks for their folders before the run; their stat listings
    (pcn.dag.manifest) are the stages' dependencies, so a changed file makes them stale."""
    out = {
        "convert": ("imagenet",) + (("imagenet_v2",) if "v2" in ffcv_splits(p) else ()),
        "evaluate": ("imagenet", "imagenet_v2"),
        "attention": ("imagenet",),
        **{transfer_stage(t, i): (d,) for t, d in TRANSFER_TASKS.items() for i in ("pretrained", "scratch")},
    }
    # a folder loader (torch, memory) trains on the images themselves, not on the .beton
    if p.data.loader != "ffcv":
        out.update(pretrain=("imagenet",), finetune=("imagenet",))
    if (p.experiments.loader or p.data.loader) != "ffcv":
        out.update({name: ("imagenet",) for name in GRID_STUDIES})
    return out


def datasets_read(p: Params, stage_names) -> list[str]:
    """The datasets the named stages read, in DATASET_DIRS order."""
    table = reads(p)
    read = {d for name in stage_names for d in table.get(name, ())}
    return [d for d in DATASET_DIRS if d in read]


def _dataset_needs(p: Params, dataset: str) -> list[tuple[Path, str]]:
    """[(path, what it must be)] of one dataset, in its official layout."""
    root = p.data.path(dataset)
    if dataset == "imagenet":
        return [
            (root / "train", "ImageNet train, one folder per class (<wnid>/*.JPEG)"),
            (root / "val", "ImageNet val sorted into class folders (<wnid>/*.JPEG)"),
        ]
    if dataset == "imagenet_v2":
        return [(root, "ImageNet-v2 matched-frequency, one folder per class index (0..999)")]
    if dataset == "ade20k":
        return [
            (root / kind / split, f"ADE20k {kind}/{split}/")
            for kind in ("images", "annotations")
            for split in ("training", "validation")
        ]
    from pcn.transfer.datasets import COCO_SPLITS

    return [(root / folder, f"COCO {folder}/ images") for folder in COCO_SPLITS.values()] + [
        (root / "annotations" / f"instances_{folder}.json", f"COCO's {folder} instances")
        for folder in COCO_SPLITS.values()
    ]


def _needs(p: Params) -> dict[str, list[tuple[Path, str]]]:
    """stage -> [(path, what it must be)] for the stages that read datasets."""
    from pcn.analysis.attention import LOC_CSV, VOC_DIR

    needs = {stage: [n for d in datasets for n in _dataset_needs(p, d)] for stage, datasets in reads(p).items()}
    if p.attention.require_boxes:
        inet = p.data.path("imagenet")
        needs["attention"] = needs["attention"] + [
            ((inet / LOC_CSV, inet / VOC_DIR), f"ImageNet val boxes ({LOC_CSV} or {VOC_DIR}/; attention.require_boxes)")
        ]
    return needs


def check_datasets(params: Params, stage_names) -> str:
    """Raise DatasetError naming the first missing dataset path of a stage the DAG runs (its
    ``stage_names``, from the stage table); a line saying what was checked otherwise."""
    if params.data.source == "demo":
        return "datasets: the demo_data stage writes them"
    names = set(stage_names)
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
