"""The classification splits: their sizes, and which of them a scale converts to FFCV."""

from __future__ import annotations

from pcn.config import Params

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


FFCV_DIR = "data/ffcv"  # where the convert stage writes <split>.beton (the table declares it)
