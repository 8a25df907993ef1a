"""The dense-transfer training loop: ``iters`` optimizer steps through the classification
engine's loop (:class:`pcn.train.loop.Loop`, one epoch of ``iters`` steps), with its
checkpoints and exact resume from ``work_dir/last.pth``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pcn.transfer.job import TransferJob

if TYPE_CHECKING:  # torch loads in the job, not in the stage that imports this package to submit
    from pcn.train.distributed import DistEnv

LOG_EVERY = 10  # iterations between MLflow loss points (mean over the window)
CHECKPOINT_EVERY = 100  # iterations between resume states


def build_optimizer(model, lr: float, weight_decay: float):
    """AdamW without decay on biases, norms and LayerScale (timm's parameter groups)."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=weight_decay, filter_bias_and_bn=True)


def run_logger(job: TransferJob, env: DistEnv):
    """MLflow points from rank 0 only (the others get a no-op logger)."""
    from pcn.tracking.runs import RunLogger

    return RunLogger(job.mlflow_run_id, job.mlflow_uri, enabled=env.is_main)


@dataclass
class LoopResult:
    status: str  # "finished" or "interrupted" (a stop request; the state is saved)
    losses: list[float]  # every iteration's loss, mean over the ranks
    seconds: float
    resumed_from: int


def train_loop(
    job: TransferJob,
    model,
    optimizer,
    scheduler,
    loader_from: Callable[[int], Iterable],
    step_fn: Callable[[Any], Any],
    iters: int,
    run_logger=None,
    clip_grad: float | None = None,
    env: DistEnv | None = None,
    device=None,
    stop: Callable[[], bool] | None = None,
) -> LoopResult:
    """``iters`` optimizer steps of ``step_fn(batch) -> loss`` through the training loop
    (:class:`pcn.train.loop.Loop`, one epoch of ``iters`` steps): resume state every
    ``CHECKPOINT_EVERY`` steps, on a stop request and at the end; MLflow ``train_loss``
    every ``LOG_EVERY`` steps.  ``loader_from(start)`` gives the batches from iteration
    ``start`` on.  Under DDP (``model`` wrapped by :func:`pcn.transfer.distributed.distribute`)
    the recorded loss is the mean over the ranks.
    """
    import torch

    from pcn.train import distributed as D
    from pcn.train.loop import Loop

    def log_window(state) -> None:
        step = state.global_step
        if run_logger is not None and (step % LOG_EVERY == 0 or step == iters):
            window = state.losses[-LOG_EVERY:]
            run_logger.log_metrics(
                {"train_loss": sum(window) / len(window), "lr": optimizer.param_groups[0]["lr"]}, step
            )

    loop = Loop(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        batches=lambda _epoch, start: loader_from(start),
        loss=step_fn,
        steps_per_epoch=iters,
        path=job.last_path,
        fingerprint=job.fingerprint(),
        seed=job.seed,
        name=job.stage,
        checkpoint_every=CHECKPOINT_EVERY,
        clip_grad=clip_grad,
        images_per_step=job.cfg("batch_size"),
        on_step=log_window,
        stop=stop or (lambda: False),
        env=env or D.DistEnv(),
        device=device or torch.device("cpu"),
    )
    state = loop.restore(job.resume)
    start, t0 = state.global_step, time.perf_counter()
    status = loop.run(state)
    return LoopResult(status, state.losses, time.perf_counter() - t0, start)


def interrupted(loop: LoopResult) -> dict[str, Any]:
    """What every rank of a stopped run returns (the launcher then requeues the job)."""
    return {"status": "interrupted", "global_step": len(loop.losses)}
