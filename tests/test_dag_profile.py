"""benchmarks/dag_profile.py: the work and the critical path of a Snakemake run, from its log."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dag_profile.py"
spec = importlib.util.spec_from_file_location("dag_profile", SCRIPT)
dag_profile = importlib.util.module_from_spec(spec)
sys.modules["dag_profile"] = dag_profile
spec.loader.exec_module(dag_profile)


def _job(t0: str, rule: str, jobid: int, inputs: str, outputs: str, wildcards: str = "") -> str:
    extra = f"    wildcards: {wildcards}\n" if wildcards else ""
    return (
        f"[Mon Nov 30 {t0} 2026]\nlocalrule {rule}:\n    input: {inputs}\n    output: {outputs}\n"
        f"    log: logs/{rule}.log\n    jobid: {jobid}\n{extra}    resources: tmpdir=/tmp\n"
    )


def _done(t: str, jobid: int, rule: str) -> str:
    return f"[Mon Nov 30 {t} 2026]\nFinished jobid: {jobid} (Rule: {rule})\n"


# data (10 s) -> train (100 s) -> report (5 s); a side job of 60 s reads a file inside data's
# output folder; the side job is longer than data but not on the longest chain.
LOG = (
    _job("10:00:00", "data", 1, "pcn/data.py", "data/demo")
    + _done("10:00:10", 1, "data")
    + _job("10:00:10", "train", 2, "data/demo, pcn/train.py", "results/train, metrics/train.json")
    + _job("10:00:10", "side", 3, "data/demo/val/x.jpg", "metrics/side.json", wildcards="seed=0")
    + _done("10:01:10", 3, "side")
    + _done("10:01:50", 2, "train")
    + _job("10:01:50", "report", 4, "metrics/train.json, metrics/side.json", "reports/report.md")
    + _done("10:01:55", 4, "report")
)


def test_the_critical_path_follows_the_longest_dependent_chain():
    jobs = dag_profile.parse_log(LOG)
    assert [j.name for j in jobs] == ["data", "train", "side seed=0", "report"]
    p = dag_profile.profile(jobs, cores=2)
    assert [c["job"] for c in p["critical_path"]] == ["data", "train", "report"]
    assert p["critical_path_s"] == 115 and p["wall_s"] == 115
    assert p["work_core_s"] == 175 and p["work_bound_s"] == 87.5
    assert p["by_rule"]["train"]["critical_s"] == 100 and p["by_rule"]["side"]["critical_s"] == 0


def test_a_file_inside_a_folder_output_depends_on_its_writer():
    jobs = dag_profile.parse_log(LOG)
    deps = dag_profile.dependencies(jobs)
    assert deps[2] == [0]  # side reads data/demo/val/x.jpg, which data's folder output holds
    assert sorted(deps[3]) == [1, 2]


def test_cli_writes_json(tmp_path):
    log = tmp_path / "run.snakemake.log"
    log.write_text(LOG)
    out = tmp_path / "p.json"
    r = subprocess.run([sys.executable, str(SCRIPT), str(log), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "critical path 1.9 min" in r.stdout
    assert json.loads(out.read_text())["critical_path_s"] == 115
    empty = tmp_path / "empty.log"
    empty.write_text("Building DAG of jobs...\n")
    r = subprocess.run([sys.executable, str(SCRIPT), str(empty)], capture_output=True, text=True)
    assert r.returncode != 0 and "no finished job" in r.stderr
