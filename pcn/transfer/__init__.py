"""Transfer to dense tasks: UperNet semantic segmentation and Mask R-CNN detection.

The column trunk gives four feature maps (``pyramid``), the tasks put torchvision's
Mask R-CNN (``detection``) or segmentation-models-pytorch's UperNet decoder
(``segmentation``) on them, the loaders read the ADE20k and COCO layouts
(``datasets``), and ``metrics`` scores them (one confusion matrix; pycocotools).

This module holds what both tasks share: the job spec (:class:`TransferJob`, plain
values so that submitit can pickle it), the submitit task around it
(:class:`TransferTask`, requeued as itself) and the training loop with its resume
state (:func:`train_loop`), written atomically to ``work_dir/last.pth``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import submitit

log = logging.getLogger(__name__)

LOG_EVERY = 10  # iterations between MLflow loss points (mean over the window)
CHECKPOINT_EVERY = 100  # iterations between resume states


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
    num_workers: int = 0
    resume: bool = True

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
        for key in ("out_dir", "plots_path", "threads", "device", "stage", "mlflow_run_id", "mlflow_uri",
                    "num_workers", "resume"):
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
        if self.job.task == "segmentation":
            from pcn.transfer.segmentation import run
        else:
            from pcn.transfer.detection import run
        return run(self.job)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(TransferTask(self.job))


def setup_device(job: TransferJob):
    import torch

    torch.set_flush_denormal(True)  # before set_num_threads (see MACHINE-NOTES: denormals)
    torch.set_num_threads(job.threads)
    torch.manual_seed(job.seed)
    if job.device == "cuda" or (job.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


class IterationSampler:
    """Indices for ``iters * batch_size`` samples: seeded permutations, one per pass over
    the data, starting at ``start`` iterations (a resumed run sees the same order)."""

    def __init__(self, n: int, batch_size: int, iters: int, seed: int, start: int = 0):
        self.n, self.batch_size, self.iters, self.seed, self.start = n, batch_size, iters, seed, start

    def __len__(self) -> int:
        return (self.iters - self.start) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        import torch

        pos = self.start * self.batch_size
        end = self.iters * self.batch_size
        while pos < end:
            epoch, offset = divmod(pos, self.n)
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            for i in perm[offset:]:
                if pos >= end:
                    return
                yield i
                pos += 1


def build_optimizer(model, lr: float, weight_decay: float):
    """AdamW without decay on biases, norms and LayerScale (timm's parameter groups)."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=weight_decay, filter_bias_and_bn=True)


@dataclass
class LoopResult:
    losses: list[float]
    seconds: float
    resumed_from: int


def train_loop(job: TransferJob, model, optimizer, scheduler, loader_from: Callable[[int], Any],
               step_fn: Callable[[Any], Any], iters: int, run_logger=None, clip_grad: float | None = None) -> LoopResult:
    """``iters`` optimizer steps of ``step_fn(batch) -> loss``; resume state every
    ``CHECKPOINT_EVERY`` steps; MLflow ``train_loss`` every ``LOG_EVERY`` steps.
    ``loader_from(start)`` gives the batches from iteration ``start`` on."""
    import torch

    from pcn.train import checkpoint as ckpt

    start, losses = 0, []
    fp = job.fingerprint()
    if job.resume and job.last_path.is_file():
        state = ckpt.load(job.last_path)
        if state.get("fingerprint") == fp:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start, losses = int(state["step"]), [float(v) for v in state["losses"]]
            ckpt.set_rng_state(state["rng"])
            log.info("%s: resumed at iteration %d from %s", job.stage, start, job.last_path)
        else:
            log.warning("%s: ignoring %s (written by another configuration)", job.stage, job.last_path)
    t0 = time.perf_counter()
    model.train()
    step = start
    for batch in loader_from(start):
        if step >= iters:
            break
        scheduler.step_update(step)
        loss = step_fn(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{job.stage}: loss is {loss.item()} at iteration {step} (lower the lr?)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
        if run_logger is not None and (step % LOG_EVERY == 0 or step == iters):
            window = losses[-LOG_EVERY:]
            run_logger.log_metrics({"train_loss": sum(window) / len(window),
                                    "lr": optimizer.param_groups[0]["lr"]}, step)
        if step % CHECKPOINT_EVERY == 0 and step < iters:
            ckpt.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                       "losses": losses, "rng": ckpt.rng_state(), "fingerprint": fp}, job.last_path)
    return LoopResult(losses, time.perf_counter() - t0, start)


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


def run_logger(job: TransferJob):
    from pcn.tracking import RunLogger

    return RunLogger(job.mlflow_run_id, job.mlflow_uri)
