"""The parts of DeiT training built from one ``TrainConfig`` (the recipe: its settings):
optimizer, schedule, mixup, loss, EMA.

Each piece is timm's: AdamW (fused) or LAMB from ``create_optimizer_v2`` (no weight decay on
biases, norms and whatever ``model.no_weight_decay()`` names), a cosine schedule
with linear warm-up stepped every optimizer step or, as DeiT's ``main.py``, every epoch
(``schedule_step``), ``Mixup``/CutMix with label smoothing folded into the soft targets,
and ``ModelEmaV3``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.data import Mixup
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3

from pcn.config import TrainConfig

WARMUP_LR_INIT = 1e-6  # DeiT's --warmup-lr


class EpochSteppedCosineLR(CosineLRScheduler):
    """timm's cosine schedule in epochs, stepped as DeiT's ``main.py`` steps it.

    ``main.py`` builds it with ``create_scheduler`` (``t_initial`` = epochs, warm-up of
    ``warmup_epochs`` inside it) and calls ``lr_scheduler.step(epoch)`` after training epoch
    ``epoch``: epoch e (from 0) trains at the schedule's value at ``max(e - 1, 0)``, the
    first two at the warm-up's start.  The loop reports every optimizer step
    (``step_update``); this turns the count into that epoch value.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, **kwargs):
        super().__init__(optimizer, t_in_epochs=True, **kwargs)
        self.steps_per_epoch = steps_per_epoch

    def epoch_value_at(self, num_updates: int) -> int:
        """The schedule's epoch in force after ``num_updates`` optimizer steps."""
        return max(num_updates // self.steps_per_epoch - 1, 0)

    def step_update(self, num_updates: int, metric: float | None = None) -> None:
        self.step(self.epoch_value_at(num_updates), metric)


@dataclass
class TrainParts:
    """What the loop needs besides model and data, built from the recipe."""

    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    mixup: Mixup | None
    loss: torch.nn.Module
    ema: ModelEmaV3 | None
    lr: float  # peak learning rate after batch scaling
    total_steps: int
    warmup_steps: int


def scaled_lr(cfg: TrainConfig) -> float:
    """DeiT's linear scaling: lr x global batch / lr_base_batch (when lr_base_batch is set)."""
    return cfg.lr * cfg.batch_size / cfg.lr_base_batch if cfg.lr_base_batch else cfg.lr


def build_parts(cfg: TrainConfig, model: torch.nn.Module, steps_per_epoch: int, num_classes: int) -> TrainParts:
    """Everything the loop needs besides model and data; ``model`` is the unwrapped module."""
    lr = scaled_lr(cfg)
    optimizer = create_optimizer_v2(
        model,
        opt=cfg.optimizer,
        lr=lr,
        weight_decay=cfg.weight_decay,
        filter_bias_and_bn=True,
        **({"eps": cfg.opt_eps} if cfg.opt_eps is not None else {}),  # the official passes --opt-eps 1e-8
        # one fused kernel for all tensors instead of a loop of small ops: on CPU the
        # step of the demo model drops from 3.6 to 1.0 ms (of ~30 ms per training step)
        **({"fused": True} if cfg.optimizer == "adamw" else {}),
    )
    total = cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_steps(steps_per_epoch)
    if cfg.schedule_step == "epoch":
        scheduler: CosineLRScheduler = EpochSteppedCosineLR(
            optimizer,
            steps_per_epoch,
            t_initial=cfg.epochs,
            lr_min=cfg.min_lr,
            warmup_t=cfg.warmup_epochs,
            warmup_lr_init=min(WARMUP_LR_INIT, lr),
        )
    else:
        scheduler = CosineLRScheduler(
            optimizer,
            t_initial=max(total - warmup, 1),
            lr_min=cfg.min_lr,
            warmup_t=warmup,
            warmup_lr_init=min(WARMUP_LR_INIT, lr),
            warmup_prefix=True,
            t_in_epochs=False,
        )
    aug = cfg.aug
    mixup = None
    if aug.mixes:
        mixup = Mixup(
            mixup_alpha=aug.mixup,
            cutmix_alpha=aug.cutmix,
            label_smoothing=aug.label_smoothing,
            num_classes=num_classes,
        )
        loss: torch.nn.Module = BinaryCrossEntropy() if cfg.loss == "bce" else SoftTargetCrossEntropy()
    elif cfg.loss == "bce":
        loss = BinaryCrossEntropy(smoothing=aug.label_smoothing)
    else:
        loss = (
            LabelSmoothingCrossEntropy(aug.label_smoothing) if aug.label_smoothing > 0 else torch.nn.CrossEntropyLoss()
        )
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay else None
    return TrainParts(optimizer, scheduler, mixup, loss, ema, lr, total, warmup)


def lr_at(parts: TrainParts, step: int) -> float:
    """The learning rate of the optimizer step after ``step`` steps."""
    s = parts.scheduler
    return s._get_lr(s.epoch_value_at(step) if isinstance(s, EpochSteppedCosineLR) else step)[0]
