"""Miniature copies of the real datasets, for the paper-scale rehearsal.

:func:`write_miniatures` writes ImageNet, ImageNet-v2, ADE20k and COCO in their
official layouts (docs/datasets.md, through :mod:`pcn.data.demo.layouts`) with the
real datasets' class structure, a few images per class:

- ImageNet: all 1000 classes with their real wnids (class index = rank of the
  sorted wnids), ``train_per_class`` / ``val_per_class`` images each, the val
  images numbered in an order unrelated to the classes, and
  ``LOC_val_solution.csv`` with one to three boxes per val image;
- ImageNet-v2: folders ``0..999`` (class index), ``v2_per_class`` images each;
- ADE20k: every id 1..150 in the training and in the validation label maps,
  and 0 (other) too; ``objectInfo150.txt``;
- COCO: the 80 categories with COCO's real ids in 1..90 and real names, each
  in train and in val.

and with the real files' known quirks: one ImageNet train file named ``.JPEG``
that is a PNG, CMYK and grayscale JPEGs in ImageNet train and val (and a
grayscale COCO image), COCO crowd regions (``iscrowd: 1``) stored as
uncompressed RLE, objects made of several polygons, COCO images without any
annotation, and images of many sizes and aspect ratios everywhere.

The images are not meant to be learnt: each holds the shapes of the demo's
renderer where its annotation says an object is, on a cheap colour backdrop.
They are small (sides 48-320 px for ImageNet, up to 400 for ADE20k and COCO) so
that the whole set takes seconds. Every image is drawn from its own generator
seeded by ``(seed, stream, index)``; the same seed gives the same files. The
folder is written beside ``root`` and renamed into place when complete.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pcn.data.demo import layouts
from pcn.data.demo.drawing import render_object
from pcn.data.demo.layouts import (
    ADE_SPLITS,
    DATASET_DIRS,
    LabelStats,
    ade_stem,
    box_xyxy,
    coco_categories,
    coco_file,
    encode_image,
    imagenet_classes,
    imagenet_train_file,
    imagenet_val_stem,
    mask_polygons,
    uncompressed_rle,
    v2_file,
    write_coco_instances,
    write_loc_solution,
    write_object_info,
    write_png,
    write_synset_mapping,
    write_voc_boxes,
)
from pcn.data.demo.shapes import SHAPES
from pcn.io import atomic_path

__all__ = ["ADE_CLASSES", "write_miniatures"]

ADE_CLASSES = 150

_STREAMS = {
    "imagenet_train": 11,
    "imagenet_val": 12,
    "imagenet_v2": 13,
    "ade_train": 14,
    "ade_val": 15,
    "coco_train": 16,
    "coco_val": 17,
    "layout": 18,  # which files carry the quirks, val numbering, ids
}

_N_SHAPES = len(SHAPES)
# Shapes without a hole: a COCO polygon cannot leave the ring's hole out.
_SOLID = [k for k, name in enumerate(sorted(SHAPES)) if name != "ring"]


def _rng(seed: int, stream: str, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream], index])


# --------------------------------------------------------------------------- drawing


def _backdrop(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """A smooth random colour field: a tiny random grid, bilinearly enlarged."""
    gy, gx = (int(v) for v in rng.integers(2, 5, 2))
    grid = rng.integers(0, 256, (gy, gx, 3), dtype=np.uint8)
    return Image.fromarray(grid, "RGB").resize((w, h), Image.BILINEAR)


def _shape_in(
    rng: np.random.Generator, canvas: Image.Image, shape: int, box: tuple[int, int, int, int], scale=(0.55, 1.0)
) -> np.ndarray:
    """Paint shape ``shape`` (index into the sorted :data:`SHAPES`) in a flat random colour at a
    random place inside ``box`` = (top, left, height, width) of ``canvas``; returns its mask."""
    top, left, bh, bw = box
    size = max(8, round(min(bh, bw) * float(rng.uniform(*scale))))
    cov = render_object(rng, shape, size, n_classes=_N_SHAPES, supersample=2)
    m = cov >= 0.5
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    # the mask, not the square, must lie inside the box (and so inside the canvas)
    y = int(rng.integers(top - rows[0], top + bh - rows[-1]))
    x = int(rng.integers(left - cols[0], left + bw - cols[-1]))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + size, canvas.height), min(x + size, canvas.width)
    alpha = np.rint(cov[y0 - y : y1 - y, x0 - x : x1 - x] * 255).astype(np.uint8)
    canvas.paste(colour, (x0, y0, x1, y1), Image.fromarray(alpha, "L"))
    full = np.zeros((canvas.height, canvas.width), dtype=bool)
    full[y0:y1, x0:x1] = m[y0 - y : y1 - y, x0 - x : x1 - x]
    return full


def _grid(h: int, w: int, n: int) -> list[tuple[int, int, int, int]]:
    """``n`` or more equal cells (top, left, height, width) tiling an ``h`` x ``w`` image."""
    n = max(n, 1)
    cols = max(1, math.ceil(math.sqrt(n * w / h)))
    rows = math.ceil(n / cols)
    ch, cw = h // rows, w // cols
    return [(r * ch, c * cw, ch, cw) for r in range(rows) for c in range(cols)]


# --------------------------------------------------------------------------- ImageNet and v2


def _imagenet_image(rng: np.random.Generator, label: int, n_objects: int) -> tuple[Image.Image, list]:
    """An image of 48-320 px sides (log-uniform: most are small) with ``n_objects`` shapes of class
    ``label``; the boxes of their visible masks."""
    h, w = (int(v) for v in np.rint(np.exp(rng.uniform(math.log(48), math.log(320), 2))))
    img = _backdrop(rng, h, w)
    visible: list[np.ndarray] = []
    for _ in range(n_objects):
        scale = (0.45, 0.9) if n_objects == 1 else (0.3, 0.6)
        m = _shape_in(rng, img, label % _N_SHAPES, (0, 0, h, w), scale)
        visible = [v & ~m for v in visible] + [m]
    boxes = [b for b in (box_xyxy(v) for v in visible) if b is not None]
    return img, boxes


def _write_imagenet(root: Path, seed: int, per_class: dict[str, int], bar, boxes: str = "csv") -> dict[str, Any]:
    classes = imagenet_classes()
    n = len(classes)
    inet, v2 = root / DATASET_DIRS["imagenet"], root / DATASET_DIRS["imagenet_v2"]
    for label, (wnid, _) in enumerate(classes):
        (inet / "train" / wnid).mkdir(parents=True)
        (inet / "val" / wnid).mkdir(parents=True)
        (v2 / str(label)).mkdir(parents=True)
    sizes = {split: per_class[split] * n for split in ("train", "val", "v2")}
    pick = _rng(seed, "layout", 0)
    t = pick.choice(sizes["train"], 7, replace=False).tolist()
    v = pick.choice(sizes["val"], 4, replace=False).tolist()
    modes = {
        "train": {t[0]: "PNG", **{i: "CMYK" for i in t[1:4]}, **{i: "L" for i in t[4:7]}},
        "val": {**{i: "CMYK" for i in v[:2]}, **{i: "L" for i in v[2:]}},
    }
    val_number = pick.permutation(sizes["val"]) + 1  # val file numbers do not follow the classes
    quirks: dict[str, list[str]] = {"png_named_jpeg": [], "cmyk": [], "grayscale": []}
    loc: dict[str, list] = {}
    sizes_of: dict[str, tuple[int, int]] = {}
    for split in ("train", "val", "v2"):
        for i in range(sizes[split]):
            label = i % n
            wnid = classes[label][0]
            rng = _rng(seed, f"imagenet_{split}", i)
            image, objects = _imagenet_image(rng, label, int(rng.integers(1, 4)) if split == "val" else 1)
            mode = modes.get(split, {}).get(i)
            if mode == "PNG":  # the real train set holds one PNG named .JPEG
                data = encode_image(image, "PNG")
            else:
                data = encode_image(image, "JPEG", 90, mode=mode)
            if split == "v2":
                rel = Path(DATASET_DIRS["imagenet_v2"]) / str(label) / v2_file(data)
            elif split == "train":
                rel = Path(DATASET_DIRS["imagenet"]) / "train" / wnid / imagenet_train_file(wnid, i // n + 1)
            else:
                stem = imagenet_val_stem(int(val_number[i]))
                rel = Path(DATASET_DIRS["imagenet"]) / "val" / wnid / f"{stem}.JPEG"
                loc[stem] = [(wnid, *b) for b in objects]
                sizes_of[stem] = image.size
            (root / rel).write_bytes(data)
            if mode is not None:
                quirks[{"PNG": "png_named_jpeg", "CMYK": "cmyk", "L": "grayscale"}[mode]].append(rel.as_posix())
            bar.update(1)
    # ImageNet's val boxes in either official form, or none (as image-net.org's tarballs come)
    if boxes == "csv":
        write_loc_solution(inet / "LOC_val_solution.csv", loc)
    elif boxes == "voc":
        write_voc_boxes(inet / "ILSVRC2012_bbox_val_v3", loc, sizes_of)
    write_synset_mapping(inet / "LOC_synset_mapping.txt", classes)
    return {"classes": n, **sizes, "boxes": sum(len(b) for b in loc.values()), "quirks": quirks}


# --------------------------------------------------------------------------- ADE20k


def _spread(rng: np.random.Generator, ids: list[int], n_images: int, extra: int) -> list[list[int]]:
    """Deal ``ids`` over ``n_images`` (every id at least once) and add up to ``extra`` random ids to each."""
    order = rng.permutation(ids).tolist()
    dealt = [order[j::n_images] for j in range(n_images)]
    for d in dealt:
        more = rng.choice(ids, int(rng.integers(0, extra + 1)), replace=False).tolist()
        d += [i for i in more if i not in d]
    return dealt


def _ade_image(rng: np.random.Generator, ids: list[int]) -> tuple[Image.Image, np.ndarray]:
    """A scene whose label map holds every id of ``ids`` and 0 (other).

    ``ids[0]`` is the "stuff" under everything; each other id is a shape in a cell
    of its own, and one more cell holds a patch of unlabelled pixels.
    """
    things = ids[1:]
    h, w = (int(v) for v in rng.integers(128, 401, 2))
    cells = _grid(h, w, len(things) + 1)
    order = rng.permutation(len(cells))
    img = _backdrop(rng, h, w)
    label = np.full((h, w), ids[0], dtype=np.uint8)
    for k, cid in enumerate(things):
        m = _shape_in(rng, img, cid % _N_SHAPES, cells[order[k]])
        label[m] = cid
    top, left, ch, cw = cells[order[len(things)]]
    ph, pw = max(2, ch // 2), max(2, cw // 2)
    img.paste(tuple(int(c) for c in rng.integers(0, 256, 3)), (left, top, left + pw, top + ph))
    label[top : top + ph, left : left + pw] = 0
    return img, label


def _write_ade(root: Path, seed: int, counts: dict[str, int], bar) -> dict[str, Any]:
    ade = root / DATASET_DIRS["ade20k"]
    stats = LabelStats(ADE_CLASSES)
    ids = list(range(1, ADE_CLASSES + 1))
    for split, ade_split in ADE_SPLITS.items():
        (ade / "images" / ade_split).mkdir(parents=True)
        (ade / "annotations" / ade_split).mkdir(parents=True)
        per_image = _spread(_rng(seed, "layout", 1 if split == "train" else 2), ids, counts[split], 3)
        for i, image_ids in enumerate(per_image):
            image, label = _ade_image(_rng(seed, f"ade_{split}", i), image_ids)
            stem = ade_stem(split, i + 1)
            (ade / "images" / ade_split / f"{stem}.jpg").write_bytes(encode_image(image, "JPEG", 90))
            write_png(ade / "annotations" / ade_split / f"{stem}.png", label)
            stats.add(split, label)
            bar.update(1)
    write_object_info(ade / "objectInfo150.txt", [f"class {i}" for i in ids], stats)
    return {"training": counts["train"], "validation": counts["val"], "n_labels": ADE_CLASSES}


# --------------------------------------------------------------------------- COCO


def _coco_image(
    rng: np.random.Generator, cats: list[int], image_id: int, multi: bool, crowd: int | None
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """A scene with one object per category in ``cats`` (the first one in two parts when ``multi``)
    and, when ``crowd`` is a category id, a crowd region of that category."""
    n_cells = len(cats) + int(multi) + int(crowd is not None)
    h, w = (int(v) for v in rng.integers(160, 401, 2))
    cells = _grid(h, w, n_cells)
    free = iter(rng.permutation(len(cells)).tolist())
    img = _backdrop(rng, h, w)
    anns = []

    def add(cat: int, mask: np.ndarray, crowd_region: bool) -> None:
        x0, y0, x1, y1 = box_xyxy(mask)
        seg = None if crowd_region else mask_polygons(mask)
        anns.append(
            {
                "image_id": image_id,
                "category_id": cat,
                "segmentation": uncompressed_rle(mask) if seg is None else seg,
                "area": float(mask.sum()),
                "bbox": [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],
                "iscrowd": int(crowd_region),
            }
        )

    for k, cat in enumerate(cats):
        shape = _SOLID[cat % len(_SOLID)]
        mask = _shape_in(rng, img, shape, cells[next(free)])
        if k == 0 and multi:  # one object seen as two parts (e.g. cut by an occluder)
            mask |= _shape_in(rng, img, shape, cells[next(free)])
        add(cat, mask, False)
    if crowd is not None:  # several small overlapping instances, annotated as one region
        top, left, ch, cw = cells[next(free)]
        mask = np.zeros((h, w), dtype=bool)
        for _ in range(int(rng.integers(3, 7))):
            mask |= _shape_in(rng, img, _SOLID[crowd % len(_SOLID)], (top, left, ch, cw), (0.3, 0.5))
        add(crowd, mask, True)
    return img, anns


def _write_coco(root: Path, seed: int, counts: dict[str, int], bar) -> dict[str, Any]:
    coco = root / DATASET_DIRS["coco"]
    (coco / "annotations").mkdir(parents=True)
    cats = list(coco_categories())
    cat_ids = [c["id"] for c in cats]
    pick = _rng(seed, "layout", 3)
    image_ids = pick.choice(np.arange(1, 581_930), sum(counts.values()), replace=False).tolist()
    next_ann = int(pick.integers(1, 900_000))
    summary: dict[str, Any] = {"categories": len(cats)}
    quirks: dict[str, list[str]] = {"unannotated": [], "grayscale": []}
    for split in ("train", "val"):
        (coco / f"{split}2017").mkdir()
        n = counts[split]
        ids, image_ids = image_ids[:n], image_ids[n:]
        # the last image or two of each split have no annotation at all
        n_empty = 2 if split == "train" else 1
        per_image = _spread(_rng(seed, "layout", 4 if split == "train" else 5), cat_ids, n - n_empty, 2)
        per_image += [[] for _ in range(n_empty)]
        images, annotations = [], []
        for i, (image_id, image_cats) in enumerate(zip(ids, per_image)):
            rng = _rng(seed, f"coco_{split}", i)
            multi = bool(image_cats) and i % 3 == 0
            crowd = int(rng.choice(cat_ids)) if image_cats and i % 4 == 1 else None
            image, anns = _coco_image(rng, image_cats, image_id, multi, crowd)
            mode = "L" if split == "train" and i == 1 else None  # COCO holds a few grayscale images
            rel = Path(DATASET_DIRS["coco"]) / f"{split}2017" / coco_file(image_id)
            (root / rel).write_bytes(encode_image(image, "JPEG", 90, mode=mode))
            if mode:
                quirks["grayscale"].append(rel.as_posix())
            if not anns:
                quirks["unannotated"].append(rel.as_posix())
            images.append({"id": image_id, "file_name": rel.name, "width": image.width, "height": image.height})
            for ann in anns:
                annotations.append({**ann, "id": next_ann})
                next_ann += 1
            bar.update(1)
        write_coco_instances(
            coco / "annotations" / f"instances_{split}2017.json",
            images,
            annotations,
            cats,
            f"pcn miniature of COCO 2017 {split}, seed {seed}",
        )
        summary[split] = {
            "images": n,
            "annotations": len(annotations),
            "crowd": sum(a["iscrowd"] for a in annotations),
            "multi_polygon": sum(
                isinstance(a["segmentation"], list) and len(a["segmentation"]) > 1 for a in annotations
            ),
        }
    summary["quirks"] = quirks
    return summary


# --------------------------------------------------------------------------- entry point


def write_miniatures(
    root: Path | str,
    *,
    seed: int = 0,
    train_per_class: int = 2,
    val_per_class: int = 1,
    v2_per_class: int = 1,
    ade_train: int = 20,
    ade_val: int = 10,
    coco_train: int = 20,
    coco_val: int = 8,
    progress: bool = True,
    boxes: str = "csv",
) -> dict[str, Any]:
    """Write miniature ImageNet, ImageNet-v2, ADE20k and COCO under ``root`` (replaced as a whole).

    Returns ``{"root", "imagenet": {"classes", "train", "val", "v2", "boxes", "quirks"},
    "ade": {"training", "validation", "n_labels"}, "coco": {"categories", "train", "val",
    "quirks"}, "quirks", "content_hash", "hash", "seconds"}``; ``quirks`` lists, per quirk,
    the files (paths relative to ``root``) or the number of annotations that carry it.
    ``progress`` shows a bar when the writing takes more than a few seconds.  ``boxes``: ImageNet's
    val boxes as Kaggle's ``LOC_val_solution.csv`` ("csv"), image-net.org's per-image XML
    ("voc"), or not at all ("none").
    """
    from tqdm.auto import tqdm

    if boxes not in ("csv", "voc", "none"):
        raise ValueError(f"write_miniatures: boxes = {boxes!r}: expected csv, voc or none")
    for name, value, least in (
        ("train_per_class", train_per_class, 1),
        ("val_per_class", val_per_class, 1),
        ("v2_per_class", v2_per_class, 1),
        ("ade_train", ade_train, 10),
        ("ade_val", ade_val, 10),
        ("coco_train", coco_train, 10),
        ("coco_val", coco_val, 8),
    ):
        if value < least:
            raise ValueError(f"write_miniatures: {name} = {value}: expected at least {least}")
    t0 = time.perf_counter()
    n_classes = len(imagenet_classes())
    total = (train_per_class + val_per_class + v2_per_class) * n_classes + ade_train + ade_val + coco_train + coco_val
    bar = tqdm(total=total, desc="miniatures", unit="img", disable=not progress, delay=3, leave=False)
    try:
        with atomic_path(root, directory=True) as tmp:
            per_class = {"train": train_per_class, "val": val_per_class, "v2": v2_per_class}
            inet = _write_imagenet(tmp, seed, per_class, bar, boxes)
            ade = _write_ade(tmp, seed, {"train": ade_train, "val": ade_val}, bar)
            coco = _write_coco(tmp, seed, {"train": coco_train, "val": coco_val}, bar)
            digest = layouts.content_hash(tmp)
    finally:
        bar.close()
    quirks = {
        "imagenet_png_named_jpeg": inet["quirks"]["png_named_jpeg"],
        "imagenet_cmyk": inet["quirks"]["cmyk"],
        "imagenet_grayscale": inet["quirks"]["grayscale"],
        "coco_grayscale": coco["quirks"]["grayscale"],
        "coco_unannotated": coco["quirks"]["unannotated"],
        "coco_crowd_uncompressed_rle": coco["train"]["crowd"] + coco["val"]["crowd"],
        "coco_multi_polygon": coco["train"]["multi_polygon"] + coco["val"]["multi_polygon"],
    }
    return {
        "root": str(root),
        "imagenet": inet,
        "ade": ade,
        "coco": coco,
        "quirks": quirks,
        "content_hash": digest,
        "hash": digest,
        "seconds": round(time.perf_counter() - t0, 2),
    }
