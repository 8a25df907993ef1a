"""The paper-scale pretraining plan, printed without submitting anything.

``dry_run(params)`` shows what ``pretrain`` would ask SLURM for (the exact
``submitit.SlurmExecutor`` parameters), how the global batch splits over the GPUs,
the learning rate after DeiT's linear scaling, the steps per epoch on ImageNet-1k
and a GPU-hours estimate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from pcn.config import Params, TrainConfig
from pcn.train.launch import slurm_parameters
from pcn.train.recipe import scaled_lr

IMAGENET_TRAIN_IMAGES = 1_281_167
# Assumed training throughput of one GPU (images/s) for the GPU-hours estimate: DeiT-S
# (4.6 GFLOPs, close to S60's 4.0) trains 300 epochs in about 3 days on 4 V100s,
# i.e. ~370 images/s per GPU.  An order of magnitude, not a measurement.
ASSUMED_IMAGES_PER_GPU_S = 370.0


@dataclass
class Plan:
    model: str
    nodes: int
    gpus_per_node: int
    ranks: int
    global_batch: int
    batch_per_rank: int
    lr_base: float
    lr_base_batch: int | None
    lr: float
    epochs: int
    warmup_epochs: float
    train_images: int
    samples_per_rank: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    repeated_aug: int
    gpu_hours: float
    wall_hours: float
    time_limit_hours: float
    jobs_needed: int
    max_requeues: int
    sbatch: dict[str, Any]


def samples_per_rank(n: int, ranks: int, repeats: int) -> int:
    """Images one rank sees per epoch, from the samplers the loader uses (see ``pcn.data.loaders.epoch_order``)."""
    if repeats > 1:
        from timm.data.distributed_sampler import RepeatAugSampler

        return len(
            RepeatAugSampler(
                range(n), num_replicas=ranks, rank=0, shuffle=True, num_repeats=repeats
            )
        )
    return math.ceil(n / ranks)  # DistributedSampler pads to an even split


def plan(
    params: Params,
    train_images: int = IMAGENET_TRAIN_IMAGES,
    images_per_gpu_s: float = ASSUMED_IMAGES_PER_GPU_S,
    cfg: TrainConfig | None = None,
    name: str = "pretrain",
) -> Plan:
    """The job of one classification training stage (``cfg``: its TrainConfig, default pretrain)."""
    cfg, launcher = cfg or params.pretrain, params.launcher
    s = launcher.slurm
    per_node = s.gpus_per_node or launcher.tasks
    ranks = s.nodes * per_node
    if cfg.batch_size % ranks:
        raise ValueError(
            f"{name}: batch_size = {cfg.batch_size} does not split over {ranks} ranks"
        )
    per_rank = cfg.batch_size // ranks
    repeats = cfg.aug.repeated_aug
    seen = samples_per_rank(train_images, ranks, repeats)
    steps = seen // per_rank  # drop_last on the training loader
    total = steps * cfg.epochs
    warmup = min(round(cfg.warmup_epochs * steps), max(total - 1, 0))
    gpu_hours = total * cfg.batch_size / images_per_gpu_s / 3600
    wall = gpu_hours / ranks
    limit = s.time_min / 60
    return Plan(
        model=params.model.name,
        nodes=s.nodes,
        gpus_per_node=s.gpus_per_node,
        ranks=ranks,
        global_batch=cfg.batch_size,
        batch_per_rank=per_rank,
        lr_base=cfg.lr,
        lr_base_batch=cfg.lr_base_batch,
        lr=scaled_lr(cfg),
        epochs=cfg.epochs,
        warmup_epochs=cfg.warmup_epochs,
        train_images=train_images,
        samples_per_rank=seen,
        steps_per_epoch=steps,
        total_steps=total,
        warmup_steps=warmup,
        repeated_aug=repeats,
        gpu_hours=gpu_hours,
        wall_hours=wall,
        time_limit_hours=limit,
        jobs_needed=max(1, math.ceil(wall / limit)),
        max_requeues=s.max_requeues,
        sbatch=slurm_parameters(launcher, name),
    )


def dry_run(
    params: Params,
    train_images: int = IMAGENET_TRAIN_IMAGES,
    images_per_gpu_s: float = ASSUMED_IMAGES_PER_GPU_S,
) -> str:
    p = plan(params, train_images, images_per_gpu_s)
    scaling = (
        f"{p.lr_base:g} x {p.global_batch} / {p.lr_base_batch} = {p.lr:g}"
        if p.lr_base_batch
        else f"{p.lr:g} (not scaled: lr_base_batch unset)"
    )
    device = (
        f"{p.gpus_per_node} GPUs"
        if p.gpus_per_node
        else f"{p.ranks // p.nodes} CPU ranks"
    )
    lines = [
        f"pretrain dry run ({p.model}); nothing is submitted",
        f"  submitit.SlurmExecutor parameters: {p.sbatch}",
        f"  ranks: {p.nodes} node(s) x {device} = {p.ranks}",
        f"  batch: global {p.global_batch} = {p.ranks} x {p.batch_per_rank} per rank",
        f"  lr: {scaling}; cosine to {params.pretrain.min_lr:g}, warm-up {p.warmup_epochs:g} epochs ({p.warmup_steps} steps)",
        f"  data: {p.train_images:,} training images; {p.samples_per_rank:,} per rank per epoch"
        + (f" (repeated augmentation x{p.repeated_aug})" if p.repeated_aug > 1 else ""),
        f"  steps: {p.steps_per_epoch} per epoch x {p.epochs} epochs = {p.total_steps:,}",
        (
            f"  estimate: {p.gpu_hours:,.0f} GPU-hours at an assumed {images_per_gpu_s:g} images/s per GPU "
            f"= {p.wall_hours:,.1f} h wall-clock on {p.ranks} GPUs"
        ),
        (
            f"  time limit {p.time_limit_hours:g} h per job -> about {p.jobs_needed} job run(s) "
            f"(requeues allowed: {p.max_requeues})"
        ),
    ]
    if p.jobs_needed - 1 > p.max_requeues:
        lines.append(
            "  warning: more requeues needed than launcher.slurm.max_requeues allows"
        )
    return "\n".join(lines)


def as_dict(params: Params) -> dict[str, Any]:
    return asdict(plan(params))
