"""The job spec: everything one training run needs, as a picklable dataclass.

A :class:`TrainJob` crosses process boundaries (submitit pickles it into the
SLURM job), so it holds only plain values and the pydantic ``TrainConfig``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pcn.config import TrainConfig


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
class TrainJob:
    model: str
    num_classes: int
    train: TrainConfig
    data: DataSpec
    out_dir: str
    model_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    threads: int = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Fine-tuning: start from these weights (head dropped if num_classes differ).
    init_checkpoint: str | None = None
    metrics_path: str | None = None
    stage: str = "train"
    mlflow_run_id: str | None = None
    mlflow_uri: str = "sqlite:///mlflow.db"
    # Continue from out_dir/last.pth when it exists (requeue, interrupted runs).
    resume: bool = True
    # Bound on collective waits (seconds): a rank that died is noticed within this time.
    dist_timeout_s: int = 180

    @property
    def last_path(self) -> Path:
        return Path(self.out_dir) / "last.pth"

    @property
    def final_path(self) -> Path:
        return Path(self.out_dir) / "model.pth"

    def fingerprint(self) -> str:
        """Hash of what determines the trajectory; a resume state from another config is refused.

        Left out: where things are written and how often, threads and workers, and
        ``max_steps`` (it only truncates a run, which is how tests interrupt one).
        """
        d = asdict(self)
        d["train"] = self.train.model_dump(exclude={"max_steps", "eval_every", "checkpoint_every_steps"})
        for key in (
            "out_dir",
            "metrics_path",
            "stage",
            "mlflow_run_id",
            "mlflow_uri",
            "resume",
            "threads",
            "device",
            "dist_timeout_s",
        ):
            d.pop(key)
        d["data"].pop("num_workers")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
