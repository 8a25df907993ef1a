"""The FFCV operations of the train recipe (numba code on uint8 HWC batches).

FFCV builds a pipeline by asking each operation for ``generate_code()``: a plain
Python function that it compiles with numba (``Compiler.compile``) and calls once
per batch in its loader thread. The functions those call are compiled here, at
module level, with ``njit``; what differs per operation (probabilities, sizes, the
clock's address) is captured by the closure ``generate_code`` returns, which numba
reads as constants.

Reproducible randomness: FFCV 1.0.2 leaves numba's per-thread generators unseeded,
so every random operation here owns a small clock, a uint64 array holding [stream
key, epoch, batch counter] whose address is compiled into its code. The loader writes
the epoch and zeroes the counter before each epoch; the operation bumps the counter
once per batch (batches run one after another in FFCV's loader thread) and derives
every random number from (key, epoch, batch, slot, draw) with the hash of
:mod:`pcn.data.random_streams`.

Importing this module imports ffcv and numba: :func:`pcn.data.augment.transforms.ffcv_image_pipeline`
does so only when an FFCV loader is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder
from ffcv.libffcv import ctypes_memcopy, imdecode, resize_crop  # ffcv internals: ffcv is pinned (pyproject.toml)
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from numba import njit

from pcn.data.augment.constants import BLUR_SIGMA, RRC_RATIO, SOLARIZE_THRESHOLD
from pcn.data.random_streams import GOLDEN, INV53, S11, mix64, stream_key

__all__ = ["SeededHorizontalFlip", "SeededRandomResizedCrop", "ThreeAugment"]

# --- hashed draws, compiled -----------------------------------------------------------

mix = njit(mix64)


@njit
def sample_key(epoch_key, batch, slot):
    """The key of image ``slot`` of ``batch`` in the epoch of ``epoch_key``."""
    return mix(epoch_key ^ mix((np.uint64(batch) << np.uint64(20)) + np.uint64(slot) + GOLDEN))


@njit
def uniform(key, draw):
    """Draw number ``draw`` of ``key``: a float in [0, 1)."""
    return float(mix(key ^ mix(np.uint64(draw) + GOLDEN)) >> S11) * INV53


# Each random operation draws from its own stream (key = seed, rank, salt): adding or
# removing one operation leaves the others' draws unchanged.
CROP_STREAM, FLIP_STREAM, JITTER_STREAM = 1, 2, 3


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
        address = self.cell.ctypes.data  # fixed for this clock's lifetime

        @njit(nogil=True)
        def tick():
            state = np.empty(3, dtype=np.uint64)
            ctypes_memcopy(address, state.ctypes.data, 24)
            batch = state[2]
            state[2] = batch + np.uint64(1)
            ctypes_memcopy(state.ctypes.data, address, 24)
            return mix(state[0] ^ mix(state[1] + GOLDEN)), batch

        return tick


# --- the operations -------------------------------------------------------------------


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
        self.clock = _Clock(salt=CROP_STREAM)

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
        self.clock = _Clock(salt=FLIP_STREAM)

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
        self.clock = _Clock(salt=JITTER_STREAM)

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
