"""RandAugment's colour ops as 256-entry tables, one per image and channel.

Eight of timm's colour ops map each channel value through a table that depends only
on the op's magnitude and on a statistic of the image (its histograms, or its grey
mean). Both kernels of the batched RandAugment (:mod:`pcn.data.augment.randaugment_torch` on
any device, :mod:`pcn.data.augment.randaugment_cpu` with OpenCV) measure the statistic their
own way and take the table from here, so the two give the same bytes.

Each table reproduces the Pillow operation timm calls: ``ImageOps.autocontrast``,
``equalize``, ``invert``, ``posterize``, ``solarize``, timm's ``solarize_add``, and
``ImageEnhance.Contrast``/``Brightness`` (a blend with a constant image: truncated,
clipped to 0..255).
"""

from __future__ import annotations

import torch

# the ops a table expresses, and the statistic each needs
LUT_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ContrastIncreasing",
    "BrightnessIncreasing",
)
NEEDS_HISTOGRAMS = frozenset({"AutoContrast", "Equalize"})
NEEDS_GREY_MEAN = frozenset({"ContrastIncreasing"})


def enhance_factor(level: torch.Tensor) -> torch.Tensor:
    """timm's ``_enhance_increasing_level_to_arg``: the blend factor of a signed level."""
    return (1.0 + level * 0.9).clamp(min=0.1)


def blend(degenerate: torch.Tensor, images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Pillow's ``Image.blend(degenerate, image, factor)`` in float32: truncated, clipped.

    ``factor`` broadcasts over ``images`` (one per image: shape [N, 1, 1, 1] or [N, 1, 1]).
    The CPU kernel runs the same float32 steps in the same order with numpy, so the
    result is the same to the bit.
    """
    f = factor.float()
    d = degenerate.float()
    out = images.float().sub_(d).mul_(f).add_(d)
    return out.clamp_(0, 255).to(torch.uint8)  # the cast truncates, as Pillow's does


def grey_mean(grey_sum: torch.Tensor, pixels: int) -> torch.Tensor:
    """``ImageEnhance.Contrast``'s degenerate value: the grey image's mean, rounded."""
    return (grey_sum.double() / pixels + 0.5).floor()


def colour_lut(
    name: str,
    level: torch.Tensor,
    histograms: torch.Tensor | None = None,
    grey_mean: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 [N, 3, 256] tables of op ``name`` for ``N`` images.

    ``level``: float64 [N], the signed magnitude over timm's 10. ``histograms``: int64
    [N, 3, 256] (AutoContrast, Equalize). ``grey_mean``: [N] (ContrastIncreasing, from
    :func:`grey_mean`). Tables live on ``level``'s device.
    """
    n, dev = level.shape[0], level.device
    ramp = torch.arange(256, device=dev, dtype=torch.int64).expand(n, 3, 256)
    if name == "Invert":
        lut = 255 - ramp
    elif name == "AutoContrast":
        seen = histograms > 0
        lo = torch.where(seen, ramp, 256).amin(dim=2, keepdim=True)
        hi = torch.where(seen, ramp, -1).amax(dim=2, keepdim=True)
        scale = 255.0 / (hi - lo).clamp(min=1).double()
        stretched = (ramp * scale - lo * scale).trunc().clamp(0, 255).long()
        lut = torch.where(hi > lo, stretched, ramp)
    elif name == "Equalize":
        top = torch.where(histograms > 0, ramp, -1).amax(dim=2, keepdim=True)
        step = (histograms.sum(dim=2, keepdim=True) - histograms.gather(2, top.clamp(min=0))) // 255
        before = histograms.cumsum(dim=2) - histograms  # pixels below each value
        equalized = ((step // 2 + before) // step.clamp(min=1)).clamp(0, 255)
        plain = ((histograms > 0).sum(dim=2, keepdim=True) <= 1) | (step == 0)
        lut = torch.where(plain, ramp, equalized)
    elif name == "PosterizeIncreasing":
        bits = 4 - (level * 4).trunc().long()  # 0 bits: black, as the Pillow of the paper's time gave
        mask = (~(2 ** (8 - bits.clamp(0, 8)) - 1)).clamp(min=-256) & 0xFF
        lut = ramp & mask.view(n, 1, 1)
    elif name == "SolarizeIncreasing":
        thresh = (256 - (level * 256).trunc().clamp(max=256)).long().view(n, 1, 1)
        lut = torch.where(ramp < thresh, ramp, 255 - ramp)
    elif name == "SolarizeAdd":
        add = (level * 110).trunc().clamp(0, 128).long().view(n, 1, 1)
        lut = torch.where(ramp < 128, (ramp + add).clamp(max=255), ramp)
    elif name == "ContrastIncreasing":
        return blend(grey_mean.view(n, 1, 1), ramp, enhance_factor(level).view(n, 1, 1))
    elif name == "BrightnessIncreasing":
        return blend(torch.zeros(n, 1, 1, device=dev), ramp, enhance_factor(level).view(n, 1, 1))
    else:
        raise KeyError(name)
    return lut.to(torch.uint8)
