"""The demo's classification sets: ImageNet (train, val and its box file) and ImageNet-v2.

One image holds one labelled shape on a cluttered background; the layouts are those
described in :mod:`pcn.data.demo.synthetic`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pcn.data.demo.drawing import mask_to_box, paint, random_placement, render_background, render_object
from pcn.data.demo.layouts import (
    DATASET_DIRS,
    box_xyxy,
    encode_image,
    imagenet_train_file,
    imagenet_val_stem,
    v2_file,
    write_loc_solution,
    write_synset_mapping,
)
from pcn.data.demo.shapes import class_names, wnids
from pcn.data.demo.spec import DemoSpec, Run, image_rng

SPLITS = ("train", "val", "v2")


def render_classification_sample(
    rng: np.random.Generator, spec: DemoSpec, label: int | None = None
) -> tuple[np.ndarray, int, list[int], np.ndarray]:
    """One classification image: ``(image uint8 HxWx3, label, box [x,y,w,h], mask bool HxW)``."""
    n = spec.image_size
    if label is None:
        label = int(rng.integers(spec.n_classes))
    img = render_background(rng, n, spec.strokes)
    if spec.max_distractors > 0:
        for _ in range(int(rng.integers(0, spec.max_distractors + 1))):
            d = max(6, round(n * float(rng.uniform(0.12, 0.2))))
            cov = render_object(rng, int(rng.integers(spec.n_classes)), d, n_classes=spec.n_classes)
            top, left = random_placement(rng, cov, n)
            paint(rng, img, cov, top, left)
    lo, hi = spec.object_scale
    size = max(8, round(n * float(rng.uniform(lo, hi))))
    cov = render_object(rng, label, size, n_classes=spec.n_classes)
    top, left = random_placement(rng, cov, n)
    mask = paint(rng, img, cov, top, left)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return image, int(label), mask_to_box(mask), mask


def split_sizes(spec: DemoSpec) -> dict[str, int]:
    """Images per split: ``train``, ``val`` and ``v2`` (as many as val)."""
    k = spec.n_classes
    return {"train": spec.train_per_class * k, "val": spec.val_per_class * k, "v2": spec.val_per_class * k}


def classification_item(args: tuple[str, DemoSpec, str, int]) -> tuple[str, tuple[str, int, int, int, int] | None]:
    """Render and write classification image ``i`` of ``split`` (train, val or v2).

    Returns the file's path relative to the dataset folder and, for val, its LOC row
    ``(wnid, x_min, y_min, x_max, y_max)``.
    """
    root, spec, split, i = args
    label = i % spec.n_classes
    wnid = wnids(spec.n_classes)[label]
    image, label, box, mask = render_classification_sample(image_rng(spec, f"cls_{split}", i), spec, label)
    data = encode_image(image, "JPEG", spec.jpeg_quality)
    if split == "v2":  # folder = class index, file = sha1 of its content
        rel = f"{label}/{v2_file(data)}"
        (Path(root) / DATASET_DIRS["imagenet_v2"] / rel).write_bytes(data)
        return rel, None
    if split == "train":
        rel = f"train/{wnid}/{imagenet_train_file(wnid, i // spec.n_classes + 1)}"
    else:
        rel = f"val/{wnid}/{imagenet_val_stem(i + 1)}.JPEG"
    (Path(root) / DATASET_DIRS["imagenet"] / rel).write_bytes(data)
    xyxy = box_xyxy(mask)
    return rel, ((wnid, *xyxy) if split == "val" and xyxy is not None else None)


def write_classification(root: Path, spec: DemoSpec, run: Run) -> dict[str, Any]:
    """Write ImageNet and ImageNet-v2 under ``root``; return their counts for the summary."""
    names, ids = class_names(spec.n_classes), wnids(spec.n_classes)
    inet, v2 = root / DATASET_DIRS["imagenet"], root / DATASET_DIRS["imagenet_v2"]
    for label, wnid in enumerate(ids):
        for split in ("train", "val"):
            (inet / split / wnid).mkdir(parents=True, exist_ok=True)
        (v2 / str(label)).mkdir(parents=True, exist_ok=True)
    sizes = split_sizes(spec)
    loc: dict[str, list[tuple[str, int, int, int, int]]] = {}
    for split in SPLITS:
        for rel, row in run(classification_item, [(str(root), spec, split, i) for i in range(sizes[split])]):
            if row is not None:
                loc[Path(rel).stem] = [row]
    write_loc_solution(inet / "LOC_val_solution.csv", loc)
    write_synset_mapping(inet / "LOC_synset_mapping.txt", zip(ids, names))
    return {"imagenet": {"train": sizes["train"], "val": sizes["val"]}, "imagenet_v2": sizes["v2"]}
