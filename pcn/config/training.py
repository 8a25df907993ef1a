"""Models and their recipes: model, augmentation, training, evaluation, complexity, dense transfer."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pcn.config.base import Section

# Every model the demo's complexity stage measures: the demo model and the paper's table.
DEMO_COMPLEXITY_MODELS = (
    "patchconvnet_demo",
    "patchconvnet_s60",
    "patchconvnet_s120",
    "patchconvnet_b60",
    "patchconvnet_b120",
    "patchconvnet_l60",
    "patchconvnet_l120",
    "patchconvnet_s60_multi",
    "resnet50",
    "resnet50_attnpool",
    "deit_small_patch16_224",
    "swin_tiny_patch4_window7_224",
    "convnext_tiny",
)


class ModelConfig(Section):
    name: str = "patchconvnet_demo"
    options: dict[str, Any] = Field(default_factory=dict, description="extra constructor arguments")


class AugConfig(Section):
    """The DeiT-style augmentation the paper trains with."""

    hflip: float = Field(0.5, ge=0.0, le=1.0)
    scale_min: float = Field(0.08, gt=0.0, le=1.0, description="random-resized-crop minimum area")
    auto_augment: str | None = Field(None, description="timm RandAugment string, e.g. rand-m9-mstd0.5-inc1")
    three_augment: bool = False
    color_jitter: float = Field(0.0, ge=0.0)
    mixup: float = Field(0.0, ge=0.0)
    cutmix: float = Field(0.0, ge=0.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    repeated_aug: int = Field(1, ge=1, description="repeats per sample under DDP (DeiT uses 3)")
    random_erasing: float = Field(0.0, ge=0.0, le=1.0, description="probability of erasing one random box (pixel mode)")

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed (mixup or cutmix): soft targets, pairs within a rank's batch."""
        return self.mixup > 0 or self.cutmix > 0


# Mixed precision of a training or evaluation: fp16 autocast with a loss scaler (the official
# code's NativeScaler), bf16 autocast (no scaler: fp32's range), or plain fp32 (exact on a CPU).
Precision = Literal["fp16", "bf16", "fp32"]
PRECISION_HELP = "fp16: autocast + GradScaler (the official recipe); bf16: autocast, no scaler; fp32: none"


class TrainConfig(Section):
    img_size: int = Field(64, ge=16)
    epochs: int = Field(14, ge=1)
    batch_size: int = Field(64, ge=1, description="global batch over all ranks")
    lr: float = Field(1e-3, gt=0.0, description="peak learning rate at batch_size (scaled by lr_base_batch)")
    lr_base_batch: int | None = Field(None, description="if set, lr is scaled by batch_size / lr_base_batch")
    optimizer: Literal["adamw", "lamb"] = Field("adamw", description="timm optimizer name")
    opt_eps: float | None = Field(
        None, gt=0.0, description="the optimizer's epsilon; null = timm's default (AdamW 1e-8, LAMB 1e-6)"
    )
    precision: Precision = Field("fp32", description=PRECISION_HELP)
    loss: Literal["ce", "bce"] = Field(
        "ce", description="ce: (soft-target) cross-entropy; bce: binary cross-entropy on the (mixed) targets"
    )
    eval_crop_ratio: float | None = Field(
        None, gt=0.0, le=1.0, description="centre-crop ratio of this run's evaluations; null = evaluate.crop_ratio"
    )
    min_lr: float = Field(1e-5, ge=0.0)
    warmup_epochs: float = Field(0.5, ge=0.0)
    schedule_step: Literal["step", "epoch"] = Field(
        "step",
        description="step: the lr follows warm-up and cosine at every optimizer step; epoch: once per epoch, "
        "as DeiT's main.py steps it (lr_scheduler.step(epoch) after each epoch)",
    )
    weight_decay: float = Field(0.05, ge=0.0)
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)
    layerscale_init: float | None = Field(None, gt=0.0)
    clip_grad: float | None = Field(None, gt=0.0)
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)
    aug: AugConfig = AugConfig()
    eval_every: int = Field(1, ge=1, description="evaluate every N epochs (and always at the end)")
    checkpoint_every_steps: int = Field(200, ge=1)
    max_steps: int | None = Field(
        None, ge=1, description="stop after this many optimizer steps (tests, demo smoke runs)"
    )
    eval_max_batches: int | None = Field(
        None,
        ge=1,
        description="smoke runs only (the rehearsal): stop each evaluation during training after N "
        "batches; val is class-sorted, so this is not a sample of it",
    )

    def warmup_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the linear warm-up: ``warmup_epochs`` of them, leaving at least
        one step of the cosine."""
        total = self.epochs * steps_per_epoch
        return min(round(self.warmup_epochs * steps_per_epoch), max(total - 1, 0))


class EvaluateConfig(Section):
    checkpoint: Literal["pretrain", "finetune"] = Field(
        "finetune", description="which main-line model the evaluate stage scores (results/<checkpoint>/model.pth)"
    )
    loader: Literal["ffcv", "torch", "memory"] | None = Field(None, description="null = data.loader")
    img_size: int = Field(80, ge=16)
    batch_size: int = Field(128, ge=1)
    crop_ratio: float = Field(0.875, gt=0.0, le=1.0)
    precision: Precision = Field("fp32", description="autocast of the scoring passes (no scaler: no gradients)")


class ComplexityConfig(Section):
    models: list[str] = Field(default_factory=lambda: list(DEMO_COMPLEXITY_MODELS))
    timed: list[str] | None = Field(
        default_factory=lambda: ["patchconvnet_demo", "patchconvnet_s60", "resnet50"],
        description="models whose throughput/memory are measured; null = all",
    )
    resolutions: list[int] = Field(default_factory=lambda: [224])
    batch_size: int = Field(8, ge=1)
    iters: int = Field(2, ge=1)


class DenseTaskConfig(Section):
    """What both dense-transfer stages share: which runs, and which checkpoint they start from."""

    init: list[Literal["pretrained", "scratch"]] = Field(default_factory=lambda: ["pretrained", "scratch"])
    backbone: Literal["pretrain", "finetune"] = Field(
        "finetune", description="the DAG's classification checkpoint a pretrained run starts from"
    )
    features: Literal["last", "blocks"] = Field(
        "last",
        description="the trunk maps of the 4-level pyramid: last: the last block's output at every level "
        "(the paper's); blocks: four evenly spaced blocks (XCiT's taps)",
    )


class SegmentationConfig(DenseTaskConfig):
    img_size: int = Field(128, ge=32)
    iters: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(6e-4, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    decoder_channels: int = Field(64, ge=8)
    n_classes: int | None = Field(
        None,
        ge=1,
        description="label ids 1..N of the ADE20k layout (150 for ADE20k); null: the demo's shapes + background",
    )
    loss: Literal["ce", "weighted_ce_dice"] = Field(
        "weighted_ce_dice",
        description="ce: UperNet's cross-entropy; weighted_ce_dice: class-weighted CE + Dice (short demo runs)",
    )
    aux_loss_weight: float = Field(
        0.0,
        ge=0.0,
        description="weight of the auxiliary FCN head's loss (mmseg's UperNet: 0.4 on the stride-16 level, "
        "training only); 0: no auxiliary head",
    )
    multiscale_flip_test: bool = Field(
        False,
        description="also score mmseg's multi-scale + flip test (ratios 0.5-1.75, each flipped) as mIoU_ms_flip; "
        "the single-scale mIoU is always scored",
    )


class DetectionConfig(DenseTaskConfig):
    img_size: int = Field(128, ge=32)
    iters: int = Field(400, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    fpn_channels: int = Field(64, ge=8)
    min_sizes: list[int] = Field(default_factory=lambda: [112, 128, 144])
    test_size: int = Field(128, ge=32, description="shorter side of the test images (COCO protocol: 800)")
    max_size: int = Field(213, ge=32, description="cap on the longer side, train and test (COCO protocol: 1333)")
    score_thresh: float = Field(0.05, ge=0.0, lt=1.0, description="lowest class score a test detection keeps")
