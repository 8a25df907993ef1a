"""timm's RandAugment policy strings (``rand-m9-mstd0.5-inc1``), parsed without torch.

The batched RandAugment (:mod:`pcn.data.augment.batch`) runs timm's increasing op
set. ``pcn params`` refuses any other policy for the FFCV loader through
:func:`check_policy`, which must stay light: no torch, no timm. The parser follows
timm's ``rand_augment_transform`` section by section (tests/test_batch_augment.py
compares the two on the supported strings).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

LEVEL_DENOM = 10.0  # timm's _LEVEL_DENOM: magnitudes run 0..10

# timm's _RAND_INCREASING_TRANSFORMS, in timm's order
INCREASING_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
SUPPORTED = (
    "rand-m<M>[-n<N>][-mstd<S>][-mmax<X>][-p<P>]-inc1 (timm's increasing ops: " + ", ".join(INCREASING_OPS) + ")"
)


@dataclass(frozen=True)
class RandAugmentPolicy:
    """A ``rand-...`` string with timm's meaning and defaults."""

    ops: tuple[str, ...] = INCREASING_OPS
    num_layers: int = 2
    prob: float = 0.5
    magnitude: float = LEVEL_DENOM
    magnitude_std: float = 0.0  # inf: uniform in [0, magnitude]
    magnitude_max: float = LEVEL_DENOM

    @classmethod
    def parse(cls, policy: str, key: str = "aug.auto_augment") -> RandAugmentPolicy:
        refused = f"{key} = {policy!r}: the FFCV loader's batched RandAugment runs {SUPPORTED}"
        sections = policy.split("-")
        if sections[0] != "rand":
            raise ValueError(refused)
        fields: dict = {}
        increasing = False
        for section in sections[1:]:
            parts = re.split(r"(\d.*)", section)
            if section.startswith("t") or (len(parts) >= 2 and parts[0] not in ("mstd", "mmax", "inc", "m", "n", "p")):
                raise ValueError(f"{refused}; section {section!r} is not")
            if len(parts) < 2:
                continue  # timm skips a section without a number
            name, value = parts[:2]
            if name == "mstd":
                std = float(value)
                fields.setdefault("magnitude_std", math.inf if std > 100 else std)  # timm: setdefault
            elif name == "mmax":
                fields.setdefault("magnitude_max", float(int(value)))
            elif name == "inc":
                increasing = bool(int(value))
            elif name == "m":
                fields["magnitude"] = float(int(value))
            elif name == "n":
                fields["num_layers"] = int(value)
            else:
                fields["prob"] = float(value)
        if not increasing:
            raise ValueError(f"{refused}; without -inc1 timm draws other ops")
        return cls(**fields)


def check_policy(policy: str | None, key: str = "aug.auto_augment") -> None:
    """Refuse, in one line naming ``key``, a policy the batched path cannot run."""
    if policy:
        RandAugmentPolicy.parse(policy, key)
