"""A waiting stage's load on the SLURM controller: every squeue/scontrol/sacct call it makes,
counted by wrappers first on PATH that log each call and run the real command."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit

from pcn.config import LauncherConfig, SlurmConfig
from pcn.train.launch import SLURM_POLL_S, launch

cloudpickle.register_pickle_by_value(sys.modules[__name__])

JOB_S = 100  # past the first minute by more than a steady-state interval


class Sleeper(submitit.helpers.Checkpointable):
    """A job that only waits: the stage's side is what is measured."""

    stage = "pretrain"
    device = "cpu"

    def __call__(self):
        time.sleep(JOB_S)
        return {"slept_s": JOB_S}


def _wrappers(bin_dir: Path, log: Path) -> None:
    bin_dir.mkdir()
    for name in ("squeue", "scontrol", "sacct"):
        real = shutil.which(name)
        assert real, f"{name} is not installed"
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\necho "$(date +%s.%N) {name} $*" >> "{log}"\nexec "{real}" "$@"\n')
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.slow
@pytest.mark.slurm
def test_a_waiting_stage_asks_slurm_at_most_twice_a_minute_after_its_first(slurm_cluster, tmp_path, monkeypatch):
    log = tmp_path / "calls.log"
    _wrappers(tmp_path / "bin", log)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    launcher = LauncherConfig(kind="slurm", slurm=SlurmConfig(cpus_per_task=1, mem_gb=1, time_min=5))
    t0 = time.time()
    result = launch(Sleeper(), launcher, tmp_path / "logs", echo=lambda line: None)
    waited = time.time() - t0
    assert result == {"slept_s": JOB_S}
    calls = [(float(line.split()[0]) - t0, line.split()[1]) for line in log.read_text().splitlines()]
    times = [t for t, _ in calls]
    steady = [t for t in times if t >= 60]
    print(f"waited {waited:.0f} s; {len(calls)} calls at {[round(t) for t in times]}")
    assert calls, "the stage never asked SLURM about its job"
    # after the first minute: no two calls closer than the steady interval (1 s of process start-up slack)
    assert all(b - a >= SLURM_POLL_S - 1 for a, b in zip(steady, steady[1:])), times
    assert len(steady) <= (waited - 60) / SLURM_POLL_S + 1, times
    # the first minute's doubling delays: a handful of calls, not one every 2 s
    assert len(times) - len(steady) <= 7, times


@pytest.mark.slurm
def test_start_resumes_a_node_drained_after_a_machine_pause_and_says_so(slurm_cluster):
    import re
    import subprocess

    from conftest import _cluster

    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["scontrol", "update", f"NodeName={node}", "State=DRAIN", "Reason=Not responding"], check=True)
    started = _cluster("start", timeout=120)
    assert started.returncode == 0, started.stderr
    assert re.search(rf"node {node} was drain\w* \(reason: Not responding\); resumed it", started.stderr), (
        started.stderr
    )
    assert _cluster("status").returncode == 0


def _answer() -> int:
    return 42


@pytest.mark.slurm
def test_an_admins_hold_fails_the_stage_and_a_users_hold_is_waited_on(slurm_cluster, tmp_path, monkeypatch):
    """A job SLURM holds for an admin (or requeues held after a failed launch) never runs on its
    own: the waiting stage cancels it and fails naming the reason, instead of hanging Snakemake.
    A hold of the user's own is waited on, and the stage's log says how to release it."""
    import subprocess
    import threading

    from pcn.train import launch as launch_mod

    monkeypatch.setattr(launch_mod, "STUCK_GRACE_S", 4.0)
    ex = submitit.SlurmExecutor(folder=tmp_path / "%j")
    ex.update_parameters(time=5, cpus_per_task=1, mem="1GB", additional_parameters={"hold": True})

    held_by_user = ex.submit(_answer)
    lines: list[str] = []

    def release_once_told() -> None:
        deadline = time.time() + 60
        while not any(f"scontrol release {held_by_user.job_id}" in line for line in lines):
            if time.time() > deadline:
                break  # released all the same: the test then fails on the log, not by hanging
            time.sleep(0.2)
        time.sleep(2 * launch_mod.STUCK_GRACE_S)  # longer than an admin's hold is given
        subprocess.run(["scontrol", "release", held_by_user.job_id], check=True)

    releaser = threading.Thread(target=release_once_told, daemon=True)
    releaser.start()
    assert launch_mod.wait(held_by_user, echo=lines.append) == 42
    releaser.join()
    assert any("JobHeldUser" in line for line in lines), lines

    held_by_admin = ex.submit(_answer)
    subprocess.run(["scontrol", "hold", held_by_admin.job_id], check=True)  # root's hold: the admin's
    t0 = time.time()
    with pytest.raises(launch_mod.TrainJobFailed, match=r"reason JobHeldAdmin, which only a SLURM admin"):
        launch_mod.wait(held_by_admin, echo=lines.append)
    assert time.time() - t0 < 30
    state = subprocess.run(
        ["scontrol", "show", "job", "-o", held_by_admin.job_id], capture_output=True, text=True
    ).stdout
    assert "JobState=CANCELLED" in state, state
