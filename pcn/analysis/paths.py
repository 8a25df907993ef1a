"""Where the analysis finds one run's files: the one path map its functions take, built from
the command line of the stage that runs them (``--metrics metrics --figures reports/figures``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    """The folders and files of one run, relative to ``root`` (a stage runs in the project).

    A metrics file is cited as ``<metrics>/<name>.json`` (``metrics/eval.json``), as the
    stage table declares it, so the report's sources and run lookup name the DAG's files."""

    root: Path
    metrics: str
    plots: str = ""
    results: str = ""
    figures: str = ""
    paper: str = ""  # the paper's numbers
    recipe: str = ""  # the paper's recipe

    @classmethod
    def from_args(cls, args, root: Path = Path(".")) -> RunPaths:
        """The paths a stage's command names (its flags of the same names)."""
        return cls(Path(root), **{f.name: getattr(args, f.name, None) or "" for f in fields(cls) if f.name != "root"})

    def metric(self, name: str) -> str:
        """A metrics file as cited: ``eval`` -> metrics/eval.json, ``released/x`` -> metrics/released/x.json."""
        return f"{self.metrics}/{name}.json"

    def at(self, kind: str, *parts: str) -> Path:
        """A path of one of the run's folders (``at("results", "attention")``) on disk."""
        return self.root.joinpath(getattr(self, kind), *parts)
