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
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    _write_dvc_yaml(tmp_path)  # a DVC project: its stages refuse a stale dvc.yaml
    return tmp_path


def _write_dvc_yaml(project: Path) -> None:
    """`pcn dag` in the project: a stage's code deps are the code files found there."""
    cmd = [sys.executable, "-m", "pcn.cli", "dag"]
    subprocess.run(cmd, cwd=project, env=_env(), check=True, capture_output=True, timeout=300)


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


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Alive and not a zombie (an exited orphan waits for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


SLOW_PROBE = """
include: "{workflow}"


rule probe:
    output:
        "probe.txt",
    shell:
        "touch started.txt; sleep 8; echo ran > {{output}}"
"""


def test_after_a_sigkill_of_pcn_run_no_engine_runs_while_another_front_end_holds_the_lock(project):
    """SIGKILL runs no handler: the engine must either hold the lock itself or die with its
    parent.  Poll as a second front end would: whenever it gets the lock, no engine runs."""
    (project / "probe.smk").write_text(SLOW_PROBE.format(workflow=ROOT / "workflow" / "Snakefile"))
    cmd = [sys.executable, "-m", "pcn.cli", "run", "-s", "probe.smk", "probe"]
    run = subprocess.Popen(cmd, cwd=project, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (project / "started.txt").exists():
        assert time.monotonic() < deadline and run.poll() is None, "the probe job never started"
        time.sleep(0.2)
    engines = _children(run.pid)
    assert engines, "pcn run started no engine"
    run.send_signal(signal.SIGKILL)
    run.wait()
    code = "from pcn.dag.frontend import acquire, release; acquire('dvc repro'); release()"
    deadline = time.monotonic() + 120
    while True:
        cp = subprocess.run([sys.executable, "-c", code], cwd=project, env=_env(), capture_output=True, text=True)
        if cp.returncode == 0:
            running = [pid for pid in engines if _alive(pid)]
            assert not running, f"the lock was free while the engine {running} still ran"
            break
        assert "another front end runs" in cp.stderr, cp.stderr
        assert time.monotonic() < deadline, "the engine of the killed pcn run never ended"
        time.sleep(0.5)


def test_a_bare_dvc_repro_is_refused_at_its_first_stage_before_anything_else(project, holder):
    """DVC restores a stage from its run cache without running its command: the front-end
    check is the first stage, so a `dvc repro` beside Snakemake stops before any other."""
    dvc = str(Path(sys.executable).with_name("dvc"))
    shutil.copytree(ROOT / "pcn", project / "pcn", ignore=shutil.ignore_patterns("__pycache__"))  # the code deps
    _write_dvc_yaml(project)
    for args in (["git", "init", "-q"], [dvc, "init", "-q", "--force"]):  # `pcn dag` wrote .dvc/plots
        subprocess.run(args, cwd=project, check=True, capture_output=True)
    cp = subprocess.run([dvc, "repro"], cwd=project, env=_env(), capture_output=True, text=True, timeout=600)
    out = cp.stdout + cp.stderr
    assert cp.returncode != 0, out[-3000:]
    assert "Running stage 'front_end'" in out and "another front end runs" in out, out[-3000:]
    ran = [line for line in out.splitlines() if line.startswith("Running stage") or "checking out" in line]
    assert ran == ["Running stage 'front_end':"], ran
    assert not (project / "data").exists() and not (project / ".pcn" / "front_end.txt").exists()


def test_snakemakes_locks_left_by_a_killed_run_do_not_stop_the_next_pcn_run(project):
    """A killed Snakemake leaves .snakemake/locks; the next `pcn run` holds the project's
    lock, so no Snakemake runs, and it removes them instead of failing on them."""
    (project / "probe.smk").write_text(PROBE.format(workflow=ROOT / "workflow" / "Snakefile"))
    locks = project / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text(str(project / "probe.txt") + "\n")
    (locks / "0.output.lock").write_text(str(project / "probe.txt") + "\n")
    cmd = [sys.executable, "-m", "pcn.cli", "run", "-s", "probe.smk", "probe"]
    cp = subprocess.run(cmd, cwd=project, env=_env(), capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stdout[-2000:] + cp.stderr[-2000:]
    assert "removing Snakemake's locks left by a run that was killed" in cp.stdout
    assert (project / "probe.txt").read_text() == "ran\n"
