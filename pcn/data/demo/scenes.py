"""The demo's dense scenes, written twice: ADE20k (semantic label maps) and COCO
(instances with polygons or RLE). Scene ``i`` of a split is ``ADE_<split>_<i+1>``
and the ``i``-th COCO image; the layouts are described in :mod:`pcn.data.demo.synthetic`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pcn.data.demo.drawing import mask_to_box, paint, random_placement, render_background, render_object
from pcn.data.demo.layouts import (
    ADE_SPLITS,
    DATASET_DIRS,
    LabelStats,
    ade_stem,
    coco_file,
    encode_image,
    mask_polygons,
    uncompressed_rle,
    write_coco_instances,
    write_object_info,
    write_png,
)
from pcn.data.demo.shapes import class_names
from pcn.data.demo.spec import STREAMS, DemoSpec, Run, image_rng

# COCO-style category ids of the classes (by class index): real COCO ids, with
# gaps, so that no reader can mistake a category id for a class index.
DEMO_CATEGORY_IDS: tuple[int, ...] = (1, 3, 5, 8, 11, 13, 17, 22, 27, 31, 44, 52)


def render_scene(
    rng: np.random.Generator, spec: DemoSpec, first_class: int | None = None
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A dense scene: ``(image uint8, objects)``.

    Each object is ``{"class_id", "box" [x,y,w,h], "mask" (visible, bool HxW),
    "area"}`` in drawing order. Later objects occlude earlier ones; placements
    keep at least half of every object visible (objects that cannot be placed
    so are dropped; every scene has at least one object). ``first_class``
    fixes the class of the first (never dropped) object; :func:`write_scenes`
    cycles it so that every split of at least K scenes holds every class.
    """
    n = spec.scene_size
    img = render_background(rng, n, spec.strokes)
    k = int(rng.integers(spec.objects_per_scene[0], spec.objects_per_scene[1] + 1))
    full_masks: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    classes: list[int] = []
    lo, hi = spec.scene_object_px
    for j in range(k):
        cls = int(rng.integers(spec.n_classes))
        if j == 0 and first_class is not None:
            cls = int(first_class)
        size = int(rng.integers(lo, hi + 1))
        cov = render_object(rng, cls, size, n_classes=spec.n_classes)
        m = cov >= 0.5
        for _try in range(20):
            top, left = random_placement(rng, cov, n)
            placed = np.zeros((n, n), dtype=bool)
            y0, x0 = max(top, 0), max(left, 0)
            y1, x1 = min(top + size, n), min(left + size, n)
            placed[y0:y1, x0:x1] = m[y0 - top : y1 - top, x0 - left : x1 - left]
            ok = all(((v & ~placed).sum() >= 0.5 * f.sum()) for v, f in zip(visible, full_masks))
            if ok:
                break
        else:
            continue
        placed2 = paint(rng, img, cov, top, left)
        assert np.array_equal(placed, placed2)
        visible = [v & ~placed for v in visible]
        visible.append(placed)
        full_masks.append(placed)
        classes.append(cls)
    objects = [
        {"class_id": c, "box": mask_to_box(v), "mask": v, "area": int(v.sum())} for c, v in zip(classes, visible)
    ]
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return image, objects


def _coco_segmentation(mask: np.ndarray, force_rle: bool) -> dict[str, Any] | list[list[float]]:
    """Polygons when they reproduce the mask (:func:`pcn.data.demo.layouts.mask_polygons`), else
    uncompressed RLE (a hole, a part too thin for a polygon, or ``force_rle``)."""
    polys = None if force_rle else mask_polygons(mask)
    return polys if polys is not None else uncompressed_rle(mask)


def scene_item(
    args: tuple[str, DemoSpec, str, int, int],
) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray]:
    """Render scene ``i`` of ``split``; write its ADE20k and COCO files.

    Returns the COCO image record, its annotations (without ids) and the label map.
    """
    root_s, spec, split, i, image_id = args
    root = Path(root_s)
    image, objects = render_scene(image_rng(spec, f"scene_{split}", i), spec, first_class=i % spec.n_classes)
    ade, ade_split = root / DATASET_DIRS["ade20k"], ADE_SPLITS[split]
    stem = ade_stem(split, i + 1)
    data = encode_image(image, "JPEG", spec.jpeg_quality)
    (ade / "images" / ade_split / f"{stem}.jpg").write_bytes(data)
    label_map = np.ones(image.shape[:2], dtype=np.uint8)  # 1 = background
    for obj in objects:
        label_map[obj["mask"]] = obj["class_id"] + 2
    write_png(ade / "annotations" / ade_split / f"{stem}.png", label_map)

    file_name = coco_file(image_id)
    (root / DATASET_DIRS["coco"] / f"{split}2017" / file_name).write_bytes(data)  # the same scene
    img = {"id": image_id, "file_name": file_name, "width": image.shape[1], "height": image.shape[0]}
    rle_rng = image_rng(spec, "coco_rle", (0 if split == "train" else 1 << 30) + i)
    anns = []
    for obj in objects:
        seg = _coco_segmentation(obj["mask"], force_rle=bool(rle_rng.random() < spec.rle_fraction))
        anns.append(
            {
                "image_id": image_id,
                "category_id": DEMO_CATEGORY_IDS[obj["class_id"]],
                "bbox": [float(v) for v in obj["box"]],
                "area": float(obj["area"]),
                "iscrowd": 0,
                "segmentation": seg,
            }
        )
    return img, anns, label_map


def split_sizes(spec: DemoSpec) -> dict[str, int]:
    """Scenes per split: ``train`` and ``val``."""
    return {"train": spec.n_scenes_train, "val": spec.n_scenes_val}


def coco_image_ids(spec: DemoSpec) -> dict[str, list[int]]:
    """Sparse image ids, as COCO's: distinct across splits, increasing with the scene index."""
    n_train, n_val = spec.n_scenes_train, spec.n_scenes_val
    ids = np.random.default_rng([spec.seed, STREAMS["coco_ids"]]).choice(
        np.arange(1, max(600_000, 4 * (n_train + n_val))), n_train + n_val, replace=False
    )
    return {"train": sorted(int(v) for v in ids[:n_train]), "val": sorted(int(v) for v in ids[n_train:])}


def write_scenes(root: Path, spec: DemoSpec, run: Run) -> dict[str, Any]:
    """Write ADE20k and COCO under ``root`` (one render, two annotation formats); return
    their counts for the summary."""
    names = class_names(spec.n_classes)
    ade, coco = root / DATASET_DIRS["ade20k"], root / DATASET_DIRS["coco"]
    for split, ade_split in ADE_SPLITS.items():
        for d in (ade / "images" / ade_split, ade / "annotations" / ade_split, coco / f"{split}2017"):
            d.mkdir(parents=True, exist_ok=True)
    (coco / "annotations").mkdir(parents=True, exist_ok=True)

    categories = [{"supercategory": "shape", "id": DEMO_CATEGORY_IDS[c], "name": nm} for c, nm in enumerate(names)]
    sizes, image_ids = split_sizes(spec), coco_image_ids(spec)
    stats = LabelStats(spec.n_classes + 1)
    n_inst, n_rle = {}, {}
    for split in ("train", "val"):
        images, annotations = [], []
        items = [(str(root), spec, split, i, image_ids[split][i]) for i in range(sizes[split])]
        for img, anns, label_map in run(scene_item, items):
            images.append(img)
            stats.add(split, label_map)
            for ann in anns:
                annotations.append({"id": len(annotations) + 1, **ann})
        n_inst[split] = len(annotations)
        n_rle[split] = sum(isinstance(a["segmentation"], dict) for a in annotations)
        write_coco_instances(
            coco / "annotations" / f"instances_{split}2017.json",
            images,
            annotations,
            categories,
            f"pcn synthetic shapes demo, seed {spec.seed}",
        )
    write_object_info(ade / "objectInfo150.txt", ["background", *names], stats)
    return {
        "ade": {"training": sizes["train"], "validation": sizes["val"], "n_labels": spec.n_classes + 1},
        "coco": {
            split: {"images": sizes[split], "annotations": n_inst[split], "rle": n_rle[split]}
            for split in ("train", "val")
        },
    }
