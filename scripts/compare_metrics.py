"""Compare two runs' metrics folders key by key, leaving out what is measured, not computed:
speed, memory, time, the machine and MLflow run ids.  A refactor that changes no number
prints "0 differences".

    python scripts/compare_metrics.py RUN_A/metrics RUN_B/metrics
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Key fragments of measured values (and of identities that differ per run by design)
MEASURED = (
    "time", "seconds", "_s", "throughput", "images_per_s", "peak_mem", "mem_method", "machine",
    "mlflow_run_id", "run_id", "host", "rss", "elapsed", "duration", "cpu_", "sgemm", "gflops", "ms_per",
)  # fmt: skip


def measured(key: str) -> bool:
    return any(m in key.lower() for m in MEASURED)


def differences(a, b, where: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if measured(k):
                continue
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'the second' if k not in a else 'the first'}")
            else:
                out += differences(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def main(first: str, second: str) -> int:
    a, b = Path(first), Path(second)
    names_a = sorted(p.relative_to(a) for p in a.rglob("*.json"))
    names_b = sorted(p.relative_to(b) for p in b.rglob("*.json"))
    print(f"{len(names_a)} files in the first, {len(names_b)} in the second; same names: {names_a == names_b}")
    found = []
    for rel in sorted(set(names_a) & set(names_b)):
        found += differences(json.loads((a / rel).read_text()), json.loads((b / rel).read_text()), str(rel))
    print(f"{len(found)} differences outside speed, memory, time, machine and run ids")
    for line in found:
        print(f"  {line}")
    return 1 if found or names_a != names_b else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
