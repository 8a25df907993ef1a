"""Transfer to dense tasks: UperNet semantic segmentation and Mask R-CNN detection.

The column trunk gives four feature maps (``pyramid``), the tasks put torchvision's
Mask R-CNN (``detection``) or segmentation-models-pytorch's UperNet decoder
(``segmentation``) on them, the loaders read the ADE20k and COCO layouts
(``datasets``), and ``metrics`` scores them (one confusion matrix; pycocotools).

This module holds what both tasks share: the job spec (:class:`TransferJob`, plain
values so that submitit can pickle it), the submitit task around it
(:class:`TransferTask`, requeued as itself; on preemption it saves and requeues as
classification training does) and :func:`train_loop`, which trains through the
classification engine's loop (:class:`pcn.train.loop.Loop`: one epoch of ``iters``
steps) with its checkpoints and exact resume from ``work_dir/last.pth``.

Distributed runs: the task joins the job's process group the way classification
training does (:mod:`pcn.train.distributed`: rank, world and rendezvous from
submitit, nccl on GPUs, gloo on CPU), wraps the model in DDP (:func:`distribute`)
and gives each rank its slice of every global batch (:class:`IterationSampler`), so
the images of one iteration are those of a one-process run at the same global batch.
Rank 0 writes the resume state, the outputs and the MLflow points. Evaluation is
sharded: rank ``r`` scores images ``r, r + world, ...`` and writes its share into
``work_dir``; rank 0 collects them after a barrier (:func:`shard`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import submitit

from pcn.tracking import system_metrics
from pcn.train.lock import trainer_lock

if TYPE_CHECKING:  # keeps torch out of this module's import (the stage imports it to submit)
    from pcn.train.distributed import DistEnv

LOG_EVERY = 10  # iterations between MLflow loss points (mean over the window)
CHECKPOINT_EVERY = 100  # iterations between resume states


# The transfer loader's shuffle of epoch e is seeded by seed * prime + e: no two (seed, epoch)
# pairs share an order for fewer than this many epochs.
EPOCH_SEED_PRIME = 100_003


@dataclass
class TransferJob:
    """Everything one dense-transfer run needs (picklable: plain values only)."""

    task: Literal["segmentation", "detection"]
    init: Literal["pretrained", "scratch"]
    model: str
    config: dict[str, Any]  # SegmentationConfig / DetectionConfig .model_dump()
    data_root: str  # the ADE20k root (images/, annotations/) or the COCO root
    out_dir: str  # results/<stage>: written atomically at the end
    plots_path: str  # plots/<stage>.csv (step, loss)
    model_options: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None  # backbone weights for init == "pretrained"
    seed: int = 0
    threads: int = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    stage: str = "segmentation"
    mlflow_run_id: str | None = None
    mlflow_uri: str = "sqlite:///mlflow.db"
    num_workers: int = 0  # loader workers per rank
    resume: bool = True
    dist_timeout_s: int = 600  # bound on a collective wait: a dead rank is noticed within it

    @property
    def work_dir(self) -> Path:
        """Resume state of an interrupted run; a sibling of the output folder, removed on success."""
        out = Path(self.out_dir)
        return out.parent / f".{out.name}.work"

    @property
    def last_path(self) -> Path:
        return self.work_dir / "last.pth"

    def fingerprint(self) -> str:
        """What determines the trajectory: a resume state from another config is refused."""
        d = asdict(self)
        for key in (
            "out_dir",
            "plots_path",
            "threads",
            "device",
            "stage",
            "mlflow_run_id",
            "mlflow_uri",
            "num_workers",
            "resume",
            "dist_timeout_s",
        ):
            d.pop(key)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def cfg(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)


class TransferTask(submitit.helpers.Checkpointable):
    """What submitit (or the local launcher, in this process) runs; resumes from ``last.pth``."""

    def __init__(self, job: TransferJob) -> None:
        self.job = job
        self.stage = job.stage  # what a launcher names the job after
        self.device = job.device

    def __call__(self) -> dict[str, Any]:
        from pcn.train import distributed as D
        from pcn.train.launch import StopFlag

        if self.job.task == "segmentation":
            from pcn.transfer.segmentation import run
        else:
            from pcn.transfer.detection import run
        from pcn.train.watchdog import watch_launching_stage

        watch_launching_stage()  # a local job ends with the stage that launched it
        flag = StopFlag()  # before the loaders fork workers, which inherit it
        env = D.detect()
        D.init(env, D.pick_device(self.job.device, env), self.job.dist_timeout_s)
        try:
            # rank 0 holds the results folder: a second trainer on it is refused
            with (
                trainer_lock(self.job.work_dir, self.job.stage) if env.is_main else contextlib.nullcontext(),
                system_metrics(self.job.mlflow_run_id, self.job.mlflow_uri, enabled=env.is_main),
            ):
                result = run(self.job, env, stop=flag)
        finally:
            D.shutdown()
        if result.get("status") == "interrupted":
            flag.hand_over()  # the state is saved: submitit requeues this task
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(TransferTask(self.job))


def setup_device(job: TransferJob, env: DistEnv):
    """This rank's device (one GPU per rank), CPU threads and the model-init seed."""
    import torch

    from pcn.train import distributed as D

    torch.set_flush_denormal(True)  # before set_num_threads (see MACHINE-NOTES: denormals)
    torch.set_num_threads(job.threads)
    torch.manual_seed(job.seed)
    return D.pick_device(job.device, env)


def batch_per_rank(job: TransferJob, env: DistEnv) -> int:
    """``batch_size`` is the global batch; each rank takes an equal share of it."""
    batch = job.cfg("batch_size")
    if batch % env.world_size:
        raise ValueError(f"{job.task}.batch_size = {batch} does not split over {env.world_size} ranks")
    return batch // env.world_size


class IterationSampler:
    """Indices for ``iters`` global batches of ``batch_size``: seeded permutations, one per
    pass over the data, starting at iteration ``start`` (a resumed run sees the same order).

    With ``world_size`` ranks, rank ``r`` yields the ``r``-th of ``world_size`` equal slices
    of every global batch (``batch_size / world_size`` indices per iteration), so the ranks
    together see exactly the batches of a one-process run.
    """

    def __init__(
        self, n: int, batch_size: int, iters: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1
    ):
        if batch_size % world_size:
            raise ValueError(f"a global batch of {batch_size} does not split over {world_size} ranks")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.n, self.batch_size, self.iters, self.seed, self.start = n, batch_size, iters, seed, start
        self.rank, self.world_size = rank, world_size
        self.per_rank = batch_size // world_size

    def __len__(self) -> int:
        return (self.iters - self.start) * self.per_rank

    def __iter__(self) -> Iterator[int]:
        import torch

        pos = self.start * self.batch_size
        end = self.iters * self.batch_size
        while pos < end:
            epoch, offset = divmod(pos, self.n)
            g = torch.Generator().manual_seed(self.seed * EPOCH_SEED_PRIME + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            for i in perm[offset:]:
                if pos >= end:
                    return
                if (pos % self.batch_size) // self.per_rank == self.rank:
                    yield i
                pos += 1


def loader_options(job: TransferJob, device) -> dict[str, Any]:
    """DataLoader workers (per rank) and pinned memory for a GPU."""
    return {"num_workers": job.num_workers, "pin_memory": device.type == "cuda"}


def distribute(model, env: DistEnv, device, seed: int):
    """DDP over the job's ranks, with SyncBatchNorm on GPUs (mmseg's and mmdet's ``SyncBN``:
    a few images per GPU are too few for batch statistics); each rank then draws its
    own augmentations. One process: the model itself."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    if env.world_size == 1:
        return model
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    torch.manual_seed(seed + env.rank)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(n: int, env: DistEnv) -> list[int]:
    """This rank's evaluation images: ``rank, rank + world, ...`` (each image once, no padding)."""
    return list(range(env.rank, n, env.world_size))


def build_optimizer(model, lr: float, weight_decay: float):
    """AdamW without decay on biases, norms and LayerScale (timm's parameter groups)."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=weight_decay, filter_bias_and_bn=True)


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
    ``start`` on.  Under DDP (``model`` wrapped by :func:`distribute`) the recorded loss
    is the mean over the ranks.
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


def run_summary(job: TransferJob, out_dir: Path, weights, loop: LoopResult, eval_s: float, t_start: float) -> dict:
    """The part of a transfer stage's metrics that both tasks share: files, init, timing."""
    return {
        "checkpoint_file": str(out_dir / "model.pth"),
        "figure": str(out_dir / "qualitative.png"),
        "init": job.init,
        "backbone": job.model,
        "backbone_weights": weights.summary() if weights else None,
        "iters": job.cfg("iters"),
        "resumed_from": loop.resumed_from,
        "final_loss": float(sum(loop.losses[-10:]) / len(loop.losses[-10:])) if loop.losses else None,
        "train_seconds": round(loop.seconds, 1),
        "eval_seconds": round(eval_s, 1),
        "seconds": round(time.perf_counter() - t_start, 1),
    }


def loss_csv(losses: list[float]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "loss"])
    for i, v in enumerate(losses, start=1):
        w.writerow([i, f"{v:.6g}" if math.isfinite(v) else "nan"])
    return buf.getvalue()


def finish_outputs(job: TransferJob, losses: list[float]) -> None:
    """The loss curve (atomically) and removal of the resume state once outputs are in place."""
    import shutil

    from pcn.io import write_text

    write_text(job.plots_path, loss_csv(losses))
    shutil.rmtree(job.work_dir, ignore_errors=True)


def run_logger(job: TransferJob, env: DistEnv):
    """MLflow points from rank 0 only (the others get a no-op logger)."""
    from pcn.tracking import RunLogger

    return RunLogger(job.mlflow_run_id, job.mlflow_uri, enabled=env.is_main)
