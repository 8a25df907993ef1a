"""What every stage does around its work: params, tracking, metrics, threads."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcn.config import Params, load_params, section_values
from pcn.config.names import instance_name
from pcn.dag.file_audit import AUDIT_DIR_ENV, AUDIT_STAGE_ENV
from pcn.dag.stage import stage_sections
from pcn.io import write_json
from pcn.machine.device import describe
from pcn.tracking.runs import METRICS_TAG, RunLogger, stage_run, tracking_uri

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
    stage reads (``sections``: by default those it tracks in the DAG, pcn.dag.stage)."""
    params = load_params(args.params)
    wc = {k: str(v) for k, v in (wildcards or {}).items()}
    instance = instance_name(name, wc)
    sections = tuple(s.format(**wc) for s in (stage_sections(name) if sections is None else sections))
    if os.environ.get(AUDIT_DIR_ENV):
        os.environ[AUDIT_STAGE_ENV] = instance  # pcn.dag.file_audit: the jobs this stage starts inherit it
    # the metrics files as a tag: the report finds the run behind a file that does not name it
    tags = {**(tags or {}), **({METRICS_TAG: " ".join(metrics)} if metrics else {})}
    with stage_run(name, params, section_values(params, sections), tags, instance=instance) as run:
        yield StageRun(name, params, run, outs=outs, metrics=metrics, plots=plots)


def launcher_kind(args, params: Params) -> str:
    return getattr(args, "launcher", None) or os.environ.get("PCN_LAUNCHER") or params.launcher.kind
