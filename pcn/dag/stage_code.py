"""What code each stage runs, as its dependencies: a stage reruns when a module it runs changes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pcn.dag.stage import Stage

CODE = {
    "data": "pcn/data",
    "models": "pcn/models",
    "train": "pcn/train",
    "eval": "pcn/eval",
    "transfer": "pcn/transfer",
    "analysis": "pcn/analysis",
}


# What every stage runs besides its own modules: the schema, the output helpers, tracking,
# the names and sections a step shares with the stage table.  Not the table: a step reads
# nothing from it (its paths are on its command line).
CORE_CODE = (
    "pcn/config",
    "pcn/io.py",
    "pcn/machine/device.py",
    "pcn/tracking/runs.py",
    "pcn/steps/common.py",
    "pcn/dag/stage.py",
    "pcn/data/splits.py",
)


def code(*parts: str) -> tuple[str, ...]:
    return tuple(CODE[p] for p in parts)


# What a code folder holds that its stages run: modules, and the report's templates.
CODE_SUFFIXES = (".py", ".j2")


def code_files(folder: str) -> tuple[str, ...]:
    """The code of a folder, as files: Snakemake compares files' times, and a folder's
    time does not change when a file in it is edited."""
    return tuple(sorted(str(p) for p in Path(folder).rglob("*") if p.suffix in CODE_SUFFIXES))


def with_code_files(stage: Stage) -> Stage:
    """``stage`` depending on the code it runs, file by file: its step module, the core
    modules, and every module of the code folders it lists."""
    deps: list[str] = []
    for dep in stage.deps:
        deps += code_files(dep) if dep in CODE.values() else [dep]
    core = [f for c in CORE_CODE for f in ((c,) if c.endswith(".py") else code_files(c))]
    extra = tuple(f for f in (*core, stage.step_module) if f not in deps)
    return replace(stage, deps=tuple(deps) + extra)
