"""Image folders in the official layouts: the scan that lists them and the one decoder.

``scan_folder`` lists ``<root>/<class>/<image>`` (``imagefolder``: class folders sorted
by name give the labels, as torchvision's ImageFolder does; ``imagenet_v2``: folders
named ``0``..``K-1`` and label = int(folder name)), refusing in one line a folder that
is missing, flat, empty or holds other classes than the train split.

Images are decoded by content, never by extension (``open_rgb``): ImageNet's train
split holds a PNG named ``.JPEG``, CMYK JPEGs and grayscale JPEGs, and every reader
of the folders (the FFCV conversion, the ``torch`` and ``memory`` loaders, the pixel
baseline, the attention stage) gets them as RGB through that one function.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from pcn.errors import DatasetError

Layout = Literal["imagefolder", "imagenet_v2"]
LAYOUTS = ("imagefolder", "imagenet_v2")
# torchvision's IMG_EXTENSIONS
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)

# --- scanning ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderIndex:
    root: Path
    layout: str
    class_names: list[str]  # label order
    samples: list[tuple[str, int]]  # (path relative to root, label), in class then file order

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def scan_folder(
    src_dir: str | Path,
    layout: Layout = "imagefolder",
    train_classes: Sequence[str] | None = None,
) -> FolderIndex:
    """List an ImageNet-style folder: ``<root>/<class>/<image>``.

    Raises DatasetError naming the path and what was expected when the folder is
    missing, has no class subfolders, holds no images, or (given ``train_classes``,
    the train split's class names) lists other classes than train, before its
    images are listed.
    """
    if layout not in LAYOUTS:
        raise DatasetError(f"layout = {layout!r}: expected one of {', '.join(LAYOUTS)}")
    root = Path(src_dir)
    folders = class_folders(root)
    if layout == "imagenet_v2":
        bad = [f for f in folders if not f.isdigit()]
        if bad:
            raise DatasetError(
                f"{root}: class folder {min(bad)!r} is not an integer "
                "(the imagenet_v2 layout names class folders 0..K-1 by label)"
            )
    if train_classes is not None:
        diff = class_list_difference(
            sorted(folders, key=_label_order if layout == "imagenet_v2" else None),
            layout_classes(layout, train_classes),
        )
        if diff:
            raise DatasetError(f"{root}: class list differs from train: {diff}")
    if layout == "imagenet_v2":
        labels = sorted(int(f) for f in folders)
        if labels != list(range(len(labels))):
            missing = sorted(set(range(labels[-1] + 1)) - set(labels))[:5]
            raise DatasetError(
                f"{root}: imagenet_v2 class folders must be 0..K-1; missing {missing} "
                f"(found {len(labels)} folders up to {labels[-1]})"
            )
        by_label = {int(f): f for f in folders}
        class_names = [by_label[i] for i in labels]
    else:
        class_names = sorted(folders)

    samples: list[tuple[str, int]] = []
    for label, name in enumerate(class_names):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames.sort()
            for fname in sorted(filenames):
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    full = Path(dirpath) / fname
                    samples.append((str(full.relative_to(root)), label))
    if not samples:
        raise DatasetError(
            f"{root}: no images in its {len(class_names)} class folders "
            f"(expected files ending in {', '.join(IMAGE_EXTENSIONS)})"
        )
    return FolderIndex(root=root, layout=layout, class_names=class_names, samples=samples)


# ImageNet's val tarball unpacks flat: its images must be sorted into class folders first
FLAT_FOLDER_FIX = (
    "; it holds images directly, as ImageNet's val tarball unpacks: sort them into one folder per "
    "class first (the usual valprep.sh does, or the labels of LOC_val_solution.csv; docs/datasets.md)"
)


def class_folders(src_dir: str | Path) -> list[str]:
    """The class folder names of an image folder, sorted (DatasetError naming the path
    when it is missing or holds no class folders)."""
    root = Path(src_dir)
    if not root.exists():
        raise DatasetError(f"{root}: no such directory (expected an image folder <root>/<class>/<image>)")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory (expected an image folder <root>/<class>/<image>)")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        images = any(p.name.lower().endswith(IMAGE_EXTENSIONS) for p in root.iterdir())
        fix = FLAT_FOLDER_FIX if images else ""
        raise DatasetError(f"{root}: no class subfolders (expected <root>/<class>/<image>, one folder per class){fix}")
    return folders


def layout_classes(layout: str, train_classes: Sequence[str]) -> list[str]:
    """The class folders a split of ``layout`` must hold, given the train split's classes:
    the same names, or for ImageNetV2 the label indices ``0``..``K-1``."""
    if layout == "imagenet_v2":
        return [str(i) for i in range(len(train_classes))]
    return list(train_classes)


def _some(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def class_list_difference(found: Sequence[str], expected: Sequence[str]) -> str | None:
    """None if ``found`` lists the classes of ``expected`` in its order, else what differs,
    e.g. ``missing n01440764 (1 of 1000)``."""
    if list(found) == list(expected):
        return None
    have, want = set(found), set(expected)
    missing = [c for c in expected if c not in have]
    extra = [c for c in found if c not in want]
    parts = []
    if missing:
        parts.append(f"missing {_some(missing)} ({len(missing)} of {len(expected)})")
    if extra:
        parts.append(f"extra {_some(extra)} ({len(extra)} not among the {len(expected)})")
    return "; ".join(parts) or "same classes in another label order"


def _label_order(folder: str) -> tuple:
    """Sort key of class folders in label order: integers by value (ImageNetV2), then names."""
    return (0, int(folder), "") if folder.isdigit() else (1, 0, folder)


def open_rgb(path: str | Path):
    """The image at ``path`` as an RGB PIL image, whatever its format and mode: PIL
    reads the format from the file's content (a PNG named ``.JPEG`` is read as a PNG)
    and ``convert`` maps grayscale, CMYK (Adobe's inverted CMYK included), palette and
    alpha modes to RGB.  Raises what PIL raises on unreadable data."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return img if img.mode == "RGB" else img.convert("RGB")


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 RGB HWC (raises on unreadable data)."""
    return np.asarray(open_rgb(path))
