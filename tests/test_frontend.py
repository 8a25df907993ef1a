"""One front end at a time: a second one is refused in one line naming the first, and a
dead one's lock is taken over."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import stage_argv

ROOT = Path(__file__).resolve().parents[1]

HOLD = """
import sys, time
from pcn.dag.frontend import acquire
acquire("snakemake")
print("held", flush=True)
time.sleep(600)
"""

PROBE = """
include: "{workflow}"


rule probe:
    output:
        "probe.txt",
    shell:
        "echo ran > {{output}}"
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PCN_", "MLFLOW_", "DVC_"))}
    return {**env, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}


@pytest.fixture
def project(tmp_path):
    for name in ("params.yaml", "dvc.yaml"):  # a DVC project: its stages refuse a stale dvc.yaml
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


@pytest.fixture
def holder(project):
    """A live front end (as Snakemake's onstart would) holding the project's lock."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD], cwd=project, env=_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def _refusal(cp: subprocess.CompletedProcess, holder) -> str:
    lines = [line for line in cp.stderr.splitlines() if "another front end" in line]
    assert cp.returncode != 0 and len(lines) == 1, cp.stderr[-3000:]
    assert f"snakemake (pid {holder.pid} on " in lines[0] and ", since 20" in lines[0], lines[0]
    return lines[0]


def test_a_dvc_stage_is_refused_while_snakemake_runs_and_writes_nothing(project, holder):
    """A bare `dvc repro` runs each stage's command with DVC_STAGE set."""
    (project / "metrics").mkdir()
    (project / "metrics" / "complexity.json").write_text("snakemake's")
    env = {**_env(), "DVC_STAGE": "complexity"}
    cmd = [sys.executable, "-m", "pcn.cli", *stage_argv("complexity", project / "params.yaml")]
    cp = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert _refusal(cp, holder).startswith("pcn complexity: error: .pcn/frontend.lock: another front end runs")
    assert cp.returncode == 2 and (project / "metrics" / "complexity.json").read_text() == "snakemake's"
    assert not (project / "mlflow.db").exists(), "a refused stage started an MLflow run"


@pytest.mark.parametrize("front_end", ["snakemake", "pcn run"])
def test_a_second_front_end_is_refused_before_any_job(project, holder, front_end):
    (project / "probe.smk").write_text(PROBE.format(workflow=ROOT / "workflow" / "Snakefile"))
    smk = ["-s", "probe.smk", "probe"]
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", *smk]
    if front_end == "pcn run":
        cmd = [sys.executable, "-m", "pcn.cli", "run", *smk]
    cp = subprocess.run(cmd, cwd=project, env=_env(), capture_output=True, text=True, timeout=300)
    _refusal(cp, holder)
    assert not (project / "probe.txt").exists()


def test_a_dead_front_ends_lock_is_taken_over_with_a_message(project, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    time.sleep(0.1)
    code = "from pcn.dag.frontend import acquire, release; assert acquire('snakemake'); release()"
    cp = subprocess.run([sys.executable, "-c", code], cwd=project, env=_env(), capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr
    assert f"snakemake: taking over .pcn/frontend.lock from snakemake (pid {holder.pid} on " in cp.stdout
    assert "no longer running" in cp.stdout
    assert (project / ".pcn" / "frontend.lock").read_text() == "", "a clean release leaves nothing to take over"
