"""The image recipe of the paper, declared once for both loaders.

PatchConvNet trains with the DeiT recipe: random-resized-crop, horizontal flip,
RandAugment (or DeiT III's 3-Augment), ImageNet normalisation; mixup / cutmix and
label smoothing are batch-level and belong to the training engine (timm ``Mixup``).
Evaluation takes a centre crop of ``crop_ratio`` of the shorter side and resizes it
to ``img_size``.

Two implementations of that recipe live here, side by side, so a reader can check
one against the other:

* ``torch_train_transform`` / ``torch_eval_transform``: PIL + torchvision + timm
  (timm owns RandAugment and 3-Augment, policy ``'3a'``), used by the ``torch`` loader.
* ``ffcv_image_pipeline``: lists of FFCV operations (numba, on uint8 HWC batches),
  written like ffcv-imagenet's ``train_imagenet.py``, used by the ``ffcv`` loader.

Geometry is shared exactly: the eval crop box is FFCV's (``center_crop_box``) and
both eval paths resize it with OpenCV's area filter, so FFCV and torch eval images
agree pixel for pixel on losslessly stored data. Train-time resampling differs
(FFCV: area; torch: PIL bilinear with antialiasing), as do the random streams.

Randomness is a pure function of (seed, rank, epoch, position in the epoch): the
torch loader seeds its RNGs per sample, the FFCV operations draw from a counter-based
hash (splitmix64) instead of numba's per-thread generators, which FFCV 1.0.2 leaves
unseeded. So two loaders built with the same seed yield identical batches,
whatever the number of workers.

RandAugment is torch-loader only: its 14 PIL operations have no FFCV counterpart,
and the FFCV loader refuses ``aug.auto_augment`` with an error saying so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

if TYPE_CHECKING:
    from pcn.config import AugConfig

IMAGENET_MEAN = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD = tuple(IMAGENET_DEFAULT_STD)
RRC_RATIO = (
    3.0 / 4.0,
    4.0 / 3.0,
)  # aspect-ratio range of random-resized-crop (torchvision/timm/FFCV default)
BLUR_SIGMA = (
    0.1,
    2.0,
)  # 3-Augment's Gaussian blur radius range (DeiT III, timm 'GaussianBlurRand')
SOLARIZE_THRESHOLD = 128  # 3-Augment's solarize threshold (PIL ImageOps.solarize default)


# --- the recipe ---------------------------------------------------------------------


@dataclass(frozen=True)
class TrainAug:
    """The train-time augmentation the loaders apply (the per-image part of AugConfig)."""

    hflip: float = 0.5
    scale_min: float = 0.08
    auto_augment: str | None = None
    three_augment: bool = False
    color_jitter: float = 0.0
    random_erasing: float = 0.0

    @classmethod
    def from_config(cls, aug: AugConfig | None) -> TrainAug:
        if aug is None:
            return cls()
        return cls(
            hflip=aug.hflip,
            scale_min=aug.scale_min,
            auto_augment=aug.auto_augment,
            three_augment=aug.three_augment,
            color_jitter=aug.color_jitter,
            random_erasing=aug.random_erasing,
        )

    def validate(self) -> None:
        if self.auto_augment and self.three_augment:
            raise ValueError(
                "aug.auto_augment and aug.three_augment are both set; the recipe uses one of them "
                "(RandAugment for DeiT, 3-Augment for DeiT III)"
            )


def center_crop_box(height: int, width: int, ratio: float) -> tuple[int, int, int, int]:
    """(top, left, size, size) of the eval crop: FFCV's ``get_center_crop``, verbatim.

    A square of ``int(ratio * shorter side)`` pixels, centred with floor division.
    Same geometry as ``Resize(img_size / ratio)`` + ``CenterCrop(img_size)``, without
    that pair's double rounding.
    """
    c = int(ratio * min(height, width))
    return (height - c) // 2, (width - c) // 2, c, c


# --- torch (PIL) implementation -----------------------------------------------------


class CenterCropResize:
    """Eval crop for PIL images: FFCV's crop box, resized with OpenCV's area filter.

    FFCV's ``CenterCropRGBImageDecoder`` calls ``cv2.resize(..., INTER_AREA)`` on that
    box; doing the same here makes both loaders' eval images identical on losslessly
    stored data (checked in tests/test_loaders.py).
    """

    def __init__(self, size: int, ratio: float):
        self.size = int(size)
        self.ratio = float(ratio)

    def __call__(self, img):
        import cv2

        arr = np.asarray(img.convert("RGB"))
        top, left, h, w = center_crop_box(arr.shape[0], arr.shape[1], self.ratio)
        crop = arr[top : top + h, left : left + w]
        out = cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)  # uint8 CHW

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, ratio={self.ratio})"


class NormalizeUint8:
    """uint8 CHW tensor -> float32 CHW normalised with ImageNet mean/std."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


def torch_train_transform(img_size: int, aug: TrainAug) -> Callable:
    """DeiT's train transform, built by timm (which owns RandAugment and 3-Augment)."""
    from timm.data.transforms_factory import transforms_imagenet_train

    aug.validate()
    auto_augment = aug.auto_augment or ("3a" if aug.three_augment else None)
    return transforms_imagenet_train(
        img_size=img_size,
        scale=(aug.scale_min, 1.0),
        ratio=RRC_RATIO,
        hflip=aug.hflip,
        vflip=0.0,
        # timm turns colour jitter off under RandAugment (as DeiT does) and keeps it for '3a'.
        color_jitter=aug.color_jitter if aug.color_jitter > 0 else None,
        auto_augment=auto_augment,
        interpolation="bilinear",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        # DeiT's --reprob: one box per image, erased with per-pixel noise (after normalising)
        re_prob=aug.random_erasing,
        re_mode="pixel",
        re_count=1,
    )


def torch_eval_transform(img_size: int, crop_ratio: float) -> Callable:
    from torchvision import transforms

    return transforms.Compose([CenterCropResize(img_size, crop_ratio), NormalizeUint8()])


# --- FFCV (numba) implementation ------------------------------------------------------
#
# Every random FFCV operation below owns a small "clock": a uint64 array holding
# [stream key, epoch, batch counter] whose address is compiled into the numba code.
# The loader writes the epoch and zeroes the counter before each epoch; the operation
# bumps the counter once per batch (batches run one after another in FFCV's loader
# thread) and derives every random number from (key, epoch, batch, slot, draw).

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0


def mix64(x):
    """splitmix64's finaliser: a bijective 64-bit hash (python ints or numba uint64)."""
    x = np.uint64(x)
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def stream_key(*parts: int) -> int:
    """Hash of integers (seed, rank, salt...) into one 64-bit key."""
    with np.errstate(over="ignore"):
        key = np.uint64(0)
        for p in parts:
            key = mix64(key ^ mix64(np.uint64(p & 0xFFFFFFFFFFFFFFFF) + _GOLDEN))
    return int(key)


def _numba_helpers():
    """numba versions of the hash helpers (compiled lazily, on first FFCV use)."""
    from numba import njit

    mix = njit(mix64)

    @njit
    def sample_key(epoch_key, batch, slot):
        return mix(epoch_key ^ mix((np.uint64(batch) << np.uint64(20)) + np.uint64(slot) + _GOLDEN))

    @njit
    def uniform(key, draw):
        return float(mix(key ^ mix(np.uint64(draw) + _GOLDEN)) >> _S11) * _INV53

    return mix, sample_key, uniform


class _Clock:
    """[key, epoch, batch counter], read (and the counter bumped) from compiled code."""

    def __init__(self, salt: int):
        self.salt = salt
        self.cell = np.zeros(3, dtype=np.uint64)

    def configure(self, seed: int, rank: int) -> None:
        self.cell[0] = np.uint64(stream_key(seed, rank, self.salt))

    def start_epoch(self, epoch: int) -> None:
        self.cell[1] = np.uint64(epoch)
        self.cell[2] = np.uint64(0)

    def compile_tick(self):
        """A numba function returning (epoch key, batch number) and advancing the counter."""
        from ffcv.libffcv import ctypes_memcopy
        from numba import njit

        mix, _, _ = _numba_helpers()
        address = self.cell.ctypes.data  # fixed for this clock's lifetime

        @njit(nogil=True)
        def tick():
            state = np.empty(3, dtype=np.uint64)
            ctypes_memcopy(address, state.ctypes.data, 24)
            batch = state[2]
            state[2] = batch + np.uint64(1)
            ctypes_memcopy(state.ctypes.data, address, 24)
            return mix(state[0] ^ mix(state[1] + _GOLDEN)), batch

        return tick


def _ffcv_ops():
    """Define the FFCV operation classes (ffcv and numba are imported only when used)."""
    from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder
    from ffcv.libffcv import imdecode, resize_crop
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.operation import Operation
    from numba import njit

    _, sample_key, uniform = _numba_helpers()

    @njit
    def seeded_random_crop(height, width, scale_lo, scale_hi, log_r0, log_r1, key):
        # torchvision's / FFCV's RandomResizedCrop.get_params, with hashed draws.
        area = height * width
        for attempt in range(10):
            target_area = area * (scale_lo + (scale_hi - scale_lo) * uniform(key, 4 * attempt))
            aspect = math.exp(log_r0 + (log_r1 - log_r0) * uniform(key, 4 * attempt + 1))
            w = int(round(math.sqrt(target_area * aspect)))  # noqa: RUF046 - explicit for numba
            h = int(round(math.sqrt(target_area / aspect)))  # noqa: RUF046 - explicit for numba
            if 0 < w <= width and 0 < h <= height:
                i = int(uniform(key, 4 * attempt + 2) * (height - h + 1))
                j = int(uniform(key, 4 * attempt + 3) * (width - w + 1))
                return i, j, h, w
        in_ratio = width / height
        if in_ratio < math.exp(log_r0):
            w = width
            h = int(round(w / math.exp(log_r0)))  # noqa: RUF046 - explicit for numba
        elif in_ratio > math.exp(log_r1):
            h = height
            w = int(round(h * math.exp(log_r1)))  # noqa: RUF046 - explicit for numba
        else:
            w = width
            h = height
        return (height - h) // 2, (width - w) // 2, h, w

    class SeededRandomResizedCrop(ResizedCropRGBImageDecoder):
        """FFCV's RandomResizedCropRGBImageDecoder with reproducible crops."""

        def __init__(self, output_size, scale=(0.08, 1.0), ratio=RRC_RATIO):
            super().__init__(output_size)
            self.scale = scale
            self.ratio = ratio
            self.clock = _Clock(salt=1)

        @property
        def get_crop_generator(self):  # unused: generate_code below draws seeded crops
            raise NotImplementedError

        def generate_code(self) -> Callable:
            jpg = IMAGE_MODES["jpg"]
            mem_read = self.memory_read
            my_range = Compiler.get_iterator()
            imdecode_c = Compiler.compile(imdecode)
            resize_crop_c = Compiler.compile(resize_crop)
            tick = self.clock.compile_tick()
            scale_lo, scale_hi = float(self.scale[0]), float(self.scale[1])
            log_r0, log_r1 = math.log(self.ratio[0]), math.log(self.ratio[1])

            def decode(batch_indices, my_storage, metadata, storage_state):
                destination, temp_storage = my_storage
                epoch_key, batch = tick()
                for dst_ix in my_range(len(batch_indices)):
                    source_ix = batch_indices[dst_ix]
                    field = metadata[source_ix]
                    image_data = mem_read(field["data_ptr"], storage_state)
                    height = np.uint32(field["height"])
                    width = np.uint32(field["width"])
                    if field["mode"] == jpg:
                        temp_buffer = temp_storage[dst_ix]
                        imdecode_c(
                            image_data,
                            temp_buffer,
                            height,
                            width,
                            height,
                            width,
                            0,
                            0,
                            1,
                            1,
                            False,
                            False,
                        )
                        selected_size = 3 * height * width
                        temp_buffer = temp_buffer.reshape(-1)[:selected_size]
                        temp_buffer = temp_buffer.reshape(height, width, 3)
                    else:
                        temp_buffer = image_data.reshape(height, width, 3)
                    key = sample_key(epoch_key, batch, dst_ix)
                    i, j, h, w = seeded_random_crop(
                        np.int64(height),
                        np.int64(width),
                        scale_lo,
                        scale_hi,
                        log_r0,
                        log_r1,
                        key,
                    )
                    resize_crop_c(temp_buffer, i, i + h, j, j + w, destination[dst_ix])
                return destination[: len(batch_indices)]

            decode.is_parallel = True
            return decode

    class SeededHorizontalFlip(Operation):
        """Flip each image with probability ``flip_prob`` (reproducible)."""

        def __init__(self, flip_prob: float = 0.5):
            super().__init__()
            self.flip_prob = flip_prob
            self.clock = _Clock(salt=2)

        def generate_code(self) -> Callable:
            my_range = Compiler.get_iterator()
            flip_prob = float(self.flip_prob)
            tick = self.clock.compile_tick()

            def flip(images, dst):
                epoch_key, batch = tick()
                for i in my_range(images.shape[0]):
                    if uniform(sample_key(epoch_key, batch, i), 0) < flip_prob:
                        dst[i] = images[i, :, ::-1]
                    else:
                        dst[i] = images[i]
                return dst[: images.shape[0]]

            flip.is_parallel = True
            return flip

        def declare_state_and_memory(self, previous_state):
            return replace(previous_state, jit_mode=True), AllocationQuery(previous_state.shape, previous_state.dtype)

    @njit
    def to_gray(r, g, b):
        # PIL's convert("L"): ITU-R 601-2 luma with PIL's fixed-point rounding.
        return float((int(r) * 19595 + int(g) * 38470 + int(b) * 7471 + 0x8000) >> 16)

    @njit
    def gaussian_blur(img, tmp, sigma):
        # Separable Gaussian of standard deviation `sigma`, edges replicated (PIL's
        # GaussianBlur approximates the same kernel with three box blurs).
        radius = max(1, int(math.ceil(3.0 * sigma)))  # noqa: RUF046
        kernel = np.empty(2 * radius + 1, dtype=np.float32)
        total = 0.0
        for k in range(-radius, radius + 1):
            v = math.exp(-0.5 * (k / sigma) ** 2)
            kernel[k + radius] = v
            total += v
        for k in range(2 * radius + 1):
            kernel[k] /= total
        height, width = img.shape[0], img.shape[1]
        for y in range(height):
            for x in range(width):
                for c in range(3):
                    acc = 0.0
                    for k in range(-radius, radius + 1):
                        xx = min(max(x + k, 0), width - 1)
                        acc += kernel[k + radius] * img[y, xx, c]
                    tmp[y, x, c] = acc
        for y in range(height):
            for x in range(width):
                for c in range(3):
                    acc = 0.0
                    for k in range(-radius, radius + 1):
                        yy = min(max(y + k, 0), height - 1)
                        acc += kernel[k + radius] * tmp[yy, x, c]
                    img[y, x, c] = acc

    @njit
    def color_jitter(img, key, strength):
        # torchvision ColorJitter(b, c, s) on a PIL image: the three enhancements in a
        # random order, each with a factor drawn from [max(0, 1 - s), 1 + s].
        lo = max(0.0, 1.0 - strength)
        hi = 1.0 + strength
        order = np.arange(3)
        for k in range(2, 0, -1):  # Fisher-Yates
            j = int(uniform(key, 10 + k) * (k + 1))
            order[k], order[j] = order[j], order[k]
        height, width = img.shape[0], img.shape[1]
        for step in range(3):
            op = order[step]
            factor = lo + (hi - lo) * uniform(key, 20 + op)
            if op == 0:  # brightness: blend with black
                for y in range(height):
                    for x in range(width):
                        for c in range(3):
                            img[y, x, c] = min(255.0, max(0.0, img[y, x, c] * factor))
            elif op == 1:  # contrast: blend with the mean grey level
                mean = 0.0
                for y in range(height):
                    for x in range(width):
                        mean += to_gray(
                            round(img[y, x, 0]),
                            round(img[y, x, 1]),
                            round(img[y, x, 2]),
                        )
                mean = float(int(mean / (height * width) + 0.5))
                for y in range(height):
                    for x in range(width):
                        for c in range(3):
                            img[y, x, c] = min(255.0, max(0.0, mean + factor * (img[y, x, c] - mean)))
            else:  # saturation: blend with the greyscale image
                for y in range(height):
                    for x in range(width):
                        gray = to_gray(
                            round(img[y, x, 0]),
                            round(img[y, x, 1]),
                            round(img[y, x, 2]),
                        )
                        for c in range(3):
                            img[y, x, c] = min(255.0, max(0.0, gray + factor * (img[y, x, c] - gray)))

    class ThreeAugment(Operation):
        """DeiT III's 3-Augment on uint8 HWC batches, then optional colour jitter.

        Per image, one of greyscale / solarize (threshold 128) / Gaussian blur
        (sigma uniform in [0.1, 2.0]) chosen uniformly, as timm's ``'3a'`` policy
        does on PIL images; then ``ColorJitter(cj, cj, cj)`` when ``color_jitter > 0``.
        """

        def __init__(self, color_jitter: float = 0.0):
            super().__init__()
            self.color_jitter = float(color_jitter)
            self.clock = _Clock(salt=3)

        def generate_code(self) -> Callable:
            my_range = Compiler.get_iterator()
            tick = self.clock.compile_tick()
            strength = self.color_jitter
            sig_lo, sig_hi = BLUR_SIGMA
            threshold = SOLARIZE_THRESHOLD

            def three_augment(images, storage):
                dst, work, tmp = storage
                epoch_key, batch = tick()
                for i in my_range(images.shape[0]):
                    key = sample_key(epoch_key, batch, i)
                    img = work[i]
                    src = images[i]
                    height, width = src.shape[0], src.shape[1]
                    choice = int(uniform(key, 0) * 3.0)
                    for y in range(height):
                        for x in range(width):
                            if choice == 0:
                                gray = to_gray(src[y, x, 0], src[y, x, 1], src[y, x, 2])
                                for c in range(3):
                                    img[y, x, c] = gray
                            elif choice == 1:
                                for c in range(3):
                                    v = src[y, x, c]
                                    img[y, x, c] = float(255 - v) if v >= threshold else float(v)
                            else:
                                for c in range(3):
                                    img[y, x, c] = float(src[y, x, c])
                    if choice == 2:
                        gaussian_blur(img, tmp[i], sig_lo + (sig_hi - sig_lo) * uniform(key, 1))
                    if strength > 0:
                        color_jitter(img, key, strength)
                    out = dst[i]
                    for y in range(height):
                        for x in range(width):
                            for c in range(3):
                                out[y, x, c] = np.uint8(min(255.0, max(0.0, img[y, x, c] + 0.5)))
                return dst[: images.shape[0]]

            three_augment.is_parallel = True
            return three_augment

        def declare_state_and_memory(self, previous_state):
            shape = previous_state.shape
            return replace(previous_state, jit_mode=True), (
                AllocationQuery(shape, np.dtype("uint8")),
                AllocationQuery(shape, np.dtype("float32")),
                AllocationQuery(shape, np.dtype("float32")),
            )

    return SeededRandomResizedCrop, SeededHorizontalFlip, ThreeAugment


_OPS = None


def ffcv_ops():
    """(SeededRandomResizedCrop, SeededHorizontalFlip, ThreeAugment), defined on first use."""
    global _OPS
    if _OPS is None:
        _OPS = _ffcv_ops()
    return _OPS


def ffcv_image_pipeline(
    *,
    train: bool,
    img_size: int,
    aug: TrainAug,
    crop_ratio: float,
    device: str | torch.device = "cpu",
) -> list:
    """The image pipeline as a list of FFCV operations, the recipe in reading order.

    On CPU the pipeline ends in float32 NCHW (channels-last strides) normalised by
    FFCV's ``NormalizeImage``; on a GPU it ends in uint8 on the device and the loader
    normalises there (FFCV's GPU normaliser needs cupy).
    """
    from ffcv.fields.decoders import CenterCropRGBImageDecoder
    from ffcv.transforms import NormalizeImage, ToDevice, ToTensor, ToTorchImage

    SeededRandomResizedCrop, SeededHorizontalFlip, ThreeAugment = ffcv_ops()
    size = (img_size, img_size)
    if train:
        aug.validate()
        if aug.auto_augment:
            raise ValueError(
                f"aug.auto_augment = {aug.auto_augment!r} (RandAugment) is implemented for the torch loader only: "
                "set data.loader: torch in params.yaml, or use aug.three_augment with FFCV"
            )
        if aug.random_erasing:
            raise ValueError(
                f"aug.random_erasing = {aug.random_erasing} is implemented for the torch loader only: "
                "set data.loader: torch in params.yaml"
            )
        ops = [SeededRandomResizedCrop(size, scale=(aug.scale_min, 1.0), ratio=RRC_RATIO)]
        if aug.hflip > 0:
            ops.append(SeededHorizontalFlip(aug.hflip))
        if aug.three_augment:
            ops.append(ThreeAugment(color_jitter=aug.color_jitter))
    else:
        ops = [CenterCropRGBImageDecoder(size, ratio=crop_ratio)]
    if torch.device(device).type == "cpu":
        mean = np.array(IMAGENET_MEAN) * 255
        std = np.array(IMAGENET_STD) * 255
        return ops + [
            NormalizeImage(mean, std, np.float32),
            ToTensor(),
            ToTorchImage(channels_last=True),
        ]
    return ops + [
        ToTensor(),
        ToDevice(torch.device(device), non_blocking=True),
        ToTorchImage(channels_last=True),
    ]


def ffcv_label_pipeline(device: str | torch.device = "cpu") -> list:
    from ffcv.fields.decoders import IntDecoder
    from ffcv.transforms import Squeeze, ToDevice, ToTensor

    ops = [IntDecoder(), ToTensor(), Squeeze()]
    if torch.device(device).type != "cpu":
        ops.append(ToDevice(torch.device(device), non_blocking=True))
    return ops
