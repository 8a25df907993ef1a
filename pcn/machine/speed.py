"""This machine's speed as one figure anyone can measure, and the Quickstart's time here.

Wall-clock times hold for one machine.  A 1-thread fp32 sgemm (a 1024x1024 matmul),
measured in the same run, turns them into a ratio that carries to another machine: the
benchmarks report both, and `pcn machine` scales the reference times of
``benchmarks/results_quickstart.json`` (measured on one machine, with its sgemm figure)
to this one.  A prediction, not a promise: a training step reaches only a fraction of
sgemm's speed (benchmarks/bench_train_step.py), and that fraction differs between CPUs.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

SGEMM_N = 1024
SGEMM_FLOP = 2 * SGEMM_N**3
REFERENCE = Path("benchmarks/results_quickstart.json")


def sgemm_seconds(reps: int = 3, n: int = SGEMM_N) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each of ``reps`` fp32 n x n matmuls on one thread, after one untimed."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        times = []
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            torch.mm(a, b)
            times.append((time.perf_counter() - t0, time.process_time() - c0))
    finally:
        torch.set_num_threads(threads)
    return times


def sgemm_gflops(times: list[tuple[float, float]] | None = None, cpu: bool = False) -> float:
    """GFLOP/s of the median matmul of ``times`` (``sgemm_seconds``'s; 15 fresh ones when None),
    by wall-clock time or by the process's CPU time (``cpu``), which holds better where other
    work shares the cores."""
    times = times if times is not None else sgemm_seconds(reps=15)
    return SGEMM_FLOP / statistics.median(t[int(cpu)] for t in times) / 1e9


def expected_minutes(reference: dict, gflops: float, cores: int) -> dict[str, float]:
    """The reference runs' minutes scaled to a machine of ``gflops`` and ``cores``.  Each
    stage runs on one thread, two at a time on the reference's 2 cores, and the demo's critical
    path is about as long as its work on 2 cores: more cores do not shorten it, one core
    doubles it."""
    scale = reference["sgemm_1thread_gflops"] / gflops * max(1.0, reference["cores"] / max(cores, 1))
    return {name: minutes * scale for name, minutes in reference["minutes"].items()}


def report(path: Path = REFERENCE) -> str:
    """The lines `pcn machine` prints."""
    import os

    from pcn.machine.device import describe

    gflops = sgemm_gflops()  # imports torch, so describe() names its version
    info = describe()
    cores = len(os.sched_getaffinity(0))  # the cores this process may use
    lines = [
        f"machine: {info['cpu']}, {cores} cores, Python {info['python']}, torch {info.get('torch')}",
        f"1-thread sgemm: {gflops:.1f} GFLOP/s (fp32 {SGEMM_N}x{SGEMM_N}, median of 15)",
    ]
    if not path.is_file():
        return "\n".join(lines)
    ref = json.loads(path.read_text())
    expected = expected_minutes(ref, gflops, cores)
    lines.append(
        f"reference ({path}, {ref['date']}): {ref['cores']} cores at "
        f"{ref['sgemm_1thread_gflops']:.0f} GFLOP/s: "
        + ", ".join(f"{name} {minutes:.0f} min" for name, minutes in ref["minutes"].items())
    )
    if "setup_minutes" in ref:
        lines.append(
            f"set-up on a fresh machine: {ref['setup_minutes']} min there (downloads and unpacking; not scaled)"
        )
    lines.append(
        "expected here: "
        + ", ".join(f"{name} about {minutes:.0f} min" for name, minutes in expected.items())
        + " (scaled by the sgemm ratio; a rough guide)"
    )
    return "\n".join(lines)
