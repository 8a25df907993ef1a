"""Detection and instance segmentation transfer: the column trunk + pyramid neck + Mask R-CNN.

What the paper states (the write-up's COCO table): Mask R-CNN on COCO, box AP.  The
schedule and sizes are not stated in the sources here and are chosen as the comparison
rows' 3x setting (XCiT's and Swin's mmdet configs): 36 epochs, multi-scale training
without their random-crop branch, AdamW (weight decay 0.05), the lr x 0.1 at epochs 27
and 33; paper/recipe.yaml gives each value with its source or its reason.  Here the
detector is torchvision's ``MaskRCNN``
(RPN, RoIAlign, box and mask heads) on a backbone module that runs the pyramid
neck (strides 4..32) and torchvision's ``FeaturePyramidNetwork`` with its max-pool
level (stride 64), exposing ``out_channels`` as torchvision expects.

Image sizes are torchvision's ``GeneralizedRCNNTransform``: training draws the
shorter side from ``detection.min_sizes`` per image, testing uses
``detection.test_size``, and both cap the longer side at ``detection.max_size``
(the COCO protocol: 800 / 1333). Anchor sizes scale with the images: (32, 64, 128,
256, 512) at COCO sizes, (8, ..., 128) for 128 px scenes.

On a GPU the trunk and the FPN run under bf16 autocast; the RPN and RoI heads stay
in fp32, because box coordinates decoded in bf16 (8 significant bits) would move
by up to 8 px at 1333 px. On the CPU everything is fp32.

Outputs of :func:`run` (under the job's ``out_dir``, written atomically):
``detections_val.json`` (COCO results format: one list, each entry with ``bbox``
and a compressed-RLE ``segmentation``, in the val file's image and category ids),
``model.pth`` and ``qualitative.png``. Scoring is pycocotools' ``COCOeval`` against
the val annotation file itself (crowd regions are its ignore regions); for ``segm``
the boxes are dropped first so areas come from the masks (as detectron2 does).
Under DDP each rank detects on its shard of val and writes it into the run's work
folder; rank 0 joins the shards and scores them.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import nn

from pcn.train import distributed as D
from pcn.train.loop import autocast
from pcn.transfer.datasets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CocoInstances,
    DatasetError,
    coco_eval_transforms,
    coco_train_transforms,
    collate_detection,
)
from pcn.transfer.distributed import shard
from pcn.transfer.job import TransferJob
from pcn.transfer.metrics import COCO_STATS, coco_ground_truth, coco_scores
from pcn.transfer.pyramid import PyramidBackbone, create_pyramid_backbone
from pcn.transfer.runner import DenseRun, run_dense

log = logging.getLogger(__name__)

RESULTS_FILE = "detections_val2017_results.json"  # COCO's results-file naming
MASK_THRESHOLD = 0.5


class PyramidFPN(nn.Module):
    """Pyramid backbone + FPN: an OrderedDict of levels '0'..'3' (strides 4..32) and 'pool' (64)."""

    def __init__(self, backbone: PyramidBackbone, out_channels: int = 256):
        from torchvision.ops.feature_pyramid_network import (
            FeaturePyramidNetwork,
            LastLevelMaxPool,
        )

        super().__init__()
        self.body = backbone
        self.fpn = FeaturePyramidNetwork(list(backbone.out_channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        with autocast(x.device):  # bf16 on a GPU; the heads stay fp32
            feats = self.body(x)  # torchvision pads batches to a multiple of 32 already
            levels = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
        return OrderedDict((k, v.float()) for k, v in levels.items())


def anchor_sizes(img_size: int) -> tuple[tuple[int, ...], ...]:
    """One size per level (strides 4..64): 8x the stride at COCO sizes, smaller for small images."""
    base = min(32, max(8, round(32 * img_size / 512)))
    return tuple((base * 2**i,) for i in range(5))


def scaled_count(coco: int, img_size: int, floor: int) -> int:
    """A per-image count of the COCO recipe (shorter side 800) scaled with the image area,
    between ``floor`` and the COCO value: the paper scale keeps COCO's."""
    return min(coco, max(floor, round(coco * (img_size / 800) ** 2)))


def build_model(job: TransferJob, n_classes: int):
    """torchvision MaskRCNN over the pyramid; ``n_classes`` object classes (+ background)."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    ckpt = job.checkpoint if job.init == "pretrained" else None
    body, report = create_pyramid_backbone(job.model, job.model_options, ckpt, features=job.cfg("features", "blocks"))
    backbone = PyramidFPN(body, job.cfg("fpn_channels", 256))
    sizes = anchor_sizes(job.cfg("img_size"))
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(sizes))
    levels = ["0", "1", "2", "3"]
    min_sizes = tuple(job.cfg("min_sizes") or [job.cfg("img_size")])
    max_size = job.cfg("max_size") or round(max(min_sizes) * 1333 / 800)
    # Box head sized with the FPN (COCO: 256 channels -> 1024-wide MLP, 512 sampled RoIs per image);
    # on small scenes with few objects the COCO sizes dominate CPU time (profiled: mm + RoIAlign ~50 %).
    fpn = backbone.out_channels
    representation = 4 * fpn
    size = job.cfg("img_size")
    rois_per_image = scaled_count(512, size, floor=128)
    # RPN proposals as mmdetection's Mask R-CNN (configs/_base_/models/mask-rcnn_r50_fpn.py):
    # train 2000 per level before NMS, 1000 kept; test 1000 and 1000 (torchvision keeps 2000
    # in training).  Scaled down with the image area like the RoIs: a 128 px scene has about
    # 4,000 anchors, and NMS over half of them was a tenth of a demo step.
    proposals = {
        "rpn_pre_nms_top_n_train": scaled_count(2000, size, floor=500),
        "rpn_post_nms_top_n_train": scaled_count(1000, size, floor=500),
        "rpn_pre_nms_top_n_test": scaled_count(1000, size, floor=500),
        "rpn_post_nms_top_n_test": scaled_count(1000, size, floor=500),
    }
    model = MaskRCNN(
        backbone,
        min_size=min_sizes,
        max_size=max_size,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        rpn_anchor_generator=anchors,
        # sampling_ratio=0: as many bilinear samples per bin as the RoI needs (mmdetection's
        # RoIAlign setting; torchvision's builder uses 2).  Small RoIs then take one sample
        # where 2 x 2 were taken: RoIAlign's CPU backward was 30% of a demo step.
        box_roi_pool=MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=0),
        mask_roi_pool=MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=0),
        box_head=TwoMLPHead(fpn * 7 * 7, representation),
        box_predictor=FastRCNNPredictor(representation, n_classes + 1),
        box_batch_size_per_image=rois_per_image,
        mask_head=MaskRCNNHeads(fpn, (fpn,) * 4, 1),  # COCO: 256 = the FPN width
        mask_predictor=MaskRCNNPredictor(fpn, fpn, n_classes + 1),
        box_score_thresh=job.cfg("score_thresh", 0.05),  # detections kept at test time, up to 100 per image
        **proposals,
    )
    return model, report


def use_test_size(model, job: TransferJob) -> None:
    """Single-scale test: shorter side ``test_size``, longer side at most ``max_size``
    (in eval mode torchvision resizes to the last ``min_size``)."""
    model.transform.min_size = (job.cfg("test_size") or job.cfg("img_size"),)
    model.transform.max_size = job.cfg("max_size") or model.transform.max_size


def _to_device(images, targets, device):
    images = [im.to(device) for im in images]
    targets = [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for t in targets]
    return images, targets


@torch.no_grad()
def detect(
    model,
    dataset: CocoInstances,
    device: torch.device,
    batch_size: int = 8,
    indices: list[int] | None = None,
    num_workers: int = 0,
) -> list[dict]:
    """COCO results (bbox xywh + compressed RLE of the mask at 0.5) for the images of
    ``dataset`` (or those at ``indices``), in its annotation file's image and category ids."""
    model.eval()
    results = []
    images_of = dataset if indices is None else torch.utils.data.Subset(dataset, indices)
    loader = torch.utils.data.DataLoader(
        images_of, batch_size=batch_size, shuffle=False, collate_fn=collate_detection, num_workers=num_workers
    )
    for images, targets in loader:
        outputs = model([im.to(device) for im in images])
        for out, tgt in zip(outputs, targets):
            boxes = out["boxes"].cpu().numpy()
            masks = (out["masks"][:, 0] >= MASK_THRESHOLD).cpu().numpy().astype(np.uint8)
            for box, score, label, m in zip(boxes, out["scores"].tolist(), out["labels"].tolist(), masks):
                rle = mask_utils.encode(np.asfortranarray(m))
                rle["counts"] = rle["counts"].decode("ascii")
                x0, y0, x1, y1 = (float(v) for v in box)
                results.append(
                    {
                        "image_id": int(tgt["image_id"]),
                        "category_id": int(dataset.label_to_cat[int(label)]),
                        "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                        "score": round(float(score), 5),
                        "segmentation": rle,
                    }
                )
    return results


def qualitative_figure(
    dataset: CocoInstances, results: list[dict], path: Path, n: int = 4, min_score: float = 0.5
) -> None:
    """A few val images: ground truth (left) and detections above ``min_score`` (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from pcn.transfer.datasets import annotation_mask, read_rgb
    from pcn.transfer.outputs import save_figure, title_panel

    names = {c["id"]: c.get("name", str(c["id"])) for c in dataset.categories}
    by_image: dict[int, list] = {}
    for r in results:
        if r["score"] >= min_score:
            by_image.setdefault(r["image_id"], []).append(r)
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(n, 2, figsize=(5.5, 2.7 * n), squeeze=False)
    for row, im in zip(axes, dataset.images[:n]):
        image = read_rgb(dataset.image_path(im)).astype(np.float32) / 255
        gts = [
            (a["bbox"], annotation_mask(a, im["height"], im["width"]), a["category_id"], None)
            for a in dataset.anns[im["id"]]
        ]
        dts = [
            (
                r["bbox"],
                mask_utils.decode({**r["segmentation"], "counts": r["segmentation"]["counts"].encode()}),
                r["category_id"],
                r["score"],
            )
            for r in by_image.get(im["id"], [])
        ]
        for ax, items, title in ((row[0], gts, "ground truth"), (row[1], dts, f"detections >= {min_score}")):
            shown = image.copy()
            for _, m, cat, _ in items:
                colour = np.array(cmap(cat % 10)[:3])
                shown[m > 0] = 0.5 * shown[m > 0] + 0.5 * colour
            ax.imshow(shown)
            for bbox, _, cat, score in items:
                colour = cmap(cat % 10)
                ax.add_patch(Rectangle((bbox[0], bbox[1]), bbox[2], bbox[3], fill=False, color=colour, lw=1.2))
                text = names.get(cat, str(cat)) + (f" {score:.2f}" if score is not None else "")
                ax.text(
                    bbox[0],
                    bbox[1] - 1,
                    text,
                    fontsize=6,
                    color="white",
                    bbox={"facecolor": colour, "alpha": 0.7, "pad": 0.5, "lw": 0},
                )
            title_panel(ax, title)
    save_figure(fig, path)


def _scheduler(optimizer, iters: int, lr: float):
    """The 3x schedule's shape: linear warm-up, x0.1 at 3/4 and 11/12 of the iterations."""
    from timm.scheduler import MultiStepLRScheduler

    warmup = min(1000, iters // 10)
    return MultiStepLRScheduler(
        optimizer,
        decay_t=[int(iters * 0.75), int(iters * 11 / 12)],
        decay_rate=0.1,
        warmup_t=warmup,
        warmup_lr_init=lr * 1e-3,
        warmup_prefix=False,
        t_in_epochs=False,
    )


def detect_sharded(
    model, dataset: CocoInstances, device: torch.device, job: TransferJob, env: D.DistEnv
) -> list[dict] | None:
    """Each rank detects on its shard of ``dataset`` and writes it to the work folder; rank 0
    returns every rank's results (in rank order), the other ranks None."""
    from pcn.io import write_text

    folder = job.work_dir / "detections"
    mine = detect(model, dataset, device, indices=shard(len(dataset), env), num_workers=job.num_workers)
    write_text(folder / f"rank{env.rank}.json", json.dumps(mine))
    D.barrier()  # every shard is written
    if not env.is_main:
        return None
    return [r for rank in range(env.world_size) for r in json.loads((folder / f"rank{rank}.json").read_text())]


class DetectionRun(DenseRun):
    """Mask R-CNN on COCO through the shared run (:func:`pcn.transfer.runner.run_dense`)."""

    weight_decay = 0.05
    collate = staticmethod(collate_detection)

    def data(self):
        job = self.job
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # The stage validated every file before submitting (pcn.steps.transfer): no second pass here.
            train_set = CocoInstances(job.data_root, "train", transforms=coco_train_transforms(), check=False)
            val_set = CocoInstances(job.data_root, "val", transforms=coco_eval_transforms(), check=False)
        if self.env.is_main:
            for w in caught:
                log.warning("%s", w.message)
        if len({c["id"] for c in train_set.categories} ^ {c["id"] for c in val_set.categories}):
            raise DatasetError(f"{val_set.ann_file}: categories differ from {train_set.ann_file}")
        # Training images without an object (about 1% of COCO train, or only crowd regions) teach
        # nothing but background: left out, as mmdetection's filter_empty_gt and torchvision's recipe do.
        with_objects = [i for i, im in enumerate(train_set.images) if train_set.anns[im["id"]]]
        if not with_objects:
            raise DatasetError(f"{train_set.ann_file}: no training image has a (non-crowd) object")
        self.train_set, self.val_set = train_set, val_set
        self.train_items = torch.utils.data.Subset(train_set, with_objects)
        return self.train_items

    def build(self):
        return build_model(self.job, len(self.train_set.categories))

    def scheduler(self, optimizer, iters: int, lr: float):
        return _scheduler(optimizer, iters, lr)

    def loss(self, model, batch) -> torch.Tensor:
        images, targets = _to_device(*batch, self.device)
        losses = model(images, targets)
        return sum(losses.values())

    def evaluate(self, net) -> None:
        use_test_size(net, self.job)
        self.results = detect_sharded(net, self.val_set, self.device, self.job, self.env)
        if self.env.is_main:
            gt = coco_ground_truth(self.val_set.ann_file)
            self.scores = {iou: coco_scores(gt, self.results, iou) for iou in ("bbox", "segm")}
        self.transform = net.transform

    def write(self, net, folder: Path) -> None:
        (folder / RESULTS_FILE).write_text(json.dumps(self.results) + "\n")

    def figure(self, path: Path) -> None:
        qualitative_figure(self.val_set, self.results, path)

    def metrics(self, out_dir: Path) -> dict[str, Any]:
        scores, train_set, val_set = self.scores, self.train_set, self.val_set
        metrics: dict[str, Any] = {f"{iou}_{k}": scores[iou][k] for iou in ("bbox", "segm") for k in COCO_STATS}
        metrics.update(
            {
                "results_file": str(out_dir / RESULTS_FILE),
                "annotations_file": str(val_set.ann_file),
                "segm_scored_without_bbox": True,
                "n_detections": len(self.results),
                "n_train_images": len(self.train_items),
                "n_train_images_without_objects": len(train_set) - len(self.train_items),
                "n_val_images": len(val_set),
                "n_degenerate_skipped": train_set.n_degenerate + val_set.n_degenerate,
                "test_size": list(self.transform.min_size)[-1],
                "max_size": self.transform.max_size,
                "ranks": self.env.world_size,
                "batch_per_rank": self.per_rank,
            }
        )
        return metrics


def run(job: TransferJob, env: D.DistEnv | None = None, stop=None) -> dict[str, Any]:
    """Train, detect on val, score with COCOeval, write the outputs; return the metrics
    (see :func:`pcn.transfer.runner.run_dense`)."""
    return run_dense(DetectionRun, job, env, stop)
