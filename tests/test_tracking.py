"""MLflow tracking: artifacts that move with the project, and the pipeline's parent run."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def params(monkeypatch):
    """The project's params with the default store, sqlite:///mlflow.db in the working directory."""
    from pcn.config import resolve

    for var in ("MLFLOW_TRACKING_URI", "PCN_PIPELINE_RUN_ID", "DVC_STAGE"):
        monkeypatch.delenv(var, raising=False)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["tracking"]["uri"] = None
    return resolve(raw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stage(params, name: str, artifact: Path) -> str:
    from pcn.tracking.runs import stage_run

    with stage_run(name, params, {}) as run:
        run.log_artifact(artifact, "files")
    return run.run_id


STAGE = """
import sys
from pcn.config import load_params
from pcn.tracking.runs import stage_run
with stage_run(sys.argv[1], load_params("params.yaml"), {}) as run:
    run.log_artifact(sys.argv[2], "files")
print(run.run_id)
"""


def test_a_moved_project_keeps_its_runs_and_artifacts_together(params, tmp_path):
    import mlflow

    from pcn.analysis import ui

    old, new = tmp_path / "project", tmp_path / "moved"
    old.mkdir()
    shutil.copy(ROOT / "params.yaml", old / "params.yaml")

    def stage(cwd: Path, name: str, artifact: str) -> str:
        """A stage process in the project, logging to the default store with no server running."""
        (cwd / artifact).write_text(f"logged by {name} in {cwd.name}")
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PCN_PIPELINE_RUN_ID")}
        cmd = [sys.executable, "-c", STAGE, name, artifact]
        cp = subprocess.run(cmd, cwd=cwd, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
        assert cp.returncode == 0 and "UserWarning" not in cp.stderr, cp.stderr[-3000:]
        return cp.stdout.split()[-1]

    before = stage(old, "evaluate", "before.txt")
    old.rename(new)
    after = stage(new, "report", "after.txt")
    assert not old.exists(), "a run after the move wrote into the project's old folder"

    # the stages wrote with no server; `pcn ui`'s server finds both runs' artifacts
    port = _free_port()
    proc = ui.start(f"sqlite:///{new / 'mlflow.db'}", port)
    try:
        client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        for run_id, name in ((before, "before.txt"), (after, "after.txt")):
            assert str(old) not in client.get_run(run_id).info.artifact_uri
            got = client.download_artifacts(run_id, f"files/{name}", str(tmp_path))
            assert Path(got).read_text() == (new / name).read_text()
    finally:
        ui.stop(proc)
    assert not old.exists()


def _parents(client, exp_id: str, stage: str) -> list[str]:
    runs = client.search_runs([exp_id], f"tags.`pcn.stage` = '{stage}'")
    return [r.data.tags["mlflow.parentRunId"] for r in runs]


def test_without_a_named_parent_stages_share_one_per_engine_scale_and_commit(params, tmp_path, monkeypatch):
    """Plain `dvc repro` has no start hook: its stages (DVC sets DVC_STAGE) find one parent."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    Path("a.txt").write_text("a")
    monkeypatch.setenv("DVC_STAGE", "train")
    _stage(params, "train", Path("a.txt"))
    _stage(params, "train", Path("a.txt"))
    _stage(params.model_copy(update={"scale": "study"}), "train", Path("a.txt"))
    monkeypatch.delenv("DVC_STAGE")
    _stage(params, "train", Path("a.txt"))

    client = mlflow.MlflowClient("sqlite:///mlflow.db")
    exp_id = client.get_experiment_by_name(params.tracking.experiment).experiment_id
    dvc_demo, dvc_demo_again, dvc_study, by_hand = sorted(
        _parents(client, exp_id, "train"), key=lambda p: client.get_run(p).info.start_time
    )
    assert dvc_demo == dvc_demo_again
    assert len({dvc_demo, dvc_study, by_hand}) == 3
    tags = client.get_run(dvc_demo).data.tags
    assert (tags["pcn.kind"], tags["pcn.engine"], tags["pcn.scale"]) == ("pipeline", "dvc", params.scale)


PROBE = """
include: "{workflow}"


rule probes:
    input:
        expand("probe/{{n}}.txt", n=range(2)),


rule probe:
    output:
        "probe/{{n}}.txt",
    shell:
        "{python} -c 'from pcn.config import load_params; from pcn.tracking.runs import stage_run\\n"
        "with stage_run(\\"probe\\", load_params(\\"params.yaml\\"), dict()): pass' "
        "&& echo $PCN_PIPELINE_RUN_ID > {{output}}"
"""


def test_snakemake_names_one_parent_run_in_every_jobs_environment(params, tmp_path):
    """`snakemake` run directly: the Snakefile starts the parent run and the jobs inherit its id."""
    import mlflow

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "probe.smk").write_text(PROBE.format(workflow=ROOT / "workflow" / "Snakefile", python=sys.executable))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def snakemake(*args: str) -> None:
        cmd = [sys.executable, "-m", "snakemake", "-s", "probe.smk", "--cores", "2", *args, "probes"]
        cp = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert cp.returncode == 0, (cp.stdout + cp.stderr)[-3000:]

    snakemake("-n")
    assert not (tmp_path / "mlflow.db").exists(), "a dry run started a pipeline run"
    snakemake()

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name(params.tracking.experiment).experiment_id
    parents = set(_parents(client, exp_id, "probe"))
    named = {(tmp_path / "probe" / f"{n}.txt").read_text().strip() for n in range(2)}
    assert len(parents) == 1 and named == parents
    parent = client.get_run(parents.pop())
    assert parent.data.tags["pcn.engine"] == "snakemake"
    assert parent.info.status == "FINISHED", "the Snakefile ends the parent run it started"


def test_one_process_in_two_projects_tracks_each_into_its_own_store(params, tmp_path, monkeypatch):
    """MLflow caches a store (and its pooled connections) by URI: the default relative URI,
    used from two project folders in one process, must still reach each folder's database."""
    import mlflow

    runs = {}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        Path("x.txt").write_text(name)
        runs[name] = _stage(params, "train", Path("x.txt"))
    for name, run_id in runs.items():
        client = mlflow.MlflowClient(f"sqlite:///{tmp_path / name / 'mlflow.db'}")
        exp_id = client.get_experiment_by_name(params.tracking.experiment).experiment_id
        found = {r.info.run_id for r in client.search_runs([exp_id], "attributes.run_name = 'train'")}
        assert found == {run_id}, f"project {name}'s store holds {found}, expected only {run_id}"


FINISH = """
import time
from pcn.config import load_params
from pcn.steps.common import StageRun
from pcn.tracking.runs import stage_run
params = load_params("params.yaml")
start = time.monotonic()
with stage_run("convert", params, {"data": {"root": "data"}}) as run:
    StageRun("convert", params, run, metrics=("metrics/convert.json",)).finish({"n": 3})
print(time.monotonic() - start)
"""


def _finish_a_stage(cwd: Path, uri: str) -> tuple[subprocess.CompletedProcess, float]:
    """A stage process that writes its metrics and mirrors them to the store at ``uri``; the
    seconds its tracking and metrics took (not its imports, slow on a loaded machine)."""
    shutil.copy(ROOT / "params.yaml", cwd / "params.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PCN_PIPELINE", "DVC_STAGE"))}
    env.update({"PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri})
    cp = subprocess.run([sys.executable, "-c", FINISH], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return cp, float(cp.stdout.split()[-1]) if cp.returncode == 0 else float("inf")


def _mlflow_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "mlflow" in line.lower() or "Traceback" in line]


def test_an_unreachable_server_costs_seconds_and_one_line(tmp_path):
    """A closed port: one short probe, no retries, the metrics still written."""
    cp, seconds = _finish_a_stage(tmp_path, f"http://127.0.0.1:{_free_port()}")
    assert cp.returncode == 0, cp.stderr[-3000:]
    assert seconds < 10, f"an unreachable server cost {seconds:.1f} s"
    lines = _mlflow_lines(cp.stderr)
    assert len(lines) == 1 and "unreachable" in lines[0], cp.stderr[-3000:]
    assert '"n": 3' in (tmp_path / "metrics" / "convert.json").read_text()


def test_a_read_only_store_gives_one_line(tmp_path, small_tmpfs):
    from conftest import remount_read_only

    cp, _ = _finish_a_stage(small_tmpfs, f"sqlite:///{small_tmpfs / 'mlflow.db'}")  # a store with one run
    assert cp.returncode == 0 and (small_tmpfs / "mlflow.db").is_file(), cp.stderr[-3000:]
    remount_read_only(small_tmpfs)
    project = tmp_path / "project"
    project.mkdir()
    cp, _ = _finish_a_stage(project, f"sqlite:///{small_tmpfs / 'mlflow.db'}")
    assert cp.returncode == 0, cp.stderr[-3000:]
    lines = _mlflow_lines(cp.stderr)
    assert len(lines) == 1 and "read-only" in lines[0], cp.stderr[-3000:]
    assert '"n": 3' in (project / "metrics" / "convert.json").read_text()


def test_a_locked_store_gives_one_line(tmp_path):
    """Another process holds the database's write lock for the whole stage."""
    import sqlite3

    cp, _ = _finish_a_stage(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert cp.returncode == 0, cp.stderr[-3000:]
    holder = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        cp, seconds = _finish_a_stage(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert cp.returncode == 0, cp.stderr[-3000:]
    lines = _mlflow_lines(cp.stderr)
    assert len(lines) == 1 and "locked" in lines[0], cp.stderr[-3000:]
    assert seconds < 30, f"a locked store cost {seconds:.1f} s"


def test_stage_runs_carry_mlflows_source_tags_and_their_instance_name(params, tmp_path, monkeypatch):
    """MLflow's UI reads mlflow.source.git.*; each matrix instance is its own run name; the
    experiment opens as a model-development one."""
    from mlflow import MlflowClient

    from pcn.tracking.runs import git_commit, stage_run

    monkeypatch.chdir(ROOT)  # a git checkout: the commit is known
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with stage_run("ablation", params, {}, instance="ablation@no_se-0") as run:
        pass
    client = MlflowClient(uri)
    got = client.get_run(run.run_id)
    tags = got.data.tags
    assert got.info.run_name == "ablation@no_se-0" and tags["pcn.stage"] == "ablation"
    assert tags["mlflow.source.git.commit"] == git_commit() != "unknown"
    assert tags["mlflow.source.git.branch"] and tags["pcn.git_dirty"] in ("true", "false")
    exp = client.get_experiment(got.info.experiment_id)
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    parent = client.get_run(tags["mlflow.parentRunId"])
    assert parent.data.tags["mlflow.source.git.commit"] == tags["mlflow.source.git.commit"]


def test_a_training_run_records_system_metrics(params, tmp_path, monkeypatch):
    """MLflow's system metrics land in the run, also for a run shorter than one sampling period."""
    import time

    from mlflow import MlflowClient

    from pcn.tracking.runs import stage_run, system_metrics

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with stage_run("pretrain", params, {}) as run, system_metrics(run.run_id, uri):
        time.sleep(0.5)
    keys = set(MlflowClient(uri).get_run(run.run_id).data.metrics)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= keys, keys
