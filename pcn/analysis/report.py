"""The paper-vs-reproduced report (Markdown and one self-contained HTML file).

Every number the report shows as *reproduced* or *measured* is a
:class:`pcn.analysis.sourced.Sourced` value: read from a metrics file at a JSON key,
never typed; ``Report.sourced_values`` lists them all as (value, file, key), which is how
tests check the report against its sources.  Paper values come from
``paper/numbers.yaml`` with their source.  The parts:

* pcn.analysis.comparison: the comparison with the paper, row statuses;
* pcn.analysis.sections: this run's own results, the recipe, figures, machines;
* pcn.analysis.setting: what each comparison ran at (batch, resolution, tokens);
* pcn.analysis.render: Markdown and HTML (templates under pcn/analysis/templates).

The MLflow run that produced each metrics file is looked up in the tracking store (the
latest finished run of the stage that writes it, from the stage table) unless the file
names it itself (``mlflow_run_id``).
"""

from __future__ import annotations

from pathlib import Path

from pcn.analysis.comparison import comparison_table, load_paper
from pcn.analysis.document import Report, Section
from pcn.analysis.paths import RunPaths
from pcn.analysis.sections import figure_section, machines_section, recipe_section, results_sections
from pcn.analysis.sourced import Metrics, RunIndex

TITLE = "PatchConvNet reproduction report"
STATUS_TEXT = (
    "Status: reproduced = equal at the paper's precision; within tolerance = inside the tolerance column; "
    "differs = outside it; not run at this scale = this run cannot produce the number; not comparable = "
    "this run measured it at another resolution, from other pretraining data or with another test protocol than "
    "the paper's row, or the row does not state them (the note says which); inconclusive = a paper direction the "
    "seeds can neither confirm nor rule out (the note gives the smallest difference they would detect)."
)


def build_report(paths: RunPaths, params, paper_path: str | Path | None = None) -> Report:
    """The report of the run at ``paths`` (its metrics, figures, the paper's numbers and
    recipe); ``paper_path``: other paper numbers than the run's."""
    paper = load_paper(Path(paper_path) if paper_path else paths.at("paper"))
    metrics = Metrics(paths)
    runs = RunIndex(params, metrics)
    comp = comparison_table(paper, params, metrics, runs)
    summary = Section(
        "Summary",
        paragraphs=[
            (
                f"Scale **{params.scale}**, data **{params.data.source}**, model **{params.model.name}**, "
                f"seeds {list(params.experiments.seeds)}; MLflow experiment *{params.tracking.experiment}*."
            ),
            (
                "Paper: Touvron et al., *Augmenting Convolutional networks with attention-based aggregation*, "
                "arXiv:2112.13692 (2021)."
            ),
        ],
    )
    figures_dir = paths.at("figures")
    report = Report(
        TITLE,
        [
            summary,
            Section("Paper vs reproduced", tables=[comp], paragraphs=[STATUS_TEXT]),
            recipe_section(paths, params),
            *results_sections(paper, params, metrics, runs),
            figure_section(figures_dir),
            machines_section(paths),
        ],
        comp,
        figures_dir,
    )
    counts = report.status_counts()
    summary.paragraphs.append("Paper numbers: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + ".")
    if params.data.source == "demo":
        summary.paragraphs.append(
            "This run trains on synthetic demo data: the paper's ImageNet, ADE20k and COCO numbers are "
            "'not run at this scale'; params and GMACs of the paper's models come from their architecture and "
            "are compared at any scale. The demo's own results follow the comparison."
        )
    return report


def write_report(report: Report, md: Path, html: Path) -> tuple[Path, Path]:
    """The report as Markdown and as one HTML file (figures embedded)."""
    from pcn.analysis.render import to_html, to_markdown
    from pcn.io import write_text

    md = write_text(md, to_markdown(report))
    page = write_text(html, to_html(report, report.figures_dir.parent))
    return md, page
