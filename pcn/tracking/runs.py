"""MLflow tracking: one parent run per pipeline invocation, one child run per stage.

The parent run is named by ``PCN_PIPELINE_RUN_ID``: ``pcn run`` creates one per
invocation, the Snakefile's ``onstart`` one per ``snakemake`` run that lacks it, and every
job inherits it (SLURM jobs too: sbatch exports the environment).  Without it (plain
``dvc repro``, which has no start hook, or a stage run by hand) the stages share one parent
per (engine, scale, git commit), found by its ``pcn.group`` tag: every ``dvc repro`` at one
commit collects under one parent.

Artifacts of a sqlite store sit in ``mlartifacts/`` beside the database file.  The
experiment's artifact root is the proxied URI ``mlflow-artifacts:/<id>``, which names no
folder: stages copy their files under that folder themselves, and ``mlflow server
--artifacts-destination`` (``pcn ui``) serves them from it, so a moved or copied project
keeps its runs and artifacts together.  Tracking never loses a result: every call is
failure-safe and the stages also write their metrics to JSON files.

A store that cannot be written costs little: one short probe per process (a TCP connect to
a server, an access check of a sqlite file and its folder) finds an unreachable server or a
read-only database before any MLflow call, and the first failed call (a locked database, a
server gone mid-stage) turns tracking off for the rest of the process.  Either way one
line says so, instead of minutes of HTTP retries or a page of SQLAlchemy traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

METRICS_TAG = "pcn.metrics"  # a stage run's tag: the metrics files its command names, space-separated

log = logging.getLogger(__name__)

PIPELINE_ENV = "PCN_PIPELINE_RUN_ID"
STAGE_ENV = "PCN_STAGE_RUN_ID"
DEFAULT_URI = "sqlite:///mlflow.db"
PROXIED_ROOT = "mlflow-artifacts:/"
_LOCK = Path(".pcn/pipeline.lock")
PROBE_TIMEOUT_S = 3.0  # a server that has not accepted a connection by then is taken as down
# MLflow's HTTP defaults (several retries with backoff, 120 s timeouts) made an unreachable
# server cost minutes per stage; these bound a server that dies mid-stage.  The user's own
# settings of the same variables win.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_DOWN: dict[str, str] = {}  # store URI -> why tracking into it is off in this process


def tracking_uri(configured: str | None = None) -> str:
    """The store's URI; a relative sqlite path is made absolute here, against the working
    directory of the call: MLflow caches stores (and their pooled connections) by URI, so
    one relative URI used from two directories in one process would reach the first one's
    database."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_URI
    if uri.startswith("sqlite:///"):
        path, _, query = uri.removeprefix("sqlite:///").partition("?")
        if not Path(path).is_absolute():
            uri = f"sqlite:///{Path.cwd() / path}" + (f"?{query}" if query else "")
    return uri


def artifacts_dir(uri: str) -> Path | None:
    """The folder holding a sqlite store's artifacts (relative if the store's path is), or
    None for a server, whose artifacts MLflow itself routes."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?")[0]).parent / "mlartifacts"


def local_artifacts(artifact_uri: str, uri: str) -> Path | None:
    """Where a proxied ``mlflow-artifacts:`` URI of a sqlite store's run lies on disk (the
    layout MLflow's server uses under ``mlartifacts/``); None for a server's store, whose
    artifacts MLflow's client moves itself."""
    root = artifacts_dir(uri)
    if root is None or not artifact_uri.startswith(PROXIED_ROOT):
        return None
    return root / urlparse(artifact_uri).path.lstrip("/")


def client(uri: str):
    """A client of ``uri``, or :class:`TrackingOff` when the store failed its probe.  Not
    ``mlflow.set_tracking_uri``: that also sets MLFLOW_TRACKING_URI in this process's
    environment, which would then override the store of every later stage run in the
    process (and of the jobs it starts)."""
    problem = store_problem(uri)
    if problem:
        raise TrackingOff(problem)
    for var, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(var, value)
    from mlflow import MlflowClient

    if not uri.startswith("sqlite:///") or uri in _SQLITE_READY:
        return MlflowClient(tracking_uri=uri)
    # MLflow creates and migrates a new sqlite store's tables when a client first opens it;
    # 16 stages doing that at once broke the migration (and ran untracked).  Under a lock
    # beside the store the first one creates them, the others wait and find them.
    db = Path(uri.removeprefix("sqlite:///").split("?")[0])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(tracking_uri=uri)
    _SQLITE_READY.add(uri)
    return client


_SQLITE_READY: set[str] = set()  # sqlite stores this process has opened (their tables exist)


class TrackingOff(RuntimeError):
    """The store failed its probe or an earlier call in this process."""


def one_line(exc: BaseException) -> str:
    """An exception as one short line (SQLAlchemy's messages carry the SQL and a URL below it)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{exc.__class__.__name__}: {lines[0][:200] if lines else ''}".rstrip(": ")


def turn_off(uri: str, why: str) -> None:
    """Stop tracking into ``uri`` for the rest of this process, saying why once."""
    if uri not in _DOWN:
        _DOWN[uri] = why
        log.warning("MLflow tracking off: %s; results are still in the JSON files", why)


def off_reason(uri: str) -> str | None:
    """Why tracking into ``uri`` was turned off in this process, or None while it is on."""
    return _DOWN.get(uri)


def store_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be tracked into, from one short probe per process; None if it can."""
    if uri not in _DOWN:
        problem = _probe(uri)
        if problem:
            turn_off(uri, problem)
    return _DOWN.get(uri)


def _probe(uri: str) -> str | None:
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            with socket.create_connection((parsed.hostname, port), timeout=PROBE_TIMEOUT_S):
                return None
        except OSError as exc:
            why = f"no answer within {PROBE_TIMEOUT_S:g} s" if isinstance(exc, TimeoutError) else exc.strerror or exc
            return f"tracking server {parsed.hostname}:{port} unreachable ({why})"
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///").split("?")[0])
        if db.exists() and not os.access(db, os.W_OK):
            return f"{db}: the tracking database is read-only"
        if db.parent.is_dir() and not os.access(db.parent, os.W_OK | os.X_OK):
            return f"{db.parent}: folder not writable (SQLite writes its journal beside {db.name})"
    return None


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def git_commit() -> str:
    return _git("rev-parse", "HEAD") or "unknown"


def source_tags() -> dict[str, str]:
    """The tags MLflow's UI reads for a run's source (its Source and Version columns): the
    commit and branch, plus whether the tree had uncommitted changes (then the commit alone
    does not reproduce the run)."""
    commit = git_commit()
    if commit == "unknown":
        return {}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "mlflow.source.git.commit": commit,
        "mlflow.source.git.branch": _git("rev-parse", "--abbrev-ref", "HEAD") or "unknown",
        "pcn.git_dirty": str(bool(status)).lower(),
    }


# The UI opens a model-development experiment on its runs, not on the GenAI overview.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(uri: str, name: str) -> str:
    """The experiment's id, created if missing: in a sqlite store with the proxied artifact
    root ``mlflow-artifacts:/<id>`` (MLflow's own layout under a serving server)."""
    from mlflow.entities import ExperimentTag
    from mlflow.exceptions import MlflowException

    mlf = client(uri)
    exp = mlf.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    tags = [ExperimentTag(k, v) for k, v in EXPERIMENT_TAGS.items()]
    try:
        if artifacts_dir(uri) is None:
            return mlf.create_experiment(name, tags=EXPERIMENT_TAGS)
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        return SqlAlchemyStore(uri, PROXIED_ROOT).create_experiment(name, tags=tags)
    except MlflowException:  # another stage created it first
        return mlf.get_experiment_by_name(name).experiment_id


def start_pipeline_run(uri: str, experiment: str, engine: str, scale: str, tags: dict | None = None) -> str:
    """Create the parent run of one pipeline invocation and return its id."""
    tags = {
        "pcn.kind": "pipeline",
        "pcn.engine": engine,
        "pcn.scale": scale,
        **source_tags(),
        **(tags or {}),
    }
    mlf = client(uri)
    run = mlf.create_run(experiment_id(uri, experiment), run_name=f"pipeline-{engine}-{scale}", tags=tags)
    return run.info.run_id


_STARTED_HERE: list[str] = []  # parent runs this process started (and so must end)


def ensure_pipeline_run(engine: str, params) -> str | None:
    """Start a parent run for this process and the jobs it starts, unless one is already
    named in the environment (``pcn run`` made it).  Failure-safe: None if MLflow fails."""
    if not os.environ.get(PIPELINE_ENV):
        uri = tracking_uri(params.tracking.uri)
        try:
            os.environ[PIPELINE_ENV] = start_pipeline_run(uri, params.tracking.experiment, engine, params.scale)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop a pipeline
            turn_off(uri, one_line(exc))
            return None
        _STARTED_HERE.append(os.environ[PIPELINE_ENV])
    return os.environ[PIPELINE_ENV]


def end_pipeline_run(params, status: str) -> None:
    """End the parent run :func:`ensure_pipeline_run` started here (one started by ``pcn run``
    is ended there), with the headline numbers on it."""
    while _STARTED_HERE:
        finish_pipeline_run(_STARTED_HERE.pop(), tracking_uri(params.tracking.uri), status)


# The numbers a user looks for first, from the stages' metrics files: logged on the parent
# run too, so the runs table shows them as columns without expanding it.
HEADLINE_METRICS = {
    "metrics/eval.json": ("top1", "v2_top1"),
    "metrics/segmentation.json": ("mIoU", "mIoU_ms_flip"),
    "metrics/detection.json": ("bbox_AP", "segm_AP"),
}


def headline_metrics(root: Path = Path(".")) -> dict[str, float]:
    import json

    out: dict[str, float] = {}
    for name, keys in HEADLINE_METRICS.items():
        try:
            record = json.loads((root / name).read_text())
        except (OSError, ValueError):
            continue  # not run (yet), or failed
        out.update({k: float(record[k]) for k in keys if isinstance(record.get(k), (int, float))})
    return out


def finish_pipeline_run(run_id: str, uri: str, status: str) -> None:
    logger = RunLogger(run_id, uri)
    logger.log_metrics(headline_metrics())
    logger.finish(status)


def pipeline_run_id(uri: str, experiment: str, scale: str) -> str:
    """The parent run for a stage: the one named in the environment, else the shared parent
    of its (engine, scale, git commit), created by the first stage that needs it."""
    if os.environ.get(PIPELINE_ENV):
        return os.environ[PIPELINE_ENV]
    engine = "dvc" if os.environ.get("DVC_STAGE") else "manual"  # dvc sets DVC_STAGE for stage commands
    group = f"{engine}/{scale}/{git_commit()}"
    mlf = client(uri)
    exp_id = experiment_id(uri, experiment)
    _LOCK.parent.mkdir(parents=True, exist_ok=True)
    # Stages started at once must not each create a parent: the lock makes one the creator.
    with open(_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = mlf.search_runs(
            [exp_id], f"tags.`pcn.group` = '{group}'", max_results=1, order_by=["attributes.start_time ASC"]
        )
        if found:
            return found[0].info.run_id
        return start_pipeline_run(uri, experiment, engine, scale, {"pcn.group": group})


class RunLogger:
    """Failure-safe logging into one existing MLflow run (rank 0 only: others get a no-op)."""

    def __init__(self, run_id: str | None, uri: str, enabled: bool = True, artifact_uri: str | None = None):
        self.run_id = run_id
        self.uri = uri
        self.enabled = enabled and run_id is not None
        self._client = None
        self._artifact_uri = artifact_uri

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        if not self.enabled or self.uri in _DOWN:
            return
        try:
            if self._client is None:
                self._client = client(self.uri)
            fn(self._client, *args, **kwargs)
        except TrackingOff:
            pass
        except Exception as exc:  # noqa: BLE001 - tracking must never kill a stage
            turn_off(self.uri, f"{what} failed ({one_line(exc)})")

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
            self._call("log_artifact", self._log_artifact, Path(path), artifact_path)

    def _log_artifact(self, client, path: Path, artifact_path: str | None) -> None:
        if self._artifact_uri is None:
            self._artifact_uri = client.get_run(self.run_id).info.artifact_uri
        local = local_artifacts(self._artifact_uri, self.uri)
        if local is None:
            client.log_artifact(self.run_id, str(path), artifact_path)
            return
        # MLflow's client uploads to mlflow-artifacts: URIs through a server only; with the
        # store on disk, copy to where the server will look (the same layout as MLflow's).
        dest = local / (artifact_path or "")
        dest.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, dest / path.name, dirs_exist_ok=True)
        else:
            shutil.copy2(path, dest / path.name)

    def finish(self, status: str = "FINISHED") -> None:
        self._call("set_terminated", lambda c: c.set_terminated(self.run_id, status))


SYSTEM_METRICS_INTERVAL_S = 10.0  # MLflow's default sampling period


@contextlib.contextmanager
def system_metrics(run_id: str | None, uri: str, enabled: bool = True) -> Iterator[None]:
    """MLflow's own system-metrics monitor on a training run while the block runs: CPU,
    memory, disk and network, and GPU utilisation and memory where NVML answers, under
    ``system/`` in the run.  Failure-safe like every tracking call."""
    monitor = None
    if enabled and run_id is not None and uri not in _DOWN:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(
                run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, resume_logging=True, tracking_uri=uri
            )
            monitor.start()
        except Exception as exc:  # noqa: BLE001 - tracking must never kill a stage
            log.warning("MLflow system metrics unavailable (%s)", one_line(exc))
            monitor = None
    try:
        yield
    finally:
        if monitor is not None:
            monitor.finish()
            # MLflow's thread logs only whole periods: a last sample, so a short run has one too
            with contextlib.suppress(Exception):
                monitor.collect_metrics()
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()


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
    stage: str,
    params,
    section_values: dict[str, Any],
    tags: dict[str, str] | None = None,
    instance: str | None = None,
) -> Iterator[RunLogger]:
    """A child run of the pipeline run for one stage, named after its instance
    (``ablation@no_se-0``; the stage's name where it has one instance); ends FAILED if the
    stage raises."""
    uri = tracking_uri(params.tracking.uri)
    logger = RunLogger(None, uri)
    try:
        mlf = client(uri)
        parent = pipeline_run_id(uri, params.tracking.experiment, params.scale)
        run = mlf.create_run(
            experiment_id(uri, params.tracking.experiment),
            run_name=instance or stage,
            tags={
                "mlflow.parentRunId": parent,
                "pcn.kind": "stage",
                "pcn.stage": stage,
                "pcn.instance": instance or stage,
                "pcn.scale": params.scale,
                **source_tags(),
                **(tags or {}),
            },
        )
        logger = RunLogger(run.info.run_id, uri, artifact_uri=run.info.artifact_uri)
        logger.log_params(section_values)
    except TrackingOff:
        pass
    except Exception as exc:  # noqa: BLE001 - tracking must never kill a stage
        turn_off(uri, f"stage {stage} runs untracked ({one_line(exc)})")
    try:
        yield logger
    except BaseException:
        logger.finish("FAILED")
        raise
    logger.finish("FINISHED")
