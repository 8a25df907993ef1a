"""timm's RandAugment and random erasing as batched tensor operations (CPU or GPU).

The FFCV loader decodes and crops on its CPU workers; the rest of the DeiT recipe
runs here on the uint8 batch, on the device the batch is on. Each image gets its
own draw, as in timm (number of ops, op choice, probability, magnitude with its
std, random sign), but the work is batched per op: the images that drew an op are
gathered and transformed together.

Two kernels run the ops: torch's (:mod:`pcn.data.augment.randaugment_torch`, any device: the
GPU's at paper scale) and OpenCV's (:mod:`pcn.data.augment.randaugment_cpu`, on the CPU, where
it is several times faster). They give the same bytes on the colour ops and differ by
interpolation only on the geometric ones.

Every op reproduces the PIL operation timm calls (Pillow's LUTs, blends, 3x3
smoothing and affine sampling, with timm's fill colour), checked against timm on
photographs in tests/test_batch_augment.py. Deliberate differences: posterize to 0 bits
gives a black image (as the Pillow of the paper's time did; current Pillow refuses 0
bits); the interpolation is one of ``bicubic`` (the recipe's: DeiT's
--train-interpolation), ``bilinear`` or ``nearest``, never timm's random pick per op; and
the bicubic kernel is torch's and OpenCV's (a = -0.75) where Pillow's is a = -0.5 (mean
difference at most 1.3 grey levels on the test photographs, 0.44 for bilinear).

Randomness comes from a ``torch.Generator`` the caller seeds, so a batch is a pure
function of that seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pcn.data.augment import randaugment_cpu, randaugment_torch
from pcn.data.augment.randaugment_policy import INCREASING_OPS, LEVEL_DENOM, RandAugmentPolicy

DEFAULT_FILL = (128, 128, 128)  # timm's _FILL, when hparams carry no img_mean
DEFAULT_TRANSLATE_PCT = 0.45  # timm's default for the *Rel translations

COLOUR_OPS = INCREASING_OPS[:3] + INCREASING_OPS[4:11]
GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
# ops whose timm level function negates the magnitude with probability 1/2
SIGNED_OPS = frozenset(GEOMETRIC_OPS + INCREASING_OPS[7:11])
# who runs the ops: OpenCV on the CPU (fast there), torch on any device (the GPU's)
KERNELS = ("auto", "torch", "opencv")


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


def _fill(hparams: dict) -> tuple[int, ...]:
    return tuple(int(v) for v in hparams.get("img_mean", DEFAULT_FILL))


def _torch_op(images: torch.Tensor, name: str, level: torch.Tensor, hparams: dict) -> torch.Tensor:
    if name in GEOMETRIC_OPS:
        matrix = _geometric_matrix(name, level, *images.shape[2:], hparams)
        return randaugment_torch.affine(images, matrix, _fill(hparams), _interpolation(hparams))
    return randaugment_torch.colour_op(images, name, level.to(images.device))


def _opencv_op(batch, slots: list[int], name: str, level: torch.Tensor, hparams: dict) -> None:
    if name in GEOMETRIC_OPS:
        matrix = _geometric_matrix(name, level, *batch.shape[1:3], hparams)
        randaugment_cpu.affine(batch, slots, matrix, _fill(hparams), _interpolation(hparams))
    else:
        randaugment_cpu.colour_op(batch, slots, name, level)


def _uses_opencv(kernels: str, images: torch.Tensor) -> bool:
    if kernels not in KERNELS:
        raise ValueError(f"RandAugment kernels = {kernels!r}: expected one of {', '.join(KERNELS)}")
    if kernels == "opencv" and images.device.type != "cpu":
        raise ValueError(f"RandAugment kernels = 'opencv' run on the CPU; the images are on {images.device}")
    return kernels == "opencv" or (kernels == "auto" and images.device.type == "cpu")


def apply_op(
    images: torch.Tensor, name: str, magnitude: torch.Tensor, hparams: dict, kernels: str = "auto"
) -> torch.Tensor:
    """timm's RandAugment op ``name`` on a uint8 [N, 3, H, W] batch, one magnitude per image.

    ``magnitude``: float [N] on timm's 0..10 scale with its sign already applied (no
    random negation here). ``hparams``: timm's (``img_mean`` fill colour,
    ``interpolation``, ``translate_pct``). ``kernels``: ``auto`` (OpenCV on the CPU,
    torch elsewhere), ``torch`` or ``opencv``. Returns uint8 [N, 3, H, W].
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"apply_op: expected uint8 [N, 3, H, W] images, got {images.dtype} {tuple(images.shape)}")
    if magnitude.shape != images.shape[:1]:
        raise ValueError(f"apply_op: magnitude has shape {tuple(magnitude.shape)}, expected [{images.shape[0]}]")
    if name not in INCREASING_OPS:
        raise ValueError(f"apply_op: op {name!r} unknown; expected one of {', '.join(INCREASING_OPS)}")
    level = _level(magnitude)
    if not _uses_opencv(kernels, images):
        return _torch_op(images, name, level, hparams)
    batch = randaugment_cpu.to_nhwc(images)
    _opencv_op(batch, list(range(len(batch))), name, level, hparams)
    return randaugment_cpu.from_nhwc(batch)


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

    def __init__(self, policy: str, hparams: dict, kernels: str = "auto"):
        self.policy = RandAugmentPolicy.parse(policy)
        self.hparams = dict(hparams)
        _interpolation(self.hparams)  # refuse an unsupported interpolation now
        self.kernels = kernels
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
        opencv = _uses_opencv(self.kernels, images)
        # OpenCV works in place on one NHWC copy; torch on gathered groups of an NCHW clone
        work = randaugment_cpu.to_nhwc(images) if opencv else images.clone()
        for layer in range(draw.op.shape[1]):
            op = draw.op[:, layer]
            for k in torch.unique(op[draw.applied[:, layer]]).tolist():
                idx = torch.nonzero((op == k) & draw.applied[:, layer]).squeeze(1)
                mag = draw.magnitude[idx, layer]
                try:
                    if opencv:
                        _opencv_op(work, idx.tolist(), self.ops[k], _level(mag), self.hparams)
                    else:
                        idx_dev = idx.to(images.device)
                        work[idx_dev] = _torch_op(work[idx_dev], self.ops[k], _level(mag), self.hparams)
                except Exception as exc:  # name the op and the images, not only a kernel's message
                    batch = randaugment_cpu.from_nhwc(work) if opencv else work
                    raise self._failure(batch, idx, self.ops[k], mag, exc) from exc
        return randaugment_cpu.from_nhwc(work) if opencv else work

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(images, self.draw(images.shape[0], generator))

    def _failure(self, images, idx, op: str, mag, exc: BaseException) -> AugmentFailure:
        """The images of the group that fail alone (on failure only: one call per image)."""
        culprits = []
        for j, i in enumerate(idx.tolist()):
            try:
                apply_op(images[i : i + 1], op, mag[j : j + 1], self.hparams, self.kernels)
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


class BatchAugment:
    """The end of the train recipe on a uint8 NCHW batch, on the batch's device:
    RandAugment, normalisation with ``mean``/``std``, random erasing, each image with
    its own draw, in timm's order.

    ``__call__(images, key)`` draws from generators seeded with ``key`` (the loader's
    hash of seed, rank, epoch and step), so a resumed run replays its batches.
    """

    def __init__(self, img_size: int, policy: str | None, erasing: float, mean, std, device, kernels: str = "auto"):
        hparams = randaugment_hparams(img_size, mean)
        self.rand_augment = BatchRandAugment(policy, hparams, kernels) if policy else None
        self.kernels = kernels
        self.erasing = float(erasing)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255

    def __call__(self, images: torch.Tensor, key: int) -> torch.Tensor:
        seed = key & 0x7FFFFFFFFFFFFFFF
        draws = torch.Generator().manual_seed(seed)
        if self.rand_augment is not None:
            images = self.rand_augment(images, draws)
        if _uses_opencv(self.kernels, images):  # the same float32 steps, as one table per channel
            images = randaugment_cpu.normalise(images, self.mean, self.std)
        else:
            images = images.float().sub_(self.mean).div_(self.std)
        if self.erasing > 0:
            noise = draws if images.device.type == "cpu" else torch.Generator(device=images.device).manual_seed(seed)
            images = random_erasing(images, self.erasing, draws, noise)
        return images
