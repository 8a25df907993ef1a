"""What every stage does around its work: params, tracking, metrics, threads."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcn.config import Params, load_params
from pcn.io import write_json
from pcn.machine import describe
from pcn.tracking import RunLogger, stage_run, tracking_uri


@dataclass
class Stage:
    name: str
    params: Params
    run: RunLogger

    @property
    def uri(self) -> str:
        return tracking_uri(self.params.tracking.uri)

    def finish(self, metrics: dict[str, Any], metrics_path: str | Path, artifacts: tuple = ()) -> dict:
        """Write the metrics JSON (the record of truth) then mirror it to MLflow.  A training
        job's metrics already name the machine it trained on; others get this process's."""
        metrics = {"machine": describe(), **metrics, "mlflow_run_id": self.run.run_id}
        write_json(metrics_path, metrics)
        self.run.log_metrics(
            {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        )
        for path in (metrics_path, *artifacts):
            self.run.log_artifact(path)
        return metrics


def section_values(params: Params, sections: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for key in sections:
        value = params.section(key)
        out[key] = value.model_dump() if hasattr(value, "model_dump") else value
    return out


@contextlib.contextmanager
def stage(args, name: str, sections: tuple[str, ...], tags: dict[str, str] | None = None) -> Iterator[Stage]:
    params = load_params(args.params)
    with stage_run(name, params, section_values(params, sections), tags) as run:
        yield Stage(name, params, run)


def setup_torch(threads: int) -> None:
    """CPU determinism and speed: flush denormals BEFORE setting threads (see README)."""
    import torch

    torch.set_flush_denormal(True)
    torch.set_num_threads(threads)


def launcher_kind(args, params: Params) -> str:
    return getattr(args, "launcher", None) or os.environ.get("PCN_LAUNCHER") or params.launcher.kind


def data_paths(params: Params) -> dict[str, Path]:
    """Where the classification splits live, as image folders (official layouts) and FFCV files."""
    imagenet, v2 = params.data.path("imagenet"), params.data.path("imagenet_v2")
    return {
        "train": imagenet / "train",
        "val": imagenet / "val",
        "v2": v2,
        "loc": imagenet / "LOC_val_solution.csv",
        "train_beton": Path("data/ffcv/train.beton"),
        "val_beton": Path("data/ffcv/val.beton"),
        "v2_beton": Path("data/ffcv/v2.beton"),
    }


def load_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
