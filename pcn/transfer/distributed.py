"""How a dense-transfer run spreads over DDP ranks: each rank's slice of every global
batch (:class:`IterationSampler`), the DDP wrapping (:func:`distribute`) and each rank's
share of the evaluation (:func:`shard`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads in the job, not in the stage that imports this package to submit
    from pcn.train.distributed import DistEnv

# The transfer loader's shuffle of epoch e is seeded by seed * prime + e: no two (seed, epoch)
# pairs share an order for fewer than this many epochs.
EPOCH_SEED_PRIME = 100_003


class IterationSampler:
    """Indices for ``iters`` global batches of ``batch_size``: seeded permutations, one per
    pass over the data, starting at iteration ``start`` (a resumed run sees the same order).

    With ``world_size`` ranks, rank ``r`` yields the ``r``-th of ``world_size`` equal slices
    of every global batch (``batch_size / world_size`` indices per iteration), so the ranks
    together see exactly the batches of a one-process run.
    """

    def __init__(
        self, n: int, batch_size: int, iters: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1
    ):
        if batch_size % world_size:
            raise ValueError(f"a global batch of {batch_size} does not split over {world_size} ranks")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.n, self.batch_size, self.iters, self.seed, self.start = n, batch_size, iters, seed, start
        self.rank, self.world_size = rank, world_size
        self.per_rank = batch_size // world_size

    def __len__(self) -> int:
        return (self.iters - self.start) * self.per_rank

    def __iter__(self) -> Iterator[int]:
        import torch

        pos = self.start * self.batch_size
        end = self.iters * self.batch_size
        while pos < end:
            epoch, offset = divmod(pos, self.n)
            g = torch.Generator().manual_seed(self.seed * EPOCH_SEED_PRIME + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            for i in perm[offset:]:
                if pos >= end:
                    return
                if (pos % self.batch_size) // self.per_rank == self.rank:
                    yield i
                pos += 1


def distribute(model, env: DistEnv, device, seed: int):
    """DDP over the job's ranks, with SyncBatchNorm on GPUs (mmseg's and mmdet's ``SyncBN``:
    a few images per GPU are too few for batch statistics); each rank then draws its
    own augmentations. One process: the model itself."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    if env.world_size == 1:
        return model
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    torch.manual_seed(seed + env.rank)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(n: int, env: DistEnv) -> list[int]:
    """This rank's evaluation images: ``rank, rank + world, ...`` (each image once, no padding)."""
    return list(range(env.rank, n, env.world_size))
