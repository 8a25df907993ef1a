"""Tracking that never loses a run: `pcn track sync` rebuilds MLflow from the workspace's files,
against a real `mlflow server` on localhost; 16 stage processes share one SQLite store."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import stage_argv

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    for var in ("MLFLOW_TRACKING_URI", "PCN_PIPELINE_RUN_ID", "DVC_STAGE"):
        monkeypatch.delenv(var, raising=False)
    # an unreachable server is told at once, not after MLflow's minutes of retries
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _point_at(project: Path, uri: str) -> None:
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["tracking"]["uri"] = uri
    (project / "params.yaml").write_text(yaml.safe_dump(raw))


def _run_stage(name: str, metrics: dict, **wildcards) -> str | None:
    """A stage's record as its step writes it (pcn.steps.common): its plots curve, its model,
    its metrics file, mirrored to MLflow by StageRun.finish."""
    from pcn.cli import build_parser
    from pcn.steps.common import outputs, stage

    args = build_parser().parse_args(stage_argv(name, **wildcards))
    with stage(args, name, wildcards=wildcards, **outputs(args)) as st:
        for out in st.outs:
            if out.endswith(".pth"):
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                Path(out).write_bytes(os.urandom(64))
        for plots in st.plots:
            Path(plots).parent.mkdir(parents=True, exist_ok=True)
            Path(plots).write_text("epoch,train_loss,val_top1\n0,2.0,0.1\n1,1.5,0.3\n2,1.2,0.4\n")
        st.finish(metrics, artifacts=st.plots)
        return st.run.run_id


def _run_report() -> None:
    from pcn.cli import build_parser
    from pcn.steps.common import stage

    args = build_parser().parse_args(stage_argv("report"))
    with stage(args, "report", outs=tuple(args.out)) as st:
        for out in st.outs:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(f"the report, {out}")


def _sync() -> str:
    from pcn.cli import main

    assert main(["track", "sync"]) == 0


def _stage_runs(uri: str) -> dict[str, object]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("patchconvnet")
    runs = client.search_runs([exp.experiment_id], "tags.`pcn.kind` = 'stage'") if exp else []
    return {r.data.tags.get("pcn.instance", r.data.tags["pcn.stage"]): r for r in runs}


def test_sync_rebuilds_runs_from_the_files_against_a_real_server(project, capsys, caplog):
    import mlflow

    from pcn.analysis import ui
    from pcn.tracking import runs as tracking

    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    _point_at(project, uri)
    # the server is down: the stage runs untracked and keeps its metrics
    assert _run_stage("convert", {"images": 1234, "seconds": 5.5}) is None
    assert [r.message for r in caplog.records if "MLflow tracking off" in r.getMessage()], caplog.text
    assert yaml.safe_load(Path("metrics/convert.json").read_text())["images"] == 1234
    # and a sync says in one line that it cannot reach the store
    from pcn.cli import main

    assert main(["track", "sync"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pcn track:")]
    assert len(err) == 1 and f"tracking store {uri} unreachable" in err[0], err
    tracking._DOWN.clear()  # each stage is a process of its own: the next one probes again

    store = project / "server"
    store.mkdir()
    proc = ui.start(f"sqlite:///{store / 'mlflow.db'}", port)
    try:
        tracked = _run_stage("pretrain", {"top1": 0.4, "epochs": 3})
        _run_stage("ablation", {"top1": 0.3}, variant="baseline", seed=0)
        _run_report()  # a stage with no metrics file: its run is found by when it wrote
        assert tracked is not None
        from pcn.config import load_params
        from pcn.dag.stages import build_stages
        from pcn.tracking.sync import summary

        # what `pcn run` prints at its end
        assert (
            summary(load_params(), build_stages(load_params()))
            == "tracking: 1 stage output(s) have no MLflow run; `pcn track sync` adds them"
        )
        _sync()
        out = capsys.readouterr().out
        assert "added 1 stage run(s)" in out, out
        runs = _stage_runs(uri)
        assert runs["convert"].data.metrics["images"] == 1234 and runs["convert"].data.tags["pcn.synced"] == "true"
        assert runs["convert"].data.params  # the stage's params sections
        _sync()
        assert "nothing to add" in capsys.readouterr().out
    finally:
        ui.stop(proc)

    # the store is lost: a fresh server, and sync rebuilds every stage instance
    shutil.rmtree(store)
    store.mkdir()
    proc = ui.start(f"sqlite:///{store / 'mlflow.db'}", port)
    try:
        _sync()
        assert "added 4 stage run(s)" in capsys.readouterr().out
        runs = _stage_runs(uri)
        assert set(runs) == {"convert", "pretrain", "ablation@baseline-0", "report"}
        files = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(runs["report"].info.run_id)}
        assert files == {"report.md", "report.html"}, files
        pre = runs["pretrain"]
        assert pre.data.metrics["top1"] == 0.4
        history = mlflow.MlflowClient(uri).get_metric_history(pre.info.run_id, "val_top1")
        assert [(m.step, m.value) for m in history] == [(0, 0.1), (1, 0.3), (2, 0.4)]
        files = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(pre.info.run_id)}
        assert {"model.pth", "pretrain.json", "pretrain.csv"} <= files, files
        _sync()
        assert "nothing to add" in capsys.readouterr().out
    finally:
        ui.stop(proc)


WRITER = """
import sys, warnings
warnings.simplefilter("always")
from pcn.config import load_params
from pcn.tracking.runs import stage_run
with stage_run(sys.argv[1], load_params("params.yaml"), {"worker": sys.argv[1]}) as run:
    for step in range(20):
        run.log_metrics({"loss": 1.0 / (step + 1), "step_seen": float(step)}, step=step)
print(run.run_id)
"""


@pytest.mark.slow
def test_sixteen_stage_processes_share_one_sqlite_store_and_lose_nothing(project):
    import mlflow

    from pcn.tracking.runs import tracking_uri

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, f"s{i}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for i in range(16)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0 and "UserWarning: MLflow" not in err, err[-2000:]
    client = mlflow.MlflowClient(tracking_uri(None))
    runs = _stage_runs(tracking_uri(None))
    assert set(runs) == {f"s{i}" for i in range(16)}
    for name, run in runs.items():
        assert run.info.status == "FINISHED", name
        for key in ("loss", "step_seen"):
            assert len(client.get_metric_history(run.info.run_id, key)) == 20, (name, key)
