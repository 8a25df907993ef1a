"""`pcn ui`: ``mlflow server`` on the pipeline's tracking store, opened on the runs table.

The server reads the sqlite store and serves its artifacts from ``mlartifacts/`` beside
it (the stages' proxied ``mlflow-artifacts:`` root, see pcn.tracking.runs), both given as
absolute paths computed now, so it browses a moved project as well.  MLflow 3 opens an
experiment on its GenAI overview page; the pipeline's runs are in the runs table of the
"Model training" view, ``/#/experiments/<id>/runs?workflowType=machine_learning`` (the
UI's own switch between its two views), so that is the link printed.  It binds to
127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from pcn.tracking.runs import artifacts_dir, tracking_uri

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    pass


def experiment_id(uri: str, experiment: str) -> str | None:
    """The experiment's id in the store, or None (no store, or no run logged yet)."""
    if _missing_store(uri):
        return None
    import mlflow

    exp = mlflow.MlflowClient(uri).get_experiment_by_name(experiment)
    return exp.experiment_id if exp else None


def runs_url(port: int, exp_id: str | None) -> str:
    base = f"http://{HOST}:{port}/"
    view = "?workflowType=machine_learning"  # the UI's "Model training" view, not its GenAI one
    return f"{base}#/experiments/{exp_id}/runs{view}" if exp_id is not None else f"{base}#/{view}"


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
    try:
        proc = start(uri, port)
    except ServerError as exc:
        print(f"pcn ui: {exc}", file=sys.stderr)
        return 1
    exp_id = experiment_id(uri, name)
    print(f"MLflow UI: {runs_url(port, exp_id)}")
    if exp_id is None:
        print(f"  no experiment '{name}' in the store yet")
    else:
        print(f"  runs of experiment '{name}': each pipeline run with its stage runs nested under it")
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
