"""Evaluation helpers: model complexity (params, GMACs, throughput, memory)."""

from .complexity import (
    DEFAULT_MODELS,
    complexity_table,
    count_gmacs,
    count_params,
    measure_throughput,
    prepare_fast,
    write_markdown,
)

__all__ = [
    "DEFAULT_MODELS",
    "complexity_table",
    "count_gmacs",
    "count_params",
    "measure_throughput",
    "prepare_fast",
    "write_markdown",
]
