"""What every loader takes, whatever its kind (ffcv, torch, memory): one record, so the three
cannot drift apart, and the epoch order it gives them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pcn.data.augment.transforms import TrainAug
from pcn.data.order import epoch_order


@dataclass(frozen=True)
class LoaderSettings:
    train: bool
    img_size: int
    batch_size: int  # per rank
    aug: TrainAug
    crop_ratio: float
    seed: int
    rank: int
    world_size: int
    drop_last: bool
    device: str
    repeats: int  # repeated augmentation: each image this many times per epoch (train only)

    def epoch_order(self, n: int, epoch: int) -> np.ndarray:
        """The indices of ``n`` samples this rank visits in ``epoch`` (pcn.data.order)."""
        return epoch_order(
            n,
            epoch=epoch,
            train=self.train,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
            repeats=self.repeats,
        )
