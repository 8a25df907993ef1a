"""Evaluation helpers: model complexity (params, GMACs, throughput, memory)."""

from .complexity import (
    complexity_table,
    count_gmacs,
    count_params,
    measure_throughput,
    prepare_fast,
    write_markdown,
)

__all__ = [
    "complexity_table",
    "count_gmacs",
    "count_params",
    "measure_throughput",
    "prepare_fast",
    "write_markdown",
]
