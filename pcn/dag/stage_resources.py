"""What each stage's job asks SLURM for: the table's :class:`Resources` per stage, and the
Snakemake SLURM executor plugin's view of them."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from pcn.config import Params, StageResources
from pcn.data.splits import IMAGENET_SPLIT_IMAGES, ffcv_splits

# --- what each job asks the scheduler for ----------------------------------------------

# An assumed, cautious conversion rate per writer process (decoding a full-size JPEG, resizing
# it to max_resolution, re-encoding it); not measured on ImageNet: the job's time limit is an
# estimate to check against the first real conversion (launcher.slurm.resources.convert).
CONVERT_IMAGES_PER_WORKER_S = 25
TIME_MARGIN = 2  # a wall-time limit is twice the estimate: a slow file system must not kill the job


@dataclass(frozen=True)
class Resources:
    """What one job of a stage asks SLURM for (memory and GPUs per node)."""

    cpus_per_task: int
    mem_gb: int
    time_min: int
    gpus_per_node: int = 0
    nodes: int = 1
    tasks_per_node: int = 1
    partition: str | None = None

    def overridden(self, own: StageResources | None) -> Resources:
        """These resources with ``launcher.slurm.resources.<stage>``'s set values."""
        if own is None:
            return self
        return replace(self, **{k: v for k, v in own.model_dump().items() if v is not None})

    def describe(self) -> str:
        gpus = f"{self.gpus_per_node} GPU" if self.gpus_per_node else "no GPU"
        return (
            f"{self.nodes} node(s) x {self.tasks_per_node} task(s) x {self.cpus_per_task} CPU, {gpus}, "
            f"{self.mem_gb} GB, {self.time_min} min, partition {self.partition or '(default)'}"
        )


def light_job(params: Params, accelerated: bool = False) -> Resources:
    """A summary, a figure, a report, a count: one core, a few GB, minutes."""
    real = params.data.source != "demo"
    return Resources(1, 8 if real else 4, 120 if real else 30, gpus_per_node=_gpu(params, accelerated))


def _gpu(params: Params, accelerated: bool) -> int:
    return int(accelerated and params.runtime.device == "cuda")


def loader_job(params: Params) -> Resources:
    """A model over a val set (evaluate, attention): a GPU, and a core for each loader worker
    plus the one that feeds the GPU; 2 GB for each of them."""
    cpus = params.data.num_workers + 1
    real = params.data.source != "demo"
    return Resources(cpus, 4 + 2 * cpus, 120 if real else 30, gpus_per_node=_gpu(params, True))


def convert_job(params: Params) -> Resources:
    """The FFCV conversion: a core for each writer process; time from the image count of
    the splits it converts."""
    workers = max(1, params.data.num_workers)
    if params.data.source == "demo":
        d = params.data.demo
        per_split = {"train": d.n_classes * d.train_per_class, "val": d.n_classes * d.val_per_class}
        per_split["v2"] = per_split["val"]
    else:
        per_split = IMAGENET_SPLIT_IMAGES
    images = sum(per_split[s] for s in ffcv_splits(params))
    minutes = images / (CONVERT_IMAGES_PER_WORKER_S * workers) / 60
    return Resources(workers, 4 + 2 * workers, 10 + math.ceil(TIME_MARGIN * minutes))


def training_job(params: Params) -> Resources:
    """A training-like stage's submitit job: ``launcher.slurm`` (one rank per GPU, or
    ``launcher.tasks`` CPU ranks per node)."""
    s = params.launcher.slurm
    return Resources(
        s.cpus_per_task,
        s.mem_gb,
        s.time_min,
        gpus_per_node=s.gpus_per_node,
        nodes=s.nodes,
        tasks_per_node=params.launcher.tasks_per_node(s),
    )


# --- the SLURM view -------------------------------------------------------------------------


def plugin_resources(stage, params: Params) -> dict[str, Any]:
    """The Snakemake SLURM executor plugin's resources of ``stage``'s job (its rule's
    ``resources:``), by the plugin's names; account, qos and constraint as every job gets them."""
    if stage.submits_job:
        return {}  # a local rule: it submits its job through submitit and waits on this host
    r, s = stage.resources, params.launcher.slurm
    res: dict[str, Any] = {"runtime": r.time_min, "mem_mb": r.mem_gb * 1024, "cpus_per_task": r.cpus_per_task}
    if r.gpus_per_node:
        res["gpu"] = r.gpus_per_node
    if r.partition:
        res["slurm_partition"] = r.partition
    if s.account:
        res["slurm_account"] = s.account
    for key in ("qos", "constraint"):
        if getattr(s, key):
            res[key] = getattr(s, key)
    return res
