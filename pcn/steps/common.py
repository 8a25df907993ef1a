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
from pcn.errors import UserError
from pcn.io import check_output, check_writable, write_json
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


# The flags that name what a stage reads (pcn.cli._PATHS), and the two that name an input
# only where the stage is not given their paths as outputs (figures, report, summarize).
_INPUT_FLAGS = ("params", "ffcv", "weights", "checkpoint", "baseline", "results", "figures", "paper", "recipe")
_OUTPUT_OR_INPUT_FLAGS = ("metrics", "plots")


def _names(value) -> list[str]:
    """A flag's value(s) as path strings (a flag may be given a Path, or several)."""
    if value is None:
        return []
    return [os.fspath(v) for v in ([value] if isinstance(value, (str, os.PathLike)) else value)]


def inputs(args, written: tuple[str, ...]) -> list[str]:
    """The paths a stage's command names as its inputs (``METHOD=MODEL``: the model)."""
    found = [v for flag in _INPUT_FLAGS for v in _names(getattr(args, flag, None))]
    for flag in _OUTPUT_OR_INPUT_FLAGS:
        values = _names(getattr(args, flag, None))
        found += [] if set(values) <= set(_names(written)) else values
    return [v.split("=", 1)[1] if "=" in v and not os.path.exists(v) else v for v in found]


def check_outputs(args, outs: tuple[str, ...], files: tuple[str, ...]) -> None:
    """Before any work: no output replaces the workspace or an input, each can be written (a
    read-only filesystem fails here, not after the evaluation), and the metrics and plot
    files are not folders."""
    read = inputs(args, (*outs, *files))
    for path in (*outs, *files):
        check_output(path, read)
        check_writable(path)
    for path in files:
        if os.path.isdir(path):
            raise UserError(f"{path}: is a folder; expected the path of a file to write")


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
    check_outputs(args, outs, (*metrics, *plots))
    wc = {k: str(v) for k, v in (wildcards or {}).items()}
    instance = instance_name(name, wc)
    sections = tuple(s.format(**wc) for s in (stage_sections(name) if sections is None else sections))
    audit_as(instance)
    # the metrics files as a tag: the report finds the run behind a file that does not name it
    tags = {**(tags or {}), **({METRICS_TAG: " ".join(metrics)} if metrics else {})}
    with stage_run(name, params, section_values(params, sections), tags, instance=instance) as run:
        yield StageRun(name, params, run, outs=outs, metrics=metrics, plots=plots)


def audit_as(instance: str) -> None:
    """Name the files this process opens from now on as stage ``instance``'s, when an audit
    runs (pcn.dag.file_audit; the jobs the stage starts inherit it)."""
    if os.environ.get(AUDIT_DIR_ENV):
        os.environ[AUDIT_STAGE_ENV] = instance


def launcher_kind(args, params: Params) -> str:
    return getattr(args, "launcher", None) or os.environ.get("PCN_LAUNCHER") or params.launcher.kind
