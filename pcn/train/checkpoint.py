"""Checkpoints: atomic writes, ``weights_only`` loads, and the RNG state they carry.

Every file is written through :func:`pcn.io.atomic_path` (a temporary sibling,
moved over the target when complete), flushed and fsync'ed before the move and
the move made durable after it: a save that is killed half-way leaves the previous
good file in place.  Loads use ``torch.load(weights_only=True)``, so a checkpoint
holds only tensors, plain containers and numbers (no pickled objects, no argparse
Namespaces).
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pcn.io import atomic_path


def save(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically and durably."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    from pcn.models.checkpoint import read_checkpoint

    return read_checkpoint(path, map_location)


# --- RNG state as tensors and plain lists --------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG the training step draws from (timm's Mixup uses numpy's)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["gauss"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


@contextlib.contextmanager
def rng_preserved():
    """Whatever runs inside (an evaluation) leaves every RNG as it found it."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
