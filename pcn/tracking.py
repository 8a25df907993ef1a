"""MLflow tracking: one parent run per pipeline invocation, one child run per stage.

The parent run is found in this order: ``PCN_PIPELINE_RUN_ID`` (set by ``pcn run``
and by the Snakefile's ``onstart``), else the run registered for the workflow
process that started this stage (``dvc repro`` or ``snakemake``: the first stage
it starts creates the parent, the others find it), else a fresh parent for a stage
run by hand.  Tracking never loses a result: every call is failure-safe and the
stages also write their metrics to JSON files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PIPELINE_ENV = "PCN_PIPELINE_RUN_ID"
STAGE_ENV = "PCN_STAGE_RUN_ID"
DEFAULT_URI = "sqlite:///mlflow.db"
_REGISTRY = Path(".pcn/pipelines")
_ENGINES = ("dvc", "snakemake")


def tracking_uri(configured: str | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_URI


def _mlflow(uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _workflow_process() -> str | None:
    """'<pid>-<start time>' of the dvc/snakemake process that started us, if any."""
    pid = os.getppid()
    while pid > 1:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        words = [Path(w.decode(errors="replace")).name for w in cmdline[:3] if w]
        if any(w in _ENGINES for w in words):
            return f"{pid}-{stat.rsplit(')', 1)[1].split()[19]}"
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return None


def experiment_id(mlflow, name: str) -> str:
    exp = mlflow.get_experiment_by_name(name)
    return exp.experiment_id if exp else mlflow.create_experiment(name)


def start_pipeline_run(uri: str, experiment: str, engine: str, scale: str) -> str:
    """Create the parent run of one pipeline invocation and return its id."""
    mlflow = _mlflow(uri)
    client = mlflow.MlflowClient()
    run = client.create_run(
        experiment_id(mlflow, experiment),
        run_name=f"pipeline-{engine}-{scale}",
        tags={"pcn.kind": "pipeline", "pcn.engine": engine, "pcn.scale": scale, "git_commit": git_commit()},
    )
    return run.info.run_id


def pipeline_run_id(uri: str, experiment: str, scale: str) -> str:
    if os.environ.get(PIPELINE_ENV):
        return os.environ[PIPELINE_ENV]
    key = _workflow_process()
    if key is None:
        return start_pipeline_run(uri, experiment, "manual", scale)
    _REGISTRY.mkdir(parents=True, exist_ok=True)
    entry = _REGISTRY / f"{key}.json"
    # Two stages may start at once under snakemake: the lock makes one of them the creator.
    with open(_REGISTRY / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if entry.exists():
            return json.loads(entry.read_text())["run_id"]
        engine = (
            "dvc" if "dvc" in Path(f"/proc/{key.split('-')[0]}/cmdline").read_text(errors="replace") else "snakemake"
        )
        run_id = start_pipeline_run(uri, experiment, engine, scale)
        entry.write_text(json.dumps({"run_id": run_id}))
        return run_id


class RunLogger:
    """Failure-safe logging into one existing MLflow run (rank 0 only: others get a no-op)."""

    def __init__(self, run_id: str | None, uri: str, enabled: bool = True):
        self.run_id = run_id
        self.uri = uri
        self.enabled = enabled and run_id is not None
        self._client = None

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        if not self.enabled:
            return
        try:
            if self._client is None:
                self._client = _mlflow(self.uri).MlflowClient()
            fn(self._client, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must never kill a stage
            warnings.warn(
                f"MLflow {what} failed ({exc.__class__.__name__}: {exc}); results are still in the JSON files"
            )

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if isinstance(v, (int, float))]
        self._call("log_metrics", lambda c: c.log_batch(self.run_id, metrics=items))

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        # MLflow takes at most 100 params per batch.
        for i in range(0, len(items), 100):
            self._call("log_params", lambda c, chunk=items[i : i + 100]: c.log_batch(self.run_id, params=chunk))

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self._call("set_tag", lambda c, k=k, v=v: c.set_tag(self.run_id, k, str(v)))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            self._call("log_artifact", lambda c: c.log_artifact(self.run_id, str(path), artifact_path))

    def finish(self, status: str = "FINISHED") -> None:
        self._call("set_terminated", lambda c: c.set_terminated(self.run_id, status))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


@contextlib.contextmanager
def stage_run(
    stage: str, params, section_values: dict[str, Any], tags: dict[str, str] | None = None
) -> Iterator[RunLogger]:
    """A child run of the pipeline run for one stage; ends FAILED if the stage raises."""
    uri = tracking_uri(params.tracking.uri)
    logger = RunLogger(None, uri)
    try:
        mlflow = _mlflow(uri)
        client = mlflow.MlflowClient()
        parent = pipeline_run_id(uri, params.tracking.experiment, params.scale)
        run = client.create_run(
            experiment_id(mlflow, params.tracking.experiment),
            run_name=stage,
            tags={
                "mlflow.parentRunId": parent,
                "pcn.kind": "stage",
                "pcn.stage": stage,
                "pcn.scale": params.scale,
                "git_commit": git_commit(),
                **(tags or {}),
            },
        )
        logger = RunLogger(run.info.run_id, uri)
        logger.log_params(section_values)
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"MLflow unavailable ({exc.__class__.__name__}: {exc}); stage {stage} runs untracked")
    try:
        yield logger
    except BaseException:
        logger.finish("FAILED")
        raise
    logger.finish("FINISHED")
