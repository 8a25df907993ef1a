"""Attention maps and how well they localise the object.

PatchConvNet's aggregation block has ONE softmax: the class token's attention over
the patches, i.e. a weight per patch (arXiv:2112.13692, Sec. 3 and Fig. 1).  The
multi-class variant has one class token per class, hence one map per class.  This
module computes those maps on validation images (upsampled to the image), the
class-activation maps of the average-pooling variant with the grad-cam package,
and scores every map against the labelled object's ground-truth mask and box.

Scores (every map is a non-negative H x W array at image resolution):

* **pointing game** (Zhang et al., 2016, strict form, no pixel tolerance): is the
  map's maximum inside the object?  When several pixels share the maximum the
  score is the fraction of them inside the object, i.e. the expected hit of a
  random tie-break.  This makes the score of a *uniform* map well defined: every
  pixel is a maximum, so it scores the object's area fraction, the hit rate of a
  random guess.  Scored against the mask (``pointing_game``) and the box
  (``pointing_game_box``).
* **IoU** of the map thresholded at ``threshold x max`` with the object mask
  (``iou``).  A uniform map keeps every pixel: its IoU is the area fraction too.

Reference maps: ``uniform`` (the floor, above) and ``centre`` (a Gaussian on the
image centre, sigma = a quarter of the side: what knowing only that objects tend
to be central gets).

Pure functions on arrays here; the stage (pcn/steps/report.py) does the I/O.
"""

from __future__ import annotations

import json
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


def box_mask(box: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    """Boolean H x W mask of an ``[x, y, w, h]`` pixel box."""
    x, y, w, h = (int(v) for v in box)
    out = np.zeros(shape, dtype=bool)
    out[max(y, 0) : y + h, max(x, 0) : x + w] = True
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
    pointing_box: float = 0.0
    iou: float = 0.0
    n: int = 0

    def add(self, saliency: np.ndarray, mask: np.ndarray, box: np.ndarray, threshold: float) -> None:
        self.pointing += pointing_hit(saliency, mask)
        self.pointing_box += pointing_hit(saliency, box)
        self.iou += threshold_iou(saliency, mask, threshold)
        self.n += 1

    def result(self) -> dict[str, float | int]:
        n = max(self.n, 1)
        return {"pointing_game": 100.0 * self.pointing / n, "pointing_game_box": 100.0 * self.pointing_box / n,
                "iou": 100.0 * self.iou / n, "n": self.n}


def score_maps(maps: np.ndarray, masks: np.ndarray, boxes: np.ndarray, threshold: float) -> dict[str, float | int]:
    """Mean scores (in %) of N maps (N x H x W) against N masks and N box masks."""
    s = Scores()
    for m, mk, bx in zip(maps, masks, boxes):
        s.add(m, mk, bx, threshold)
    return s.result()


# --- ground truth -------------------------------------------------------------------------


@dataclass
class ValImage:
    path: Path
    label: int
    class_name: str
    box: list[int]
    mask: np.ndarray  # bool H x W at the image's own size


def read_val_objects(objects_json: str | Path, n_images: int) -> tuple[list[str], list[ValImage]]:
    """The first ``n_images`` validation images of a ``val_objects.json`` (see
    pcn/data/synthetic.py), ordered by file name so that the classes interleave."""
    from pycocotools import mask as mask_utils

    objects_json = Path(objects_json)
    doc = json.loads(objects_json.read_text())
    root = objects_json.parent
    keys = sorted(doc["images"], key=lambda k: (Path(k).name, k))[:n_images]
    out = []
    for key in keys:
        e = doc["images"][key]
        rle = dict(e["mask"])
        rle["counts"] = rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"]
        mask = mask_utils.decode(rle).astype(bool)
        out.append(ValImage(root / key, int(e["label"]), e["class_name"], [int(v) for v in e["box"]], mask))
    return list(doc["classes"]), out


def load_images(items: Iterable[ValImage], img_size: int):
    """(uint8 N x S x S x 3 images, float32 N x 3 x S x S normalised tensor, N x S x S masks, box masks).

    The whole image is resized to ``img_size`` (no crop), so maps, masks and boxes
    stay aligned; masks follow with nearest-neighbour resizing."""
    import cv2
    import torch
    from PIL import Image

    from pcn.data.transforms import NormalizeUint8

    norm = NormalizeUint8()
    images, tensors, masks, boxes = [], [], [], []
    for it in items:
        arr = np.array(Image.open(it.path).convert("RGB"))  # a writable copy
        h, w = arr.shape[:2]
        if (h, w) != (img_size, img_size):
            arr = cv2.resize(arr, (img_size, img_size), interpolation=cv2.INTER_AREA)
        mask = it.mask
        box = box_mask(it.box, mask.shape)
        if mask.shape != (img_size, img_size):
            mask = cv2.resize(mask.astype(np.uint8), (img_size, img_size), interpolation=cv2.INTER_NEAREST) > 0
            box = cv2.resize(box.astype(np.uint8), (img_size, img_size), interpolation=cv2.INTER_NEAREST) > 0
        images.append(arr)
        tensors.append(norm(torch.from_numpy(arr).permute(2, 0, 1)))
        masks.append(mask)
        boxes.append(box)
    return np.stack(images), torch.stack(tensors), np.stack(masks), np.stack(boxes)


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


def localisation_table(maps: dict[str, np.ndarray], masks: np.ndarray, boxes: np.ndarray,
                       threshold: float) -> dict[str, dict[str, Any]]:
    """{method: {pointing_game, pointing_game_box, iou, n}} with the references added."""
    shape = masks.shape[1:]
    table = {name: score_maps(m, masks, boxes, threshold) for name, m in maps.items()}
    n = len(masks)
    for name, ref in (("centre", centre_map(shape)), ("uniform", uniform_map(shape))):
        table[name] = score_maps(np.broadcast_to(ref, (n, *shape)), masks, boxes, threshold)
    return table
