"""Scores of the dense tasks.

Segmentation (mmseg's ``IoUMetric``): ONE confusion matrix accumulated over every
labelled pixel of the validation set, then

* IoU_c = TP_c / (TP_c + FP_c + FN_c), mIoU = mean over classes whose union is not
  empty. As in mmseg (0/0 = NaN, then ``np.nanmean``), a class absent from the
  ground truth and never predicted has no IoU (``None``) and is left out of the
  mean; a class absent from the ground truth but predicted somewhere has IoU 0 and
  counts;
* Acc_c = TP_c / (TP_c + FN_c), mAcc = mean over classes present in the ground truth;
* aAcc = sum TP / labelled pixels.

All in percent, one value per class (``None`` where undefined).

Detection: pycocotools' ``COCOeval`` for ``bbox`` and ``segm``; AP, AP50, AP75,
APs, APm, APl in percent (``None`` where COCOeval reports -1: no ground truth in
that area range).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def confusion_matrix(
    pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, n_classes: int, ignore_index: int | None = None
) -> torch.Tensor:
    """(n, n) int64 counts, rows = ground truth, columns = prediction, over pixels whose
    target is a class (0..n-1); ``ignore_index`` and out-of-range targets are skipped."""
    pred = torch.as_tensor(pred).reshape(-1).long()
    target = torch.as_tensor(target).reshape(-1).long()
    keep = (target >= 0) & (target < n_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    if ((pred[keep] < 0) | (pred[keep] >= n_classes)).any():
        raise ValueError(f"predictions outside 0..{n_classes - 1}")
    idx = target[keep] * n_classes + pred[keep]
    return torch.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _nan_to_none(values: Iterable[float]) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values]


def segmentation_scores(conf: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """mIoU, mAcc, aAcc (percent) and per-class IoU / accuracy from one confusion matrix."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    gt = conf.sum(axis=1)
    predicted = conf.sum(axis=0)
    union = gt + predicted - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan) * 100
        acc = np.where(gt > 0, tp / gt, np.nan) * 100
    total = conf.sum()
    return {
        "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
        "mAcc": float(np.nanmean(acc)) if np.isfinite(acc).any() else 0.0,
        "aAcc": float(tp.sum() / total * 100) if total else 0.0,
        "per_class_iou": _nan_to_none(iou),
        "per_class_acc": _nan_to_none(acc),
    }


def coco_scores(coco_gt, results: list[dict], iou_type: str) -> dict[str, float | None]:
    """COCOeval of a results list against a ``pycocotools.coco.COCO``; AP etc. in percent.

    For ``segm`` the ``bbox`` of each result is removed first (as detectron2 does), so
    that detection areas (for APs/APm/APl) come from the masks, not the boxes.
    """
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if not results:
        return {k: 0.0 for k in COCO_STATS}
    dets = copy.deepcopy(results)  # loadRes adds keys in place
    if iou_type == "segm":
        for d in dets:
            d.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (None if v < 0 else float(v) * 100) for k, v in zip(COCO_STATS, ev.stats[:6])}


def coco_ground_truth(ann_file: str | Path):
    """The val annotation file itself as a ``pycocotools.coco.COCO`` (its crowd regions are
    COCOeval's ignore regions), loaded without pycocotools' progress prints."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann_file))
