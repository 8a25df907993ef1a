"""Where a pipeline run's time went: each stage's share of the cores' time, and the critical path.

Reads a Snakemake log (the newest under .snakemake/log/ by default): every job's rule,
wildcards, inputs, outputs, threads, start and end.  A job depends on another when one of
its inputs is, or lies under, one of the other's outputs.  Two bounds on the wall time
follow: the work (core-seconds over the cores) and the critical path (the longest chain of
dependent jobs).  A cut shortens the run only where it shortens the bound that binds.

    python benchmarks/dag_profile.py                          # the newest log, 2 cores
    python benchmarks/dag_profile.py LOG --cores 2 --out profile.json

Times are the log's, to the second, and hold for the machine that ran it; the JSON
records the machine's 1-thread sgemm figure when asked (--sgemm) to make them comparable.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$")
RULE = re.compile(r"^(?:local)?rule (\w+):$")
FIELD = re.compile(r"^\s+(input|output|wildcards|jobid|threads): (.*)$")
FINISHED = re.compile(r"^Finished jobid: (\d+)")


@dataclass
class Job:
    rule: str
    start: datetime
    wildcards: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    threads: int = 1
    end: datetime | None = None

    @property
    def name(self) -> str:
        return f"{self.rule} {self.wildcards}".strip()

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds() if self.end else 0.0


def parse_log(text: str) -> list[Job]:
    """The finished jobs of one Snakemake log."""
    jobs: dict[str, Job] = {}
    stamp = current = None
    for line in text.splitlines():
        if m := STAMP.match(line):
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := RULE.match(line):
            current = Job(m.group(1), stamp)
        elif (m := FIELD.match(line)) and current is not None:
            key, value = m.groups()
            if key == "jobid":
                jobs[value] = current
            elif key == "wildcards":
                current.wildcards = value
            elif key == "threads":
                current.threads = int(value)
            else:
                getattr(current, f"{key}s").extend(v.strip() for v in value.split(","))
        elif m := FINISHED.match(line):
            if m.group(1) in jobs:
                jobs[m.group(1)].end = stamp
    return [j for j in jobs.values() if j.end is not None and j.rule != "all"]


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
    for i in sorted(range(len(jobs)), key=lambda k: jobs[k].start):
        prev = max(deps.get(i, []), key=lambda d: best[d][0], default=None)
        best[i] = (jobs[i].seconds + (best[prev][0] if prev is not None else 0.0), prev)
    node: int | None = max(best, key=lambda k: best[k][0])
    chain = []
    while node is not None:
        chain.append(node)
        node = best[node][1]
    return chain[::-1]


def profile(jobs: list[Job], cores: int) -> dict:
    deps = dependencies(jobs)
    chain = critical_path(jobs, deps)
    work = sum(j.seconds * j.threads for j in jobs)
    wall = (max(j.end for j in jobs) - min(j.start for j in jobs)).total_seconds()
    by_rule: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "core_s": 0.0, "critical_s": 0.0})
    for i, job in enumerate(jobs):
        r = by_rule[job.rule]
        r["jobs"] += 1
        r["core_s"] += job.seconds * job.threads
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
    ap.add_argument("log", nargs="?", help="a Snakemake log (default: the newest in .snakemake/log)")
    ap.add_argument("--cores", type=int, default=2, help="the cores the run had")
    ap.add_argument("--sgemm", action="store_true", help="record this machine's 1-thread sgemm GFLOP/s")
    ap.add_argument("--out", help="write the profile as JSON here")
    args = ap.parse_args(argv)
    log = Path(args.log) if args.log else max(Path(".snakemake/log").glob("*.snakemake.log"), default=None)
    if log is None or not log.is_file():
        sys.exit(f"dag_profile: no Snakemake log at {args.log or '.snakemake/log/'}")
    jobs = parse_log(log.read_text())
    if not jobs:
        sys.exit(f"dag_profile: {log} holds no finished job")
    result = {"log": str(log), **profile(jobs, args.cores)}
    if args.sgemm:
        from pcn.machine_speed import sgemm_gflops

        result["sgemm_1thread_gflops"] = round(sgemm_gflops(), 1)
    print(render(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
