"""Classification training: ``run(job)`` trains one model with the DeiT recipe and returns its metrics.

The loop, its checkpoints and exact resume are :class:`pcn.train.loop.Loop`'s (shared
with the dense-transfer stages); this module gives it the parts
(:func:`pcn.train.parts.build_parts`), the image batches and the per-epoch
evaluation.  The launcher (local or SLURM) lives in :mod:`pcn.train.launch`.  The
same code runs as one process or as DDP ranks.  Evaluation saves and restores
every RNG, so when (or whether) it runs does not change training.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from pcn.config import batch_per_rank
from pcn.io import write_json
from pcn.machine.device import describe, setup_torch, torch_device
from pcn.tracking.runs import RunLogger, system_metrics
from pcn.train import checkpoint as ckpt
from pcn.train import distributed as D
from pcn.train.job import TrainJob
from pcn.train.lock import trainer_lock
from pcn.train.loop import Loop, LoopState, autocast, grad_scaler, unwrap
from pcn.train.parts import TrainParts, build_parts, lr_at

# --- set-up ---------------------------------------------------------------------------


def build_model(job: TrainJob) -> torch.nn.Module:
    import pcn.models  # noqa: F401  (registers patchconvnet_* with timm)

    options = dict(job.model_options)
    if job.train.drop_path > 0:
        options["drop_path_rate"] = job.train.drop_path
    if job.train.layerscale_init is not None:
        options["layerscale_init"] = job.train.layerscale_init
    return timm.create_model(job.model, num_classes=job.num_classes, **options)


def head_prefix(model: torch.nn.Module) -> str | None:
    """State-dict prefix of the classifier (``head.``, ``fc.``...), found through timm's ``get_classifier``."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    for name, module in model.named_modules():
        if head is not None and module is head and name:
            return name + "."
    return None


def load_init(model: torch.nn.Module, path: str) -> list[str]:
    """Fine-tuning init: every weight must load, except the classifier when its class count differs.

    Nothing is resized: PatchConvNet has no position embedding, so a checkpoint
    trained at one resolution runs at another as is.  Returns the keys left at init.
    """
    from pcn.models import check_state_dict, unwrap_state_dict

    state = unwrap_state_dict(ckpt.load(path), source=path)
    own = model.state_dict()
    prefix = head_prefix(model)
    dropped = [
        k
        for k, v in state.items()
        if prefix and k.startswith(prefix) and k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    for k in dropped:
        del state[k]
    check_state_dict(model, state, source=path, allow_missing=(prefix,) if dropped else ())
    model.load_state_dict(state, strict=not dropped)
    return dropped


# Above this mean softmax weight of the class token on its own key, the aggregation has
# collapsed: the head sees the same vector for every image (seen on the demo data with a
# short warm-up at lr 1e-3: 0.99999, top-1 at chance for the rest of the run).
COLLAPSED_SELF_ATTENTION = 0.99


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loader, device: torch.device, max_batches: int | None = None, precision: str | None = None
) -> dict[str, float]:
    """Top-1/top-5 (percent) and cross-entropy on the whole validation set; for a model with
    one class token also ``cls_self_attention``, the weight it puts on itself (first batch).

    Under DDP each rank scores its own stride of the set (no padding) and the counts
    are summed over the ranks, so every image is scored once and the ranks share the
    work (50,000 ImageNet val images per evaluation).  RNG states are left untouched.
    """
    model = unwrap(model)
    was_training = model.training
    model.eval()
    correct1 = correct5 = 0
    loss_sum, n = 0.0, 0
    probe = getattr(model, "single_class_token", False)
    self_weight = None
    with ckpt.rng_preserved():
        for i, (images, labels) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                logits = model(images)
                if probe and self_weight is None:  # one batch is enough to see a collapse
                    self_weight = model.class_token_self_attention(images).float().mean().item()
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hit = top.eq(labels[:, None])
            correct1 += hit[:, :1].sum().item()
            correct5 += hit.any(dim=1).sum().item()
            n += len(labels)
    model.train(was_training)
    totals = D.all_reduce_sum(torch.tensor([correct1, correct5, loss_sum, n], dtype=torch.float64))
    correct1, correct5, loss_sum, n = totals[0].item(), totals[1].item(), totals[2].item(), int(totals[3].item())
    if n == 0:
        raise ValueError("the validation loader yielded no images")
    out = {
        "top1": 100.0 * correct1 / n,
        "top5": 100.0 * correct5 / n,
        "loss": loss_sum / n,
        "n": n,
    }
    if self_weight is not None:
        out["cls_self_attention"] = self_weight
    return out


# --- outputs --------------------------------------------------------------------------


def _write_outputs(job: TrainJob, model, parts: TrainParts, result: dict) -> None:
    Path(job.out_dir).mkdir(parents=True, exist_ok=True)
    ckpt.save({"model": unwrap(model).state_dict()}, job.final_path)
    if parts.ema is not None:
        ckpt.save(
            {"model": parts.ema.module.state_dict()},
            Path(job.out_dir) / "model_ema.pth",
        )
    if job.metrics_path:
        write_json(job.metrics_path, result)


# --- entry point ----------------------------------------------------------------------


def _loaders(job: TrainJob, env: D.DistEnv, device: torch.device):
    from pcn.data.loaders import build_loader

    cfg, data = job.train, job.data
    per_rank = batch_per_rank(cfg.batch_size, env.world_size, job.stage, mixup=cfg.aug.mixes)
    common = {
        "kind": data.loader,
        "img_size": cfg.img_size,
        "aug": cfg.aug,
        "crop_ratio": data.crop_ratio,
        "num_workers": data.num_workers,
        "seed": job.seed,
        "device": str(device),
    }
    train = build_loader(
        beton=data.train_beton,
        folder=data.train_folder,
        train=True,
        batch_size=per_rank,
        rank=env.rank,
        world_size=env.world_size,
        **common,
    )
    val = build_loader(
        beton=data.val_beton,
        folder=data.val_folder,
        expected_classes=train.class_names,  # a val whose classes differ from train's is refused
        train=False,
        batch_size=per_rank,
        rank=env.rank,
        world_size=env.world_size,
        **common,
    )
    return train, val


def run(job: TrainJob, stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train ``job`` (resuming from ``out_dir/last.pth`` if there is one) and return its metrics.

    ``stop`` is polled at every step; when it returns True on any rank, the
    state is saved and ``{"status": "interrupted"}`` is returned (the launcher
    then requeues the job).
    """
    env = D.detect()
    device = torch_device(job.device, env.local_rank)
    if device.type == "cpu":
        setup_torch(job.threads)
    D.init(env, device, job.dist_timeout_s)
    # rank 0 holds the results folder: a second trainer on it is refused (pcn.train.lock)
    with (
        trainer_lock(job.out_dir, job.stage) if env.is_main else contextlib.nullcontext(),
        system_metrics(job.mlflow_run_id, job.mlflow_uri, enabled=env.is_main),
    ):
        result = _run(job, env, device, stop or (lambda: False))
    D.shutdown()
    return result


def _run(job: TrainJob, env: D.DistEnv, device: torch.device, stop: Callable[[], bool]) -> dict[str, Any]:
    cfg = job.train
    log = RunLogger(job.mlflow_run_id, job.mlflow_uri, enabled=env.is_main)
    train_loader, val_loader = _loaders(job, env, device)
    if job.num_classes != train_loader.num_classes:
        raise ValueError(
            f"the model has {job.num_classes} classes but the training data has {train_loader.num_classes}"
        )

    steps_per_epoch = len(train_loader)
    model, parts = _model_and_parts(job, env, device, steps_per_epoch)

    def batches(epoch: int, start: int):
        train_loader.set_epoch(epoch)
        it = iter(train_loader)
        for _ in range(start):
            next(it)  # same data order as the uninterrupted run
        return it

    def loss(batch) -> torch.Tensor:
        images, labels = (t.to(device, non_blocking=True) for t in batch)
        images = images.contiguous(memory_format=torch.channels_last)
        targets = labels
        if parts.mixup is not None:
            images, targets = parts.mixup(images, labels)
        with autocast(device, cfg.precision):
            return parts.loss(model(images), targets)

    clock = {"t": 0.0, "step": 0}  # where the running epoch started

    def on_epoch(state: LoopState) -> None:
        elapsed = time.perf_counter() - clock["t"]
        losses = state.epoch_losses(steps_per_epoch)
        entry = {
            "epoch": state.epoch,
            "step": state.global_step,
            "train_loss": sum(losses) / len(losses),
            "lr": lr_at(parts, state.global_step),
            "epoch_time_s": elapsed,
            "images_per_s": (state.global_step - clock["step"]) * cfg.batch_size / max(elapsed, 1e-9),
        }
        if state.epoch % cfg.eval_every == 0 or state.epoch == cfg.epochs:
            _evaluate_into(state, model, val_loader, device, parts, cfg.eval_max_batches, cfg.precision)
            entry.update({f"val_{k}": v for k, v in state.last_eval.items() if k != "n"})
        state.history.append(entry)
        log.log_metrics(entry, step=state.epoch)
        if env.is_main:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in entry.items() if k not in ("epoch", "step"))
            print(f"[{job.stage}] epoch {state.epoch}/{cfg.epochs}: {shown}", flush=True)
            if job.metrics_path:
                write_json(job.metrics_path, _result(job, env, parts, state, steps_per_epoch, status="running"))
        clock.update(t=time.perf_counter(), step=state.global_step)

    loop = Loop(
        model=model,
        optimizer=parts.optimizer,
        scheduler=parts.scheduler,
        batches=batches,
        loss=loss,
        steps_per_epoch=steps_per_epoch,
        path=job.last_path,
        fingerprint=job.fingerprint(),
        seed=job.seed,
        name=job.stage,
        epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        checkpoint_every=cfg.checkpoint_every_steps,
        clip_grad=cfg.clip_grad,
        images_per_step=cfg.batch_size,
        extras={"ema": parts.ema.module} if parts.ema is not None else {},
        scaler=grad_scaler(device, cfg.precision),
        after_step=(lambda: parts.ema.update(unwrap(model))) if parts.ema is not None else lambda: None,
        on_epoch=on_epoch,
        stop=stop,
        env=env,
        device=device,
    )
    state = loop.restore(job.resume)
    if state.global_step == 0:
        log.log_params(
            {
                "train.lr_scaled": parts.lr,
                "train.world_size": env.world_size,
                "train.batch_per_rank": cfg.batch_size // env.world_size,
                "train.steps_per_epoch": steps_per_epoch,
                "train.total_steps": parts.total_steps,
            }
        )

    t_start = clock["t"] = time.perf_counter()
    clock["step"] = state.global_step
    if loop.run(state) == "interrupted":
        if env.is_main:
            print(
                f"[{job.stage}] interrupted at global step {state.global_step}; state saved to {job.last_path}",
                flush=True,
            )
        return {"status": "interrupted", "global_step": state.global_step}
    if state.last_eval_step != state.global_step:
        _evaluate_into(state, model, val_loader, device, parts, cfg.eval_max_batches)
    result = _result(job, env, parts, state, steps_per_epoch, status="finished")
    result["train_time_s"] = time.perf_counter() - t_start
    if env.is_main:
        _report_finished(job, model, parts, result, state, log)
    return result


def _model_and_parts(job: TrainJob, env: D.DistEnv, device: torch.device, steps_per_epoch: int):
    """The model (initialised identically on every rank, from ``init_checkpoint`` when set;
    wrapped in DDP over several ranks) and its parts; then each rank's own RNG streams."""
    ckpt.seed_everything(job.seed)  # identical init on every rank
    model = build_model(job)
    if job.init_checkpoint:
        dropped = load_init(model, job.init_checkpoint)
        if dropped and env.is_main:
            print(
                f"[{job.stage}] init from {job.init_checkpoint}; new classifier: {', '.join(dropped)}",
                flush=True,
            )
    # channels_last on the CPU too: oneDNN's convolutions are faster in it (one training
    # step on one thread: the study grid's PatchConvNet -12%, its ResNet pair -10%;
    # benchmarks/bench_train_step.py)
    model.to(device=device, memory_format=torch.channels_last)
    parts = build_parts(job.train, model, steps_per_epoch, job.num_classes)
    ckpt.seed_everything(job.seed + env.rank)  # per-rank streams for drop-path and mixup (a resume restores its own)
    if env.world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, parts


def _report_finished(job: TrainJob, model, parts: TrainParts, result: dict, state: LoopState, log: RunLogger) -> None:
    """Rank 0 at the end: the outputs, the final MLflow points and one line."""
    _write_outputs(job, model, parts, result)
    log.log_metrics({k: result[k] for k in ("top1", "top5", "loss") if k in result}, step=state.epoch)
    if job.metrics_path:
        log.log_artifact(job.metrics_path)
    print(
        f"[{job.stage}] done: top1 {result['top1']:.2f}%, top5 {result['top5']:.2f}%, {state.global_step} steps",
        flush=True,
    )


def _evaluate_into(
    state: LoopState, model, loader, device, parts: TrainParts, max_batches: int | None = None, precision=None
) -> None:
    metrics = evaluate(model, loader, device, max_batches, precision)
    if parts.ema is not None:
        metrics.update(
            {
                f"ema_{k}": v
                for k, v in evaluate(parts.ema.module, loader, device, max_batches, precision).items()
                if k != "n"
            }
        )
    if metrics.get("cls_self_attention", 0.0) > COLLAPSED_SELF_ATTENTION:
        warnings.warn(
            f"step {state.global_step}: the class token puts {metrics['cls_self_attention']:.4f} of its attention on "
            "itself, so the prediction no longer depends on the image (a collapse; it rarely recovers). "
            "Lengthen warmup_epochs or lower lr.",
            stacklevel=2,
        )
    state.last_eval, state.last_eval_step = metrics, state.global_step


def _result(
    job: TrainJob,
    env: D.DistEnv,
    parts: TrainParts,
    state: LoopState,
    steps_per_epoch: int,
    status: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "status": status,
        "stage": job.stage,
        "model": job.model,
        "num_classes": job.num_classes,
        "epochs": state.epoch,
        "global_step": state.global_step,
        "steps_per_epoch": steps_per_epoch,
        "world_size": env.world_size,
        "global_batch": job.train.batch_size,
        "lr": parts.lr,
        # the evaluation protocol of top1/top5, so the report compares like with like
        "img_size": job.train.img_size,
        "crop_ratio": job.data.crop_ratio,
        "machine": describe(),  # the node that trained, not the host that submitted
    }
    if state.last_eval is not None:
        out.update({k: v for k, v in state.last_eval.items() if k != "n"})
        out["val_images"] = state.last_eval["n"]
    out["history"] = state.history
    return out
