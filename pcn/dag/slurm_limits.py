"""What each SLURM partition grants a job, and the check that no job of the scale asks more.

A cluster that answers gives its own limits: ``scontrol show partition`` (MaxTime, MaxNodes,
MaxCPUsPerNode, MaxMemPerNode) bounded by its largest node as ``sinfo`` reports it (CPUs,
memory, GPUs in its GRES).  Where none answers (a laptop preparing the paper scale),
``launcher.slurm.limits`` in params.yaml stands in.  ``pcn dryrun`` refuses, before anything
is submitted, a job that asks more than its partition grants, in one line naming the stage.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable

from pcn.config import PartitionLimits
from pcn.dag.stage_resources import Resources
from pcn.errors import UserError

DEFAULT = "default"  # the limits key of jobs that name no partition
QUERY_TIMEOUT_S = 15


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _minutes(text: str) -> int | None:
    """SLURM's [days-]hours:minutes:seconds (or minutes) in minutes; None for UNLIMITED."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        return None
    days, a, b, c = (int(g) if g else 0 for g in m.groups())
    if m.group(3) is None:  # plain minutes
        return days * 1440 + a
    if m.group(4) is None:  # minutes:seconds
        return days * 1440 + a + (b > 0)
    return days * 1440 + a * 60 + b + (c > 0)


def _number(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _smallest(*values: int | None) -> int | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def cluster_limits() -> dict[str, PartitionLimits] | None:
    """The answering cluster's partitions and their limits (the default one also under
    ``default``); None when no cluster answers."""
    text = _run(["scontrol", "show", "partition", "-o"])
    if not text:
        return None
    limits: dict[str, PartitionLimits] = {}
    for line in text.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        name = fields.get("PartitionName")
        if not name:
            continue
        cpus, mem_mb, gpus = _largest_node(name)
        max_mem = _number(fields.get("MaxMemPerNode"))
        limits[name] = PartitionLimits(
            max_time_min=_minutes(fields.get("MaxTime", "")),
            max_nodes=_smallest(_number(fields.get("MaxNodes")), _number(fields.get("TotalNodes"))),
            cpus_per_node=_smallest(_number(fields.get("MaxCPUsPerNode")), cpus),
            mem_gb_per_node=_gb(_smallest(max_mem, mem_mb)),
            gpus_per_node=gpus,
        )
        if fields.get("Default") == "YES":
            limits[DEFAULT] = limits[name]
    return limits


def _gb(mb: int | None) -> int | None:
    return None if mb is None else max(1, mb // 1024)


def _largest_node(partition: str) -> tuple[int | None, int | None, int]:
    """(CPUs, memory MB, GPUs) of the partition's largest node, from sinfo."""
    text = _run(["sinfo", "-h", "-p", partition, "-o", "%c %m %G"]) or ""
    cpus = mem = None
    gpus = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        cpus = max(cpus or 0, _number(parts[0].rstrip("+")) or 0) or cpus
        mem = max(mem or 0, _number(parts[1].rstrip("+")) or 0) or mem
        m = re.search(r"gpu(?::[^:,(]+)?:(\d+)", parts[2])
        gpus = max(gpus, int(m.group(1)) if m else 0)
    return cpus, mem, gpus


def over_limit(name: str, r: Resources, limits: dict[str, PartitionLimits], source: str) -> str | None:
    """One line saying what job ``name`` asks beyond its partition's limits; None when it fits
    (or nothing is known about its partition)."""
    lim = limits.get(r.partition or DEFAULT)
    if lim is None:
        return None
    asks = (
        ("min of wall time", r.time_min, lim.max_time_min),
        ("nodes", r.nodes, lim.max_nodes),
        ("CPUs per node", r.cpus_per_task * r.tasks_per_node, lim.cpus_per_node),
        ("GB of memory per node", r.mem_gb, lim.mem_gb_per_node),
        ("GPUs per node", r.gpus_per_node, lim.gpus_per_node),
    )
    for what, ask, most in asks:
        if most is not None and ask > most:
            return (
                f"stage {name} asks for {ask} {what}; partition {r.partition or '(default)'} "
                f"grants at most {most} ({source})"
            )
    return None


def check_jobs(jobs: Iterable[tuple[str, Resources]], configured: dict[str, PartitionLimits]) -> str:
    """Refuse (:class:`UserError`, one line) the first job over its partition's limits; say
    where the limits came from otherwise."""
    found = cluster_limits() or {}
    for name, r in jobs:
        partition = r.partition or DEFAULT
        source = "the cluster's scontrol/sinfo" if partition in found else "launcher.slurm.limits"
        problem = over_limit(name, r, found if partition in found else configured, source)
        if problem:
            raise UserError(problem)
    if found:
        return f"the cluster's scontrol/sinfo (partitions: {', '.join(sorted(found))})"
    if configured:
        return f"launcher.slurm.limits (partitions: {', '.join(sorted(configured))}); no cluster answers"
    return "none known: no cluster answers and launcher.slurm.limits is empty"
