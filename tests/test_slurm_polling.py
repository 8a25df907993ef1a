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
