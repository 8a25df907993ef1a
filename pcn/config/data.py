"""The datasets: the demo generator's settings, FFCV's conversion, where each dataset lives."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from pcn.config.base import Section
from pcn.data.demo.shapes import SHAPES


class DemoDataConfig(Section):
    n_classes: int = Field(10, ge=2, le=len(SHAPES), description="shape classes (the generator draws that many)")
    train_per_class: int = Field(1000, ge=1)
    val_per_class: int = Field(50, ge=1)
    image_size: int = Field(64, ge=32)
    scene_size: int = Field(128, ge=64)
    n_scenes_train: int = Field(600, ge=1)
    n_scenes_val: int = Field(100, ge=1)
    jpeg_quality: int = Field(90, ge=50, le=100)


class FfcvConfig(Section):
    max_resolution: int = Field(256, ge=16)
    jpeg_quality: int = Field(90, ge=50, le=100)
    compress_probability: float = Field(0.5, ge=0.0, le=1.0)
    write_mode: Literal["raw", "jpg", "proportion", "smart"] = "proportion"
    max_bad_fraction: float = Field(
        0.001, ge=0.0, le=1.0, description="fail the conversion above this share of unreadable images"
    )


# The folder names of the official releases: ``data.root`` holds them side by side.
DATASET_DIRS = {
    "imagenet": "imagenet",  # train/<wnid>/*.JPEG, val/<wnid>/*.JPEG, LOC_val_solution.csv
    "imagenet_v2": "imagenetv2-matched-frequency",  # <0..999>/*
    "ade20k": "ADEChallengeData2016",  # images/ and annotations/ {training,validation}/
    "coco": "coco",  # {train,val}2017/*.jpg, annotations/instances_{train,val}2017.json
}


class DataConfig(Section):
    """Where the four datasets live, in their official layouts (docs/datasets.md)."""

    source: Literal["demo", "real"] = Field(
        "demo", description="demo: the demo_data stage writes the datasets under `root`; real: they are already there"
    )
    root: str = Field("data/demo", description="the folder holding the datasets' official folders (DATASET_DIRS)")
    # Per-dataset folders, for a cluster where they do not sit side by side; null = <root>/<official name>.
    imagenet: str | None = None
    imagenet_v2: str | None = None
    ade20k: str | None = None
    coco: str | None = None
    demo: DemoDataConfig = DemoDataConfig()
    loader: Literal["ffcv", "torch", "memory"] = "ffcv"
    num_workers: int = Field(1, ge=0)
    ffcv: FfcvConfig = FfcvConfig()

    def path(self, dataset: str) -> Path:
        """The folder of one dataset (a ``DATASET_DIRS`` key)."""
        explicit = getattr(self, dataset)
        return Path(explicit) if explicit else Path(self.root) / DATASET_DIRS[dataset]
