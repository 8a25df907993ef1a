"""Semantic segmentation transfer: the column trunk + pyramid neck + UperNet (ADE20k recipe).

What the paper states (the write-up's segmentation paragraph and ADE20k table): UperNet
on ADE20k's 150 classes, fed by the last layer's output (the model is not pyramidal),
scored by mIoU.  Everything else is not stated in the sources here and is chosen as
the comparison rows' mmseg UperNet setting (XCiT's configs): 512x512 crops, 160k
iterations of 16 images, AdamW (weight decay 0.01), linear warm-up then poly decay,
the auxiliary head; paper/recipe.yaml gives each value with its source or its reason.
Here the decoder is segmentation-models-pytorch's ``UPerNetDecoder`` (PSP on the
stride-32 level, an FPN over strides 4..16, fused at stride 4) and a 1x1 segmentation
head upsampled x4 to the input; the schedule is mmseg's shape (warm-up from lr x 1e-3
over 1500 iterations, XCiT's from lr x 1e-6).

mmseg's UperNet also trains an auxiliary ``FCNHead`` on the third pyramid level
(``in_index=2``: stride 16) with loss weight 0.4 (``segmentation.aux_loss_weight``;
0 builds none); it is used in training only.  Testing is single-scale (``mIoU``) and,
with ``segmentation.multiscale_flip_test``, also mmseg's multi-scale + flip test
(``mIoU_ms_flip``): the image at ratios 0.5..1.75 of the test scale, each also
flipped, the class probabilities of the 12 passes averaged at the label map's size.

The loss is ``segmentation.loss``: ``ce``, UperNet's plain cross-entropy over the
labelled pixels (ADE20k), or ``weighted_ce_dice`` for the dominant background of
the demo scenes (about 93 % of pixels): cross-entropy weighted by inverse
square-root class frequency (measured on the training label maps) plus the
multi-class Dice loss, which weighs every class present in a batch equally.

On a GPU the forward passes run under bf16 autocast (the loss in fp32); on the
CPU everything stays fp32. Under DDP each rank scores its shard of the val set,
writes its predictions into the run's work folder and the confusion matrices are
summed over the ranks.

Outputs of :func:`run` (all under the job's ``out_dir``, written atomically):
``predictions/<name>.png`` (predicted ids 1..N of every val image, at its label
map's size: anyone can re-score them), ``model.pth`` ({"model": state_dict}) and
``qualitative.png``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pcn.train import distributed as D
from pcn.train.loop import autocast
from pcn.transfer.datasets import (
    AdeSegmentation,
    ade_eval_transforms,
    ade_train_transforms,
)
from pcn.transfer.distributed import shard
from pcn.transfer.job import TransferJob
from pcn.transfer.metrics import confusion_matrix, segmentation_scores
from pcn.transfer.pyramid import PyramidBackbone, create_pyramid_backbone
from pcn.transfer.runner import DenseRun, run_dense

log = logging.getLogger(__name__)

IGNORE_TARGET = -1  # training target of unlabelled pixels (label id 0)
AUX_LEVEL = 2  # mmseg's UperNet auxiliary head reads in_index 2: the stride-16 level
# mmseg's ADE20k multi-scale test (MultiScaleFlipAug img_ratios, flip=True)
MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


class AuxFCNHead(nn.Module):
    """mmseg's ``FCNHead`` as UperNet's auxiliary head: one 3x3 conv-BN-ReLU
    (``num_convs=1``, no concatenated input), dropout 0.1, a 1x1 classifier."""

    def __init__(self, in_channels: int, channels: int, n_classes: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(channels, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))


class UperNetSegmenter(nn.Module):
    """Pyramid backbone -> UPerNetDecoder -> 1x1 head, logits at the input size.

    With ``aux_head`` (mmseg's UperNet), training mode returns ``(logits, aux_logits)``,
    both at the input size; eval mode returns the logits only.
    """

    def __init__(self, backbone: PyramidBackbone, n_classes: int, decoder_channels: int = 512, aux_head: bool = False):
        from segmentation_models_pytorch.base.heads import SegmentationHead
        from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder

        super().__init__()
        self.backbone = backbone
        # The decoder reads [x, 1/2, 1/4, 1/8, 1/16, 1/32] and skips the first two.
        self.decoder = UPerNetDecoder(
            encoder_channels=[3, 0, *backbone.out_channels], encoder_depth=5, decoder_channels=decoder_channels
        )
        self.head = SegmentationHead(decoder_channels, n_classes, kernel_size=1, upsampling=4)
        # mmseg: UPerHead 512 channels, its FCNHead 256: half the decoder's width
        in_aux = backbone.out_channels[AUX_LEVEL]
        self.aux_head = AuxFCNHead(in_aux, max(decoder_channels // 2, 1), n_classes) if aux_head else None
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        feats = self.backbone(x)  # of the input padded to a multiple of 32
        out = self.head(self.decoder([x, x, *feats]))[..., :h, :w]
        if self.aux_head is None or not self.training:
            return out
        padded = [s * self.backbone.strides[0] for s in feats[0].shape[-2:]]
        aux = F.interpolate(self.aux_head(feats[AUX_LEVEL]), size=padded, mode="bilinear", align_corners=False)
        return out, aux[..., :h, :w]


def segmentation_loss(
    criterion: nn.Module, outputs: torch.Tensor | tuple, target: torch.Tensor, aux_weight: float
) -> torch.Tensor:
    """The decode head's loss, plus ``aux_weight`` times the auxiliary head's (mmseg: 0.4),
    both in fp32."""
    if isinstance(outputs, tuple):
        logits, aux = outputs
        return criterion(logits.float(), target) + aux_weight * criterion(aux.float(), target)
    return criterion(outputs.float(), target)


def class_weights(pixel_counts: np.ndarray, power: float = 0.5) -> torch.Tensor:
    """(median frequency / frequency) ** power, 1 for classes absent from the training set."""
    counts = pixel_counts.astype(np.float64)
    present = counts > 0
    w = np.ones_like(counts)
    if present.any():
        freq = counts[present] / counts[present].sum()
        w[present] = (np.median(freq) / freq) ** power
    return torch.tensor(w, dtype=torch.float32)


class SegmentationLoss(nn.Module):
    """Class-weighted cross-entropy + multi-class Dice (segmentation-models-pytorch's)."""

    def __init__(self, weights: torch.Tensor, dice: float = 1.0):
        from segmentation_models_pytorch.losses import DiceLoss

        super().__init__()
        self.ce = nn.CrossEntropyLoss(weight=weights, ignore_index=IGNORE_TARGET)
        self.dice = DiceLoss("multiclass", ignore_index=IGNORE_TARGET) if dice > 0 else None
        self.dice_weight = dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.ce(logits, target)
        if self.dice is not None:
            loss = loss + self.dice_weight * self.dice(logits, target)
        return loss


def build_criterion(job: TransferJob, train_set: AdeSegmentation) -> nn.Module:
    """``segmentation.loss``: plain cross-entropy (UperNet's) or class-weighted CE + Dice."""
    kind = job.cfg("loss", "ce")
    if kind == "ce":
        return nn.CrossEntropyLoss(ignore_index=IGNORE_TARGET)
    if kind == "weighted_ce_dice":
        return SegmentationLoss(class_weights(train_set.pixel_counts()))
    raise ValueError(f"segmentation.loss = {kind!r}, expected 'ce' or 'weighted_ce_dice'")


def build_model(job: TransferJob, n_classes: int):
    ckpt = job.checkpoint if job.init == "pretrained" else None
    backbone, report = create_pyramid_backbone(
        job.model, job.model_options, ckpt, features=job.cfg("features", "blocks")
    )
    aux = job.cfg("aux_loss_weight", 0.0) > 0
    model = UperNetSegmenter(backbone, n_classes, job.cfg("decoder_channels", 512), aux_head=aux)
    return model, report


@torch.no_grad()
def class_probabilities(
    model: UperNetSegmenter,
    image: torch.Tensor,
    size: tuple[int, int],
    ratios: tuple[float, ...] = (1.0,),
    flip: bool = False,
) -> torch.Tensor:
    """Class probabilities (N, *size) of one normalised image (C, H, W) at the test scale, as
    mmseg's ``aug_test``: the image resized by each of ``ratios`` (and, with ``flip``, also
    flipped), each pass's logits resized to ``size`` (the label map's), softmaxed and
    flipped back, then averaged over the passes."""
    h, w = image.shape[-2:]
    total = None
    for r in ratios:
        scaled = image[None]
        if r != 1.0:  # mmcv rounds the rescaled size to the nearest pixel
            hw = (int(h * r + 0.5), int(w * r + 0.5))
            scaled = F.interpolate(scaled, size=hw, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            x = scaled.flip(-1) if flipped else scaled
            with autocast(image.device):
                logits = model(x)
            logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
            probs = logits.softmax(1)[0]
            probs = probs.flip(-1) if flipped else probs
            total = probs if total is None else total + probs
    return total / (len(ratios) * (2 if flip else 1))


def predict(
    model: UperNetSegmenter, image: torch.Tensor, size: tuple[int, int], ratios=(1.0,), flip: bool = False
) -> torch.Tensor:
    """Ids 0..N-1 at ``size`` (the label map's) for one normalised image (C, H, W)."""
    return class_probabilities(model, image, size, ratios, flip).argmax(0)


MS_FLIP = "ms_flip"  # suffix of the multi-scale + flip scores and predictions


@torch.no_grad()
def evaluate(
    model: UperNetSegmenter,
    dataset: AdeSegmentation,
    device: torch.device,
    predictions_dir: Path | None = None,
    env: D.DistEnv | None = None,
    num_workers: int = 0,
    multiscale_flip: bool = False,
) -> tuple[dict[str, Any], list]:
    """One confusion matrix over the val set (summed over the ranks, each scoring its
    shard); optionally the predicted id maps as PNGs. Every rank gets the scores.

    With ``multiscale_flip`` a second matrix scores mmseg's multi-scale + flip test; its
    scores are under ``scores["ms_flip"]`` and its maps in ``predictions_dir`` + ``_ms_flip``.
    """
    env = env or D.DistEnv()
    model.eval()
    n = dataset.n_classes
    tests = {"": ((1.0,), False)} | ({MS_FLIP: (MS_RATIOS, True)} if multiscale_flip else {})
    conf = {k: torch.zeros(n, n, dtype=torch.int64) for k in tests}
    samples = []
    dtype = np.uint8 if n <= 255 else np.uint16
    # batch_size=None: one image at a time (sizes differ), decoded by the workers
    images = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, shard(len(dataset), env)), batch_size=None, num_workers=num_workers
    )
    for image, label, name in images:
        for key, (ratios, flip) in tests.items():
            pred = predict(model, image.to(device), tuple(label.shape), ratios, flip).cpu()
            conf[key] += confusion_matrix(pred, label - 1, n)  # label 0 -> -1: not counted
            if predictions_dir is not None:
                # the single-scale maps in predictions_dir, the multi-scale ones beside it
                folder = predictions_dir.with_name(f"{predictions_dir.name}_{key}") if key else predictions_dir
                Image.fromarray((pred + 1).numpy().astype(dtype)).save(folder / f"{name}.png")
            if not key and len(samples) < 4:
                samples.append((name, label.numpy(), (pred + 1).numpy()))
    # nccl reduces GPU tensors only
    scores = {k: segmentation_scores(D.all_reduce_sum(c.to(device)).cpu()) for k, c in conf.items()}
    return scores.pop("") | ({MS_FLIP: scores[MS_FLIP]} if multiscale_flip else {}), samples


def qualitative_figure(dataset: AdeSegmentation, samples: list, path: Path) -> None:
    """Val images, ground truth and prediction side by side (id 0 = unlabelled in black)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from pcn.transfer.datasets import read_rgb
    from pcn.transfer.outputs import save_figure, title_panel

    n = dataset.n_classes
    colours = plt.get_cmap("tab20", max(n, 2))(np.arange(n))[:, :3]
    cmap = ListedColormap(np.vstack([[0, 0, 0], colours]))
    fig, axes = plt.subplots(len(samples), 3, figsize=(7.5, 2.5 * len(samples)), squeeze=False)
    for row, (name, label, pred) in zip(axes, samples):
        row[0].imshow(read_rgb(dataset.image_path(name)))
        row[1].imshow(label, cmap=cmap, vmin=0, vmax=n, interpolation="nearest")
        row[2].imshow(pred, cmap=cmap, vmin=0, vmax=n, interpolation="nearest")
        row[0].set_ylabel(name, fontsize=7)
        for ax, title in zip(row, ("image", "ground truth", "prediction")):
            title_panel(ax, title)
    save_figure(fig, path)


def _scheduler(optimizer, iters: int, lr: float):
    from timm.scheduler import PolyLRScheduler

    warmup = min(1500, iters // 10)  # mmseg: 1500 linear warm-up iterations of 160k
    return PolyLRScheduler(
        optimizer,
        t_initial=max(iters - warmup, 1),
        power=1.0,
        lr_min=0.0,
        warmup_t=warmup,
        warmup_lr_init=lr * 1e-3,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def per_class(names: list[str], values: list) -> dict[str, Any]:
    """``{class name: value}`` with one entry per class (ids prefixed where names repeat)."""
    keys = names if len(set(names)) == len(names) else [f"{i} {n}" for i, n in enumerate(names, start=1)]
    return dict(zip(keys, values))


class SegmentationRun(DenseRun):
    """UperNet on ADE20k through the shared run (:func:`pcn.transfer.runner.run_dense`)."""

    weight_decay = 0.01

    def data(self):
        job, bs, per_rank = self.job, self.job.cfg("batch_size"), self.per_rank
        if per_rank < 2 and not (self.device.type == "cuda" and self.env.world_size > 1):
            # UperNet's pyramid pooling normalises 1x1 maps: one image gives one value per channel.
            raise ValueError(
                f"segmentation.batch_size = {bs} gives {per_rank} image per rank; BatchNorm needs 2 or "
                "more (SyncBatchNorm, used for DDP on GPUs, pools them over the ranks)"
            )
        size = job.cfg("img_size")
        # The stage validated every file before submitting (pcn.steps.transfer): no second pass here.
        self.train_set = AdeSegmentation(
            job.data_root, "train", n_classes=job.cfg("n_classes"), transforms=ade_train_transforms(size), check=False
        )
        self.val_set = AdeSegmentation(
            job.data_root,
            "val",
            n_classes=self.train_set.n_classes,
            image_transforms=ade_eval_transforms(size),
            check=False,
        )
        self.criterion = build_criterion(job, self.train_set).to(self.device)
        self.aux_weight = job.cfg("aux_loss_weight", 0.0)
        return self.train_set

    def build(self):
        return build_model(self.job, self.train_set.n_classes)

    def scheduler(self, optimizer, iters: int, lr: float):
        return _scheduler(optimizer, iters, lr)

    def loss(self, model, batch) -> torch.Tensor:
        images, labels, _ = batch
        with autocast(self.device):
            outputs = model(images.to(self.device, non_blocking=True))
        # ids 1..N -> 0..N-1, 0 -> -1 (ignored)
        return segmentation_loss(
            self.criterion, outputs, labels.to(self.device, non_blocking=True) - 1, self.aux_weight
        )

    def evaluate(self, net) -> None:
        # Every rank writes its share of the predictions here; rank 0 moves the folder into the outputs.
        job, env = self.job, self.env
        multiscale = bool(job.cfg("multiscale_flip_test", False))
        self.pred_dirs = [job.work_dir / "predictions"]
        self.pred_dirs += [job.work_dir / f"predictions_{MS_FLIP}"] if multiscale else []
        if env.is_main:
            for folder in self.pred_dirs:
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
        D.barrier()
        self.scores, self.samples = evaluate(
            net, self.val_set, self.device, self.pred_dirs[0], env, job.num_workers, multiscale
        )
        D.barrier()  # every rank's PNGs are written

    def write(self, net, folder: Path) -> None:
        for pred in self.pred_dirs:
            shutil.move(pred, folder / pred.name)

    def figure(self, path: Path) -> None:
        qualitative_figure(self.val_set, self.samples, path)

    def metrics(self, out_dir: Path) -> dict[str, Any]:
        scores, val_set = self.scores, self.val_set
        names = val_set.class_names
        ms = scores.get(MS_FLIP)
        return {
            "mIoU": scores["mIoU"],
            "mAcc": scores["mAcc"],
            "aAcc": scores["aAcc"],
            **({f"{k}_{MS_FLIP}": ms[k] for k in ("mIoU", "mAcc", "aAcc")} if ms else {}),
            **(
                {"test_ratios": list(MS_RATIOS), "predictions_dir_ms_flip": str(out_dir / f"predictions_{MS_FLIP}")}
                if ms
                else {}
            ),
            "aux_loss_weight": self.aux_weight,
            "per_class_iou": per_class(names, scores["per_class_iou"]),
            "per_class_acc": per_class(names, scores["per_class_acc"]),
            "n_classes": val_set.n_classes,
            "n_val_images": len(val_set),
            "loss": self.job.cfg("loss", "ce"),
            "ranks": self.env.world_size,
            "batch_per_rank": self.per_rank,
            "predictions_dir": str(out_dir / "predictions"),
            "annotations_dir": str(val_set.label_dir),
        }


def run(job: TransferJob, env: D.DistEnv | None = None, stop=None) -> dict[str, Any]:
    """Train, evaluate, write the outputs; return the metrics (see :func:`pcn.transfer.runner.run_dense`)."""
    return run_dense(SegmentationRun, job, env, stop)
