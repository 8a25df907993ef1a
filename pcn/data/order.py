"""The order in which a loader visits the samples of an epoch: one function for every kind.

A permutation seeded by ``seed + epoch`` (FFCV's own RANDOM order), torch's
DistributedSampler under DDP, timm's RepeatAugSampler when ``aug.repeated_aug > 1``.
So with the same seed every loader visits the same images in the same order.
"""

from __future__ import annotations

import numpy as np

from pcn.data.random_streams import stream_key


def epoch_order(
    n: int,
    *,
    train: bool,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    repeats: int = 1,
) -> np.ndarray:
    """Indices this rank visits in ``epoch`` (before batching and drop_last)."""
    from torch.utils.data import DistributedSampler

    if train and repeats > 1:
        from timm.data.distributed_sampler import RepeatAugSampler

        sampler = RepeatAugSampler(
            range(n),
            num_replicas=world_size,
            rank=rank,
            shuffle=True,
            num_repeats=repeats,
        )
        # timm seeds its permutation with the epoch alone; fold the seed in.
        sampler.set_epoch(stream_key(seed, epoch) & 0x7FFFFFFFFFFFFFFF)
        return np.fromiter(iter(sampler), dtype=np.int64)
    if not train and world_size > 1:
        # Evaluation shards by stride without padding, so that summing the ranks' counts
        # scores every image exactly once (DistributedSampler pads with repeats).
        return np.arange(rank, n, world_size, dtype=np.int64)
    if world_size > 1:
        sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=train, seed=seed)
        sampler.set_epoch(epoch)
        return np.fromiter(iter(sampler), dtype=np.int64)
    if train:
        return np.random.default_rng(seed + epoch).permutation(n).astype(np.int64)
    return np.arange(n, dtype=np.int64)
