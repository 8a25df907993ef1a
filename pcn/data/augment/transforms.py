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
* ``ffcv_image_pipeline``: lists of FFCV operations (numba, on uint8 HWC batches,
  :mod:`pcn.data.ffcv_ops`), written like ffcv-imagenet's ``train_imagenet.py``,
  used by the ``ffcv`` loader.

Geometry is shared exactly: the eval crop box is FFCV's (``center_crop_box``) and
both eval paths resize it with OpenCV's area filter, so FFCV and torch eval images
agree pixel for pixel on losslessly stored data. Train-time resampling differs
(FFCV: OpenCV's area filter, its own resize; torch: PIL bicubic, as DeiT's
``--train-interpolation bicubic``), as do the random streams.

Randomness is a pure function of (seed, rank, epoch, position in the epoch): the
torch loader seeds its RNGs per sample, the FFCV operations draw from a counter-based
hash (splitmix64, :mod:`pcn.data.random_streams`) instead of numba's per-thread
generators, which FFCV 1.0.2 leaves unseeded. So two loaders built with the same
seed yield identical batches, whatever the number of workers.

RandAugment and random erasing run in the FFCV path as batched tensor operations
on the uint8 batch after decode, crop and flip (:mod:`pcn.data.augment.batch`, on
the batch's device), in timm's order: RandAugment, normalisation, random erasing.
Each op matches timm's PIL op on photographs (tests/test_batch_augment.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from pcn.data.augment.constants import RRC_RATIO

if TYPE_CHECKING:
    from pcn.config import AugConfig

IMAGENET_MEAN = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD = tuple(IMAGENET_DEFAULT_STD)


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
        return cls(**{f.name: getattr(aug, f.name) for f in fields(cls)})

    @property
    def on_batch(self) -> bool:
        """Whether the FFCV loader finishes the recipe on the uint8 batch (``BatchAugment``)."""
        return bool(self.auto_augment) or self.random_erasing > 0

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


def posterize_as_paper_era_pillow(img, bits_to_keep: int, **_):
    """timm's posterize, with Pillow's old answer at 0 bits: a black image.

    RandAugment's ``PosterizeIncreasing`` keeps ``4 - int(m / 10 * 4)`` bits, 0 at the
    magnitude 10 that ``mstd0.5`` reaches by clipping N(9, 0.5); Pillow's ``posterize``
    masked every value with ``~(2 ** 8 - 1)`` there (all zeros); the pinned Pillow 13 refuses
    0 bits with a ValueError that would end a paper-scale run in its first steps.
    """
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _posterize_ops(transform) -> list:
    """The AugmentOps of a timm RandAugment / AutoAugment policy that posterize."""
    ops = list(getattr(transform, "ops", None) or [])
    for sub_policy in getattr(transform, "policy", None) or []:
        ops.extend(sub_policy)
    return [op for op in ops if getattr(op, "name", "").startswith("Posterize")]


def torch_train_transform(img_size: int, aug: TrainAug) -> Callable:
    """DeiT's train transform, built by timm (which owns RandAugment and 3-Augment).

    Every posterize op of the policy gets :func:`posterize_as_paper_era_pillow` as its
    function, through the op's own ``aug_fn`` attribute (timm's module-level tables stay
    as they are).
    """
    from timm.data.transforms_factory import transforms_imagenet_train

    aug.validate()
    auto_augment = aug.auto_augment or ("3a" if aug.three_augment else None)
    transform = transforms_imagenet_train(
        img_size=img_size,
        scale=(aug.scale_min, 1.0),
        ratio=RRC_RATIO,
        hflip=aug.hflip,
        vflip=0.0,
        # timm turns colour jitter off under RandAugment (as DeiT does) and keeps it for '3a'.
        color_jitter=aug.color_jitter if aug.color_jitter > 0 else None,
        auto_augment=auto_augment,
        # DeiT's --train-interpolation bicubic (timm's create_transform): the crop's resize and
        # RandAugment's geometric ops
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        # DeiT's --reprob: one box per image, erased with per-pixel noise (after normalising)
        re_prob=aug.random_erasing,
        re_mode="pixel",
        re_count=1,
    )
    for step in transform.transforms:
        for op in _posterize_ops(step):
            op.aug_fn = posterize_as_paper_era_pillow
    return transform


def torch_eval_transform(img_size: int, crop_ratio: float) -> Callable:
    from torchvision import transforms

    return transforms.Compose([CenterCropResize(img_size, crop_ratio), NormalizeUint8()])


# --- FFCV (numba) implementation: the operations live in pcn.data.ffcv_ops ------------


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
    FFCV's ``NormalizeImage``; on a GPU, or when RandAugment / random erasing follow
    (``TrainAug.on_batch``), it ends in uint8 NCHW on the device, and the loader runs
    ``pcn.data.augment.batch.BatchAugment`` there (FFCV's GPU normaliser needs cupy).
    """
    from ffcv.fields.decoders import CenterCropRGBImageDecoder
    from ffcv.transforms import NormalizeImage, ToDevice, ToTensor, ToTorchImage

    from pcn.data.ffcv_ops import SeededHorizontalFlip, SeededRandomResizedCrop, ThreeAugment

    size = (img_size, img_size)
    if train:
        aug.validate()
        if aug.auto_augment:
            from pcn.data.augment.randaugment_policy import check_policy

            check_policy(aug.auto_augment)  # the loader runs it: pcn.data.augment.batch.BatchAugment
        ops = [SeededRandomResizedCrop(size, scale=(aug.scale_min, 1.0), ratio=RRC_RATIO)]
        if aug.hflip > 0:
            ops.append(SeededHorizontalFlip(aug.hflip))
        if aug.three_augment:
            ops.append(ThreeAugment(color_jitter=aug.color_jitter))
    else:
        ops = [CenterCropRGBImageDecoder(size, ratio=crop_ratio)]
    on_cpu = torch.device(device).type == "cpu"
    if on_cpu and not (train and aug.on_batch):
        mean = np.array(IMAGENET_MEAN) * 255
        std = np.array(IMAGENET_STD) * 255
        return ops + [
            NormalizeImage(mean, std, np.float32),
            ToTensor(),
            ToTorchImage(channels_last=True),
        ]
    to_device = [] if on_cpu else [ToDevice(torch.device(device), non_blocking=True)]
    return ops + [ToTensor(), *to_device, ToTorchImage(channels_last=True)]


def ffcv_label_pipeline(device: str | torch.device = "cpu") -> list:
    from ffcv.fields.decoders import IntDecoder
    from ffcv.transforms import Squeeze, ToDevice, ToTensor

    ops = [IntDecoder(), ToTensor(), Squeeze()]
    if torch.device(device).type != "cpu":
        ops.append(ToDevice(torch.device(device), non_blocking=True))
    return ops
