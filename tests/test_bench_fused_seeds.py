"""benchmarks/bench_fused_seeds.py: the fused (vmapped) seeds compute what the separate runs do."""

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_fused_seeds.py"


def test_fused_seeds_give_the_separate_runs_losses(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_fused_seeds", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_fused_seeds"] = bench
    spec.loader.exec_module(bench)
    out = tmp_path / "fused.json"
    r = bench.main(["--seeds", "2", "--batch-size", "4", "--steps", "1", "--rounds", "1", "--out", str(out)])
    assert r["max_loss_difference_at_init"] < 1e-4  # the same weights and batches: the same losses
    assert r["speedup_fused"] > 0 and r["sgemm_1thread_gflops"] > 1
    assert len(json.loads(out.read_text())) == 1
