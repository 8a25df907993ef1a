"""`pcn machine`: the sgemm yardstick and the Quickstart's time scaled to this machine."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pcn.machine.speed import expected_minutes, sgemm_gflops

ROOT = Path(__file__).resolve().parents[1]
REF = {"sgemm_1thread_gflops": 150.0, "cores": 2, "minutes": {"demo": 16.0, "study": 64.0}}


def test_expected_minutes_scale_with_the_sgemm_ratio_and_not_below_two_cores():
    assert expected_minutes(REF, 150.0, 2) == {"demo": 16.0, "study": 64.0}
    assert expected_minutes(REF, 75.0, 2) == {"demo": 32.0, "study": 128.0}  # half the speed: twice the time
    assert expected_minutes(REF, 150.0, 1) == {"demo": 32.0, "study": 128.0}  # one core runs one stage at a time
    assert expected_minutes(REF, 150.0, 16) == {"demo": 16.0, "study": 64.0}  # the critical path stays


def test_sgemm_gflops_is_the_median_matmul():
    flop = 2 * 1024**3
    times = [(flop / 100e9, flop / 200e9), (flop / 50e9, flop / 50e9), (flop / 300e9, flop / 300e9)]
    assert sgemm_gflops(times) == pytest.approx(100.0)
    assert sgemm_gflops(times, cpu=True) == pytest.approx(200.0)


def test_pcn_machine_prints_this_machines_figure_and_the_expected_minutes():
    out = subprocess.run(
        [sys.executable, "-m", "pcn.cli", "machine"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    gflops = float(out.split("1-thread sgemm: ")[1].split()[0])
    assert gflops > 1
    ref = json.loads((ROOT / "benchmarks/results_quickstart.json").read_text())
    assert set(ref["minutes"]) >= {"demo", "study"}
    assert "expected here: demo about" in out
