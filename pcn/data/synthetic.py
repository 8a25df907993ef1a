"""Deterministic synthetic demo data, written in the official dataset layouts.

No public dataset can be downloaded where the demo runs, so the pipeline draws
its own data from a seed. One generator of coloured shapes on cluttered
backgrounds, with exact masks, feeds the four datasets the paper uses, each
written exactly as its publisher ships it (docs/datasets.md) and holding
nothing the real one does not ship, so the readers that serve the demo are the
readers that serve the paper. The layouts themselves are written by
:mod:`pcn.data.layouts`.

``imagenet/`` (classification)::

    train/<wnid>/<wnid>_<n>.JPEG
    val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG
    LOC_val_solution.csv         one box per val image: wnid x_min y_min x_max y_max
    LOC_synset_mapping.txt       "<wnid> <shape name>" per line

  Each class is one shape; its wnid (:func:`wnids`, ``n9`` + 7 made-up digits)
  sorts like the shape names, so the class index (the rank of the sorted
  wnids) is the position in :func:`class_names`. Each image holds exactly one
  labelled shape (drawn in a square of 55-95 % of the image side) on a cluttered background (colour
  gradient, low-frequency colour noise, pixel noise and thin random strokes;
  the clutter is never a filled shape). The val boxes are the object masks'
  extents in pixels, ``x_max``/``y_max`` being the last covered column/row.
  Val images are numbered 1..N with the classes interleaved.

``imagenetv2-matched-frequency/<class index>/<sha1>.jpeg``: ``val_per_class``
  new images per class from a seed stream of their own (a second test set).

``ADEChallengeData2016/`` (semantic segmentation)::

    images/{training,validation}/ADE_{train,val}_<8 digits>.jpg
    annotations/{training,validation}/ADE_{train,val}_<8 digits>.png
    objectInfo150.txt            Idx Ratio Train Val Name, one row per id 1..K+1

  Label maps are uint8 PNGs of the image size: 0 = other (ignored; this
  generator leaves it unused), 1 = background, 2..K+1 = the K shape classes
  (class index + 2).

``coco/`` (instance detection and segmentation)::

    {train2017,val2017}/<12 digits>.jpg
    annotations/instances_{train,val}2017.json

  Category ids are COCO-style, not contiguous (:data:`DEMO_CATEGORY_IDS`,
  indexed by class index); image ids are sparse, as COCO's. Masks are the
  *visible* parts of objects (later objects occlude earlier ones); boxes and
  areas are those of the visible masks. Most segmentations are polygons (list
  of lists); objects whose visible part has a hole, is too thin for a polygon,
  or is drawn for RLE (about one in six) carry an uncompressed RLE (``counts``
  a list of ints, as COCO stores crowd regions), so both code paths are
  exercised (``COCO.annToMask`` handles both).

The ADE20k and COCO splits hold the same rendered scenes (scene ``i`` is
``ADE_<split>_<i+1>`` and the ``i``-th COCO image). ``demo_summary.json``
beside the four folders records the counts and the content hash.

Determinism: every image is drawn from its own ``numpy.random.Generator``
seeded by ``(seed, stream, index)``, so results do not depend on order or
parallelism, and the same seed gives byte-identical files (given the same
numpy/Pillow/libjpeg versions). ``generate`` writes into a temporary sibling
folder and renames it into place only when complete.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pcn.data import layouts
from pcn.data.layouts import (
    ADE_SPLITS,
    DATASET_DIRS,
    LabelStats,
    ade_stem,
    box_xyxy,
    coco_file,
    encode_image,
    encode_rle,
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
)
from pcn.data.shapes import SHAPES
from pcn.io import atomic_path

__all__ = [
    "DEMO_CATEGORY_IDS",
    "SHAPES",
    "DemoSpec",
    "class_names",
    "content_hash",
    "encode_rle",
    "generate",
    "mask_to_box",
    "render_background",
    "render_classification_sample",
    "render_object",
    "render_scene",
    "wnids",
]


# Stream ids for the per-image seeds: (seed, stream, index).
_STREAMS = {
    "cls_train": 1,
    "cls_val": 2,
    "scene_train": 3,
    "scene_val": 4,
    "coco_rle": 5,
    "cls_v2": 6,
    "coco_ids": 7,
}

# COCO-style category ids of the classes (by class index): real COCO ids, with
# gaps, so that no reader can mistake a category id for a class index.
DEMO_CATEGORY_IDS: tuple[int, ...] = (1, 3, 5, 8, 11, 13, 17, 22, 27, 31, 44, 52)

SUMMARY_FILE = "demo_summary.json"  # written at the root, excluded from the hash


@dataclass(frozen=True)
class DemoSpec:
    """What to generate. Defaults make the whole demo in well under 30 s on 2 cores."""

    seed: int = 0
    n_classes: int = 10
    train_per_class: int = 800
    val_per_class: int = 60
    image_size: int = 64  # classification images (square)
    scene_size: int = 128  # detection/segmentation scenes (square)
    n_scenes_train: int = 600
    n_scenes_val: int = 150
    jpeg_quality: int = 90
    # classification: object diameter as a fraction of the image side
    object_scale: tuple[float, float] = (0.55, 0.95)
    # dense scenes: objects per scene and object diameter in pixels
    objects_per_scene: tuple[int, int] = (1, 4)
    scene_object_px: tuple[int, int] = (24, 64)
    # small shapes of random classes behind the labelled object (0 = none)
    max_distractors: int = 0
    # thin random strokes per 64 px of image side
    strokes: tuple[int, int] = (2, 6)
    rle_fraction: float = 1 / 6  # COCO objects stored as RLE even if a polygon would do

    def __post_init__(self) -> None:
        if not 1 <= self.n_classes <= len(SHAPES):
            raise ValueError(f"n_classes must be in 1..{len(SHAPES)}, got {self.n_classes}")
        if self.n_classes + 1 > 255:
            raise ValueError("too many classes for uint8 label maps")
        for name in (
            "train_per_class",
            "val_per_class",
            "n_scenes_train",
            "n_scenes_val",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.image_size < 16 or self.scene_size < 32:
            raise ValueError("image_size must be >= 16 and scene_size >= 32")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be in 1..100")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def class_names(spec_or_n: DemoSpec | int) -> list[str]:
    """Class names in class-index order (sorted, as ImageFolder assigns them)."""
    n = spec_or_n.n_classes if isinstance(spec_or_n, DemoSpec) else int(spec_or_n)
    return sorted(SHAPES[:n])


def wnids(spec_or_n: DemoSpec | int) -> list[str]:
    """Made-up WordNet ids of the classes, in class-index order.

    ``n9`` + the shape's rank among all :data:`SHAPES` sorted + 5 digits derived from
    its name: sorting the wnids of any ``n_classes`` keeps the order of
    :func:`class_names`, so the class indices of the ImageNet layout (rank of
    the sorted wnids) are the demo's.
    """
    ranks = {name: r for r, name in enumerate(sorted(SHAPES))}
    out = []
    for name in class_names(spec_or_n):
        digits = int.from_bytes(name.encode("utf-8"), "big") % 100_000
        out.append(f"n9{ranks[name] + 1:02d}{digits:05d}")
    return out


def _rng(spec: DemoSpec, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, _STREAMS[stream], index])


# ---------------------------------------------------------------------------
# Shapes: inside tests in a unit object frame (extent within the unit disc)
# ---------------------------------------------------------------------------


def _regular(n: int, r: float = 1.0, phase: float = math.pi / 2) -> np.ndarray:
    a = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _star(n: int = 5, r_out: float = 1.0, r_in: float = 0.42) -> np.ndarray:
    a = math.pi / 2 + math.pi * np.arange(2 * n) / n
    r = np.where(np.arange(2 * n) % 2 == 0, r_out, r_in)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([[-0.69, -0.69], [0.69, -0.69], [0.69, 0.69], [-0.69, 0.69]]),
    "triangle": _regular(3, 1.0),
    "star": _star(),
    "diamond": np.array([[0.0, -1.0], [0.58, 0.0], [0.0, 1.0], [-0.58, 0.0]]),
    "hexagon": _regular(6, 0.98, 0.0),
    "arrow": np.array(
        [
            [-0.95, -0.24],
            [0.15, -0.24],
            [0.15, -0.62],
            [0.95, 0.0],
            [0.15, 0.62],
            [0.15, 0.24],
            [-0.95, 0.24],
        ]
    ),
    "chevron": np.array([[-0.6, -0.78], [0.92, 0.0], [-0.6, 0.78], [-0.1, 0.0]]),
}


_FILL = 0.94  # the unit disc's radius in half-sides of the object square (keeps a margin)


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of the non-polygonal shapes on object-frame coordinates."""
    r2 = u * u + v * v
    if shape == "circle":
        return r2 <= 0.92**2
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.56**2)
    if shape == "cross":
        a, b = np.abs(u), np.abs(v)
        return ((a <= 0.3) & (b <= 0.95)) | ((b <= 0.3) & (a <= 0.95))
    if shape == "crescent":
        return (r2 <= 1.0) & ((u - 0.48) * (u - 0.48) + v * v >= 0.82**2)
    if shape == "heart":
        x = u * np.float32(1 / 0.74)
        y = np.float32(0.12) - v * np.float32(1 / 0.74)  # implicit heart, centred, point towards +v
        x2 = x * x
        q = x2 + y * y - 1
        return q * q * q - x2 * y * y * y <= 0
    raise KeyError(f"unknown shape {shape!r}")


def render_object(
    rng: np.random.Generator,
    class_id: int,
    size: int,
    *,
    n_classes: int = 10,
    rotation: float | None = None,
    aspect: float | None = None,
    supersample: int = 4,
) -> np.ndarray:
    """Coverage map (float32 in [0, 1], ``size`` x ``size``) of one shape.

    The shape (class ``class_id`` of :func:`class_names`) is centred in the
    square with its extent within the inscribed circle, rotated by
    ``rotation`` radians and stretched by ``aspect`` along one axis (both
    random when ``None``). The exact binary mask is ``coverage >= 0.5``.
    """
    shape = class_names(n_classes)[class_id]
    if rotation is None:
        rotation = float(rng.uniform(0, 2 * math.pi))
    if aspect is None:
        aspect = float(rng.uniform(0.88, 1.0))
    s = supersample
    half = size / 2.0  # centre of the square
    radius = _FILL * half  # the unit disc of the object frame, in pixels
    c, sn = math.cos(rotation), math.sin(rotation)
    if shape in _POLYGONS:
        # object frame (u, v) -> image frame: x = c*a*u - sn*v, y = sn*a*u + c*v
        pu, pv = _POLYGONS[shape][:, 0] * aspect, _POLYGONS[shape][:, 1]
        px = ((c * pu - sn * pv) * radius + half) * s
        py = ((sn * pu + c * pv) * radius + half) * s
        canvas = Image.new("L", (size * s, size * s), 0)
        # PIL fills pixels whose centres are inside; shift by half a sample
        ImageDraw.Draw(canvas).polygon([(float(x) - 0.5, float(y) - 0.5) for x, y in zip(px, py)], fill=1)
        inside = np.asarray(canvas, dtype=np.float32)
    else:
        t = ((np.arange(size * s, dtype=np.float32) + 0.5) / s - half) / radius  # sample positions
        u = np.float32(c / aspect) * t[None, :] + np.float32(sn / aspect) * t[:, None]
        v = np.float32(-sn) * t[None, :] + np.float32(c) * t[:, None]
        inside = _inside(shape, u, v)
    return inside.reshape(size, s, size, s).mean(axis=(1, 3), dtype=np.float32)


def mask_to_box(mask: np.ndarray) -> list[int]:
    """[x, y, w, h] (pixels) of the tight bounding box of a boolean mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return [0, 0, 0, 0]
    return [
        int(cols[0]),
        int(rows[0]),
        int(cols[-1] - cols[0] + 1),
        int(rows[-1] - rows[0] + 1),
    ]


# ---------------------------------------------------------------------------
# Backgrounds and compositing
# ---------------------------------------------------------------------------


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def render_background(rng: np.random.Generator, size: int, strokes: tuple[int, int] = (2, 6)) -> np.ndarray:
    """Cluttered background (float32 H x W x 3, 0..255).

    A colour gradient, low-frequency colour noise, pixel noise and thin random
    strokes (polylines and arcs). None of it forms a filled shape.
    """
    h = w = size
    c1, c2 = _random_colour(rng), _random_colour(rng)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    proj = xx * math.cos(theta) + yy * math.sin(theta)
    t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
    img = c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]
    g = int(rng.integers(3, 7))
    low = rng.normal(0, 20, (g, g, 3)).astype(np.float32)
    low_img = np.stack(
        [np.asarray(Image.fromarray(low[..., k], mode="F").resize((w, h), Image.BICUBIC)) for k in range(3)],
        -1,
    )
    img = img + low_img
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    n = round(int(rng.integers(strokes[0], strokes[1] + 1)) * size / 64) if strokes[1] > 0 else 0
    max_w = max(1, round(size / 40))
    for _ in range(n):
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        width = int(rng.integers(1, max_w + 1))
        if rng.random() < 0.6:
            k = int(rng.integers(2, 5))
            start = rng.uniform(0, size, 2)
            pts = [tuple(start)]
            for _ in range(k - 1):
                step = rng.normal(0, size / 3, 2)
                pts.append(tuple(np.array(pts[-1]) + step))
            draw.line([(float(a), float(b)) for a, b in pts], fill=col, width=width)
        else:
            cx, cy = rng.uniform(0, size, 2)
            r = rng.uniform(size / 10, size / 2)
            a0 = float(rng.uniform(0, 360))
            span = float(rng.uniform(40, 200))  # never a closed circle
            draw.arc([cx - r, cy - r, cx + r, cy + r], a0, a0 + span, fill=col, width=width)
    out = np.asarray(pil, dtype=np.float32)
    out = out + rng.normal(0, 5, out.shape).astype(np.float32)
    return out


def _object_colour(rng: np.random.Generator, under: np.ndarray, min_dist: float = 140.0) -> np.ndarray:
    """A random colour far enough from ``under`` (mean background colour under the object)."""
    best, best_d = None, -1.0
    for _ in range(24):
        col = _random_colour(rng)
        d = float(np.linalg.norm(col - under))
        if d >= min_dist:
            return col
        if d > best_d:
            best, best_d = col, d
    return best  # type: ignore[return-value]


def _paint(rng: np.random.Generator, img: np.ndarray, cov: np.ndarray, top: int, left: int) -> np.ndarray:
    """Composite a shape (coverage ``cov`` at ``top, left``) onto ``img`` in place.

    Returns the placed boolean mask (image-sized). Shading and noise vary the
    object's colour slightly; the colour contrasts with the background under it.
    """
    s = cov.shape[0]
    h, w = img.shape[:2]
    # clip the object square to the canvas (placement keeps the mask inside)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + s, h), min(left + s, w)
    c = cov[y0 - top : y1 - top, x0 - left : x1 - left]
    region = img[y0:y1, x0:x1]
    m = c >= 0.5
    under = region[m].mean(axis=0) if m.any() else region.reshape(-1, 3).mean(axis=0)
    col = _object_colour(rng, under)
    th = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0 : c.shape[0], 0 : c.shape[1]].astype(np.float32)
    shade = ((xx * math.cos(th) + yy * math.sin(th)) / max(s, 1) - 0.5) * rng.uniform(0, 40)
    fill = col[None, None, :] + shade[..., None] + rng.normal(0, 4, (*c.shape, 3)).astype(np.float32)
    a = c[..., None]
    region[...] = region * (1 - a) + fill * a
    full = np.zeros((h, w), dtype=bool)
    full[y0:y1, x0:x1] = m
    return full


def _placement(rng: np.random.Generator, cov: np.ndarray, canvas: int) -> tuple[int, int]:
    """Random top-left of the object square so that its mask lies inside the canvas."""
    m = cov >= 0.5
    x, y, w, h = mask_to_box(m)
    top = int(rng.integers(-y, canvas - (y + h) + 1))
    left = int(rng.integers(-x, canvas - (x + w) + 1))
    return top, left


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
            top, left = _placement(rng, cov, n)
            _paint(rng, img, cov, top, left)
    lo, hi = spec.object_scale
    size = max(8, round(n * float(rng.uniform(lo, hi))))
    cov = render_object(rng, label, size, n_classes=spec.n_classes)
    top, left = _placement(rng, cov, n)
    mask = _paint(rng, img, cov, top, left)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return image, int(label), mask_to_box(mask), mask


def render_scene(
    rng: np.random.Generator, spec: DemoSpec, first_class: int | None = None
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A dense scene: ``(image uint8, objects)``.

    Each object is ``{"class_id", "box" [x,y,w,h], "mask" (visible, bool HxW),
    "area"}`` in drawing order. Later objects occlude earlier ones; placements
    keep at least half of every object visible (objects that cannot be placed
    so are dropped; every scene has at least one object). ``first_class``
    fixes the class of the first (never dropped) object; :func:`generate`
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
            top, left = _placement(rng, cov, n)
            placed = np.zeros((n, n), dtype=bool)
            y0, x0 = max(top, 0), max(left, 0)
            y1, x1 = min(top + size, n), min(left + size, n)
            placed[y0:y1, x0:x1] = m[y0 - top : y1 - top, x0 - left : x1 - left]
            ok = all(((v & ~placed).sum() >= 0.5 * f.sum()) for v, f in zip(visible, full_masks))
            if ok:
                break
        else:
            continue
        placed2 = _paint(rng, img, cov, top, left)
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


# ---------------------------------------------------------------------------
# Writers of the official layouts (I/O at the edges)
# ---------------------------------------------------------------------------


def _write_jpeg(path: Path, image: np.ndarray, quality: int) -> bytes:
    data = encode_image(image, "JPEG", quality)
    path.write_bytes(data)
    return data


def _write_png(path: Path, label_map: np.ndarray) -> None:
    write_png(path, label_map)


def _coco_segmentation(mask: np.ndarray, force_rle: bool) -> dict[str, Any] | list[list[float]]:
    """Polygons when they reproduce the mask (:func:`pcn.data.layouts.mask_polygons`), else
    uncompressed RLE (a hole, a part too thin for a polygon, or ``force_rle``)."""
    polys = None if force_rle else mask_polygons(mask)
    return polys if polys is not None else uncompressed_rle(mask)


def _cls_item(args: tuple[str, DemoSpec, str, int]) -> tuple[str, tuple[str, int, int, int, int] | None]:
    """Render and write classification image ``i`` of ``split`` (train, val or v2).

    Returns the file's path relative to the dataset folder and, for val, its LOC row
    ``(wnid, x_min, y_min, x_max, y_max)``.
    """
    root, spec, split, i = args
    label = i % spec.n_classes
    wnid = wnids(spec)[label]
    image, label, box, mask = render_classification_sample(_rng(spec, f"cls_{split}", i), spec, label)
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


def _scene_item(
    args: tuple[str, DemoSpec, str, int, int],
) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray]:
    """Render scene ``i`` of ``split``; write its ADE20k and COCO files.

    Returns the COCO image record, its annotations (without ids) and the label map.
    """
    root_s, spec, split, i, image_id = args
    root = Path(root_s)
    image, objects = render_scene(_rng(spec, f"scene_{split}", i), spec, first_class=i % spec.n_classes)
    ade, ade_split = root / DATASET_DIRS["ade20k"], ADE_SPLITS[split]
    stem = ade_stem(split, i + 1)
    data = _write_jpeg(ade / "images" / ade_split / f"{stem}.jpg", image, spec.jpeg_quality)
    label_map = np.ones(image.shape[:2], dtype=np.uint8)  # 1 = background
    for obj in objects:
        label_map[obj["mask"]] = obj["class_id"] + 2
    _write_png(ade / "annotations" / ade_split / f"{stem}.png", label_map)

    file_name = coco_file(image_id)
    (root / DATASET_DIRS["coco"] / f"{split}2017" / file_name).write_bytes(data)  # the same scene
    img = {"id": image_id, "file_name": file_name, "width": image.shape[1], "height": image.shape[0]}
    rle_rng = _rng(spec, "coco_rle", (0 if split == "train" else 1 << 30) + i)
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


def _coco_image_ids(spec: DemoSpec) -> dict[str, list[int]]:
    """Sparse image ids, as COCO's: distinct across splits, increasing with the scene index."""
    n_train, n_val = spec.n_scenes_train, spec.n_scenes_val
    ids = np.random.default_rng([spec.seed, _STREAMS["coco_ids"]]).choice(
        np.arange(1, max(600_000, 4 * (n_train + n_val))), n_train + n_val, replace=False
    )
    return {"train": sorted(int(v) for v in ids[:n_train]), "val": sorted(int(v) for v in ids[n_train:])}


def content_hash(root: Path) -> str:
    """sha256 over (relative path, file sha256) of all files under ``root`` in sorted order.

    The summary file at the root is left out (it records the hash).
    """
    return layouts.content_hash(root, exclude=(SUMMARY_FILE,))


def _generate_into(root: Path, spec: DemoSpec, progress: bool, workers: int, min_pool_items: int) -> dict[str, Any]:
    from tqdm.auto import tqdm

    names, ids = class_names(spec), wnids(spec)
    k = spec.n_classes
    n_cls = {"train": spec.train_per_class * k, "val": spec.val_per_class * k, "v2": spec.val_per_class * k}
    n_scene = {"train": spec.n_scenes_train, "val": spec.n_scenes_val}
    total = sum(n_cls.values()) + sum(n_scene.values())
    bar = tqdm(total=total, desc="demo data", unit="img", disable=not progress, leave=False)

    inet, v2 = root / DATASET_DIRS["imagenet"], root / DATASET_DIRS["imagenet_v2"]
    ade, coco = root / DATASET_DIRS["ade20k"], root / DATASET_DIRS["coco"]
    for label, wnid in enumerate(ids):
        for split in ("train", "val"):
            (inet / split / wnid).mkdir(parents=True, exist_ok=True)
        (v2 / str(label)).mkdir(parents=True, exist_ok=True)
    for split, ade_split in ADE_SPLITS.items():
        for d in (ade / "images" / ade_split, ade / "annotations" / ade_split, coco / f"{split}2017"):
            d.mkdir(parents=True, exist_ok=True)
    (coco / "annotations").mkdir(parents=True, exist_ok=True)

    # Every item is seeded on its own, so the pool's scheduling cannot change
    # any file; results come back in submission order.
    pool = None
    if workers > 1 and total >= min_pool_items:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))

    def run(fn, items):
        if pool is None:
            for item in items:
                yield fn(item)
                bar.update(1)
        else:
            for res in pool.map(fn, items, chunksize=32):
                yield res
                bar.update(1)

    try:
        # ImageNet and ImageNet-v2 (classification)
        loc: dict[str, list[tuple[str, int, int, int, int]]] = {}
        for split in ("train", "val", "v2"):
            for rel, row in run(_cls_item, [(str(root), spec, split, i) for i in range(n_cls[split])]):
                if row is not None:
                    loc[Path(rel).stem] = [row]
        write_loc_solution(inet / "LOC_val_solution.csv", loc)
        write_synset_mapping(inet / "LOC_synset_mapping.txt", zip(ids, names))

        # Dense scenes -> ADE20k and COCO (one render, two annotation formats)
        categories = [{"supercategory": "shape", "id": DEMO_CATEGORY_IDS[c], "name": nm} for c, nm in enumerate(names)]
        image_ids = _coco_image_ids(spec)
        stats = LabelStats(k + 1)
        n_inst, n_rle = {}, {}
        for split in ("train", "val"):
            images, annotations = [], []
            items = [(str(root), spec, split, i, image_ids[split][i]) for i in range(n_scene[split])]
            for img, anns, label_map in run(_scene_item, items):
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
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    return {
        "spec": spec.to_dict(),
        "classes": names,
        "wnids": ids,
        "imagenet": {"train": n_cls["train"], "val": n_cls["val"]},
        "imagenet_v2": n_cls["v2"],
        "ade": {"training": n_scene["train"], "validation": n_scene["val"], "n_labels": k + 1},
        "coco": {
            split: {"images": n_scene[split], "annotations": n_inst[split], "rle": n_rle[split]}
            for split in ("train", "val")
        },
    }


def generate(
    out_dir: Path | str,
    spec: DemoSpec | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write the four demo datasets under ``out_dir`` and return a summary.

    The data is written into a temporary sibling folder that replaces
    ``out_dir`` only when complete (:func:`pcn.io.atomic_path`); a run that
    fails or is killed leaves ``out_dir`` as it was.

    The summary (also written to ``out_dir/demo_summary.json``, beside the
    dataset folders) holds counts per split, the class names and wnids, the
    spec and ``content_hash`` (= ``hash``): sha256 over the written files (see
    :func:`content_hash`). The returned dict additionally has ``seconds`` (not
    written, to keep the files deterministic).

    ``workers`` processes render in parallel (default: 2, or 1 on a single
    CPU, and in-process for small jobs of < 400 images). The files do not
    depend on it. Workers are spawned, so a calling script needs the usual
    ``if __name__ == "__main__":`` guard.
    """
    spec = spec or DemoSpec()
    t0 = time.perf_counter()
    with atomic_path(out_dir, directory=True) as tmp:
        auto = workers is None
        n_workers = min(2, os.cpu_count() or 1) if auto else max(1, int(workers))
        summary = _generate_into(tmp, spec, progress, n_workers, 400 if auto else 0)
        summary["content_hash"] = summary["hash"] = content_hash(tmp)
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, separators=(",", ":")) + "\n", encoding="utf-8")
    return {**summary, "seconds": round(time.perf_counter() - t0, 2)}
