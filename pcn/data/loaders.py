"""One entry point for the data loaders: ``build_loader(kind='ffcv'|'torch'|'memory', ...)``.

``data.loader`` in params.yaml selects the kind. All yield ``(images, labels)``:
float32 NCHW normalised with ImageNet mean/std, int64 labels; both have ``len()``
(batches per epoch on this rank), ``set_epoch``, ``num_classes``, ``class_names``
and ``num_samples`` (images in the dataset).

* ``ffcv`` reads a .beton written by ``pcn.data.ffcv_io.convert_imagefolder``
  (its sidecar is checked first) through the operation lists of
  ``pcn.data.augment.transforms.ffcv_image_pipeline``; RandAugment and random erasing then
  run on the uint8 batch where it lies (``pcn.data.augment.batch.BatchAugment``).
  On CPU without them a batch is FFCV's own buffer (channels-last strides), reused
  ``batches_ahead + 1`` batches later: use it before asking for the next one, or clone it.
* ``torch`` reads the image folder with PIL, torchvision and timm transforms, the
  baseline and the fallback where FFCV is not installed.
* ``memory`` decodes the image folder once into RAM and augments whole batches
  (``pcn.data.memory_loader``): for small datasets read by many short runs.

The sample order of an epoch is one function shared by every kind
(:func:`pcn.data.order.epoch_order`), so with the same seed the loaders visit the
same images in the same order.
Augmentation randomness depends on (seed, rank, epoch, position) only: two loaders
built alike give identical batches, for any ``num_workers``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Literal, get_args

import cv2
import numpy as np
import torch

from pcn.data.augment.batch import BatchAugment
from pcn.data.augment.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TrainAug,
    ffcv_image_pipeline,
    ffcv_label_pipeline,
    torch_eval_transform,
    torch_train_transform,
)
from pcn.data.ffcv_io import check_metadata, metadata_path, read_metadata
from pcn.data.folders import FolderIndex, open_rgb, scan_folder
from pcn.data.loader_settings import LoaderSettings
from pcn.data.memory_loader import MemoryLoader
from pcn.data.random_streams import stream_key
from pcn.errors import DatasetError

Kind = Literal["ffcv", "torch", "memory"]
BATCH_AUG_STREAM = 0x52A6  # salt of the batched RandAugment / random erasing draws
FFCV_MISSING = (
    "data.loader is 'ffcv' but the ffcv package cannot be imported ({error}); install it "
    "(pip install ffcv, which needs libopencv-dev, libturbojpeg0-dev and pkg-config) or set "
    "data.loader: torch in params.yaml"
)


# --- the FFCV loader ----------------------------------------------------------------


def _import_ffcv():
    try:
        import ffcv.loader  # noqa: F401
        from ffcv.loader import Loader, OrderOption
        from ffcv.traversal_order.base import TraversalOrder
    except Exception as exc:  # ImportError, or a broken native build
        raise ImportError(FFCV_MISSING.format(error=f"{type(exc).__name__}: {exc}")) from exc
    return Loader, OrderOption, TraversalOrder


class FfcvLoader:
    def __init__(
        self,
        beton: Path,
        s: LoaderSettings,
        *,
        expected_classes: Sequence[str] | None,
        num_workers: int,
        os_cache: bool,
        batches_ahead: int,
    ):
        Loader, OrderOption, TraversalOrder = _import_ffcv()
        meta = check_metadata(beton, expected_classes)
        self.class_names: list[str] = list(meta["class_names"])
        self.num_classes = len(self.class_names)
        self.num_samples = int(meta["num_samples"])
        self.metadata = meta
        self.device = torch.device(s.device)
        self.train = s.train
        self.batch_size = s.batch_size

        image_ops = ffcv_image_pipeline(
            train=s.train,
            img_size=s.img_size,
            aug=s.aug,
            crop_ratio=s.crop_ratio,
            device=s.device,
        )
        self._clocks = [op.clock for op in image_ops if hasattr(op, "clock")]
        for clock in self._clocks:
            clock.configure(s.seed, s.rank)

        n = self.num_samples
        self.settings = s
        quasi = s.train and not os_cache and s.world_size == 1 and s.repeats == 1
        threads = torch.get_num_threads()
        self._loader = Loader(
            str(beton),
            batch_size=s.batch_size,
            num_workers=num_workers,
            os_cache=os_cache,
            order=OrderOption.QUASI_RANDOM if quasi else OrderOption.SEQUENTIAL,
            distributed=False,
            seed=s.seed,
            pipelines={"image": image_ops, "label": ffcv_label_pipeline(s.device)},
            drop_last=s.drop_last,
            batches_ahead=batches_ahead,
        )
        torch.set_num_threads(threads)  # ffcv sets torch's thread count to num_workers
        # OpenCV's own thread pool off in this process: FFCV's workers already share the batch
        # over the cores and the CPU's RandAugment kernels run image by image; the pool's
        # waiting threads cost 15-30% more CPU time per image (docs/measurements.md, issue 25)
        cv2.setNumThreads(1)
        if not quasi:
            # The order shared with the torch loader (see epoch_order).
            loader = self._loader
            shared = self

            class SharedOrder(TraversalOrder):
                def sample_order(self, epoch: int):
                    return shared.settings.epoch_order(n, epoch)

            loader.traversal_order = SharedOrder(loader)
            loader.first_traversal_order = loader.next_traversal_order()
        self._iterator = None
        # RandAugment / random erasing on the uint8 batch, seeded per (seed, rank, epoch, step)
        self._batch_aug = None
        if s.train and s.aug.on_batch:
            self._batch_aug = BatchAugment(
                s.img_size, s.aug.auto_augment, s.aug.random_erasing, IMAGENET_MEAN, IMAGENET_STD, s.device
            )
        self._batch_aug_key = stream_key(s.seed, s.rank, BATCH_AUG_STREAM)
        if self.device.type != "cpu":
            self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255
            self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255

    def __len__(self) -> int:
        return len(self._loader)

    def set_epoch(self, epoch: int) -> None:
        self._loader.next_epoch = int(epoch)

    def batch_samples(self, epoch: int, step: int) -> list[int]:
        """The .beton indices of batch ``step`` of ``epoch`` (which images a failure hit)."""
        order = self.settings.epoch_order(self.num_samples, epoch)
        return [int(i) for i in order[step * self.batch_size : (step + 1) * self.batch_size]]

    def _stop_previous(self) -> None:
        it, self._iterator = self._iterator, None
        if it is not None and it.is_alive():
            it.close()
            it.join(timeout=5)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._stop_previous()  # an abandoned epoch must not tick the clocks any more
        epoch = self._loader.next_epoch
        for clock in self._clocks:
            clock.start_epoch(epoch)
        threads = torch.get_num_threads()
        it = iter(self._loader)
        torch.set_num_threads(threads)
        self._iterator = it
        for step, (images, labels) in enumerate(it):
            # On CPU the batch is FFCV's own output buffer (float NCHW with channels-last
            # strides), reused ``batches_ahead`` + 1 batches later, as in FFCV's own
            # training loops: use a batch before asking for the next, or clone it.  A
            # copy here (to NCHW or even a plain clone) costs a third of the loader's
            # throughput on 2 cores (benchmarks/bench_loaders.py).
            if self._batch_aug is not None:
                images = self._batch_aug(images, stream_key(self._batch_aug_key, epoch, step))
            elif self.device.type != "cpu":
                images = (images.float() - self._mean) / self._std
            yield images, labels.clone()
        self._iterator = None


# --- the torch loader ------------------------------------------------------------------


@contextmanager
def _seeded_rngs(seed: int, fork: bool):
    """Seed python, numpy and torch for one sample; restore them afterwards in the
    main process (``fork``), where the training loop owns the global generators."""
    if fork:
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.default_generator.manual_seed(seed & 0x7FFFFFFFFFFFFFFF)  # CPU only: leave CUDA generators alone
    try:
        yield
    finally:
        if fork:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])


class FolderDataset(torch.utils.data.Dataset):
    """An image folder (``scan_folder``'s order and labels) with a transform.

    Indexed by (sample index, position in the epoch); train-time randomness is
    seeded from (seed, rank, epoch, position).
    """

    def __init__(self, index: FolderIndex, transform, *, seed: int, rank: int, random: bool):
        self.index = index
        self.transform = transform
        self.key = stream_key(seed, rank, 0x7042)
        self.random = random
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.index.samples)

    def __getitem__(self, item):
        i, position = item
        rel, label = self.index.samples[i]
        path = self.index.root / rel
        try:
            img = open_rgb(path)  # by content: PNG named .JPEG, CMYK, grayscale
        except Exception as exc:
            raise DatasetError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc
        try:
            if self.random:
                in_main = torch.utils.data.get_worker_info() is None
                with _seeded_rngs(stream_key(self.key, self.epoch, position), fork=in_main):
                    x = self.transform(img)
            else:
                x = self.transform(img)
        except Exception as exc:  # a rare op failure must name its op and its image
            raise DatasetError(f"{path}: {_failing_op(exc.__traceback__)} raised {type(exc).__name__}: {exc}") from exc
        return x, label


def _failing_op(tb) -> str:
    """The innermost augmentation op a traceback went through: timm's RandAugment ops by
    name and drawn magnitude, else the innermost transform's class."""
    op, transform = None, "the transform"
    while tb is not None:
        frame = tb.tb_frame
        obj = frame.f_locals.get("self")
        module = type(obj).__module__.split(".")[0] if obj is not None else ""
        if obj is not None and isinstance(getattr(obj, "name", None), str) and hasattr(obj, "aug_fn"):
            op = f"RandAugment op {obj.name} at magnitude {frame.f_locals.get('magnitude', obj.magnitude)}"
        elif module in ("timm", "torchvision") and not isinstance(obj, FolderDataset):
            transform = type(obj).__name__
        tb = tb.tb_next
    return op or transform


class _OrderSampler(torch.utils.data.Sampler):
    def __init__(self, n: int, settings: LoaderSettings):
        self.n = n
        self.settings = settings
        self.epoch = 0

    def __iter__(self):
        order = self.settings.epoch_order(self.n, self.epoch)
        return iter([(int(i), pos) for pos, i in enumerate(order)])

    def __len__(self) -> int:
        return len(self.settings.epoch_order(self.n, 0))


class TorchLoader:
    def __init__(self, index: FolderIndex, s: LoaderSettings, *, num_workers: int):
        self.class_names = index.class_names
        self.num_classes = index.num_classes
        self.num_samples = len(index.samples)
        self.device = torch.device(s.device)
        transform = (
            torch_train_transform(s.img_size, s.aug) if s.train else torch_eval_transform(s.img_size, s.crop_ratio)
        )
        self.dataset = FolderDataset(index, transform, seed=s.seed, rank=s.rank, random=s.train)
        self.sampler = _OrderSampler(self.num_samples, s)
        self._epoch = 0
        self._loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=s.batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            drop_last=s.drop_last,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,  # workers fork at each epoch and see its epoch number
            prefetch_factor=4 if num_workers > 0 else None,
        )

    def __len__(self) -> int:
        return len(self._loader)

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.epoch = self.dataset.epoch = self._epoch
        self._epoch += 1  # like FFCV: iterating again without set_epoch moves on
        for images, labels in self._loader:
            if self.device.type != "cpu":
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
            yield images, labels.long()


# --- the entry point --------------------------------------------------------------------


def folder_index(
    folder: Path, *, layout: str, beton: Path | None, expected_classes: Sequence[str] | None
) -> FolderIndex:
    """The samples of an image folder, less the files the conversion to ``beton`` skipped
    as unreadable (so that every kind indexes the same samples).  ``expected_classes``
    (the train split's) refuses a folder listing other classes."""
    index = scan_folder(folder, layout, expected_classes)
    skip = (
        set(read_metadata(beton).get("skipped_files", []))
        if beton is not None and metadata_path(beton).is_file()
        else set()
    )
    if skip:
        index = replace(index, samples=[s for s in index.samples if s[0] not in skip])
    return index


def build_loader(
    *,
    beton: str | Path | None,
    folder: str | Path | None,
    kind: Kind,
    train: bool,
    img_size: int,
    batch_size: int,
    aug=None,
    crop_ratio: float = 0.875,
    num_workers: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool | None = None,
    device: str | torch.device = "cpu",
    expected_classes: Sequence[str] | None = None,
    layout: str = "imagefolder",
    os_cache: bool = True,
    batches_ahead: int = 3,
):
    """A loader of (images, labels) batches; ``batch_size`` is per rank.

    ``aug`` is an ``AugConfig`` (train only; None = random-resized-crop + flip at
    the defaults). ``expected_classes``: the train split's class names; data listing
    other classes is refused (an ImageNetV2 folder must hold ``0``..``K-1``).
    ``layout`` applies to ``folder`` ('imagenet_v2': labels = int(folder name));
    a .beton carries its labels. ``os_cache=False`` switches FFCV to its
    process cache with QUASI_RANDOM order (datasets larger than RAM, single rank).
    """
    if kind not in get_args(Kind):
        raise ValueError(f"data.loader = {kind!r}: expected one of {', '.join(get_args(Kind))}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    train_aug = TrainAug.from_config(aug)
    repeats = int(getattr(aug, "repeated_aug", 1) or 1) if train else 1
    drop_last = train if drop_last is None else drop_last
    settings = LoaderSettings(  # its fields in order
        train, img_size, batch_size, train_aug, crop_ratio, seed, rank, world_size, drop_last, str(device), repeats
    )
    if kind == "ffcv":
        if beton is None:
            raise ValueError("kind='ffcv' needs beton= (the converted dataset)")
        loader = FfcvLoader(
            Path(beton),
            settings,
            expected_classes=expected_classes,
            num_workers=num_workers,
            os_cache=os_cache,
            batches_ahead=batches_ahead,
        )
    else:
        if folder is None:
            raise ValueError(f"kind={kind!r} needs folder= (the image folder)")
        index = folder_index(
            Path(folder),
            layout=layout,
            beton=Path(beton) if beton is not None else None,
            expected_classes=expected_classes,
        )
        if kind == "torch":
            loader = TorchLoader(index, settings, num_workers=num_workers)
        else:  # no worker processes: batches are cut from RAM
            loader = MemoryLoader(index, settings)
    return loader
