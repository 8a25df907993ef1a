"""The batched RandAugment ops on the CPU: OpenCV and numpy, image by image, in place.

On the CPU, torch's batched kernels cost about twice Pillow's (gathers on int64
copies, ``grid_sample`` in float). FFCV hands over its batch as uint8 NHWC memory,
which is what OpenCV works on: a table lookup is ``cv2.LUT``, a histogram
``cv2.calcHist``, a rotation or shear ``cv2.warpAffine``. The work is still grouped per
op (one table computation for every image that drew it); only the kernel call is
per image.

Colour ops give the bytes of :mod:`pcn.data.augment.randaugment_torch` (same tables from
:mod:`pcn.data.augment.randaugment_luts`, same integer and float32 steps). Geometric ops
use OpenCV's bicubic (a = -0.75, like ``grid_sample``) on a 1/32-pixel grid, so they
differ from the torch kernel by interpolation only; the pixels whose source falls
outside the image get the fill colour by the same test as the torch kernel.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from pcn.data.augment.randaugment_luts import (
    LUT_OPS,
    NEEDS_GREY_MEAN,
    NEEDS_HISTOGRAMS,
    colour_lut,
    enhance_factor,
    grey_mean,
)

PAD = 2  # the bicubic footprint reaches 2 pixels beyond a source point
_INTERPOLATION = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


def to_nhwc(images: torch.Tensor) -> np.ndarray:
    """A uint8 NHWC copy of a uint8 [N, 3, H, W] batch, to work on in place (one plain copy
    when the batch is channels-last, as FFCV's are)."""
    return images.permute(0, 2, 3, 1).clone(memory_format=torch.contiguous_format).numpy()


def from_nhwc(batch: np.ndarray) -> torch.Tensor:
    """The [N, 3, H, W] view of NHWC memory (channels-last strides, as FFCV's batches have)."""
    return torch.from_numpy(batch).permute(0, 3, 1, 2)


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(images.float() - mean) / std`` for a uint8 [N, 3, H, W] batch, as one float32 table
    per channel (``cv2.LUT``): the bytes of torch's elementwise steps at a fraction of the
    cost. Returns float32 [N, 3, H, W] with channels-last strides."""
    ramp = torch.arange(256, dtype=torch.float32).view(1, 1, 256).expand(1, 3, 256)
    table = ramp.sub(mean.view(1, 3, 1)).div_(std.view(1, 3, 1))  # [1, 3, 256] float32
    table = table[0].t().contiguous().numpy().reshape(256, 1, 3)
    batch = images.permute(0, 2, 3, 1)
    n, h, w, c = batch.shape
    flat = np.ascontiguousarray(batch.numpy()).reshape(n * h, w, c)  # no copy for channels-last memory
    return torch.from_numpy(cv2.LUT(flat, table).reshape(n, h, w, c)).permute(0, 3, 1, 2)


def _histograms(image: np.ndarray) -> np.ndarray:
    return np.stack([cv2.calcHist([image], [c], None, [256], [0, 256]).reshape(256) for c in range(3)]).astype(np.int64)


def _grey(image: np.ndarray) -> np.ndarray:
    """Pillow's RGB -> L (16-bit fixed point), H x W int32."""
    x = image.astype(np.int32)
    return (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16


def _smooth(image: np.ndarray) -> np.ndarray:
    """Pillow's ``ImageFilter.SMOOTH``: 3x3, centre 5, divisor 13, rounded; border copied."""
    box = cv2.boxFilter(image, cv2.CV_16S, (3, 3), normalize=False, borderType=cv2.BORDER_REPLICATE)
    total = box[1:-1, 1:-1] + 4 * image[1:-1, 1:-1].astype(np.int16)
    out = image.copy()
    out[1:-1, 1:-1] = (total * 2 + 13) // 26
    return out


def _blend_into(image: np.ndarray, degenerate: np.ndarray, factor: np.float32) -> None:
    """``randaugment_luts.blend`` in numpy, the same float32 steps, written into ``image``."""
    x = image.astype(np.float32)
    d = degenerate.astype(np.float32)
    x -= d
    x *= factor
    x += d
    np.clip(x, 0, 255, out=x)
    np.copyto(image, x, casting="unsafe")  # truncates, as torch's cast does


def colour_op(batch: np.ndarray, slots: list[int], name: str, level: torch.Tensor) -> None:
    """Colour op ``name`` on images ``slots`` of the NHWC ``batch``, in place; ``level`` float64 [len(slots)]."""
    if name in LUT_OPS:
        hist = mean = None
        if name in NEEDS_HISTOGRAMS:
            hist = torch.from_numpy(np.stack([_histograms(batch[i]) for i in slots]))
        if name in NEEDS_GREY_MEAN:
            sums = torch.tensor([int(_grey(batch[i]).sum()) for i in slots], dtype=torch.int64)
            mean = grey_mean(sums, batch.shape[1] * batch.shape[2])
        tables = colour_lut(name, level, hist, mean).permute(0, 2, 1).contiguous().numpy()  # [n, 256, 3]
        for j, i in enumerate(slots):
            cv2.LUT(batch[i], tables[j].reshape(256, 1, 3), dst=batch[i])
        return
    factors = enhance_factor(level).float().numpy()
    for j, i in enumerate(slots):
        image = batch[i]
        if name == "ColorIncreasing":
            degenerate = _grey(image).astype(np.uint8)[..., None]
        elif name == "SharpnessIncreasing":
            degenerate = _smooth(image)
        else:
            raise KeyError(name)
        _blend_into(image, degenerate, factors[j])


def affine(batch: np.ndarray, slots: list[int], matrix: torch.Tensor, fill, interpolation: str) -> None:
    """Pillow's affine transform (``randaugment_torch.affine``'s matrix convention) with
    ``cv2.warpAffine``, on images ``slots`` of the NHWC ``batch``, in place.

    Pillow clamps the neighbours of a source point inside the image at its edge and
    gives the fill colour to a point outside it. OpenCV's constant border is cheap
    (it skips the outside pixels) but mixes the fill into the edge's neighbours, so
    the image is first padded by replication (the clamp, for the 4x4 bicubic
    footprint), then warped with the fill as border; a nearest-neighbour warp of an
    all-ones mask finds the points outside the original image, which take the fill.
    """
    h, w = batch.shape[1:3]
    flags = _INTERPOLATION[interpolation] | cv2.WARP_INVERSE_MAP
    fill = tuple(float(v) for v in fill)
    fill_image = np.empty((h, w, 3), dtype=np.uint8)
    fill_image[:] = fill
    ones = np.ones((h, w), dtype=np.uint8)
    for j, i in enumerate(slots):
        a, b, c, d, e, f = matrix[j].tolist()
        # OpenCV puts pixel centres on integers, Pillow on +0.5
        m = np.array([[a, b, c + 0.5 * (a + b) - 0.5], [d, e, f + 0.5 * (d + e) - 0.5]])
        padded = cv2.copyMakeBorder(batch[i], PAD, PAD, PAD, PAD, cv2.BORDER_REPLICATE)
        shifted = m + [[0, 0, PAD], [0, 0, PAD]]  # the same points in the padded image
        cv2.warpAffine(
            padded, shifted, (w, h), dst=batch[i], flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=fill
        )
        outside = cv2.warpAffine(ones, m, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0) == 0
        cv2.copyTo(fill_image, outside.view(np.uint8), batch[i])
