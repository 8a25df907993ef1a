"""timm's RandAugment and random erasing as batched tensor operations (CPU or GPU).

The FFCV loader decodes and crops on its CPU workers; the rest of the DeiT recipe
runs here on the uint8 batch, on the device the batch is on. Each image gets its
own draw, as in timm (number of ops, op choice, probability, magnitude with its
std, random sign), but the work is batched per op: the images that drew an op are
gathered and transformed together.

Every op reproduces the PIL operation timm calls (Pillow's LUTs, blends, 3x3
smoothing and affine sampling, with timm's fill colour), checked against timm on
photographs in tests/test_batch_augment.py. Deliberate differences: posterize to 0 bits
gives a black image (as the Pillow of the paper's time did; current Pillow refuses 0
bits); the interpolation is one of ``bicubic`` (the recipe's: DeiT's
--train-interpolation), ``bilinear`` or ``nearest``, never timm's random pick per op; and
the bicubic kernel is torch's (a = -0.75) where Pillow's is a = -0.5 (mean difference at
most 1.3 grey levels on the test photographs, 0.44 for bilinear).

Randomness comes from a ``torch.Generator`` the caller seeds, so a batch is a pure
function of that seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pcn.data.randaugment_policy import INCREASING_OPS, LEVEL_DENOM, RandAugmentPolicy

DEFAULT_FILL = (128, 128, 128)  # timm's _FILL, when hparams carry no img_mean
DEFAULT_TRANSLATE_PCT = 0.45  # timm's default for the *Rel translations

COLOUR_OPS = INCREASING_OPS[:3] + INCREASING_OPS[4:11]
GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
# ops whose timm level function negates the magnitude with probability 1/2
SIGNED_OPS = frozenset(GEOMETRIC_OPS + INCREASING_OPS[7:11])


# --- helpers: LUTs, blends, affine sampling ---------------------------------------------


def _apply_lut(images: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Per-(image, channel) LUT: ``lut`` is [N, 3, 256] (or [N, 1, 256]) of uint8 values."""
    n, c, h, w = images.shape
    lut = lut.expand(n, c, 256).to(torch.uint8)
    return torch.gather(lut, 2, images.reshape(n, c, h * w).long()).reshape(n, c, h, w)


def _histograms(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, 256] int64 histograms of each image's channels."""
    n, c = images.shape[:2]
    offset = torch.arange(n * c, device=images.device).view(n, c, 1) * 256
    flat = (images.reshape(n, c, -1).long() + offset).reshape(-1)
    return torch.bincount(flat, minlength=n * c * 256).view(n, c, 256)


def _blend(degenerate: torch.Tensor, images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Pillow's ``Image.blend(degenerate, image, factor)``: truncated, clipped to 0..255."""
    f = factor.view(-1, 1, 1, 1).float()
    d = degenerate.float()
    out = images.float().sub_(d).mul_(f).add_(d)
    return out.clamp_(0, 255).to(torch.uint8)  # the cast truncates, as Pillow's does


def _grey(images: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB -> L conversion (ITU-R 601-2 luma in 16-bit fixed point), [N, 1, H, W]."""
    x = images.int()
    return ((x[:, 0:1] * 19595 + x[:, 1:2] * 38470 + x[:, 2:3] * 7471 + 0x8000) >> 16).to(torch.uint8)


def _smooth(images: torch.Tensor) -> torch.Tensor:
    """Pillow's ``ImageFilter.SMOOTH`` (3x3, centre 5, divisor 13); border pixels copied."""
    x = images.to(torch.int16)
    rows = x[:, :, :-2] + x[:, :, 1:-1] + x[:, :, 2:]  # separable 3x3 box sum, exact in int16
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    inner = box.add_(x[:, :, 1:-1, 1:-1], alpha=4).float().div_(13.0).add_(0.5)
    out = images.clone()
    out[:, :, 1:-1, 1:-1] = inner.clamp_(0, 255).to(torch.uint8)
    return out


def _affine(images: torch.Tensor, matrix: torch.Tensor, fill, interpolation: str) -> torch.Tensor:
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


def _interpolation(hparams: dict) -> str:
    value = hparams.get("interpolation")
    names = {
        3: "bicubic",
        2: "bilinear",
        0: "nearest",
        "bicubic": "bicubic",
        "bilinear": "bilinear",
        "nearest": "nearest",
    }
    try:
        return names[int(value) if not isinstance(value, str) else value.lower()]
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"RandAugment hparams interpolation = {value!r}: the batched ops support 'bicubic', 'bilinear' or 'nearest'"
        ) from None


# --- the ops --------------------------------------------------------------------------


def _level(magnitude: torch.Tensor) -> torch.Tensor:
    return magnitude.double() / LEVEL_DENOM


def _colour_op(images: torch.Tensor, name: str, level: torch.Tensor) -> torch.Tensor:
    n = images.shape[0]
    dev = images.device
    ramp = torch.arange(256, device=dev, dtype=torch.int64)
    if name == "Invert":
        return 255 - images
    if name == "AutoContrast":
        hist = _histograms(images) > 0
        lo = torch.where(hist, ramp, 256).amin(dim=2, keepdim=True)
        hi = torch.where(hist, ramp, -1).amax(dim=2, keepdim=True)
        scale = 255.0 / (hi - lo).clamp(min=1).double()
        lut = (ramp * scale - lo * scale).trunc().clamp(0, 255)
        return _apply_lut(images, torch.where(hi > lo, lut, ramp.double()))
    if name == "Equalize":
        hist = _histograms(images)
        top = torch.where(hist > 0, ramp, -1).amax(dim=2, keepdim=True)
        step = (hist.sum(dim=2, keepdim=True) - hist.gather(2, top.clamp(min=0))) // 255
        before = hist.cumsum(dim=2) - hist  # pixels below each value
        lut = ((step // 2 + before) // step.clamp(min=1)).clamp(0, 255)
        plain = ((hist > 0).sum(dim=2, keepdim=True) <= 1) | (step == 0)
        return _apply_lut(images, torch.where(plain, ramp, lut))
    if name == "PosterizeIncreasing":
        bits = 4 - (level * 4).trunc().long()  # 0 bits: black, as the Pillow of the paper's time gave
        mask = (~(2 ** (8 - bits.clamp(0, 8)) - 1)).clamp(min=-256) & 0xFF
        return images & mask.view(n, 1, 1, 1).to(dev, torch.uint8)
    if name == "SolarizeIncreasing":
        thresh = (256 - (level * 256).trunc().clamp(max=256)).view(n, 1, 1, 1).to(dev, torch.int16)
        return torch.where(images.to(torch.int16) < thresh, images, 255 - images)
    if name == "SolarizeAdd":
        add = (level * 110).trunc().clamp(0, 128).view(n, 1, 1, 1).to(dev, torch.int16)
        return torch.where(images < 128, (images.to(torch.int16) + add).clamp(max=255).to(torch.uint8), images)
    factor = (1.0 + level * 0.9).clamp(min=0.1).to(dev)  # timm's _enhance_increasing_level_to_arg
    if name == "ColorIncreasing":
        return _blend(_grey(images).expand_as(images), images, factor)
    if name == "ContrastIncreasing":
        mean = (_grey(images).double().mean(dim=(1, 2, 3)) + 0.5).floor()
        return _blend(mean.view(n, 1, 1, 1).expand_as(images), images, factor)
    if name == "BrightnessIncreasing":
        return _blend(torch.zeros_like(images), images, factor)
    if name == "SharpnessIncreasing":
        return _blend(_smooth(images), images, factor)
    raise KeyError(name)


def _geometric_matrix(name: str, level: torch.Tensor, h: int, w: int, hparams: dict) -> torch.Tensor:
    """[N, 6] affine matrices timm's geometric ops hand to Pillow."""
    one, zero = torch.ones_like(level), torch.zeros_like(level)
    if name == "Rotate":  # Image.rotate(degrees) about the centre, expand=False
        rad = -torch.deg2rad(level * 30.0)
        cos, sin = torch.cos(rad), torch.sin(rad)
        cx, cy = w / 2.0, h / 2.0
        c = cos * -cx + sin * -cy + cx
        f = -sin * -cx + cos * -cy + cy
        return torch.stack((cos, sin, c, -sin, cos, f), dim=1)
    if name == "ShearX":
        return torch.stack((one, level * 0.3, zero, zero, one, zero), dim=1)
    if name == "ShearY":
        return torch.stack((one, zero, zero, level * 0.3, one, zero), dim=1)
    pct = level * float(hparams.get("translate_pct", DEFAULT_TRANSLATE_PCT))
    if name == "TranslateXRel":
        return torch.stack((one, zero, pct * w, zero, one, zero), dim=1)
    if name == "TranslateYRel":
        return torch.stack((one, zero, zero, zero, one, pct * h), dim=1)
    raise KeyError(name)


def apply_op(images: torch.Tensor, name: str, magnitude: torch.Tensor, hparams: dict) -> torch.Tensor:
    """timm's RandAugment op ``name`` on a uint8 [N, 3, H, W] batch, one magnitude per image.

    ``magnitude``: float [N] on timm's 0..10 scale with its sign already applied (no
    random negation here). ``hparams``: timm's (``img_mean`` fill colour,
    ``interpolation``, ``translate_pct``). Returns uint8 [N, 3, H, W].
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"apply_op: expected uint8 [N, 3, H, W] images, got {images.dtype} {tuple(images.shape)}")
    if magnitude.shape != images.shape[:1]:
        raise ValueError(f"apply_op: magnitude has shape {tuple(magnitude.shape)}, expected [{images.shape[0]}]")
    if name not in INCREASING_OPS:
        raise ValueError(f"apply_op: op {name!r} unknown; expected one of {', '.join(INCREASING_OPS)}")
    level = _level(magnitude)
    if name in GEOMETRIC_OPS:
        h, w = images.shape[2:]
        fill = tuple(int(v) for v in hparams.get("img_mean", DEFAULT_FILL))
        matrix = _geometric_matrix(name, level, h, w, hparams)
        return _affine(images, matrix, fill, _interpolation(hparams))
    return _colour_op(images, name, level.to(images.device))


# --- RandAugment: per-image draws, per-op work ---------------------------------------------


@dataclass(frozen=True)
class Draw:
    """One batch's draws: op index, applied or skipped, signed magnitude, per (image, layer)."""

    op: torch.Tensor  # int64 [N, L], index into INCREASING_OPS
    applied: torch.Tensor  # bool [N, L]
    magnitude: torch.Tensor  # float64 [N, L], clipped and signed (for SIGNED_OPS)


class AugmentFailure(RuntimeError):
    """An op of the batched recipe raised: names the op and the batch slots it ran on."""

    def __init__(self, op: str, slots: list[int], magnitudes: list[float], exc: BaseException):
        shown = ", ".join(f"{m:.2f}" for m in magnitudes[:4])
        super().__init__(f"RandAugment op {op} at magnitude {shown} raised {type(exc).__name__}: {exc}")
        self.op, self.slots = op, slots


class BatchRandAugment:
    """timm's ``RandAugment`` (``rand_augment_transform(policy, hparams)``) on a uint8 batch."""

    def __init__(self, policy: str, hparams: dict):
        self.policy = RandAugmentPolicy.parse(policy)
        self.hparams = dict(hparams)
        _interpolation(self.hparams)  # refuse an unsupported interpolation now
        self.ops = self.policy.ops
        self._signed = torch.tensor([op in SIGNED_OPS for op in self.ops])

    def draw(self, n: int, generator: torch.Generator) -> Draw:
        """timm's per-image draws for ``n`` images, from ``generator`` (a CPU generator)."""
        p = self.policy
        shape = (n, p.num_layers)
        op = torch.randint(len(self.ops), shape, generator=generator)  # uniform, with replacement
        applied = torch.rand(shape, generator=generator, dtype=torch.float64) <= p.prob
        if p.magnitude_std == math.inf:
            mag = torch.rand(shape, generator=generator, dtype=torch.float64) * p.magnitude
        elif p.magnitude_std > 0:
            mag = p.magnitude + p.magnitude_std * torch.randn(shape, generator=generator, dtype=torch.float64)
        else:
            mag = torch.full(shape, p.magnitude, dtype=torch.float64)
        mag = mag.clamp(0.0, p.magnitude_max)
        negate = torch.rand(shape, generator=generator, dtype=torch.float64) > 0.5
        mag = torch.where(negate & self._signed[op], -mag, mag)
        return Draw(op, applied, mag)

    def apply(self, images: torch.Tensor, draw: Draw) -> torch.Tensor:
        """Run ``draw`` on ``images``: layer by layer, each op once on the images that drew it."""
        out = images.clone()
        dev = images.device
        for layer in range(draw.op.shape[1]):
            op = draw.op[:, layer]
            for k in torch.unique(op[draw.applied[:, layer]]).tolist():
                idx = torch.nonzero((op == k) & draw.applied[:, layer]).squeeze(1)
                idx_dev = idx.to(dev)
                mag = draw.magnitude[idx, layer]
                try:
                    out[idx_dev] = apply_op(out[idx_dev], self.ops[k], mag, self.hparams)
                except Exception as exc:  # name the op and the images, not only a kernel's message
                    raise self._failure(out, idx, self.ops[k], mag, exc) from exc
        return out

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(images, self.draw(images.shape[0], generator))

    def _failure(self, images, idx, op: str, mag, exc: BaseException) -> AugmentFailure:
        """The images of the group that fail alone (on failure only: one call per image)."""
        culprits = []
        for j, i in enumerate(idx.tolist()):
            try:
                apply_op(images[i : i + 1], op, mag[j : j + 1], self.hparams)
            except Exception:
                culprits.append(j)
        culprits = culprits or list(range(len(idx)))
        return AugmentFailure(op, [int(idx[j]) for j in culprits], [float(mag[j]) for j in culprits], exc)


# --- random erasing -----------------------------------------------------------------------


def random_erasing(
    images: torch.Tensor,
    prob: float,
    generator: torch.Generator,
    noise_generator: torch.Generator | None = None,
    *,
    min_area: float = 0.02,
    max_area: float = 1 / 3,
    min_aspect: float = 0.3,
    attempts: int = 10,
) -> torch.Tensor:
    """timm's ``RandomErasing(prob, mode='pixel', max_count=1)`` on a normalised float batch.

    Per image: erase with probability ``prob``; up to ``attempts`` boxes of area
    U(min_area, max_area) x H x W and log-uniform aspect are drawn, the first that
    fits is filled with standard normal noise. Box draws come from ``generator``
    (CPU); the noise from ``noise_generator`` (on the images' device; default
    ``generator``). In place; returns ``images``.
    """
    n, c, h, w = images.shape
    g = generator
    erase = torch.rand(n, generator=g, dtype=torch.float64) < prob
    area = torch.empty(n, attempts, dtype=torch.float64).uniform_(min_area, max_area, generator=g) * (h * w)
    log_r = math.log(min_aspect), math.log(1 / min_aspect)
    aspect = torch.exp(torch.empty(n, attempts, dtype=torch.float64).uniform_(*log_r, generator=g))
    bh = torch.round(torch.sqrt(area * aspect)).long()
    bw = torch.round(torch.sqrt(area / aspect)).long()
    u_top = torch.rand(n, attempts, generator=g, dtype=torch.float64)
    u_left = torch.rand(n, attempts, generator=g, dtype=torch.float64)
    fits = (bw < w) & (bh < h)
    first = torch.argmax(fits.int(), dim=1)  # first fitting attempt (0 when none fits)
    erase &= fits.any(dim=1)
    noise_g = noise_generator if noise_generator is not None else g
    for i in torch.nonzero(erase).squeeze(1).tolist():
        a = int(first[i])
        hh, ww = int(bh[i, a]), int(bw[i, a])
        top = int(u_top[i, a] * (h - hh + 1))  # randint(0, h - hh), inclusive
        left = int(u_left[i, a] * (w - ww + 1))
        noise = torch.randn((c, hh, ww), generator=noise_g, device=images.device, dtype=images.dtype)
        images[i, :, top : top + hh, left : left + ww] = noise
    return images


# --- the end of the train recipe on a batch -------------------------------------------------


def randaugment_hparams(img_size: int, mean: tuple[float, ...]) -> dict:
    """timm's RandAugment hparams as ``transforms_imagenet_train`` makes them for the
    recipe (interpolation 'bicubic': DeiT's --train-interpolation, as the torch loader asks for)."""
    return {
        "translate_const": int(img_size * 0.45),
        "img_mean": tuple(min(255, round(255 * x)) for x in mean),
        "interpolation": "bicubic",
    }


class BatchRecipe:
    """The end of the train recipe on a uint8 NCHW batch, on the batch's device:
    RandAugment, normalisation with ``mean``/``std``, random erasing, each image with
    its own draw, in timm's order.

    ``__call__(images, key)`` draws from generators seeded with ``key`` (the loader's
    hash of seed, rank, epoch and step), so a resumed run replays its batches.
    """

    def __init__(self, img_size: int, policy: str | None, erasing: float, mean, std, device):
        self.rand_augment = BatchRandAugment(policy, randaugment_hparams(img_size, mean)) if policy else None
        self.erasing = float(erasing)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255

    def __call__(self, images: torch.Tensor, key: int) -> torch.Tensor:
        seed = key & 0x7FFFFFFFFFFFFFFF
        draws = torch.Generator().manual_seed(seed)
        if self.rand_augment is not None:
            images = self.rand_augment(images, draws)
        images = images.float().sub_(self.mean).div_(self.std)
        if self.erasing > 0:
            noise = draws if images.device.type == "cpu" else torch.Generator(device=images.device).manual_seed(seed)
            images = random_erasing(images, self.erasing, draws, noise)
        return images
