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
from pcn.errors import UserError
from pcn.file_audit import AUDIT_DIR_ENV, AUDIT_STAGE_ENV
from pcn.io import write_json
from pcn.machine import describe
from pcn.stages import FFCV_DIR, build_stages, stage_record
from pcn.tracking import RunLogger, stage_run, tracking_uri

# Where submitit keeps each launched job's logs and pickles, one folder per stage
SUBMITIT_LOGS = Path("logs/submitit")


@dataclass
class StageRun:
    """One run of a stage's step: its params, its MLflow run, and the paths the stage table
    declares for this instance (its wildcards filled in), so a step writes where the DAG looks."""

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
            raise LookupError(f"stage {self.name!r} declares {len(paths)} {kind} in pcn/stages.py, not one")
        return paths[0]

    def finish(self, metrics: dict[str, Any], metrics_path: str | Path | None = None, artifacts: tuple = ()) -> dict:
        """Write the metrics JSON (the record of truth; by default the stage's declared file)
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


@contextlib.contextmanager
def stage(
    args, name: str, sections: tuple[str, ...] | None = None, tags: dict[str, str] | None = None
) -> Iterator[StageRun]:
    """Run stage ``name``: its params sections and output paths come from its record in the
    stage table, for the instance the command line names (a matrix stage's wildcards are its
    flags: ``--variant`` fills ``{variant}``).  ``sections`` is for runs outside the DAG (a
    released checkpoint's evaluation), which have no record and name their outputs."""
    params = load_params(args.params)
    if os.environ.get("DVC_STAGE"):
        refuse_stale_dvc_yaml(args.params, params)
        # a bare `dvc repro` has no start hook either: the first stage it runs looks for every
        # dataset of every stage (a few stat calls), so a missing one is named in seconds
        from pcn.preflight import check_datasets

        check_datasets(params)
    paths: dict[str, tuple[str, ...]] = {}
    instance = name
    if sections is None:
        record = stage_record(name, params)
        wildcards = {k: str(getattr(args, k)) for k in record.matrix}
        one = record.instance(wildcards)
        sections = one.params
        paths = {"outs": one.outs, "metrics": one.metrics, "plots": one.plots}
        instance = record.instance_name(wildcards)
    if os.environ.get(AUDIT_DIR_ENV):
        os.environ[AUDIT_STAGE_ENV] = instance  # pcn.file_audit: the jobs this stage starts inherit it
    # A bare `dvc repro` has no start hook: each of its stages holds the front-end lock
    # while it runs (under `pcn run` or Snakemake, the front end above holds it).
    held = bool(os.environ.get("DVC_STAGE")) and frontend.acquire(f"dvc repro (stage {name})")
    try:
        with stage_run(name, params, section_values(params, sections), tags, instance=instance) as run:
            yield StageRun(name, params, run, **paths)
    finally:
        if held:
            frontend.release()


def refuse_stale_dvc_yaml(params_path: str, params: Params) -> None:
    """Under DVC, refuse to run when dvc.yaml's shape (its stages and their matrices) no longer
    matches params.yaml: DVC would run the stale matrix (e.g. `dvc exp run -S` on the seeds,
    a variant or the scale), whose instances the steps no longer agree with."""
    import yaml

    dvc_file = Path(params_path).parent / "dvc.yaml"
    written = yaml.safe_load(dvc_file.read_text()) if dvc_file.is_file() else None
    shape = {name: entry.get("matrix") for name, entry in ((written or {}).get("stages") or {}).items()}
    # the table's shape as dvc_yaml writes it (a matrix: its values as lists)
    expected = {s.name: {k: list(v) for k, v in s.matrix.items()} or None for s in build_stages(params)}
    if shape != expected:
        raise UserError(
            f"{dvc_file} is stale for {params_path}: the edit changes the DAG's shape (its stages or "
            "instances); run `pcn dag` (or `pcn run`), then repeat the command"
        )


def launcher_kind(args, params: Params) -> str:
    return getattr(args, "launcher", None) or os.environ.get("PCN_LAUNCHER") or params.launcher.kind


# The classification splits and the layout each is read in; the convert stage writes each as <split>.beton
SPLIT_LAYOUTS = {"train": "imagefolder", "val": "imagefolder", "v2": "imagenet_v2"}


def data_paths(params: Params) -> dict[str, Path]:
    """Where the classification splits live, as image folders (official layouts) and FFCV files."""
    imagenet, v2 = params.data.path("imagenet"), params.data.path("imagenet_v2")
    return {
        "train": imagenet / "train",
        "val": imagenet / "val",
        "v2": v2,
        "loc": imagenet / "LOC_val_solution.csv",
        **{f"{split}_beton": Path(FFCV_DIR) / f"{split}.beton" for split in SPLIT_LAYOUTS},
    }
