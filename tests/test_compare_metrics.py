"""scripts/compare_metrics.py: a refactor's proof that no computed number moved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_metrics.py"


def _run(tmp_path: Path, first: dict, second: dict) -> subprocess.CompletedProcess:
    for name, doc in (("a", first), ("b", second)):
        (tmp_path / name / "ablations").mkdir(parents=True)
        (tmp_path / name / "ablations" / "x-s0.json").write_text(json.dumps(doc))
    return subprocess.run([sys.executable, str(SCRIPT), tmp_path / "a", tmp_path / "b"], capture_output=True, text=True)


def test_measured_values_may_differ(tmp_path):
    first = {"top1": 81.2, "train_time_s": 10.0, "machine": {"cpu": "Xeon"}, "history": [{"images_per_s": 1}]}
    second = {"top1": 81.2, "train_time_s": 12.5, "machine": {"cpu": "EPYC"}, "history": [{"images_per_s": 2}]}
    cp = _run(tmp_path, first, second)
    assert cp.returncode == 0 and "0 differences" in cp.stdout, cp.stdout


def test_a_computed_number_that_moved_is_named(tmp_path):
    cp = _run(
        tmp_path, {"top1": 81.2, "history": [{"val_top1": 50.0}]}, {"top1": 81.2, "history": [{"val_top1": 50.1}]}
    )
    assert cp.returncode == 1 and "1 differences" in cp.stdout
    assert "ablations/x-s0.json.history[0].val_top1: 50.0 vs 50.1" in cp.stdout
