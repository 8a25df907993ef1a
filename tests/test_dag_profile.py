"""benchmarks/dag_profile.py: the work and the critical path of a Snakemake run, from the
jobs' benchmark files and the stage table."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dag_profile.py"
spec = importlib.util.spec_from_file_location("dag_profile", SCRIPT)
dag_profile = importlib.util.module_from_spec(spec)
sys.modules["dag_profile"] = dag_profile
spec.loader.exec_module(dag_profile)

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _instance(name, deps, outs, threads=1):
    return {
        "name": name,
        "rule": name.split("@")[0],
        "threads": threads,
        "deps": deps,
        "outs": outs,
        "benchmark": f"logs/benchmarks/{name}.tsv",
    }


# data (10 s) -> train (100 s, 2 threads) -> report (5 s); a side job of 60 s reads a file
# inside data's output folder; it is longer than data but not on the longest chain.
INSTANCES = [
    _instance("data", ["pcn/data.py"], ["data/demo"]),
    _instance("train", ["data/demo", "pcn/train.py"], ["results/train", "metrics/train.json"], threads=2),
    _instance("side@0", ["data/demo/val/x.jpg"], ["metrics/side.json"]),
    _instance("report", ["metrics/train.json", "metrics/side.json"], ["reports/report.md"]),
    _instance("never_ran", ["metrics/train.json"], ["reports/other.md"]),
]
TIMES = {"data": (10, 0, 8.5), "train": (100, 10, 190.0), "side@0": (60, 10, 55.0), "report": (5, 110, 4.0)}


def _write_benchmarks(project: Path) -> None:
    t0 = 1_800_000_000
    for name, (seconds, start, cpu) in TIMES.items():
        path = project / "logs" / "benchmarks" / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(HEADER + f"{seconds}\t0:00:{seconds}\t100\t200\t90\t95\t0\t0\t50\t{cpu}\n")
        os.utime(path, (t0 + start + seconds, t0 + start + seconds))


def test_the_critical_path_follows_the_longest_dependent_chain(tmp_path):
    _write_benchmarks(tmp_path)
    jobs = dag_profile.read_jobs(tmp_path, INSTANCES)
    assert [j.name for j in jobs] == ["data", "train", "side@0", "report"], "a job without a file did not run"
    p = dag_profile.profile(jobs, cores=2)
    assert [c["job"] for c in p["critical_path"]] == ["data", "train", "report"]
    assert p["critical_path_s"] == 115 and p["wall_s"] == 115
    assert p["work_core_s"] == 10 + 200 + 60 + 5 and p["work_bound_s"] == 137.5
    assert p["by_rule"]["train"]["critical_s"] == 100 and p["by_rule"]["side"]["critical_s"] == 0
    assert p["by_rule"]["train"]["cpu_s"] == 190.0


def test_a_file_inside_a_folder_output_depends_on_its_writer(tmp_path):
    _write_benchmarks(tmp_path)
    jobs = dag_profile.read_jobs(tmp_path, INSTANCES)
    deps = dag_profile.dependencies(jobs)
    assert deps[2] == [0]  # side reads data/demo/val/x.jpg, which data's folder output holds
    assert sorted(deps[3]) == [1, 2]


def test_every_stage_instance_has_its_own_benchmark_file():
    root = Path(__file__).resolve().parents[1]
    instances = dag_profile.table_instances(root / "params.yaml")
    files = [i["benchmark"] for i in instances]
    assert len(set(files)) == len(files) and all(f.startswith("logs/benchmarks/") for f in files)
    assert "logs/benchmarks/ablation/baseline/0.tsv" in files


def test_cli_writes_json_and_refuses_a_project_without_benchmarks(tmp_path):
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "params.yaml").write_text((root / "params.yaml").read_text())
    r = subprocess.run([sys.executable, str(SCRIPT), "--project", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode != 0 and "no Snakemake benchmark file" in r.stderr
    bench = tmp_path / "logs" / "benchmarks" / "pretrain.tsv"
    bench.parent.mkdir(parents=True)
    bench.write_text(HEADER + "42.5\t0:00:42\t100\t200\t90\t95\t0\t0\t50\t80.0\n")
    out = tmp_path / "p.json"
    cmd = [sys.executable, str(SCRIPT), "--project", str(tmp_path), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["critical_path"] == [{"job": "pretrain", "s": 42.5}]
