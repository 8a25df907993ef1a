"""Dense features from a column model: the trunk's maps -> a 4-level pyramid.

PatchConvNet keeps one resolution from the stem to the last block (stride 16, or 8
for the small demo model). Dense heads (UperNet, Mask R-CNN's FPN) want a pyramid
at strides 4, 8, 16 and 32. Which trunk maps feed the four levels (``features``):

* ``last``: the last block's output for every level, as the paper does (the write-up:
  the model is not pyramidal, so it uses its last layer's output with UperNet's
  multi-level processing);
* ``blocks``: four evenly spaced blocks, as XCiT and BEiT's dense transfer.

How the paper brings that map to four strides is not stated in the sources here; the
rest of this module is chosen (paper/recipe.yaml, "dense-transfer necks"): each level's
map (``forward_intermediates``) goes through a LayerNorm2d of its own (the trunk's
output is its un-normalised residual stream: the classification model's final norm is
dropped with the head; XCiT's taps have none) and then a small neck, XCiT's resampling:

    factor stride/stem  | neck
    1/4                 | ConvTranspose(2) -> BatchNorm -> GELU -> ConvTranspose(2)
    1/2                 | ConvTranspose(2)
    1                   | identity
    2, 4                | MaxPool(2), MaxPool(4)

so a stride-16 trunk gives (x4 up, x2 up, id, /2) and the stride-8 demo trunk gives
(x2 up, id, /2, /4); the output strides are 4/8/16/32 in both cases. Every level
keeps the trunk width C.

Input sizes: the input is zero-padded on the bottom/right to a multiple of 32 (the
stride of the top level), so any size works and every level is exactly
``padded / stride``; callers that need the original size crop their output
(``PyramidBackbone.pad_to``).

The trunk is built with the model's default stochastic depth, none: no source here
gives a rate for the transfer (XCiT's dense configs use 0.05; paper/recipe.yaml).

Weights: :func:`load_trunk_weights` takes a classification checkpoint (the DAG's
``results/pretrain/model.pth`` or a released file), keeps the trunk keys
(``patch_embed.*``, ``blocks.*``) and drops the classification-only parts
(``head.*``, ``blocks_token_only.*``, ``cls_token``, ``norm.*``), and reports both lists.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

import pcn.models  # noqa: F401 - registers patchconvnet_* with timm
from pcn.models.checkpoint import CheckpointError, check_state_dict, unwrap_state_dict

log = logging.getLogger(__name__)

OUT_STRIDES = (4, 8, 16, 32)
# Classification-only parts of a checkpoint: not used by the dense trunk.
DROPPED_PREFIXES = ("head.", "head_drop.", "blocks_token_only.", "cls_token", "norm.")


def evenly_spaced_blocks(depth: int, n: int = 4) -> list[int]:
    """Indices of ``n`` evenly spaced blocks ending with the last one (depth 8 -> 1, 3, 5, 7)."""
    if depth < n:
        raise ValueError(f"a trunk of depth {depth} cannot give {n} pyramid levels")
    return [(depth * (i + 1)) // n - 1 for i in range(n)]


def pyramid_blocks(depth: int, features: str = "blocks") -> list[int]:
    """The trunk block each of the four levels reads: the last one four times (``last``),
    or four evenly spaced ones (``blocks``)."""
    if features == "last":
        return [depth - 1] * len(OUT_STRIDES)
    if features == "blocks":
        return evenly_spaced_blocks(depth, len(OUT_STRIDES))
    raise ValueError(f"features = {features!r}: expected 'last' or 'blocks'")


def _neck(channels: int, factor: float) -> nn.Module:
    """Resample a stride-s map to stride s*factor (factor in 1/4, 1/2, 1, 2, 4)."""
    if factor == 0.25:
        return nn.Sequential(
            nn.ConvTranspose2d(channels, channels, 2, stride=2),
            nn.BatchNorm2d(channels),
            nn.GELU(),
            nn.ConvTranspose2d(channels, channels, 2, stride=2),
        )
    if factor == 0.5:
        return nn.ConvTranspose2d(channels, channels, 2, stride=2)
    if factor == 1:
        return nn.Identity()
    if factor in (2, 4):
        return nn.MaxPool2d(int(factor), stride=int(factor))
    raise ValueError(f"no neck for a resampling factor of {factor} (stem stride must be 8 or 16)")


class PyramidBackbone(nn.Module):
    """A trunk (any timm model with ``forward_intermediates`` and ``feature_info``) + neck.

    ``forward(x)`` returns four NCHW maps at strides 4, 8, 16, 32 of the padded input,
    each with ``out_channels[i]`` channels.
    """

    def __init__(self, trunk: nn.Module, indices: list[int] | None = None):
        super().__init__()
        info = trunk.feature_info
        depth = len(info)
        self.indices = list(indices) if indices is not None else evenly_spaced_blocks(depth)
        if len(self.indices) != len(OUT_STRIDES):
            raise ValueError(f"need {len(OUT_STRIDES)} block indices, got {self.indices}")
        self.stem_stride = int(info[self.indices[-1]]["reduction"])
        channels = [int(info[i]["num_chs"]) for i in self.indices]
        # The classification parts (aggregation, class token, head, norm) and any block
        # after the last one we read are removed, so they cannot receive gradients.
        trunk.prune_intermediate_layers(self.indices, prune_norm=True, prune_head=True)
        self.trunk = trunk
        self.norms = nn.ModuleList([timm.layers.LayerNorm2d(c) for c in channels])
        self.necks = nn.ModuleList([_neck(c, s / self.stem_stride) for c, s in zip(channels, OUT_STRIDES)])
        self.out_channels = channels
        self.strides = OUT_STRIDES
        self.pad_to = OUT_STRIDES[-1]

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad bottom/right so both sides are multiples of 32."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.pad_to, (-w) % self.pad_to
        return F.pad(x, (0, pw, 0, ph)) if (ph or pw) else x

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.pad(x)
        blocks = sorted(set(self.indices))  # `last` reads one block for all four levels
        maps = self.trunk.forward_intermediates(x, indices=blocks, output_fmt="NCHW", intermediates_only=True)
        by_block = dict(zip(blocks, maps))
        return [neck(norm(by_block[i])) for i, norm, neck in zip(self.indices, self.norms, self.necks)]


@dataclass
class WeightsReport:
    """What a checkpoint contributed to the trunk."""

    source: str
    used: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        # "head", "cls_token", "blocks_token_only", "norm", or "blocks.<i>" for pruned blocks
        prefixes = sorted(
            {".".join(k.split(".")[:2]) if k.startswith("blocks.") else k.split(".")[0] for k in self.dropped}
        )
        return {"source": self.source, "n_used": len(self.used), "n_dropped": len(self.dropped), "dropped": prefixes}


def load_trunk_weights(trunk: nn.Module, path: str | os.PathLike) -> WeightsReport:
    """Load the trunk keys of a classification checkpoint into a pruned trunk.

    Keys the trunk has must all be present with the right shapes (``CheckpointError``
    names the first that is not); keys it lacks (head, aggregation, class token,
    final norm, blocks after the last pyramid block) are dropped and listed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: backbone checkpoint not found (run `pcn pretrain`, or pass --checkpoint)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated file, not a torch file, pickled code refused
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    state = unwrap_state_dict(obj, source=str(path))
    expected = trunk.state_dict()
    used = {k: v for k, v in state.items() if k in expected}
    dropped = sorted(k for k in state if k not in expected)
    check_state_dict(trunk, used, source=str(path), strict=True)
    trunk.load_state_dict(used, strict=True)
    report = WeightsReport(str(path), sorted(used), dropped)
    s = report.summary()
    log.info("%s: loaded %d trunk tensors, dropped %d (%s)", path, s["n_used"], s["n_dropped"], ", ".join(s["dropped"]))
    return report


def create_pyramid_backbone(
    model_name: str,
    model_options: dict | None = None,
    checkpoint: str | os.PathLike | None = None,
    indices: list[int] | None = None,
    features: str = "blocks",
) -> tuple[PyramidBackbone, WeightsReport | None]:
    """The trunk of ``model_name`` (random init, or the checkpoint's trunk) wrapped in the pyramid
    neck; the levels read ``indices``, or the blocks that ``features`` names."""
    options = dict(model_options or {})
    options.pop("num_classes", None)
    trunk = timm.create_model(model_name, num_classes=0, **options)
    if not hasattr(trunk, "forward_intermediates") or not hasattr(trunk, "prune_intermediate_layers"):
        raise ValueError(f"{model_name}: no forward_intermediates/prune_intermediate_layers (not a column model?)")
    depth = len(trunk.feature_info)
    idx = list(indices) if indices is not None else pyramid_blocks(depth, features)
    report = None
    if checkpoint is not None:
        # Prune first, so the report lists every classification-only key as dropped.
        trunk.prune_intermediate_layers(idx, prune_norm=True, prune_head=True)
        report = load_trunk_weights(trunk, checkpoint)
    return PyramidBackbone(trunk, idx), report
