"""The run both dense tasks share: set up the rank, read the data, build and distribute
the model, train through :func:`pcn.transfer.loop.train_loop`, evaluate every rank's
share, and on rank 0 write the outputs atomically and return the metrics.

A task (:mod:`pcn.transfer.segmentation`, :mod:`pcn.transfer.detection`) subclasses
:class:`DenseRun` with its parts (datasets, model, schedule, loss, evaluation, files,
metrics); :func:`run_dense` calls them in one order, so both tasks draw their random
numbers in the same sequence of steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pcn.config import batch_per_rank
from pcn.io import atomic_path, write_json
from pcn.machine.device import setup_torch, torch_device
from pcn.train import distributed as D
from pcn.train.loop import unwrap
from pcn.transfer.distributed import IterationSampler, distribute
from pcn.transfer.job import TransferJob
from pcn.transfer.loop import build_optimizer, interrupted, run_logger, train_loop
from pcn.transfer.outputs import finish_outputs, run_summary


def setup_device(job: TransferJob, env: D.DistEnv) -> torch.device:
    """This rank's device (one GPU per rank), CPU threads and the model-init seed."""
    setup_torch(job.threads)
    torch.manual_seed(job.seed)
    return torch_device(job.device, env.local_rank)


def loader_options(job: TransferJob, device: torch.device) -> dict[str, Any]:
    """DataLoader workers (per rank) and pinned memory for a GPU."""
    return {"num_workers": job.num_workers, "pin_memory": device.type == "cuda"}


class DenseRun:
    """One task's parts of a dense-transfer run on one rank."""

    weight_decay: float  # AdamW's decay where the config sets none
    collate: Callable | None = None  # the training loader's (None: torch's default)

    def __init__(self, job: TransferJob, env: D.DistEnv, device: torch.device, per_rank: int) -> None:
        self.job, self.env, self.device, self.per_rank = job, env, device, per_rank

    def data(self) -> torch.utils.data.Dataset:
        """Read the datasets (refusing what cannot train); return the training items."""
        raise NotImplementedError

    def build(self) -> tuple[torch.nn.Module, Any]:
        """(the model, the report of the backbone weights it was given or None)."""
        raise NotImplementedError

    def scheduler(self, optimizer, iters: int, lr: float):
        raise NotImplementedError

    def loss(self, model, batch) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, net: torch.nn.Module) -> None:
        """Score this rank's share of the val set; rank 0 ends with every rank's results."""
        raise NotImplementedError

    def write(self, net: torch.nn.Module, folder: Path) -> None:
        """Rank 0: the task's own files into the output folder (before the model is saved)."""
        raise NotImplementedError

    def figure(self, path: Path) -> None:
        raise NotImplementedError

    def metrics(self, out_dir: Path) -> dict[str, Any]:
        """Rank 0: the task's metrics (the shared summary follows them)."""
        raise NotImplementedError


def run_dense(task: type[DenseRun], job: TransferJob, env: D.DistEnv | None = None, stop=None) -> dict[str, Any]:
    """Train, evaluate, write the outputs; return the metrics (the stage writes the JSON).

    Under DDP every rank trains and scores its shard; rank 0 writes the outputs and
    returns the metrics, the other ranks return ``{"rank": r}``.  When ``stop()`` turns
    true on any rank, the state is saved and every rank returns ``{"status": "interrupted"}``.
    """
    env = env or D.DistEnv()
    t_start = time.perf_counter()
    device = setup_device(job, env)
    iters, bs, lr = job.cfg("iters"), job.cfg("batch_size"), job.cfg("lr")
    run = task(job, env, device, batch_per_rank(bs, env.world_size, job.task))
    train_items = run.data()
    net, weights = run.build()
    net.to(device)
    model = distribute(net, env, device, job.seed)
    optimizer = build_optimizer(unwrap(model), lr, job.cfg("weight_decay", run.weight_decay))
    scheduler = run.scheduler(optimizer, iters, lr)

    def loader_from(start: int):
        sampler = IterationSampler(len(train_items), bs, iters, job.seed, start, env.rank, env.world_size)
        return torch.utils.data.DataLoader(
            train_items,
            batch_size=run.per_rank,
            sampler=sampler,
            collate_fn=run.collate,
            drop_last=True,
            **loader_options(job, device),
        )

    loop = train_loop(
        job,
        model,
        optimizer,
        scheduler,
        loader_from,
        lambda batch: run.loss(model, batch),
        iters,
        run_logger(job, env),
        env=env,
        device=device,
        stop=stop,
    )
    if loop.status == "interrupted":
        return interrupted(loop)
    net = unwrap(model)
    t_eval = time.perf_counter()
    run.evaluate(net)
    eval_s = time.perf_counter() - t_eval
    if not env.is_main:
        return {"rank": env.rank}
    out_dir = Path(job.out_dir)
    with atomic_path(out_dir, directory=True) as tmp:
        run.write(net, tmp)
        torch.save({"model": net.state_dict()}, tmp / "model.pth")
        if weights is not None:  # every key the checkpoint gave the trunk, and every key it dropped
            write_json(
                tmp / "backbone_weights.json",
                {"source": weights.source, "used": weights.used, "dropped": weights.dropped},
            )
        run.figure(tmp / "qualitative.png")
    finish_outputs(job, loop.losses)
    return {**run.metrics(out_dir), **run_summary(job, out_dir, weights, loop, eval_s, t_start)}
