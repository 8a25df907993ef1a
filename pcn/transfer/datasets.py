"""Dense-task datasets in the official layouts of ADE20k and COCO (docs/datasets.md).

ADE20k (``root`` = the ``ADEChallengeData2016`` folder)::

    images/{training,validation}/ADE_{train,val}_<8 digits>.jpg
    annotations/{training,validation}/ADE_{train,val}_<8 digits>.png   uint8, 0 = other, 1..N = classes
    objectInfo150.txt        optional: tab-separated ``Idx Ratio Train Val Name`` (the class names;
                             a .csv beside it is not read, and a warning says so)

The number of classes N comes from the caller (``params.segmentation_classes``: 150
for ADE20k); the model predicts N classes (label id - 1) and id 0 is ignored by the
loss and the metrics.  Without ``objectInfo150.txt`` the classes are ``class_<id>``.

COCO (``root`` = the ``coco`` folder)::

    {train,val}2017/<12 digits>.jpg
    annotations/instances_{train,val}2017.json      polygons or RLE, iscrowd 0/1

COCO's category ids skip numbers (1..90 for 80 categories); the model sees the
contiguous labels 1..K in id order (0 = background) and ``label_to_cat`` maps them
back for scoring.  Crowd regions store *uncompressed* RLE (``counts`` a list); they
are decoded like any mask but left out of the training targets (COCOeval treats
them as ignore regions).  Images without annotations are valid items with empty
targets.

Everything the user can get wrong is checked when a dataset is built, before any
training starts, and reported as one :class:`DatasetError` line naming the file
and the offending id or value: a missing folder or file, a JSON file that does not
parse, an annotation whose image or category does not exist, an RLE that does not
fit its image, a missing or unreadable image, a label map of another size than its
image or holding ids above N. Degenerate boxes (zero width or height) are skipped
with a warning and counted (``n_degenerate``).

Images are decoded by content and converted to RGB (grayscale and CMYK JPEGs occur
in both datasets).  The training pipelines are torchvision ``transforms.v2`` lists
(they move images, masks and boxes together).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils
from torchvision import tv_tensors
from torchvision.transforms import v2

from pcn.data.demo.layouts import ADE_SPLITS  # the official split folder names, one table
from pcn.errors import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE = 0  # label-map id of unlabelled pixels (ADE20k convention)
ADE_CLASS_FILE = "objectInfo150.txt"
COCO_SPLITS = {"train": "train2017", "val": "val2017"}


def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file missing") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{path}: unreadable image ({exc.__class__.__name__}: {exc})") from None


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image, decoding it fully so that a truncated file is caught here."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.height, im.width
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"{path}: unreadable image ({exc.__class__.__name__}: {exc})") from None


# --- ADE20k layout ---------------------------------------------------------------------


def ade_train_transforms(size: int, scale_range: tuple[float, float] = (0.5, 2.0)) -> v2.Compose:
    """mmseg's ADE20k training pipeline, as the comparison rows' UperNet configs (the paper
    states none; paper/recipe.yaml): the shorter side rescaled to 0.5..2 x ``size``
    (256-1024 px at 512), a random crop, flip, photometric distortion, normalise.  Padding
    is unlabelled (ignored).  Not mmseg's: no cap of the longer side at 4 x the shorter
    side's scale, no ``cat_max_ratio`` re-draw of crops one class dominates, and
    torchvision's photometric distortion for mmseg's."""
    return v2.Compose(
        [
            v2.RandomResize(int(size * scale_range[0]), int(size * scale_range[1]) + 1),
            v2.RandomCrop(size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE}),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomPhotometricDistort(p=0.5),
            v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def ade_eval_transforms(size: int) -> v2.Compose:
    """Single-scale test, mmseg's ADE20k ``Resize(scale=(2048, 512), keep_ratio=True)``: shorter
    side to ``size`` unless the longer side would pass 4 x ``size``; the label map stays at its
    own size."""
    return v2.Compose(
        [
            v2.Resize(size, max_size=4 * size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def read_ade_class_names(path: Path, n_classes: int) -> list[str]:
    """The names of ids 1..N from ``objectInfo150.txt`` (tab-separated, header ``Idx Ratio
    Train Val Name``; a name is the first of its comma-separated synonyms, or all of them
    where first synonyms repeat), else ``class_<id>``.  A ``.csv`` beside it (some copies of
    ADE20k ship the names as CSV too) is not read: a warning says so."""
    ignored = sorted(p.name for p in path.parent.glob("*.csv"))
    if ignored:
        warnings.warn(
            f"{path.parent}: {', '.join(ignored)} ignored: ADE20k's class names are read from {path.name} only"
            + ("" if path.is_file() else ", which is missing, so the classes are named class_<id>"),
            stacklevel=2,
        )
    if not path.is_file():
        return [f"class_{i}" for i in range(1, n_classes + 1)]
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].strip().split("\t") if lines else []
    if [h.strip() for h in header] != ["Idx", "Ratio", "Train", "Val", "Name"]:
        raise DatasetError(f"{path}: line 1: expected the tab-separated header 'Idx Ratio Train Val Name'")
    names: dict[int, str] = {}
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.strip().split("\t")
        if len(fields) != 5 or not fields[0].strip().isdigit() or not fields[4].strip():
            raise DatasetError(f"{path}: line {line_no}: expected 5 tab-separated fields 'Idx Ratio Train Val Name'")
        idx = int(fields[0])
        if not 1 <= idx <= n_classes or idx in names:
            raise DatasetError(f"{path}: line {line_no}: Idx {idx} is a repeat or outside 1..{n_classes}")
        names[idx] = fields[4].strip()
    if len(names) != n_classes:
        raise DatasetError(f"{path}: lists {len(names)} classes, expected {n_classes} (segmentation.n_classes)")
    full = [names[i] for i in range(1, n_classes + 1)]
    first = [n.split(",")[0].strip() for n in full]
    return first if len(set(first)) == len(first) else full


class AdeSegmentation(torch.utils.data.Dataset):
    """ADE20k-layout semantic segmentation; items are ``(image, label_map, name)``.

    ``label_map`` holds the raw ids (0 = ignore, 1..N). With ``transforms`` set (training)
    image and labels are transformed together; otherwise the image goes through
    ``image_transforms`` and the label map is returned untouched (for scoring at full size).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        n_classes: int,
        transforms: v2.Transform | None = None,
        image_transforms: v2.Transform | None = None,
        check: bool = True,
    ):
        if not isinstance(n_classes, int) or n_classes < 1:
            raise ValueError(f"n_classes = {n_classes!r}: expected the number of label ids 1..N (ADE20k: 150)")
        self.root = Path(root)
        self.split = ADE_SPLITS.get(split, split)
        self.image_dir = self.root / "images" / self.split
        self.label_dir = self.root / "annotations" / self.split
        for d in (self.image_dir, self.label_dir):
            if not d.is_dir():
                raise DatasetError(
                    f"{d}: folder missing (expected the ADEChallengeData2016 layout "
                    "images/{training,validation}/ and annotations/{training,validation}/)"
                )
        self.n_classes = n_classes
        self.class_names = read_ade_class_names(self.root / ADE_CLASS_FILE, n_classes)
        self.names = sorted(p.stem for p in self.image_dir.glob("*.jpg"))
        if not self.names:
            raise DatasetError(f"{self.image_dir}: no .jpg images")
        for name in self.names:
            if not (self.label_dir / f"{name}.png").is_file():
                raise DatasetError(f"{self.label_dir / (name + '.png')}: label map missing for image {name}.jpg")
        self.transforms = transforms
        self.image_transforms = image_transforms
        if check:
            for name in self.names:
                self._check(name)

    def image_path(self, name: str) -> Path:
        return self.image_dir / f"{name}.jpg"

    def label_path(self, name: str) -> Path:
        return self.label_dir / f"{name}.png"

    def read_label(self, name: str) -> np.ndarray:
        path = self.label_path(name)
        try:
            with Image.open(path) as im:
                if im.mode not in ("L", "P", "I", "I;16"):
                    raise DatasetError(f"{path}: label map has mode {im.mode}, expected one 8-bit channel")
                label = np.asarray(im)
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetError(f"{path}: unreadable label map ({exc.__class__.__name__}: {exc})") from None
        top = int(label.max(initial=0))
        if top > self.n_classes:
            raise DatasetError(
                f"{path}: label id {top} above the {self.n_classes} classes (ids 1..{self.n_classes}, 0 = unlabelled)"
            )
        return label

    def _check(self, name: str) -> None:
        h, w = image_size(self.image_path(name))
        label = self.read_label(name)
        if label.shape != (h, w):
            raise DatasetError(
                f"{self.label_path(name)}: label map is {label.shape[1]}x{label.shape[0]}, "
                f"its image {self.image_path(name).name} is {w}x{h}"
            )

    def pixel_counts(self) -> np.ndarray:
        """Labelled pixels per class (index 0 = id 1) over the split: for class weighting."""
        counts = np.zeros(self.n_classes + 1, dtype=np.int64)
        for name in self.names:
            counts += np.bincount(self.read_label(name).ravel(), minlength=self.n_classes + 1)[: self.n_classes + 1]
        return counts[1:]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        name = self.names[i]
        image = tv_tensors.Image(torch.from_numpy(read_rgb(self.image_path(name))).permute(2, 0, 1))
        label = self.read_label(name)
        if label.shape != tuple(image.shape[-2:]):
            raise DatasetError(
                f"{self.label_path(name)}: label map is {label.shape[1]}x{label.shape[0]}, "
                f"its image is {image.shape[-1]}x{image.shape[-2]}"
            )
        mask = tv_tensors.Mask(torch.from_numpy(label.astype(np.int64))[None])
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        elif self.image_transforms is not None:
            image = self.image_transforms(image)
        return image, mask[0], name


# --- COCO layout -------------------------------------------------------------------------


def load_coco_json(path: str | Path) -> dict[str, Any]:
    """Parse and check a COCO instances file; returns the dict (annotations referencing
    unknown images or categories, or of the wrong form, raise ``DatasetError``)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise DatasetError(f"{path}: not valid JSON ({msg}{where})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: missing list '{key}'")
    images = {}
    for img in data["images"]:
        if not isinstance(img, dict) or not all(k in img for k in ("id", "file_name", "width", "height")):
            raise DatasetError(f"{path}: image entry {img!r:.80} lacks id/file_name/width/height")
        images[img["id"]] = img
    cats = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    ann_ids = set()
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            raise DatasetError(f"{path}: annotation {ann!r:.80} is not an object")
        aid = ann.get("id")
        if aid in ann_ids:
            raise DatasetError(f"{path}: annotation id {aid} appears twice")
        ann_ids.add(aid)
        if ann.get("image_id") not in images:
            raise DatasetError(
                f"{path}: annotation {aid} refers to image id {ann.get('image_id')}, which is not in 'images'"
            )
        if ann.get("category_id") not in cats:
            raise DatasetError(
                f"{path}: annotation {aid} refers to category id {ann.get('category_id')}, which is not in 'categories'"
            )
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise DatasetError(f"{path}: annotation {aid} has bbox {bbox!r}, expected [x, y, w, h]")
        if "segmentation" in ann and not isinstance(ann["segmentation"], (list, dict)):
            raise DatasetError(f"{path}: annotation {aid} has a segmentation that is neither polygons nor RLE")
        if isinstance(ann.get("segmentation"), dict):
            _check_rle(path, aid, ann["segmentation"], images[ann["image_id"]])
        elif isinstance(ann.get("segmentation"), list):
            _check_polygons(path, aid, ann["segmentation"])
    return data


def _check_polygons(path: Path, aid, polygons: list) -> None:
    """Polygons are lists of x, y pairs, three points at least: pycocotools fails on fewer
    (a TypeError in a loader worker, hours in) and reads four numbers as a box."""
    if not polygons:
        raise DatasetError(f"{path}: annotation {aid} has an empty polygon list, expected at least one polygon")
    for poly in polygons:
        if not (isinstance(poly, list) and all(isinstance(v, (int, float)) for v in poly)):
            raise DatasetError(f"{path}: annotation {aid} has polygon {poly!r:.80}, expected a list of x, y numbers")
        if len(poly) < 6 or len(poly) % 2:
            raise DatasetError(
                f"{path}: annotation {aid} has a polygon of {len(poly)} coordinates, "
                "expected x, y pairs of 3 points or more (6 or more numbers, an even count)"
            )


def _check_rle(path: Path, aid, rle: dict, image: dict) -> None:
    """An RLE must be of its image's size; uncompressed counts (crowd regions) must cover it."""
    h, w = image["height"], image["width"]
    if list(rle.get("size") or []) != [h, w]:
        raise DatasetError(
            f"{path}: annotation {aid} has an RLE of size {rle.get('size')} (height, width), "
            f"its image {image['id']} is {h}x{w}"
        )
    counts = rle.get("counts")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != h * w:
            raise DatasetError(
                f"{path}: annotation {aid} has uncompressed RLE counts that do not sum to "
                f"{h} x {w} = {h * w} pixels of its image {image['id']}"
            )
    elif not isinstance(counts, (str, bytes)):
        raise DatasetError(
            f"{path}: annotation {aid} has RLE counts {type(counts).__name__}, "
            "expected a list (uncompressed) or a string (compressed)"
        )


def annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """Binary H x W mask of a polygon / uncompressed RLE / compressed RLE segmentation
    (the decoding of ``pycocotools.coco.COCO.annToRLE``)."""
    seg = ann["segmentation"]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    return mask_utils.decode(rle)


def coco_train_transforms() -> v2.Compose:
    """Mask R-CNN's training augmentation: horizontal flip (the multi-scale resize is the
    model's own ``GeneralizedRCNNTransform`` with several ``min_size``, one drawn per
    image).  The paper states none (paper/recipe.yaml); this is the first branch of the
    comparison rows' 3x augmentation, without their resize-crop-resize branch."""
    return v2.Compose([v2.RandomHorizontalFlip(0.5), v2.ToDtype(torch.float32, scale=True)])


def coco_eval_transforms() -> v2.Compose:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True)])


class CocoInstances(torch.utils.data.Dataset):
    """COCO-layout instance segmentation for torchvision's Mask R-CNN.

    Items are ``(image float [0,1], target)`` with ``boxes`` (xyxy), ``labels``
    (contiguous 1..K, see ``label_to_cat``), ``masks`` (uint8 K x H x W) and ``image_id``.
    Crowd regions are left out of the training targets (COCOeval treats them as ignore).
    """

    def __init__(self, root: str | Path, split: str, transforms: v2.Transform | None = None, check: bool = True):
        self.root = Path(root)
        self.split = COCO_SPLITS.get(split, split)
        self.ann_file = self.root / "annotations" / f"instances_{self.split}.json"
        self.image_dir = self.root / self.split
        if not self.image_dir.is_dir():
            raise DatasetError(
                f"{self.image_dir}: folder missing (expected the COCO layout {{train,val}}2017/ "
                "and annotations/instances_{train,val}2017.json)"
            )
        self.data = load_coco_json(self.ann_file)
        self.categories = sorted(self.data["categories"], key=lambda c: c["id"])
        self.cat_to_label = {c["id"]: i + 1 for i, c in enumerate(self.categories)}
        self.label_to_cat = {v: k for k, v in self.cat_to_label.items()}
        self.images = sorted(self.data["images"], key=lambda im: im["id"])
        self.anns: dict[int, list[dict]] = {im["id"]: [] for im in self.images}
        self.n_degenerate = 0
        for ann in self.data["annotations"]:
            w, h = ann["bbox"][2:]
            if w <= 0 or h <= 0:
                self.n_degenerate += 1
                warnings.warn(
                    f"{self.ann_file}: annotation {ann.get('id')} (image {ann['image_id']}) has a "
                    f"degenerate box {ann['bbox']}; skipped",
                    stacklevel=2,
                )
                continue
            if ann.get("iscrowd", 0):
                continue
            if "segmentation" not in ann:
                raise DatasetError(
                    f"{self.ann_file}: annotation {ann.get('id')} has no segmentation (Mask R-CNN needs masks)"
                )
            self.anns[ann["image_id"]].append(ann)
        self.transforms = transforms
        if check:
            for im in self.images:
                h, w = image_size(self.image_path(im))
                if (h, w) != (im["height"], im["width"]):
                    raise DatasetError(
                        f"{self.image_path(im)}: image is {w}x{h}, {self.ann_file.name} says "
                        f"{im['width']}x{im['height']} (image id {im['id']})"
                    )

    @property
    def class_names(self) -> list[str]:
        return [c.get("name", str(c["id"])) for c in self.categories]

    def image_path(self, im: dict) -> Path:
        return self.image_dir / im["file_name"]

    def __len__(self) -> int:
        return len(self.images)

    def target(self, i: int) -> dict[str, torch.Tensor]:
        im = self.images[i]
        anns = self.anns[im["id"]]
        h, w = im["height"], im["width"]
        boxes = torch.tensor(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns],
            dtype=torch.float32,
        ).reshape(-1, 4)
        masks = np.stack([annotation_mask(a, h, w) for a in anns]) if anns else np.zeros((0, h, w), np.uint8)
        return {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "labels": torch.tensor([self.cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "image_id": im["id"],
        }

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        im = self.images[i]
        image = tv_tensors.Image(torch.from_numpy(read_rgb(self.image_path(im))).permute(2, 0, 1))
        if tuple(image.shape[-2:]) != (im["height"], im["width"]):
            raise DatasetError(
                f"{self.image_path(im)}: image is {image.shape[-1]}x{image.shape[-2]}, "
                f"{self.ann_file.name} says {im['width']}x{im['height']} (image id {im['id']})"
            )
        target = self.target(i)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def collate_detection(batch):
    return tuple(zip(*batch))
