"""The released PatchConvNet family by shape, and the rule that gives any other shape its LayerScale init.

The official ``patchconvnet_models.py`` starts S60 from LayerScale 1e-4 and S120, B60,
B120, L60 and L120 from 1e-6.  The depth x width grid trains shapes between and beside
them; each point takes the init of the released model nearest to it: the nearest
released width and, on its own, the nearest released depth (the family is every
width x every depth, so the pair names one model), nearness measured as a ratio
(|log a/b|), a tie going to the smaller model.  A point with a released shape takes that
model's own init.
"""

from __future__ import annotations

import math

# name: (width, depth, LayerScale init), as patchconvnet_models.py builds them
FAMILY: dict[str, tuple[int, int, float]] = {
    "patchconvnet_s60": (384, 60, 1e-4),
    "patchconvnet_s120": (384, 120, 1e-6),
    "patchconvnet_b60": (768, 60, 1e-6),
    "patchconvnet_b120": (768, 120, 1e-6),
    "patchconvnet_l60": (1024, 60, 1e-6),
    "patchconvnet_l120": (1024, 120, 1e-6),
}


def _nearest(value: int, candidates: set[int]) -> int:
    return min(sorted(candidates), key=lambda c: abs(math.log(value / c)))


def nearest_released(width: int, depth: int) -> str:
    """The released model nearest to a (width, depth) shape, by the rule of this module."""
    w = _nearest(width, {s[0] for s in FAMILY.values()})
    d = _nearest(depth, {s[1] for s in FAMILY.values()})
    return next(name for name, (fw, fd, _) in FAMILY.items() if (fw, fd) == (w, d))


def layerscale_init_for(width: int, depth: int) -> float:
    """The LayerScale init a (width, depth) PatchConvNet starts from: its nearest released model's."""
    return FAMILY[nearest_released(width, depth)][2]


def depth_width_options(width: int, depth: int) -> dict:
    """Constructor options of one depth x width point: its shape, and the LayerScale init of
    the released model nearest to it (the rule above, stated in params.yaml).
    A ``layerscale_init`` set in the grid's recipe still wins: the engine applies it last."""
    return {"embed_dim": width, "depth": depth, "layerscale_init": layerscale_init_for(width, depth)}
