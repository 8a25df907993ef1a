"""Attention maps and how well they localise the object.

PatchConvNet's aggregation block has ONE softmax: the class token's attention over
the patches, i.e. a weight per patch (arXiv:2112.13692, Sec. 3 and Fig. 1).  The
multi-class variant has one class token per class, hence one map per class.  This
module computes those maps on validation images (upsampled to the image), the
class-activation maps of the average-pooling variant with the grad-cam package,
and scores every map against the labelled object's ground-truth boxes.

Ground truth: ImageNet's ``LOC_val_solution.csv`` (docs/datasets.md), one row per
val image (``ImageId`` = the file name without its extension) listing boxes
``wnid x_min y_min x_max y_max`` in pixels of the original image, the max being the
last covered column and row (ImageNet's convention).  An image is scored against
the union of its boxes of the labelled class (the "object region"), resized with
the image.

Scores (every map is a non-negative H x W array at image resolution):

* **pointing game** (Zhang et al., 2016, strict form, no pixel tolerance): is the
  map's maximum inside the object region?  When several pixels share the maximum
  the score is the fraction of them inside, i.e. the expected hit of a random
  tie-break.  This makes the score of a *uniform* map well defined: every pixel is
  a maximum, so it scores the region's area fraction, the hit rate of a random
  guess (``pointing_game``).
* **IoU** of the map thresholded at ``threshold x max`` with the region (``iou``).
  A uniform map keeps every pixel: its IoU is the area fraction too.

Reference maps: ``uniform`` (the floor, above) and ``centre`` (a Gaussian on the
image centre, sigma = a quarter of the side: what knowing only that objects tend
to be central gets).

Pure functions on arrays here, and the reading of the ground truth; the study
(pcn.analysis.attention_study) draws and scores every method with them.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# --- scores -----------------------------------------------------------------------------


def pointing_hit(saliency: np.ndarray, region: np.ndarray, rtol: float = 1e-6) -> float:
    """1.0 if the map's maximum lies in ``region`` (bool H x W), 0.0 if not; with ties,
    the fraction of the maximal pixels inside the region."""
    saliency = np.asarray(saliency, dtype=np.float64)
    region = np.asarray(region, dtype=bool)
    if saliency.shape != region.shape:
        raise ValueError(f"map {saliency.shape} and region {region.shape} differ in shape")
    if not np.isfinite(saliency).all():
        raise ValueError("map has NaN or infinite values")
    top = saliency.max()
    peak = saliency >= top - rtol * max(abs(top), 1e-12)
    return float((peak & region).sum() / peak.sum())


def threshold_iou(saliency: np.ndarray, mask: np.ndarray, threshold: float) -> float:
    """IoU of ``saliency >= threshold * max(saliency)`` with ``mask``."""
    saliency = np.asarray(saliency, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if saliency.shape != mask.shape:
        raise ValueError(f"map {saliency.shape} and mask {mask.shape} differ in shape")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if saliency.min() < 0:
        raise ValueError("threshold_iou needs a non-negative map")
    top = saliency.max()
    kept = saliency >= threshold * top if top > 0 else np.ones_like(mask)
    union = (kept | mask).sum()
    return float((kept & mask).sum() / union) if union else 0.0


def boxes_mask(boxes: Iterable[Sequence[float]], shape: tuple[int, int]) -> np.ndarray:
    """Boolean H x W union of ``(x_min, y_min, x_max, y_max)`` boxes whose coordinates are
    pixel edges (a box ``(2, 1, 5, 5)`` covers columns 2..4 and rows 1..4): the pixels
    whose centre lies in a box.  A box thinner than a pixel marks the pixel at its centre."""
    out = np.zeros(shape, dtype=bool)
    h, w = shape
    for x0, y0, x1, y1 in boxes:
        c0, c1 = int(np.ceil(x0 - 0.5)), int(np.floor(x1 - 0.5)) + 1
        r0, r1 = int(np.ceil(y0 - 0.5)), int(np.floor(y1 - 0.5)) + 1
        if c1 <= c0:
            c0 = c1 = int((x0 + x1) / 2)
            c1 += 1
        if r1 <= r0:
            r0 = r1 = int((y0 + y1) / 2)
            r1 += 1
        out[max(r0, 0) : min(r1, h), max(c0, 0) : min(c1, w)] = True
    return out


def uniform_map(shape: tuple[int, int]) -> np.ndarray:
    return np.ones(shape, dtype=np.float32)


def centre_map(shape: tuple[int, int], sigma_frac: float = 0.25) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    s = sigma_frac * min(h, w)
    return np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))).astype(np.float32)


@dataclass
class Scores:
    """Running sums of the localisation scores of one method."""

    pointing: float = 0.0
    iou: float = 0.0
    n: int = 0

    def add(self, saliency: np.ndarray, region: np.ndarray, threshold: float) -> None:
        self.pointing += pointing_hit(saliency, region)
        self.iou += threshold_iou(saliency, region, threshold)
        self.n += 1

    def result(self) -> dict[str, float | int]:
        n = max(self.n, 1)
        return {"pointing_game": 100.0 * self.pointing / n, "iou": 100.0 * self.iou / n, "n": self.n}


def score_maps(maps: np.ndarray, regions: np.ndarray, threshold: float) -> dict[str, float | int]:
    """Mean scores (in %) of N maps (N x H x W) against N object regions (box masks)."""
    s = Scores()
    for m, region in zip(maps, regions):
        s.add(m, region, threshold)
    return s.result()


# --- ground truth -------------------------------------------------------------------------


@dataclass
class ValImage:
    path: Path
    label: int
    class_name: str  # the wnid (folder name)
    size: tuple[int, int]  # (height, width) of the file
    boxes: list[tuple[float, float, float, float]]  # the labelled class's: first and last column and row


def read_loc_solution(path: str | Path) -> dict[str, list[tuple[str, tuple[float, float, float, float]]]]:
    """``LOC_val_solution.csv`` as {ImageId: [(wnid, (x_min, y_min, x_max, y_max)), ...]};
    a malformed row raises DatasetError naming the file and line."""
    from pcn.errors import DatasetError

    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"{path}: file missing (ImageNet's localisation ground truth of val, rows 'ImageId,PredictionString')"
        )
    out: dict[str, list] = {}
    with open(path, newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or [h.strip() for h in header] != ["ImageId", "PredictionString"]:
            raise DatasetError(
                f"{path}: line 1: header {','.join(header or [])!r}, expected 'ImageId,PredictionString'"
            )
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != 2 or not row[0].strip():
                raise DatasetError(
                    f"{path}: line {line}: expected 'ImageId,PredictionString', got {','.join(row)!r:.80}"
                )
            tokens = row[1].split()
            if not tokens or len(tokens) % 5:
                raise DatasetError(
                    f"{path}: line {line}: PredictionString {row[1]!r:.80} is not groups of "
                    "'wnid x_min y_min x_max y_max'"
                )
            boxes = []
            for k in range(0, len(tokens), 5):
                try:
                    x0, y0, x1, y1 = (float(v) for v in tokens[k + 1 : k + 5])
                except ValueError:
                    raise DatasetError(
                        f"{path}: line {line}: box {' '.join(tokens[k : k + 5])!r} has a coordinate "
                        "that is not a number"
                    ) from None
                if not (0 <= x0 <= x1 and 0 <= y0 <= y1):
                    raise DatasetError(
                        f"{path}: line {line}: box {' '.join(tokens[k : k + 5])!r} is not "
                        "x_min <= x_max, y_min <= y_max (non-negative)"
                    )
                boxes.append((tokens[k], (x0, y0, x1, y1)))
            image_id = row[0].strip()
            if image_id in out:
                raise DatasetError(f"{path}: line {line}: ImageId {image_id} appears twice")
            out[image_id] = boxes
    return out


# ImageNet's val boxes in either official form, found in the ImageNet folder: Kaggle's one
# CSV, or image-net.org's per-image PASCAL VOC XML files (ILSVRC2012_bbox_val_v3.tgz, unpacked).
LOC_CSV = "LOC_val_solution.csv"
VOC_DIR = "ILSVRC2012_bbox_val_v3"


def box_source(imagenet: str | Path) -> Path | None:
    """Where the val boxes are: the CSV, else the VOC XML folder (if it holds any XML), else None."""
    imagenet = Path(imagenet)
    if (imagenet / LOC_CSV).is_file():
        return imagenet / LOC_CSV
    voc = imagenet / VOC_DIR
    if voc.is_dir() and next(voc.rglob("*.xml"), None) is not None:
        return voc
    return None


def no_boxes_message(imagenet: str | Path) -> str:
    return (
        f"{imagenet}: no ImageNet val boxes, neither {LOC_CSV} (Kaggle) nor {VOC_DIR}/ (image-net.org's per-image XML)"
    )


def read_boxes(source: Path) -> dict[str, list[tuple[str, tuple[float, float, float, float]]]]:
    """{ImageId: [(wnid, box), ...]} from either form :func:`box_source` finds."""
    return read_voc_boxes(source) if source.is_dir() else read_loc_solution(source)


def read_voc_boxes(folder: str | Path) -> dict[str, list[tuple[str, tuple[float, float, float, float]]]]:
    """image-net.org's per-image PASCAL VOC XML files (``ILSVRC2012_val_00000001.xml``: one
    ``<object>`` with ``<name>`` wnid and ``<bndbox>`` per box) in :func:`read_loc_solution`'s
    form, keyed by file stem; a malformed file raises DatasetError naming it."""
    import xml.etree.ElementTree as ET

    from pcn.errors import DatasetError

    out: dict[str, list] = {}
    for path in sorted(Path(folder).rglob("*.xml")):
        try:
            root = ET.parse(path).getroot()
            boxes = []
            for obj in root.iter("object"):
                bb = obj.find("bndbox")
                x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
                if not (0 <= x0 <= x1 and 0 <= y0 <= y1):
                    raise ValueError(f"box {x0:g} {y0:g} {x1:g} {y1:g} is not x_min <= x_max, y_min <= y_max")
                boxes.append((obj.findtext("name").strip(), (x0, y0, x1, y1)))
        except (ET.ParseError, AttributeError, TypeError, ValueError) as exc:
            raise DatasetError(
                f"{path}: not a PASCAL VOC annotation with <object><name>wnid</name><bndbox>xmin ymin xmax ymax "
                f"({exc.__class__.__name__}: {exc})"
            ) from None
        out[path.stem] = boxes
    return out


def read_val_boxes(
    val_dir: str | Path, source: Path | None, train_classes: Sequence[str], n_images: int
) -> list[ValImage]:
    """The first ``n_images`` val images by file name (so that the classes interleave),
    each with its boxes of the labelled class from ``source`` (:func:`box_source`), matched
    by file stem.  A val image without boxes of its class is refused; with no source the
    images come without boxes (maps drawn, localisation not scored)."""
    from PIL import Image

    from pcn.data.folders import scan_folder
    from pcn.errors import DatasetError

    index = scan_folder(val_dir, train_classes=train_classes)
    source = Path(source) if source is not None else None
    solution = read_boxes(source) if source is not None else None
    samples = sorted(index.samples, key=lambda s: (Path(s[0]).name, s[0]))[:n_images]
    out = []
    for rel, label in samples:
        path = index.root / rel
        stem, wnid = Path(rel).stem, index.class_names[label]
        what = "annotation" if source is not None and source.is_dir() else "row"
        if solution is None:
            boxes = []
        elif stem not in solution:
            raise DatasetError(f"{source}: no {what} for val image {stem} ({path})")
        else:
            boxes = [box for w, box in solution[stem] if w == wnid]
            if not boxes:
                raise DatasetError(f"{source}: {what} {stem} has no box of its class {wnid} ({path})")
        with Image.open(path) as im:
            size = (im.height, im.width)
        out.append(ValImage(path, label, wnid, size, boxes))
    return out


def synset_names(mapping: str | Path, wnids: Sequence[str]) -> list[str]:
    """Readable class names from ``LOC_synset_mapping.txt`` (``<wnid> <names>`` per line:
    the first of the comma-separated names), else the wnids themselves."""
    mapping = Path(mapping)
    names: dict[str, str] = {}
    if mapping.is_file():
        for line in mapping.read_text().splitlines():
            wnid, _, rest = line.strip().partition(" ")
            if wnid and rest:
                names[wnid] = rest.split(",")[0].strip()
    return [names.get(w, w) for w in wnids]


def load_images(items: Iterable[ValImage], img_size: int):
    """(uint8 N x S x S x 3 images, float32 N x 3 x S x S normalised tensor, N x S x S object regions).

    The whole image is resized to ``img_size`` (no crop), each axis by its own factor,
    and the boxes with it (box ``x_min..x_max`` spans the pixel edges ``x_min`` to
    ``x_max + 1``), so maps and regions stay aligned."""
    import cv2
    import torch

    from pcn.data.augment.transforms import NormalizeUint8
    from pcn.data.folders import open_rgb

    norm = NormalizeUint8()
    images, tensors, regions = [], [], []
    for it in items:
        arr = np.array(open_rgb(it.path))  # by content (PNG named .JPEG, CMYK, grayscale); a writable copy
        h, w = arr.shape[:2]
        if (h, w) != (img_size, img_size):
            arr = cv2.resize(arr, (img_size, img_size), interpolation=cv2.INTER_AREA)
        sx, sy = img_size / w, img_size / h
        regions.append(
            boxes_mask(
                [(x0 * sx, y0 * sy, (x1 + 1) * sx, (y1 + 1) * sy) for x0, y0, x1, y1 in it.boxes], (img_size, img_size)
            )
        )
        images.append(arr)
        tensors.append(norm(torch.from_numpy(arr).permute(2, 0, 1)))
    return np.stack(images), torch.stack(tensors), np.stack(regions)


# --- maps from models -----------------------------------------------------------------------


def upsample(maps, size: int) -> np.ndarray:
    """Bilinear upsampling of (N, h, w) or (N, K, h, w) maps to ``size`` x ``size``."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(maps, dtype=torch.float32)
    squeeze = t.ndim == 3
    if squeeze:
        t = t[:, None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False).clamp_min(0)
    return (out[:, 0] if squeeze else out).numpy()


def attention_maps(model, images, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(logits N x K, maps N x h x w or N x K x h x w) of a PatchConvNet with attention pooling."""
    import torch

    model.eval()
    logits, maps = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            lg, mp = model.forward_attention(images[i : i + batch_size])
            logits.append(lg.float().numpy())
            maps.append(mp.float().numpy())
    return np.concatenate(logits), np.concatenate(maps)


class _ChannelsFirst:
    """grad-cam reshape_transform: the trunk's (B, H, W, C) output as (B, C, H, W)."""

    def __call__(self, t):
        return t.permute(0, 3, 1, 2)


def class_activation_maps(model, images, labels: Sequence[int], batch_size: int = 32) -> dict[str, np.ndarray]:
    """Grad-CAM and CAM of the labelled class, at image resolution, from pytorch_grad_cam.

    Target layer: the last trunk block (``model.blocks[-1]``).  "CAM" is the
    package's HiResCAM (gradient x activation summed over channels), which equals the
    class activation map of Zhou et al. (2016) for a global-average-pooling network.
    Here the head (LayerNorm + linear) acts on the pooled vector only, so the gradient
    of a logit is the same at every position: Grad-CAM's channel weights equal that
    gradient and Grad-CAM, HiResCAM and CAM give the same map (a check, not a bug).
    Both maps are ReLU'd and min-max scaled by the package.
    """
    import torch
    from pytorch_grad_cam import GradCAM, HiResCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model.eval()
    layer = [model.blocks[-1]]
    out: dict[str, list[np.ndarray]] = {"gradcam": [], "cam": []}
    for name, cls in (("gradcam", GradCAM), ("cam", HiResCAM)):
        with cls(model=model, target_layers=layer, reshape_transform=_ChannelsFirst()) as cam:
            for i in range(0, len(images), batch_size):
                batch = images[i : i + batch_size]
                targets = [ClassifierOutputTarget(int(c)) for c in labels[i : i + batch_size]]
                with torch.enable_grad():
                    out[name].append(np.asarray(cam(input_tensor=batch, targets=targets), dtype=np.float32))
    return {k: np.concatenate(v) for k, v in out.items()}


def label_maps(multi_maps: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Each image's map of its labelled class from N x K x H x W maps."""
    idx = np.asarray(labels, dtype=np.int64)
    return multi_maps[np.arange(len(idx)), idx]


def top1(logits: np.ndarray, labels: Sequence[int]) -> float:
    return float(100.0 * (np.argmax(logits, axis=1) == np.asarray(labels)).mean())


def localisation_table(maps: dict[str, np.ndarray], regions: np.ndarray, threshold: float) -> dict[str, dict[str, Any]]:
    """{method: {pointing_game, iou, n}} with the references added."""
    shape = regions.shape[1:]
    table = {name: score_maps(m, regions, threshold) for name, m in maps.items()}
    n = len(regions)
    for name, ref in (("centre", centre_map(shape)), ("uniform", uniform_map(shape))):
        table[name] = score_maps(np.broadcast_to(ref, (n, *shape)), regions, threshold)
    return table
