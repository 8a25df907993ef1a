"""What the demo generator draws (:class:`DemoSpec`) and the seed of every image.

The sizes and counts have no defaults here: ``data.demo`` in the params schema
(:class:`pcn.config.DemoDataConfig`) and the top-level ``seed`` own them, so a
spec is built from the resolved params (``DemoSpec(seed=..., **data.demo)``).
Only the generator's own drawing parameters, which the schema does not expose,
have defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from pcn.data.demo.shapes import SHAPES

# Stream ids for the per-image seeds: (seed, stream, index).
STREAMS = {
    "cls_train": 1,
    "cls_val": 2,
    "scene_train": 3,
    "scene_val": 4,
    "coco_rle": 5,
    "cls_v2": 6,
    "coco_ids": 7,
}

# How the writers render their items: ``run(fn, items)`` yields ``fn(item)`` for each item in
# order, in this process or in a pool (``fn`` is a module-level function, so it pickles).
Run = Callable[[Callable, Iterable], Iterator]


@dataclass(frozen=True, kw_only=True)
class DemoSpec:
    """What to generate: the schema's ``seed`` and ``data.demo`` values, and the drawing."""

    seed: int
    n_classes: int
    train_per_class: int
    val_per_class: int
    image_size: int  # classification images (square)
    scene_size: int  # detection/segmentation scenes (square)
    n_scenes_train: int
    n_scenes_val: int
    jpeg_quality: int
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


def image_rng(spec: DemoSpec, stream: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``stream``: independent of every other image's."""
    return np.random.default_rng([spec.seed, STREAMS[stream], index])
