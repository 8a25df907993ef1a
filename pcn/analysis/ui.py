"""`pcn ui`: ``mlflow server`` on the pipeline's tracking store, opened on the runs table.

The server reads the sqlite store and serves its artifacts from ``mlartifacts/`` beside
it (the stages' proxied ``mlflow-artifacts:`` root, see pcn.tracking.runs), both given as
absolute paths computed now, so it browses a moved project as well.  It binds to 127.0.0.1
only.

The link printed opens the experiment as a training pipeline is read:

- MLflow 3 has two navigations, "GenAI" (traces, judges, prompts) and "Model training"
  (runs, models); the UI takes the query parameter ``workflowType=machine_learning`` as the
  switch to the second.  Where a link lacks it (a run's page), the UI falls back to the
  browser's own last choice, GenAI until the user picks the other: that part is MLflow's.
- Its runs table nests stage runs under their collapsed pipeline run and shows no metric
  column until one is chosen.  The URL's query sets the sort but not the columns; MLflow's
  shared views set both: an experiment tag ``mlflow.sharedViewState.<key>`` holding the
  table's state as JSON, opened by ``viewStateShareKey=<key>`` (expanded rows are left out
  of a shared view).  `pcn ui` writes the view ``pcn``: the headline metrics
  (pcn.tracking.runs.HEADLINE_METRICS, top1 first) as columns, sorted by top1, best first;
  sorted by a metric, the table lists every run, stage runs included, instead of nesting
  them.  The user may leave it ("Exit shared view") or keep it as their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from pcn.tracking.runs import EXPERIMENT_TAGS, HEADLINE_METRICS, artifacts_dir, one_line, tracking_uri

HOST = "127.0.0.1"
TRAINING_VIEW = "machine_learning"  # workflowType: the UI's "Model training" navigation
VIEW_KEY = "pcn"  # the shared view `pcn ui` writes into the experiment
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow's experiment tag of a shared view
SORT_METRIC = "top1"


class ServerError(RuntimeError):
    pass


def experiment_id(uri: str, experiment: str) -> str | None:
    """The experiment's id in the store, or None (no store, or no run logged yet)."""
    if _missing_store(uri):
        return None
    import mlflow

    exp = mlflow.MlflowClient(uri).get_experiment_by_name(experiment)
    return exp.experiment_id if exp else None


def runs_url(port: int, exp_id: str | None, view: bool = True) -> str:
    """The experiment's runs in the "Model training" navigation; with ``view``, in the
    shared view :func:`save_training_view` wrote."""
    base = f"http://{HOST}:{port}/"
    query = f"?workflowType={TRAINING_VIEW}"
    if exp_id is None:
        return f"{base}#/{query}"
    return f"{base}#/experiments/{exp_id}/runs{query}" + (f"&viewStateShareKey={VIEW_KEY}" if view else "")


def training_view() -> dict:
    """The runs table's state for a training pipeline, as MLflow's shared views hold it:
    search facets (sorted by top1, best first, which lists stage runs flat) and the columns
    shown (the headline metrics, then the models a run logged or registered)."""
    metrics = [SORT_METRIC] + [m for keys in HEADLINE_METRICS.values() for m in keys if m != SORT_METRIC]
    return {
        "searchFilter": "",
        "orderByKey": f"metrics.`{SORT_METRIC}`",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "selectedColumns": [f"metrics.`{m}`" for m in metrics] + ["attributes.`Models`"],
    }


def save_training_view(uri: str, exp_id: str) -> str | None:
    """Write the shared view ``pcn`` (and the experiment's kind, for an experiment created
    before pcn set it) into the experiment; None, or why it could not."""
    import mlflow

    try:
        client = mlflow.MlflowClient(uri)
        client.set_experiment_tag(exp_id, VIEW_TAG_PREFIX + VIEW_KEY, json.dumps(training_view()))
        tags = client.get_experiment(exp_id).tags
        for key, value in EXPERIMENT_TAGS.items():
            if key not in tags:
                client.set_experiment_tag(exp_id, key, value)
    except Exception as exc:  # noqa: BLE001 - a read-only store is still browsable
        return one_line(exc)
    return None


def _missing_store(uri: str) -> bool:
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def server_command(uri: str, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port), "--workers", "1"]
    root = artifacts_dir(uri)
    if root is None:  # another database: its experiments' artifact roots say where artifacts are
        return [*cmd, "--backend-store-uri", uri]
    db = Path(uri.removeprefix("sqlite:///")).resolve()
    return [
        *cmd,
        "--backend-store-uri",
        f"sqlite:///{db}",
        "--serve-artifacts",
        "--artifacts-destination",
        str(root.resolve()),
    ]


def start(uri: str, port: int, timeout_s: float = 180.0) -> subprocess.Popen:
    """Start the server in a session of its own (its workers too) and wait until it answers."""
    # Browsing needs none of the server's GenAI job workers (seven processes, a slow start).
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        server_command(uri, port),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    while not _answers(port):
        if proc.poll() is not None:
            tail = proc.stderr.read().strip().splitlines()[-5:]
            raise ServerError(f"mlflow server exited with code {proc.returncode}:\n  " + "\n  ".join(tail))
        if time.monotonic() > deadline:
            stop(proc)
            raise ServerError(f"mlflow server did not answer within {timeout_s:.0f} s")
        time.sleep(0.5)
    # stderr is a pipe: drain it so a chatty server never blocks on a full buffer
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc


def stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM to the server's session, then wait for all of it to exit (the workers outlive
    the leader by a moment); SIGKILL to whatever is left after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, or the group never empties
            os.killpg(proc.pid, 0)  # raises once no process of the session is left
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def serve(params, port: int = 5000, wait: bool = True) -> int:
    """The verb: start the server, print the runs-table link, and (``wait``) stop the server
    on Ctrl-C or SIGTERM.  Without ``wait`` the server keeps running.  Returns an exit code."""
    uri = tracking_uri(params.tracking.uri)
    name = params.tracking.experiment
    if _missing_store(uri):
        print(f"pcn ui: no tracking store at {uri} yet: run a stage (or `pcn run`) first", file=sys.stderr)
        return 2
    if not _port_free(port):
        print(f"pcn ui: port {port} on {HOST} is in use; pass --port", file=sys.stderr)
        return 2
    exp_id = experiment_id(uri, name)
    problem = save_training_view(uri, exp_id) if exp_id is not None else None
    try:
        proc = start(uri, port)
    except ServerError as exc:
        print(f"pcn ui: {exc}", file=sys.stderr)
        return 1
    print(f"MLflow UI: {runs_url(port, exp_id, view=problem is None)}")
    if exp_id is None:
        print(f"  no experiment '{name}' in the store yet")
    elif problem is None:
        print(
            f"  experiment '{name}': every run, stage runs included, best {SORT_METRIC} first "
            "(sorted by Created, stage runs nest under their pipeline run)"
        )
    else:
        print(f"  runs of experiment '{name}' (its view could not be saved in the store: {problem})")
    if not wait:
        print(f"  server pid {proc.pid}; stop it with: kill -TERM -{proc.pid}", flush=True)
        return 0
    print("  (Ctrl-C stops it)", flush=True)

    def _interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        proc.wait()
        return 0 if proc.returncode == 0 else 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop(proc)
        signal.signal(signal.SIGTERM, previous)
