"""Counter-based random streams: the loaders' randomness as a hash of integers.

Every random draw of the loaders is a pure function of (seed, rank, epoch, position)
rather than the state of a generator, so it does not depend on the number of
workers or the order in which batches are made. The hash is splitmix64's
finaliser; :mod:`pcn.data.ffcv_ops` compiles the same functions with numba.
"""

from __future__ import annotations

import numpy as np

M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
S30, S27, S31, S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
INV53 = 1.0 / 9007199254740992.0  # 2**-53: the top 53 bits of a hash as a float in [0, 1)


def mix64(x):
    """splitmix64's finaliser: a bijective 64-bit hash (python ints or numba uint64)."""
    x = np.uint64(x)
    x = (x ^ (x >> S30)) * M1
    x = (x ^ (x >> S27)) * M2
    return x ^ (x >> S31)


def stream_key(*parts: int) -> int:
    """Hash of integers (seed, rank, salt...) into one 64-bit key."""
    with np.errstate(over="ignore"):
        key = np.uint64(0)
        for p in parts:
            key = mix64(key ^ mix64(np.uint64(p & 0xFFFFFFFFFFFFFFFF) + GOLDEN))
    return int(key)
