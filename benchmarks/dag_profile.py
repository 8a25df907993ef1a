"""Where a pipeline run's time went: each stage's share of the cores' time, and the critical path.

Reads the files Snakemake's ``benchmark:`` directive wrote for every job (one TSV per stage
instance under logs/benchmarks/, the paths the stage table gives): the job's wall seconds
and CPU seconds.  The stage table gives each instance's threads, inputs and outputs; a job
depends on another when one of its inputs is, or lies under, one of the other's outputs.
Two bounds on the wall time follow: the work (core-seconds over the cores) and the critical
path (the longest chain of dependent jobs).  A cut shortens the run only where it shortens
the bound that binds.

    python benchmarks/dag_profile.py                              # this project, 2 cores
    python benchmarks/dag_profile.py --project DIR --cores 2 --out profile.json

Times hold for the machine that ran the jobs; the JSON records the machine's 1-thread sgemm
figure when asked (--sgemm) to make them comparable.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Job:
    rule: str
    seconds: float  # wall time
    name: str = ""  # the instance, DVC's way (ablation@no_se-0)
    cpu_s: float = 0.0
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    threads: int = 1
    end: float = 0.0  # when the benchmark file was written (epoch seconds)

    @property
    def start(self) -> float:
        return self.end - self.seconds


def read_benchmark(path: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one Snakemake benchmark TSV."""
    with open(path, newline="") as f:
        row = next(csv.DictReader(f, delimiter="\t"))
    cpu = row.get("cpu_time", "")
    return float(row["s"]), float(cpu) if cpu not in ("", "NA", "-") else 0.0


def read_jobs(project: Path, instances: list[dict]) -> list[Job]:
    """The jobs whose benchmark file exists; ``instances``: name, rule, threads, deps, outs and
    benchmark (the file's path) of every stage instance."""
    jobs = []
    for inst in instances:
        path = project / inst["benchmark"]
        if not path.is_file():
            continue  # not run by this Snakemake run (or not yet)
        seconds, cpu_s = read_benchmark(path)
        jobs.append(
            Job(
                inst["rule"],
                seconds,
                name=inst["name"],
                cpu_s=cpu_s,
                inputs=list(inst["deps"]),
                outputs=list(inst["outs"]),
                threads=inst["threads"],
                end=path.stat().st_mtime,
            )
        )
    return jobs


def table_instances(params_path: Path) -> list[dict]:
    """Every stage instance of the stage table, as :func:`read_jobs` takes them."""
    from pcn.config import load_params
    from pcn.dag.stages import build_stages

    out = []
    for stage in build_stages(load_params(params_path)):
        for wc in stage.instances():
            one = stage.instance(wc)
            out.append(
                {
                    "name": stage.instance_name(wc),
                    "rule": stage.name,
                    "threads": stage.threads,
                    "deps": one.deps,
                    "outs": one.all_paths(),
                    "benchmark": stage.benchmark.format(**wc),
                }
            )
    return out


def dependencies(jobs: list[Job]) -> dict[int, list[int]]:
    """For each job (by index), the jobs whose outputs it reads."""
    writer = {out: i for i, job in enumerate(jobs) for out in job.outputs}
    deps: dict[int, list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        for path in job.inputs:
            parts = Path(path).parts
            for n in range(len(parts), 0, -1):  # the file itself, or a folder output above it
                w = writer.get(str(Path(*parts[:n])))
                if w is not None and w != i:
                    deps[i].append(w)
                    break
    return deps


def critical_path(jobs: list[Job], deps: dict[int, list[int]]) -> list[int]:
    """The chain of dependent jobs with the most seconds, first job first."""
    best: dict[int, tuple[float, int | None]] = {}

    def longest(i: int) -> tuple[float, int | None]:
        if i not in best:
            prev = max(deps.get(i, []), key=lambda d: longest(d)[0], default=None)
            best[i] = (jobs[i].seconds + (longest(prev)[0] if prev is not None else 0.0), prev)
        return best[i]

    node: int | None = max(range(len(jobs)), key=lambda k: longest(k)[0])
    chain = []
    while node is not None:
        chain.append(node)
        node = best[node][1]
    return chain[::-1]


def profile(jobs: list[Job], cores: int) -> dict:
    deps = dependencies(jobs)
    chain = critical_path(jobs, deps)
    work = sum(j.seconds * j.threads for j in jobs)
    wall = max(j.end for j in jobs) - min(j.start for j in jobs)
    by_rule: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "core_s": 0.0, "cpu_s": 0.0, "critical_s": 0.0})
    for i, job in enumerate(jobs):
        r = by_rule[job.rule]
        r["jobs"] += 1
        r["core_s"] += job.seconds * job.threads
        r["cpu_s"] += job.cpu_s
        r["critical_s"] += job.seconds if i in chain else 0.0
    for r in by_rule.values():
        r["share_of_work"] = round(r["core_s"] / work, 4) if work else 0.0
    return {
        "wall_s": wall,
        "work_core_s": work,
        "cores": cores,
        "work_bound_s": work / cores,
        "critical_path_s": sum(jobs[i].seconds for i in chain),
        "critical_path": [{"job": jobs[i].name, "s": jobs[i].seconds} for i in chain],
        "by_rule": dict(sorted(by_rule.items(), key=lambda kv: -kv[1]["core_s"])),
    }


def render(p: dict) -> str:
    lines = [
        f"wall {p['wall_s'] / 60:.1f} min; work {p['work_core_s']:.0f} core-s = {p['work_bound_s'] / 60:.1f} min "
        f"on {p['cores']} cores; critical path {p['critical_path_s'] / 60:.1f} min",
        "",
        f"{'rule':24s} {'jobs':>4s} {'core-s':>8s} {'share':>6s} {'on path':>8s}",
    ]
    for rule, r in p["by_rule"].items():
        lines.append(f"{rule:24s} {r['jobs']:4d} {r['core_s']:8.0f} {r['share_of_work']:6.1%} {r['critical_s']:7.0f}s")
    lines += ["", "critical path: " + " -> ".join(f"{c['job']} ({c['s']:.0f} s)" for c in p["critical_path"])]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", default=".", help="the project folder (its params.yaml and logs/benchmarks/)")
    ap.add_argument("--cores", type=int, default=2, help="the cores the run had")
    ap.add_argument("--sgemm", action="store_true", help="record this machine's 1-thread sgemm GFLOP/s")
    ap.add_argument("--out", help="write the profile as JSON here")
    args = ap.parse_args(argv)
    project = Path(args.project)
    jobs = read_jobs(project, table_instances(project / "params.yaml"))
    if not jobs:
        sys.exit(f"dag_profile: no Snakemake benchmark file under {project / 'logs' / 'benchmarks'}")
    result = {"project": str(project), **profile(jobs, args.cores)}
    if args.sgemm:
        from pcn.machine.speed import sgemm_gflops

        result["sgemm_1thread_gflops"] = round(sgemm_gflops(), 1)
    print(render(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
