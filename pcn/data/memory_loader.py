"""The ``memory`` loader: an image folder decoded once into RAM, augmented a batch at a time.

For datasets that fit in memory, such as the embedded demo data (10,000 images of
64 px: 120 MB as uint8).  The study grid trains dozens of small models on it, two at
a time on 2 cores:

* the ``torch`` loader decodes every JPEG again in every epoch, in a worker process
  that competes with the model for the same cores (a grid step cost twice the
  model's own compute);
* the ``ffcv`` loader is fastest per batch but compiles its numba pipelines again in
  every process, and needs the .beton conversion first.

Here each image is decoded once, when the loader is built, and the decoded array is
kept in a cache directory (``decoded_cache_dir``) for the next process that loads
the same folder: the grid's runs all read the same 20,000 images.  Training batches get
the recipe's random-resized-crop and horizontal flip as one batched resampling
(``torchvision.ops.roi_align``: each output pixel averages the source pixels under
it, like an area filter); images of different sizes share one array, each padded
to the largest by repeating its last row and column (so the resampling at its
edge reads its own pixels) and cropped within its own size.  Eval images are made
once with the torch loader's own eval transform, so both give identical eval
batches.  Colour jitter, RandAugment and 3-Augment are per-image PIL operations
and are refused here.

Randomness depends on (seed, rank, epoch, batch index) only, and the sample order
is ``epoch_order``'s, shared with the other loaders.  The crops are drawn as
torchvision's RandomResizedCrop draws them, from a different stream, so the
``memory`` and ``torch`` loaders see the same images in the same order but not the
same crops.
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pcn.data.augment.constants import RRC_RATIO
from pcn.data.augment.transforms import CenterCropResize, NormalizeUint8
from pcn.data.folders import FolderIndex, open_rgb
from pcn.data.loader_settings import LoaderSettings
from pcn.data.random_streams import stream_key
from pcn.errors import DatasetError
from pcn.io import atomic_path

RRC_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its fallback


def decode_folder(index: FolderIndex, transform=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of ``index`` in one uint8 tensor (N, 3, H, W), and the (height, width)
    of each (N, 2).

    ``transform`` (PIL image -> uint8 CHW tensor of one size) is applied to each image;
    without it the images are stored as they are, each padded to the largest height
    and width by repeating its last row and column.
    """
    from PIL import Image
    from tqdm import tqdm

    def path(k: int) -> Path:
        return index.root / index.samples[k][0]

    if not index.samples:
        raise DatasetError(f"{index.root}: no images")
    sizes = torch.empty((len(index.samples), 2), dtype=torch.int64)
    if transform is None:  # the sizes from the headers, to allocate the array once
        for k in range(len(index.samples)):
            try:
                with Image.open(path(k)) as f:
                    sizes[k] = torch.tensor([f.height, f.width])
            except Exception as exc:
                raise DatasetError(f"{path(k)}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    out = None
    for k in tqdm(range(len(index.samples)), desc=f"decode {index.root.name}", unit="img", mininterval=5, leave=False):
        try:
            img = open_rgb(path(k))  # by content: PNG named .JPEG, CMYK, grayscale
        except Exception as exc:
            raise DatasetError(f"{path(k)}: cannot decode image ({type(exc).__name__}: {exc})") from exc
        if transform is not None:
            x = transform(img)
            if out is None:
                out = torch.empty((len(index.samples), *x.shape), dtype=torch.uint8)
            out[k] = x
            sizes[k] = torch.tensor(x.shape[1:])
            continue
        if out is None:
            out = torch.empty((len(index.samples), 3, *sizes.max(0).values.tolist()), dtype=torch.uint8)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1)
        h, w = x.shape[1:]
        if (h, w) != tuple(sizes[k].tolist()):
            raise DatasetError(f"{path(k)}: decodes to {w}x{h} px, its header says {sizes[k, 1]}x{sizes[k, 0]}")
        out[k, :, :h, :w] = x
        out[k, :, :h, w:] = x[:, :, -1:]
        out[k, :, h:, :] = out[k, :, h - 1 : h, :]
    return out, sizes


def random_resized_boxes(n: int, height, width, scale: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """``n`` random-resized-crop boxes (x0, y0, x1, y1), drawn as torchvision draws them:
    up to 10 tries of (area fraction, log aspect ratio), else the central crop whose
    aspect ratio is clamped to the range.  ``height`` and ``width``: one size for all,
    or each image's (tensors of n)."""
    height = torch.as_tensor(height, dtype=torch.float64).expand(n)
    width = torch.as_tensor(width, dtype=torch.float64).expand(n)
    area = (height * width)[:, None]
    log_r = torch.tensor(RRC_RATIO).log()
    u = torch.rand((4, n, RRC_ATTEMPTS), generator=gen, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
    aspect = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * u[1])
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
    first = ok.double().argmax(dim=1, keepdim=True)  # the first box that fits
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    top = (u[2].gather(1, first)[:, 0] * (height - h + 1)).floor()
    left = (u[3].gather(1, first)[:, 0] * (width - w + 1)).floor()

    # torchvision's fallback: the whole image, cut to the nearest allowed aspect ratio
    ratio = width / height
    narrow, wide = ratio < RRC_RATIO[0], ratio > RRC_RATIO[1]
    fw = torch.where(wide, (height * RRC_RATIO[1]).round(), width)
    fh = torch.where(narrow, (width / RRC_RATIO[0]).round(), height)
    none = ~ok.any(dim=1)
    w = torch.where(none, fw, w)
    h = torch.where(none, fh, h)
    top = torch.where(none, ((height - fh) / 2).floor(), top)
    left = torch.where(none, ((width - fw) / 2).floor(), left)
    return torch.stack([left, top, left + w, top + h], dim=1).float()


def decoded_cache_dir() -> Path | None:
    """Where decoded folders are kept between processes: ``$PCN_CACHE_DIR/decoded``, else
    ``$XDG_CACHE_HOME/pcn/decoded`` (``~/.cache`` by default); ``PCN_CACHE_DIR=off``: none."""
    root = os.environ.get("PCN_CACHE_DIR")
    if root == "off":
        return None
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pcn"
    return Path(root) / "decoded"


def _cache_path(cache: Path, index: FolderIndex, transform) -> Path:
    """``<folder and transform>-<files>.npz``: the second half changes when any image is
    added, removed, relabelled or rewritten (size or mtime), so a stale array is never read."""
    where = hashlib.sha1(f"{index.root.resolve()}|{transform!r}".encode()).hexdigest()[:16]
    files = hashlib.sha1()
    for rel, label in index.samples:
        st = (index.root / rel).stat()
        files.update(f"{rel}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return cache / f"{where}-{files.hexdigest()[:16]}.npz"


def load_folder(index: FolderIndex, transform=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``decode_folder``, through the cache: read the arrays a previous process stored for
    these files and this transform, else decode and store them (one entry per folder and
    transform: older versions are removed; written under a temporary name, then renamed)."""
    cache = decoded_cache_dir()
    if cache is None:
        return decode_folder(index, transform)
    path = _cache_path(cache, index, transform)
    n = len(index.samples)
    try:
        with np.load(path) as stored:
            images, sizes = stored["images"], stored["sizes"]
        if images.dtype == np.uint8 and images.ndim == 4 and len(images) == n and sizes.shape == (n, 2):
            return torch.from_numpy(images), torch.from_numpy(sizes)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):  # absent or unreadable: decode again
        pass
    images, sizes = decode_folder(index, transform)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, images=images.numpy(), sizes=sizes.numpy())
        for old in cache.glob(path.name.split("-")[0] + "-*.np[yz]"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:  # a read-only or full cache only costs the next process a decode
        pass
    return images, sizes


class MemoryLoader:
    def __init__(self, index: FolderIndex, s: LoaderSettings):
        if s.train and (s.aug.auto_augment or s.aug.three_augment or s.aug.color_jitter > 0):
            raise ValueError(
                "aug.auto_augment / aug.three_augment / aug.color_jitter are per-image PIL "
                "operations; the memory loader applies crop and flip only (use data.loader: torch)"
            )
        self.class_names = index.class_names
        self.num_classes = index.num_classes
        self.num_samples = len(index.samples)
        self.device = torch.device(s.device)
        self.train = s.train
        self.img_size = int(s.img_size)
        self.batch_size = int(s.batch_size)
        self.drop_last = s.drop_last
        self.aug = s.aug
        self.key = stream_key(s.seed, s.rank, 0x6D656D)
        self.settings = s
        self.labels = torch.tensor([label for _, label in index.samples], dtype=torch.int64)
        # Train: the images as stored (cropped per batch); eval: the torch loader's eval crops.
        self.images, self.sizes = load_folder(index, None if s.train else CenterCropResize(s.img_size, s.crop_ratio))
        self._normalize = NormalizeUint8()
        self._epoch = 0

    def _order(self, epoch: int) -> np.ndarray:
        return self.settings.epoch_order(self.num_samples, epoch)

    def __len__(self) -> int:
        n = len(self._order(0))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def _augment(self, x: torch.Tensor, sizes: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        from torchvision.ops import roi_align

        n = len(x)
        boxes = random_resized_boxes(n, sizes[:, 0], sizes[:, 1], (self.aug.scale_min, 1.0), gen)
        rois = torch.cat([torch.arange(n, dtype=torch.float32)[:, None], boxes], dim=1)
        # aligned=True: pixel centres at +0.5, so a box of the whole image maps onto it exactly
        out = roi_align(x, rois, output_size=self.img_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        flip = torch.rand(n, generator=gen) < self.aug.hflip
        return torch.where(flip[:, None, None, None], out.flip(-1), out)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self._epoch = self._epoch, self._epoch + 1  # like the others: iterating again moves on
        order = torch.from_numpy(self._order(epoch))
        n_batches = len(self)
        for b in range(n_batches):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images[idx].float()
            if self.train:
                gen = torch.Generator().manual_seed(stream_key(self.key, epoch, b) & 0x7FFFFFFFFFFFFFFF)
                x = self._augment(x, self.sizes[idx], gen)
            x = self._normalize(x)
            y = self.labels[idx]
            if self.device.type != "cpu":
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield x, y
