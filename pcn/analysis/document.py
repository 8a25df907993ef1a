"""The report as data: sections of paragraphs, tables and figures, before any rendering.

Status of a comparison row (the last-but-two column of the comparison table):

* ``reproduced``: equal to the paper's value at the paper's precision (within half
  a unit of its last printed digit);
* ``within tolerance``: further off, but within the row's tolerance (``tolerances``
  in paper/numbers.yaml, with the reason for each);
* ``differs``: outside the tolerance; for an ablation's direction: the grid's verdict is
  another one than the paper's (pcn.analysis.stats);
* ``inconclusive``: an ablation's direction the grid's seeds can neither confirm nor rule
  out (no difference, and no equivalence within experiments.equivalence_margin); the note
  gives the smallest difference they would detect;
* ``not run at this scale``: this run cannot produce the number (ImageNet accuracy on
  synthetic demo data, a model not in ``complexity.models``, GPU throughput on a CPU);
* ``not comparable``: this run measured it under another protocol than the paper's row
  (another evaluation resolution, ImageNet-21k pretraining, another test protocol), or the
  row does not state its protocol or value; the note says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcn.analysis.sourced import Sourced

REPRODUCED = "reproduced"
WITHIN = "within tolerance"
DIFFERS = "differs"
NOT_RUN = "not run at this scale"
NOT_COMPARABLE = "not comparable"
INCONCLUSIVE = "inconclusive"
STATUSES = (REPRODUCED, WITHIN, DIFFERS, INCONCLUSIVE, NOT_RUN, NOT_COMPARABLE)


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    status_column: int | None = None


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)  # Markdown
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (title, path relative to reports/)
    notes: list[str] = field(default_factory=list)  # Markdown paragraphs after the tables


@dataclass
class Report:
    title: str
    sections: list[Section]
    comparison: Table
    figures_dir: Path

    def status_counts(self) -> dict[str, int]:
        col = self.comparison.status_column
        counts = {s: 0 for s in STATUSES}
        for row in self.comparison.rows:
            counts[str(row[col])] += 1
        return counts

    def sourced_values(self) -> list[tuple[Any, str, str]]:
        """(value, metrics file, json key) of every reproduced or measured value in the report."""
        return [
            (cell.value, cell.file, cell.key)
            for section in self.sections
            for table in section.tables
            for row in table.rows
            for cell in row
            if isinstance(cell, Sourced)
        ]
