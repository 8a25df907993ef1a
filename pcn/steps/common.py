"""What every stage does around its work: params, tracking, metrics, threads."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcn import frontend
from pcn.config import Params, load_params
from pcn.file_audit import AUDIT_DIR_ENV, AUDIT_STAGE_ENV
from pcn.io import write_json
from pcn.machine import describe
from pcn.splits import FFCV_DIR
from pcn.stage import instance_name, stage_sections
from pcn.tracking import METRICS_TAG, RunLogger, stage_run, tracking_uri

# Where submitit keeps each launched job's logs and pickles, one folder per stage
SUBMITIT_LOGS = Path("logs/submitit")


@dataclass
class StageRun:
    """One run of a stage's step: its params, its MLflow run, and the paths its command line
    names for this instance, so a step writes where the DAG looks."""

    name: str
    params: Params
    run: RunLogger
    outs: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        return tracking_uri(self.params.tracking.uri)

    @property
    def out(self) -> str:
        return self._one("outs")

    @property
    def metrics_path(self) -> str:
        return self._one("metrics")

    @property
    def plots_path(self) -> str:
        return self._one("plots")

    def _one(self, kind: str) -> str:
        paths = getattr(self, kind)
        if len(paths) != 1:
            raise LookupError(f"stage {self.name!r} was given {len(paths)} {kind} on its command line, not one")
        return paths[0]

    def finish(self, metrics: dict[str, Any], metrics_path: str | Path | None = None, artifacts: tuple = ()) -> dict:
        """Write the metrics JSON (the record of truth; by default the stage's own file)
        then mirror it to MLflow.  A training job's metrics already name the machine it
        trained on; others get this process's."""
        metrics_path = metrics_path or self.metrics_path
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


def _paths(value: str | list[str] | None) -> tuple[str, ...]:
    return () if value is None else (value,) if isinstance(value, str) else tuple(value)


def outputs(args) -> dict[str, tuple[str, ...]]:
    """The outputs a training-like command names: ``--out``, ``--metrics``, ``--plots``."""
    return {k: _paths(getattr(args, a, None)) for k, a in (("outs", "out"), ("metrics", "metrics"), ("plots", "plots"))}


@contextlib.contextmanager
def stage(
    args,
    name: str,
    sections: tuple[str, ...] | None = None,
    tags: dict[str, str] | None = None,
    *,
    wildcards: dict[str, Any] | None = None,
    outs: tuple[str, ...] = (),
    metrics: tuple[str, ...] = (),
    plots: tuple[str, ...] = (),
) -> Iterator[StageRun]:
    """Run stage ``name`` (an instance of a grid stage: its ``wildcards``, e.g. variant and
    seed) writing the paths its command names; its MLflow run logs the params sections the
    stage reads (``sections``: by default those it tracks in the DAG, pcn.stage)."""
    params = load_params(args.params)
    if os.environ.get("DVC_STAGE"):
        # a bare `dvc repro` has no start hook: each stage refuses a stale dvc.yaml, and the
        # first looks for every dataset of every stage (a few stat calls), so a missing one
        # is named in seconds
        from pcn.dvc_view import check_under_dvc

        check_under_dvc(args.params, params)
    wc = {k: str(v) for k, v in (wildcards or {}).items()}
    instance = instance_name(name, wc)
    sections = tuple(s.format(**wc) for s in (stage_sections(name) if sections is None else sections))
    if os.environ.get(AUDIT_DIR_ENV):
        os.environ[AUDIT_STAGE_ENV] = instance  # pcn.file_audit: the jobs this stage starts inherit it
    # A bare `dvc repro` has no start hook: each of its stages holds the front-end lock
    # while it runs (under `pcn run` or Snakemake, the front end above holds it).
    held = bool(os.environ.get("DVC_STAGE")) and frontend.acquire(f"dvc repro (stage {name})")
    try:
        # the metrics files as a tag: the report finds the run behind a file that does not name it
        tags = {**(tags or {}), **({METRICS_TAG: " ".join(metrics)} if metrics else {})}
        with stage_run(name, params, section_values(params, sections), tags, instance=instance) as run:
            yield StageRun(name, params, run, outs=outs, metrics=metrics, plots=plots)
    finally:
        if held:
            frontend.release()


def launcher_kind(args, params: Params) -> str:
    return getattr(args, "launcher", None) or os.environ.get("PCN_LAUNCHER") or params.launcher.kind


# The classification splits and the layout each is read in; the convert stage writes each as <split>.beton
SPLIT_LAYOUTS = {"train": "imagefolder", "val": "imagefolder", "v2": "imagenet_v2"}


def data_paths(params: Params, ffcv: str | Path | None = None) -> dict[str, Path]:
    """Where the classification splits live, as image folders (official layouts) and FFCV
    files (in ``ffcv``, the folder a stage's ``--ffcv`` names)."""
    imagenet, v2 = params.data.path("imagenet"), params.data.path("imagenet_v2")
    return {
        "train": imagenet / "train",
        "val": imagenet / "val",
        "v2": v2,
        "loc": imagenet / "LOC_val_solution.csv",
        **{f"{split}_beton": Path(ffcv or FFCV_DIR) / f"{split}.beton" for split in SPLIT_LAYOUTS},
    }
