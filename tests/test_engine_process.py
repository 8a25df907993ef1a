"""Stopping `pcn run` stops the engine and every job under it (real Snakemake, a job that
records the signals it receives)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent

JOB = """
import os, signal, sys, time
def stop(signum, frame):
    open("job_signal", "w").write(signal.Signals(signum).name)
    sys.exit(1)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, stop)
open("job_started", "w").write(str(os.getpid()))
time.sleep(300)
"""

SNAKEFILE = f"""
rule train:
    output: "done.txt"
    shell: "{sys.executable} job.py && touch {{output}}"
"""

RUNNER = "import os, sys; from pcn.dag.engine_process import run_engine; sys.exit(run_engine(sys.argv[1:], os.environ))"


def running(pid: int) -> bool:
    """Alive and not a zombie (an exited orphan waits for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_terminating_pcn_run_reaches_the_jobs_of_snakemake(tmp_path):
    (tmp_path / "job.py").write_text(JOB)
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    runner = subprocess.Popen(
        [sys.executable, "-c", RUNNER, "snakemake", "--cores", "1", "--quiet"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "job_started").exists():
        assert time.monotonic() < deadline and runner.poll() is None, runner.stdout.read()
        time.sleep(0.2)
    job_pid = int((tmp_path / "job_started").read_text())

    runner.send_signal(signal.SIGTERM)  # what a closed session, a scheduler or `kill` sends
    out, _ = runner.communicate(timeout=60)

    assert runner.returncode == 128 + signal.SIGTERM, out
    assert (tmp_path / "job_signal").read_text() == "SIGTERM", "the job never heard of the stop"
    assert not running(job_pid), "the job outlived the pipeline"
    assert not (tmp_path / "done.txt").exists()
