"""The job specs: everything one training or dense-transfer run needs, as picklable dataclasses.

A job crosses process boundaries (submitit pickles it into the SLURM job), so it holds
only plain values and pydantic configs.  :class:`JobSpec` holds the fields every job
has: the model, where it writes, and how it runs and reports; :class:`TrainJob` adds
classification training (``pcn.transfer.job.TransferJob``: the dense tasks).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import KW_ONLY, asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pcn.config import TrainConfig


@dataclass
class JobSpec:
    """The fields every job has (keyword-only).  Those of :attr:`RUNTIME` say where and how it
    runs, not what it computes: a resume state written under other values is still taken."""

    _: KW_ONLY
    model: str
    out_dir: str
    model_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    threads: int = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    stage: str
    mlflow_run_id: str | None = None
    mlflow_uri: str = "sqlite:///mlflow.db"
    # Continue from the resume state when it exists (requeue, interrupted runs).
    resume: bool = True
    # Bound on collective waits (seconds): a rank that died is noticed within this time.
    dist_timeout_s: int

    RUNTIME: ClassVar[tuple[str, ...]] = (
        "out_dir",
        "stage",
        "mlflow_run_id",
        "mlflow_uri",
        "resume",
        "threads",
        "device",
        "dist_timeout_s",
    )

    def trajectory(self) -> dict[str, Any]:
        """The fields that determine the numbers a run computes (a subclass drops its own
        output paths and knobs)."""
        d = asdict(self)
        for key in self.RUNTIME:
            d.pop(key)
        return d

    def fingerprint(self) -> str:
        """Hash of :meth:`trajectory`: a resume state from another config is refused."""
        return hashlib.sha256(json.dumps(self.trajectory(), sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class DataSpec:
    """Where the images are and how they are read (see ``pcn.data.loaders.build_loader``)."""

    train_beton: str | None = None
    val_beton: str | None = None
    train_folder: str | None = None
    val_folder: str | None = None
    loader: Literal["ffcv", "torch", "memory"] = "torch"
    num_workers: int = 2
    crop_ratio: float = 0.875


@dataclass
class TrainJob(JobSpec):
    num_classes: int
    train: TrainConfig
    data: DataSpec
    # Fine-tuning: start from these weights (head dropped if num_classes differ).
    init_checkpoint: str | None = None
    metrics_path: str | None = None
    stage: str = field(default="train", kw_only=True)
    dist_timeout_s: int = field(default=180, kw_only=True)

    @property
    def last_path(self) -> Path:
        return Path(self.out_dir) / "last.pth"

    @property
    def final_path(self) -> Path:
        return Path(self.out_dir) / "model.pth"

    def trajectory(self) -> dict[str, Any]:
        """Also left out: the metrics path, the loader's workers, and ``max_steps`` (it only
        truncates a run, which is how tests interrupt one) and how often it evaluates and saves."""
        d = super().trajectory()
        d["train"] = self.train.model_dump(exclude={"max_steps", "eval_every", "checkpoint_every_steps"})
        d.pop("metrics_path")
        d["data"].pop("num_workers")
        return d
