"""`pcn ui`: the MLflow UI on the pipeline's tracking store, opened on the runs table.

MLflow 3's UI opens an experiment on its GenAI overview page; the pipeline's runs
(one parent run per pipeline invocation, the stage runs nested under it) are in the
runs table, ``/#/experiments/<id>/runs``, so that is the link printed.  The server
binds to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pcn.tracking import tracking_uri

HOST = "127.0.0.1"
_SERVERS: dict[int, subprocess.Popen] = {}


def experiment_id(uri: str, experiment: str) -> str | None:
    """The experiment's id in the store, or None (no store, or no run logged yet)."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None
    import mlflow

    exp = mlflow.MlflowClient(uri).get_experiment_by_name(experiment)
    return exp.experiment_id if exp else None


def runs_url(port: int, exp_id: str | None) -> str:
    base = f"http://{HOST}:{port}/"
    return f"{base}#/experiments/{exp_id}/runs" if exp_id is not None else base


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
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
    except (urllib.error.URLError, OSError):
        return False


def stop(port: int, timeout_s: float = 15.0) -> bool:
    """End a server started by ``serve(wait=False)`` in this process (and its workers)."""
    proc = _SERVERS.pop(port, None)
    if proc is None:
        return False
    _terminate(proc, timeout_s)
    return True


def _terminate(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group: its workers too
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def serve(params, port: int = 5000, wait: bool = True, timeout_s: float = 180.0) -> int:
    """Start ``mlflow server`` on the pipeline's store, wait until it answers, print the
    runs-table link.  ``wait``: block until Ctrl-C (or SIGTERM) and stop the server;
    otherwise leave it running (``stop(port)`` ends it from this process).  Returns an
    exit code."""
    uri = tracking_uri(params.tracking.uri)
    name = params.tracking.experiment
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        print(f"pcn ui: no tracking store at {uri} yet: run a stage (or `pcn run`) first", file=sys.stderr)
        return 2
    if not _port_free(port):
        print(f"pcn ui: port {port} on {HOST} is in use; pass --port", file=sys.stderr)
        return 2
    exp_id = experiment_id(uri, name)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not _answers(port):
        if proc.poll() is not None:
            tail = (proc.stderr.read() if proc.stderr else "").strip().splitlines()[-5:]
            print(f"pcn ui: mlflow server exited with code {proc.returncode}:\n  " + "\n  ".join(tail), file=sys.stderr)
            return 1
        if time.monotonic() > deadline:
            _terminate(proc)
            print(f"pcn ui: mlflow server did not answer within {timeout_s:.0f} s", file=sys.stderr)
            return 1
        time.sleep(0.5)
    # stderr is a pipe: drain it so a chatty server never blocks on a full buffer
    import threading

    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    url = runs_url(port, exp_id)
    if exp_id is None:
        print(f"MLflow UI: {url}  (no experiment '{name}' in the store yet)")
    else:
        print(f"MLflow UI: {url}")
        print(f"  runs of experiment '{name}': each pipeline run with its stage runs nested under it")
    sys.stdout.flush()
    if not wait:
        _SERVERS[port] = proc
        print(f"  server pid {proc.pid}; stop it with: kill -TERM -{proc.pid}")
        return 0
    previous = signal.getsignal(signal.SIGTERM)

    def _on_term(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, _on_term)
    except ValueError:  # not the main thread
        previous = None
    try:
        print("  (Ctrl-C stops it)", flush=True)
        proc.wait()
        return 0 if proc.returncode == 0 else 1
    except KeyboardInterrupt:
        return 0
    finally:
        _terminate(proc)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
