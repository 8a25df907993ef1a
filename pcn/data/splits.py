"""The classification splits: their sizes, where they live, and which of them a scale converts to FFCV."""

from __future__ import annotations

from pathlib import Path

from pcn.config import Params

FFCV_DIR = "data/ffcv"  # where the convert stage writes <split>.beton (the table declares it)

# The images of each classification split (ImageNet-1k train and val, ImageNet-v2)
IMAGENET_SPLIT_IMAGES = {"train": 1_281_167, "val": 50_000, "v2": 10_000}
IMAGENET_TRAIN_IMAGES = IMAGENET_SPLIT_IMAGES["train"]


def ffcv_splits(params: Params) -> tuple[str, ...]:
    """The classification splits some stage of this scale reads through FFCV, in reading
    order: training reads train and val (its per-epoch evaluation), ``evaluate`` val and
    v2.  The conversion writes only these, so no stage waits on a file no one reads (at
    paper scale ``evaluate.loader: torch`` scores the original JPEGs: v2 is not converted).
    A folder-reading loader still reads a converted split's list of skipped files."""
    training = {params.data.loader, params.experiments.loader or params.data.loader}
    reads = {"train", "val"} if "ffcv" in training else set()
    if (params.evaluate.loader or params.data.loader) == "ffcv":
        reads |= {"val", "v2"}
    return tuple(s for s in IMAGENET_SPLIT_IMAGES if s in reads)


# The classification splits and the layout each is read in; the convert stage writes each as <split>.beton
SPLIT_LAYOUTS = {"train": "imagefolder", "val": "imagefolder", "v2": "imagenet_v2"}


def data_paths(params: Params, ffcv: str | Path | None = None) -> dict[str, Path]:
    """Where the classification splits live, as image folders (official layouts) and FFCV
    files (in ``ffcv``, the folder a stage's ``--ffcv`` names)."""
    imagenet, v2 = params.data.path("imagenet"), params.data.path("imagenet_v2")
    return {
        "train": imagenet / "train",
        "val": imagenet / "val",
        "v2": v2,
        "loc": imagenet / "LOC_val_solution.csv",
        **{f"{split}_beton": Path(ffcv or FFCV_DIR) / f"{split}.beton" for split in SPLIT_LAYOUTS},
    }
