"""The paper-scale plan, printed without submitting anything.

``plan(params, cfg, name)`` is one classification training job: what it would ask
SLURM for (the exact ``submitit.SlurmExecutor`` parameters), how the global batch
splits over the GPUs, the learning rate after DeiT's linear scaling, the steps per
epoch on ImageNet-1k and its GPU-hours.  ``jobs(params)`` is every training-like job
of the DAG (pretrain, finetune, dense transfer, the experiment grid when
``experiments.enabled``) and ``dry_run(params)`` the text ``pcn dryrun`` prints: the
values of the paper's recipe no source confirms (paper/recipe.yaml's ``unverified``
entries, drop path first: named before any GPU time is spent), the pretraining job in
detail, then one line per job with its effective lr (``lr x global batch / lr_base_batch``,
``pcn.train.parts.scaled_lr``), the total and the grid's share.

GPU-hours follow each job's model and resolution: the images a job processes, times
the multiply-accumulates of one image (``pcn.eval.complexity.count_gmacs``), at the
rate of one measured reference point (``REFERENCE``).  So L120 at 384 px costs what
its MACs say, not what S60 at 224 does.  An estimate: it assumes every model runs at
the reference's MACs per second, and counts the trunk only for dense transfer.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcn.analysis import recipe as R
from pcn.config import LauncherConfig, Params, TrainConfig, batch_per_rank
from pcn.dag.stage_resources import Resources
from pcn.dag.stages import build_stages
from pcn.data.splits import IMAGENET_TRAIN_IMAGES
from pcn.train.launch import slurm_parameters
from pcn.train.parts import scaled_lr

# The one measured point GPU-hours are calibrated on: PatchConvNet-S60 infers 1129
# images/s at 224 px (batch 256) in the paper's model-zoo table (arXiv:2112.13692,
# Table 1; the same row as paper/numbers.yaml, model_zoo, patchconvnet_s60).  A
# GPU-hour below is an hour of the GPU that table was measured on.
REFERENCE = {"model": "patchconvnet_s60", "img_size": 224, "images_per_s": 1129.0}
# A training step costs about 3 forward passes: the backward pass does two products
# (gradients of the inputs and of the weights) for each one of the forward pass.
TRAIN_COST = 3.0


# --- multiply-accumulates per image, counted once per (model, options, size) ---------------


def _build(name: str, options_json: str, device: str):
    import timm
    import torch

    import pcn.models  # noqa: F401  (registers the PatchConvNets)

    with torch.device(device):
        return timm.create_model(name, pretrained=False, **json.loads(options_json))


@functools.cache
def _count(name: str, options_json: str, img_size: int, build_on: str = "meta") -> float:
    from pcn.eval.complexity import count_gmacs

    # counted on the meta device: shapes only, no arithmetic
    return count_gmacs(_build(name, options_json, build_on).to("meta"), img_size)


@functools.cache
def _default_depth(name: str) -> int:
    # on the meta device (shapes only), with one class: the depth does not depend on it
    return len(_build(name, json.dumps({"num_classes": 1}), "meta").blocks)


@functools.cache
def _gmacs(name: str, options_json: str, img_size: int) -> float:
    options = json.loads(options_json)
    if not name.startswith("patchconvnet"):
        return _count(name, options_json, img_size)
    # A PatchConvNet's trunk is ``depth`` identical blocks, so its MACs are linear in the
    # depth: count 1 and 2 blocks and extrapolate (the whole model takes seconds to count).
    # The short models are built on the CPU (initialising the multi-class model's 1000
    # heads on the meta device alone takes seconds) and counted on the meta device.
    depth = int(options.pop("depth", 0)) or _default_depth(name)
    one, two = (_count(name, json.dumps({**options, "depth": d}, sort_keys=True), img_size, "cpu") for d in (1, 2))
    return one + (depth - 1) * (two - one)


def gmacs(name: str, options: dict[str, Any], img_size: int) -> float:
    """Multiply-accumulates (billions) of one image through ``name`` built with ``options``."""
    return _gmacs(name, json.dumps(options, sort_keys=True), int(img_size))


def train_images_per_gpu_s(name: str, options: dict[str, Any], img_size: int) -> float:
    """Training throughput of one reference GPU, scaled from ``REFERENCE`` by MACs per image."""
    ref = gmacs(REFERENCE["model"], {}, REFERENCE["img_size"])
    return REFERENCE["images_per_s"] * ref / gmacs(name, options, img_size) / TRAIN_COST


# --- one classification training job ---------------------------------------------------------


@dataclass
class Plan:
    model: str
    img_size: int
    gmacs: float
    images_per_gpu_s: float
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

        return len(RepeatAugSampler(range(n), num_replicas=ranks, rank=0, shuffle=True, num_repeats=repeats))
    return math.ceil(n / ranks)  # DistributedSampler pads to an even split


def on_slurm(launcher: LauncherConfig) -> LauncherConfig:
    """The launcher as the plan sees it: a SLURM job, whatever ``kind`` runs the demo."""
    return launcher.model_copy(update={"kind": "slurm"})


def plan(
    params: Params,
    train_images: int = IMAGENET_TRAIN_IMAGES,
    images_per_gpu_s: float | None = None,
    cfg: TrainConfig | None = None,
    name: str = "pretrain",
    model: tuple[str, dict[str, Any]] | None = None,
) -> Plan:
    """The job of one classification training stage (``cfg``: its TrainConfig, default
    pretrain; ``model``: (timm name, options), default the pipeline's model).
    ``images_per_gpu_s``: None = from the model's MACs at ``cfg.img_size``."""
    cfg, launcher = cfg or params.pretrain, params.launcher
    model_name, options = model or (params.model.name, dict(params.model.options))
    s = launcher.slurm
    ranks = on_slurm(launcher).ranks
    per_rank = batch_per_rank(cfg.batch_size, ranks, name, mixup=cfg.aug.mixes)
    repeats = cfg.aug.repeated_aug
    seen = samples_per_rank(train_images, ranks, repeats)
    steps = seen // per_rank  # drop_last on the training loader
    total = steps * cfg.epochs
    warmup = cfg.warmup_steps(steps)
    rate = images_per_gpu_s or train_images_per_gpu_s(model_name, options, cfg.img_size)
    gpu_hours = total * cfg.batch_size / rate / 3600
    wall = gpu_hours / ranks
    limit = s.time_min / 60
    return Plan(
        model=model_name,
        img_size=cfg.img_size,
        gmacs=gmacs(model_name, options, cfg.img_size),
        images_per_gpu_s=rate,
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


# --- every training-like job of the DAG --------------------------------------------------------


@dataclass
class Job:
    name: str  # the stage instance, as DVC names it (ablation@baseline-0)
    topic: str  # train | transfer | experiments (the grid)
    model: str
    img_size: int
    gmacs: float
    schedule: str
    global_batch: int
    batch_per_gpu: int
    lr: float  # effective: after the batch scaling
    images_per_gpu_s: float
    gpu_hours: float
    sbatch: dict[str, Any]
    lr_rule: str = ""  # how ``lr`` follows from the params: "0.003 x 2048/2048" or "(not scaled)"


def lr_rule(cfg) -> str:
    """How a job's effective lr follows from its section: DeiT's linear scaling
    (``pcn.train.parts.scaled_lr``), or none (no lr_base_batch; the dense transfers)."""
    base = getattr(cfg, "lr_base_batch", None)
    return f"{cfg.lr:g} x {cfg.batch_size}/{base}" if base else f"{cfg.lr:g} (not scaled)"


def _grid_model(params: Params, stage: str, wc: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """(timm name, options) of one instance of a grid stage, as its `pcn` verb builds it."""
    from pcn.config import grid_model
    from pcn.config.names import parse_point
    from pcn.models.family import depth_width_options

    exp = params.experiments
    if stage == "ablation":
        return grid_model(params, None, exp.variants[wc["variant"]])
    if stage == "resnet_pool":
        return grid_model(params, exp.resnet[wc["pool"]], {})
    if stage == "multiclass":
        return grid_model(params, exp.multiclass_model, {})
    if stage == "depth_width":
        width, depth = parse_point(wc["point"])
        return grid_model(params, None, depth_width_options(width, depth))
    raise ValueError(f"dry run: no model known for grid stage {stage!r}")


def jobs(params: Params, train_images: int = IMAGENET_TRAIN_IMAGES) -> list[Job]:
    """One entry per training-like stage instance of the DAG (the stage table's ``submits_job`` stages)."""

    main_model = (params.model.name, dict(params.model.options))
    ranks = on_slurm(params.launcher).ranks
    out = []
    for stage in build_stages(params):
        if not stage.submits_job:
            continue
        for wc in stage.instances():
            name = stage.instance_name(wc)
            if stage.topic == "transfer":
                cfg = params.section(stage.name.split("_")[0])
                # dense transfer: DDP over the launcher's ranks for cfg.iters global batches;
                # the decoder and heads are not counted, only the trunk at the crop size
                rate = train_images_per_gpu_s(*main_model, cfg.img_size)
                out.append(
                    Job(
                        name,
                        stage.topic,
                        main_model[0],
                        cfg.img_size,
                        gmacs(*main_model, cfg.img_size),
                        f"{cfg.iters:,} iterations",
                        cfg.batch_size,
                        cfg.batch_size // ranks,
                        cfg.lr,
                        rate,
                        cfg.iters * cfg.batch_size / rate / 3600,
                        slurm_parameters(params.launcher, name),
                        lr_rule(cfg),
                    )
                )
                continue
            if stage.topic == "experiments":
                cfg = params.experiments.train_for(stage.name, wc.get("init"))
                model = _grid_model(params, stage.name, wc)
            else:
                cfg, model = params.section(stage.name), main_model
            p = plan(params, train_images, cfg=cfg, name=name, model=model)
            out.append(
                Job(
                    name,
                    stage.topic,
                    p.model,
                    p.img_size,
                    p.gmacs,
                    f"{p.epochs} epochs",
                    p.global_batch,
                    p.batch_per_rank,
                    p.lr,
                    p.images_per_gpu_s,
                    p.gpu_hours,
                    p.sbatch,
                    lr_rule(cfg),
                )
            )
    return out


def grid_share(all_jobs: list[Job]) -> float:
    """The experiment grid's fraction of the total GPU-hours (0 when the grid is disabled)."""
    total = sum(j.gpu_hours for j in all_jobs)
    return sum(j.gpu_hours for j in all_jobs if j.topic == "experiments") / total if total else 0.0


# --- the text of `pcn dryrun` ----------------------------------------------------------------


def _pretrain_text(params: Params, p: Plan) -> list[str]:
    scaling = (
        f"{p.lr_base:g} x {p.global_batch} / {p.lr_base_batch} = {p.lr:g}"
        if p.lr_base_batch
        else f"{p.lr:g} (not scaled: lr_base_batch unset)"
    )
    device = f"{p.gpus_per_node} GPUs" if p.gpus_per_node else f"{p.ranks // p.nodes} CPU ranks"
    lines = [
        f"pretrain dry run ({p.model}, {p.img_size} px); nothing is submitted",
        f"  submitit.SlurmExecutor parameters: {p.sbatch}",
        f"  ranks: {p.nodes} node(s) x {device} = {p.ranks}",
        f"  batch: global {p.global_batch} = {p.ranks} x {p.batch_per_rank} per rank",
        f"  lr: {scaling}; cosine to {params.pretrain.min_lr:g}, "
        f"warm-up {p.warmup_epochs:g} epochs ({p.warmup_steps} steps)",
        f"  data: {p.train_images:,} training images; {p.samples_per_rank:,} per rank per epoch"
        + (f" (repeated augmentation x{p.repeated_aug})" if p.repeated_aug > 1 else ""),
        f"  steps: {p.steps_per_epoch} per epoch x {p.epochs} epochs = {p.total_steps:,}",
        (
            f"  estimate: {p.gpu_hours:,.0f} GPU-hours at {p.images_per_gpu_s:,.0f} images/s per GPU "
            f"({p.gmacs:.2f} GMACs per image) = {p.wall_hours:,.1f} h wall-clock on {p.ranks} GPUs"
        ),
        (
            f"  time limit {p.time_limit_hours:g} h per job -> about {p.jobs_needed} job run(s) "
            f"(requeues allowed: {p.max_requeues})"
        ),
    ]
    if p.jobs_needed - 1 > p.max_requeues:
        lines.append("  warning: more requeues needed than launcher.slurm.max_requeues allows")
    return lines


def _resources(sb: dict[str, Any]) -> str:
    return (
        f"{sb.get('nodes', 1)} node(s) x {sb.get('gpus_per_node', 0)} GPU, {sb.get('cpus_per_task')} CPU/task, "
        f"{sb.get('mem')}, {sb.get('time')} min"
    )


def every_job(params: Params) -> list[tuple[str, str, Resources]]:
    """(stage instance, who submits it, what it asks for) of every job the scale submits on SLURM."""

    return [
        (stage.instance_name(wc), "submitit" if stage.submits_job else "executor plugin", stage.resources)
        for stage in build_stages(params)
        for wc in stage.instances()
    ]


def jobs_text(params: Params) -> list[str]:
    """Every job of the scale with its resources, and what reaches them all."""
    s = params.launcher.slurm
    every = {k: getattr(s, k) for k in ("account", "qos", "constraint") if getattr(s, k)}
    lines = [
        f"every SLURM job at scale '{params.scale}' ({len(every_job(params))} jobs; nothing is submitted); "
        f"every job also gets: {every or 'no account, qos or constraint'}",
    ]
    lines += [f"  {name:34s} {who:15s} {r.describe()}" for name, who, r in every_job(params)]
    return lines


def _value_in_force(params: Params, entry: R.Entry) -> str:
    """The entry's value, and where this scale's params set another, theirs."""
    text = R.format_value(entry.value)
    other = []
    for key, want in entry.expected():
        try:
            got = params.section(key)
        except (AttributeError, KeyError, TypeError):
            continue
        if not R.same(got, want):
            other.append(f"{key} = {R.format_value(got)}")
    return text + (f" (paper recipe; scale '{params.scale}' sets {'; '.join(other)})" if other else "")


def unverified_text(params: Params, recipe: str | Path = R.RECIPE_PATH) -> list[str]:
    """One line per value of the paper's recipe that no source confirms (``unverified`` in
    paper/recipe.yaml), drop path first: key, value, why it is unconfirmed."""
    path = Path(recipe)
    if not path.is_file():
        return [f"unconfirmed values: not listed ({path} not found)"]
    try:
        entries = R.unverified(R.load_recipe(path))
    except R.RecipeError as exc:
        return [f"unconfirmed values: not listed ({exc})"]
    if not entries:
        return [f"unconfirmed values: none ({path} marks no entry unverified)"]
    lines = [
        f"{len(entries)} values of the paper's recipe no source here confirms ({path}, `unverified`); "
        "settle them before GPU time is spent:"
    ]
    lines += [f"  {R.keys_text(e)} = {_value_in_force(params, e)}: {e.unverified}" for e in entries]
    return lines


def dry_run(params: Params, train_images: int = IMAGENET_TRAIN_IMAGES, recipe: str | Path = R.RECIPE_PATH) -> str:
    """What ``pcn dryrun`` prints: the recipe's unconfirmed values (from ``recipe``), the
    pretraining job in detail, every training-like job with its effective lr and GPU-hours,
    the total and the experiment grid's share of it."""
    lines = unverified_text(params, recipe) + [""]
    lines += _pretrain_text(params, plan(params, train_images))
    all_jobs = jobs(params, train_images)
    total = sum(j.gpu_hours for j in all_jobs)
    lines += [
        "",
        f"every training-like job of the DAG at scale '{params.scale}' ({len(all_jobs)} jobs; nothing is submitted)",
        f"  {'job':34s} {'model':24s} {'px':>5s} {'GMACs':>7s} {'schedule':>20s} {'batch':>6s} {'/GPU':>5s} "
        f"{'eff. lr':>8s} {'= lr x batch/base':20s} {'img/s/GPU':>9s} {'GPU-h':>9s}  resources",
    ]
    for j in all_jobs:
        lines.append(
            f"  {j.name:34s} {j.model:24s} {j.img_size:>5d} {j.gmacs:>7.2f} {j.schedule:>20s} {j.global_batch:>6d} "
            f"{j.batch_per_gpu:>5d} {j.lr:>8.3g} {j.lr_rule:20s} {j.images_per_gpu_s:>9,.0f} {j.gpu_hours:>9,.1f}  "
            f"{_resources(j.sbatch)}"
        )
    by_topic = {t: sum(j.gpu_hours for j in all_jobs if j.topic == t) for t in ("train", "transfer", "experiments")}
    lines.append(
        f"  total: about {total:,.0f} GPU-hours: main line {by_topic['train']:,.0f}, dense transfer "
        f"{by_topic['transfer']:,.0f} (trunk only), experiment grid {by_topic['experiments']:,.0f}"
    )
    share = f"{grid_share(all_jobs):.0%} of the total"
    lines.append(
        f"  experiment grid: {share}"
        if params.experiments.enabled
        else f"  experiment grid: skipped (experiments.enabled: false), {share}"
    )
    lines.append(
        "  eff. lr: the peak lr each job runs at, its section's lr x global batch / lr_base_batch (DeiT's linear rule, "
        "pcn.train.parts.scaled_lr); dense transfer is not scaled. The paper scale reads #185's '3e-3 at batch 2048' "
        "as the lr used at 2048 (paper/recipe.yaml, lr batch scaling: unverified)"
    )
    ref = REFERENCE
    lines.append(
        f"  GPU-hours = images x {TRAIN_COST:g} x GMACs per image, at the MAC rate of {ref['model']} inferring "
        f"{ref['images_per_s']:g} images/s at {ref['img_size']} px (paper, Table 1): hours of that table's GPU"
    )
    return "\n".join(lines + [""] + jobs_text(params))
