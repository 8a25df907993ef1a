"""Writers of the four official dataset layouts (docs/datasets.md).

The demo generator (:mod:`pcn.data.demo.synthetic`) and the rehearsal's miniatures
(:mod:`pcn.data.demo.miniature`) both write through these helpers, so the file names,
CSV and JSON formats they produce are defined once:

- ImageNet: ``train/<wnid>/<wnid>_<n>.JPEG``, ``val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG``,
  ``LOC_val_solution.csv`` and ``LOC_synset_mapping.txt``;
- ImageNet-v2 (matched frequency): ``<class index>/<sha1 of the file>.jpeg``;
- ADE20k (ADEChallengeData2016): ``images|annotations/<training|validation>/ADE_<split>_<8 digits>``
  and the tab-separated ``objectInfo150.txt``;
- COCO 2017: ``<split>2017/<12 digits>.jpg`` and ``annotations/instances_<split>2017.json``.

Images and label maps are written inside a folder that the caller publishes
atomically (``pcn.io.atomic_path(..., directory=True)``), so the helpers here
write plainly.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pcn.config import DATASET_DIRS

__all__ = [
    "ADE_SPLITS",
    "DATASET_DIRS",
    "LabelStats",
    "ade_stem",
    "box_xyxy",
    "coco_categories",
    "coco_file",
    "content_hash",
    "encode_image",
    "encode_rle",
    "imagenet_classes",
    "imagenet_train_file",
    "imagenet_val_stem",
    "mask_polygons",
    "uncompressed_rle",
    "v2_file",
    "write_coco_instances",
    "write_loc_solution",
    "write_object_info",
    "write_png",
    "write_synset_mapping",
]

ADE_SPLITS = {"train": "training", "val": "validation"}


# --------------------------------------------------------------------------- file names


def imagenet_train_file(wnid: str, n: int) -> str:
    return f"{wnid}_{n}.JPEG"


def imagenet_val_stem(k: int) -> str:
    """``ILSVRC2012_val_<8 digits>``: the file name without extension, the CSV's ImageId."""
    return f"ILSVRC2012_val_{k:08d}"


def v2_file(data: bytes) -> str:
    """ImageNet-v2 names its files by the sha1 of their content."""
    return hashlib.sha1(data).hexdigest() + ".jpeg"


def ade_stem(split: str, k: int) -> str:
    """``ADE_train_00000001`` / ``ADE_val_00000001`` (``split`` is ``train`` or ``val``)."""
    return f"ADE_{split}_{k:08d}"


def coco_file(image_id: int) -> str:
    return f"{image_id:012d}.jpg"


# --------------------------------------------------------------------------- encoders


def encode_image(
    image: np.ndarray | Image.Image, fmt: str = "JPEG", quality: int = 90, mode: str | None = None
) -> bytes:
    """Encoded bytes of an RGB array or image, converted to ``mode`` first (``L``, ``CMYK``) if given."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(image, mode="RGB")
    if mode is not None and im.mode != mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    if fmt == "JPEG":
        im.save(buf, format="JPEG", quality=quality, optimize=False)
    else:
        im.save(buf, format=fmt)
    return buf.getvalue()


def write_png(path: Path, label_map: np.ndarray) -> None:
    """A uint8 label map as a single-channel PNG (ADE20k's annotation format)."""
    Image.fromarray(label_map, mode="L").save(path, format="PNG", optimize=False, compress_level=6)


def box_xyxy(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x_min, y_min, x_max, y_max)`` of a boolean mask, the max being the last covered column/row
    (ImageNet's box convention); ``None`` for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a boolean mask, JSON-ready (``counts`` as str)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE (``counts`` a list of ints), as the real files store crowd regions:
    run lengths of the column-major (Fortran order) mask, starting with a run of zeros."""
    flat = np.asfortranarray(mask.astype(bool)).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def mask_polygons(mask: np.ndarray, min_iou: float = 0.9) -> list[list[float]] | None:
    """COCO polygons (one per connected part) that reproduce ``mask``, or ``None`` when they cannot.

    The outer contours are traced at twice the resolution, so they run half way between pixel
    centres and pixel edges. ``None`` when the mask has a hole, or when the polygons' rasterisation
    misses the mask's exact bounding box or an IoU of ``min_iou`` with it.
    """
    import cv2
    from pycocotools import mask as mask_utils

    up = np.kron(mask.astype(np.uint8), np.ones((2, 2), dtype=np.uint8))
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None or bool((hierarchy[0][:, 3] >= 0).any()):
        return None
    polys = [[float(v) for v in ((c.reshape(-1, 2) + 0.5) / 2).ravel()] for c in contours if len(c) >= 3]
    if not polys:
        return None
    h, w = mask.shape
    dec = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w))).astype(bool)
    iou = np.logical_and(dec, mask).sum() / max(np.logical_or(dec, mask).sum(), 1)
    if iou < min_iou or box_xyxy(dec) != box_xyxy(mask):
        return None
    return polys


# --------------------------------------------------------------------------- class tables


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """The 1000 ImageNet-1k classes as ``(wnid, names)`` in class-index order (timm's tables)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple((w, info.label_name_to_description(w)) for w in info.label_names())


# COCO's supercategories by id range (ids skip 12, 26, 29, 30, 45, 66, 68, 69, 71, 83).
_COCO_SUPERCATEGORY = (
    (1, "person"),
    (2, "vehicle"),
    (10, "outdoor"),
    (16, "animal"),
    (27, "accessory"),
    (34, "sports"),
    (44, "kitchen"),
    (52, "food"),
    (62, "furniture"),
    (72, "electronic"),
    (78, "appliance"),
    (84, "indoor"),
)


@functools.lru_cache(maxsize=1)
def coco_categories() -> tuple[dict[str, Any], ...]:
    """COCO 2017's 80 categories with their real (non-contiguous) ids in 1..90 and names.

    torchvision's COCO detection weights list the names by id, with ``N/A`` at the unused ids.
    """
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    names = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    cats = []
    for cid, name in enumerate(names):
        if cid == 0 or name == "N/A":
            continue
        sup = [s for start, s in _COCO_SUPERCATEGORY if cid >= start][-1]
        cats.append({"supercategory": sup, "id": cid, "name": name})
    return tuple(cats)


# --------------------------------------------------------------------------- metadata files


def write_loc_solution(path: Path, boxes: dict[str, list[tuple[str, int, int, int, int]]]) -> None:
    """``LOC_val_solution.csv``: ``ImageId,PredictionString`` with ``wnid x_min y_min x_max y_max``
    repeated once per box; rows sorted by ImageId."""
    lines = ["ImageId,PredictionString"]
    for image_id in sorted(boxes):
        pred = " ".join(" ".join(str(v) for v in box) for box in boxes[image_id])
        lines.append(f"{image_id},{pred}")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_voc_boxes(folder: Path, boxes: dict[str, list[tuple[str, int, int, int, int]]], sizes: dict) -> None:
    """image-net.org's val boxes (``ILSVRC2012_bbox_val_v3/val/<ImageId>.xml``): one PASCAL VOC
    ``<annotation>`` per image, its ``<size>`` (``sizes[ImageId]`` = (width, height)) and one
    ``<object>`` per box."""
    import xml.etree.ElementTree as ET

    folder = Path(folder) / "val"
    folder.mkdir(parents=True, exist_ok=True)
    for image_id, rows in sorted(boxes.items()):
        ann = ET.Element("annotation")
        ET.SubElement(ann, "folder").text = "val"
        ET.SubElement(ann, "filename").text = image_id
        size = ET.SubElement(ann, "size")
        for key, value in zip(("width", "height", "depth"), (*sizes[image_id], 3)):
            ET.SubElement(size, key).text = str(value)
        for wnid, *box in rows:
            obj = ET.SubElement(ann, "object")
            ET.SubElement(obj, "name").text = wnid
            bb = ET.SubElement(obj, "bndbox")
            for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
                ET.SubElement(bb, key).text = str(value)
        ET.ElementTree(ann).write(folder / f"{image_id}.xml", encoding="utf-8")


def write_synset_mapping(path: Path, classes: Iterable[tuple[str, str]]) -> None:
    """``LOC_synset_mapping.txt``: ``<wnid> <names>`` per line, in class-index order."""
    Path(path).write_text("".join(f"{w} {n}\n" for w, n in classes), encoding="utf-8")


class LabelStats:
    """Per label id: pixels over both splits and images containing it per split (objectInfo150's columns)."""

    def __init__(self, n_labels: int) -> None:
        self.pixels = np.zeros(n_labels + 1, dtype=np.int64)
        self.images = {split: np.zeros(n_labels + 1, dtype=np.int64) for split in ADE_SPLITS}

    def add(self, split: str, label_map: np.ndarray) -> None:
        counts = np.bincount(label_map.ravel(), minlength=len(self.pixels))[: len(self.pixels)]
        self.pixels += counts
        self.images[split] += counts > 0


def write_object_info(path: Path, names: list[str], stats: LabelStats) -> None:
    """``objectInfo150.txt``: tab-separated ``Idx Ratio Train Val Name``, one row per id 1..N.

    Ratio is the id's share of all labelled pixels; Train and Val count the images holding it.
    """
    total = max(int(stats.pixels.sum()), 1)
    rows = ["Idx\tRatio\tTrain\tVal\tName"]
    for idx, name in enumerate(names, start=1):
        ratio = stats.pixels[idx] / total
        rows.append(f"{idx}\t{ratio:.4f}\t{stats.images['train'][idx]}\t{stats.images['val'][idx]}\t{name}")
    Path(path).write_text("\n".join(rows) + "\n", encoding="utf-8")


def write_coco_instances(
    path: Path, images: list[dict], annotations: list[dict], categories: Iterable[dict], description: str
) -> None:
    """``instances_<split>2017.json`` with COCO's top-level keys."""
    obj = {
        "info": {"description": description, "version": "1.0", "year": 2017},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": list(categories),
    }
    Path(path).write_text(json.dumps(obj, separators=(",", ":")) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- fingerprint


def _file_digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def content_hash(root: Path, exclude: Iterable[str] = ()) -> str:
    """sha256 over (relative path, file sha256) of the files under ``root`` in sorted order,
    leaving out the top-level files named in ``exclude``."""
    root = Path(root)
    skip = set(exclude)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for rel in files:
        if rel in skip:
            continue
        h.update(rel.encode("utf-8") + b"\0" + _file_digest(root / rel) + b"\n")
    return h.hexdigest()
