"""The batched RandAugment ops in torch, on a uint8 NCHW batch on any device.

The kernel the GPU runs (after FFCV's ``ToDevice``). Colour tables come from
:mod:`pcn.data.augment.randaugment_luts`; the other ops reproduce Pillow's grey conversion,
3x3 smoothing and affine sampling. :mod:`pcn.data.augment.randaugment_cpu` is the same
recipe with OpenCV for the CPU, byte for byte on the colour ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pcn.data.augment.randaugment_luts import (
    LUT_OPS,
    NEEDS_GREY_MEAN,
    NEEDS_HISTOGRAMS,
    blend,
    colour_lut,
    enhance_factor,
    grey_mean,
)


def apply_lut(images: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Per-(image, channel) table: ``lut`` is uint8 [N, 3, 256]."""
    n, c, h, w = images.shape
    return torch.gather(lut, 2, images.reshape(n, c, h * w).long()).reshape(n, c, h, w)


def histograms(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, 256] int64 histograms of each image's channels."""
    n, c = images.shape[:2]
    offset = torch.arange(n * c, device=images.device).view(n, c, 1) * 256
    flat = (images.reshape(n, c, -1).long() + offset).reshape(-1)
    return torch.bincount(flat, minlength=n * c * 256).view(n, c, 256)


def grey(images: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB -> L conversion (ITU-R 601-2 luma in 16-bit fixed point), [N, 1, H, W]."""
    x = images.int()
    return ((x[:, 0:1] * 19595 + x[:, 1:2] * 38470 + x[:, 2:3] * 7471 + 0x8000) >> 16).to(torch.uint8)


def smooth(images: torch.Tensor) -> torch.Tensor:
    """Pillow's ``ImageFilter.SMOOTH`` (3x3, centre 5, divisor 13, rounded); border pixels copied."""
    x = images.to(torch.int16)
    rows = x[:, :, :-2] + x[:, :, 1:-1] + x[:, :, 2:]  # separable 3x3 box sum, exact in int16
    total = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    total.add_(x[:, :, 1:-1, 1:-1], alpha=4)
    out = images.clone()
    out[:, :, 1:-1, 1:-1] = total.mul_(2).add_(13).div_(26, rounding_mode="floor").to(torch.uint8)  # round(s / 13)
    return out


def affine(images: torch.Tensor, matrix: torch.Tensor, fill, interpolation: str) -> torch.Tensor:
    """Pillow's ``Image.transform(size, AFFINE, matrix, resample, fillcolor)``, batched.

    ``matrix`` [N, 6] maps an output point (x, y) to the input point
    (a x + b y + c, d x + e y + f), in pixel units with pixel centres at +0.5.
    A point outside the input takes the fill colour; inside, neighbours beyond the
    edge are clamped (Pillow's filters).
    """
    n, c, h, w = images.shape
    dev = images.device
    m = matrix.to(device=dev, dtype=torch.float32)
    ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5).view(1, h, 1)
    xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5).view(1, 1, w)
    a, b, cc, d, e, f = (m[:, i].view(n, 1, 1) for i in range(6))
    grid = torch.empty(n, h, w, 2, device=dev)
    xin = torch.add(a * xs, b * ys + cc, out=grid[..., 0])
    yin = torch.add(d * xs, e * ys + f, out=grid[..., 1])
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    # grid_sample with align_corners=False puts -1/+1 on the outer pixel edges, as Pillow does
    xin.mul_(2 / w).sub_(1)
    yin.mul_(2 / h).sub_(1)
    mode = interpolation  # grid_sample's names are Pillow's (its bicubic is a = -0.75, Pillow's -0.5)
    out = F.grid_sample(images.float(), grid, mode=mode, padding_mode="border", align_corners=False)
    fill_t = torch.tensor(fill, dtype=torch.float32, device=dev).view(1, c, 1, 1)
    out = torch.where(inside.unsqueeze(1), out, fill_t)
    return out.add_(0.5).clamp_(0, 255).to(torch.uint8)


def colour_op(images: torch.Tensor, name: str, level: torch.Tensor) -> torch.Tensor:
    """A colour op on [N, 3, H, W] uint8; ``level`` float64 [N] on the images' device."""
    if name in LUT_OPS:
        hist = histograms(images) if name in NEEDS_HISTOGRAMS else None
        mean = None
        if name in NEEDS_GREY_MEAN:
            mean = grey_mean(grey(images).sum(dim=(1, 2, 3)), images.shape[2] * images.shape[3])
        return apply_lut(images, colour_lut(name, level, hist, mean))
    factor = enhance_factor(level).view(-1, 1, 1, 1)
    if name == "ColorIncreasing":
        return blend(grey(images).expand_as(images), images, factor)
    if name == "SharpnessIncreasing":
        return blend(smooth(images), images, factor)
    raise KeyError(name)
