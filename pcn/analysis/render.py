"""The report as Markdown and as one self-contained HTML file, from the templates in
pcn/analysis/templates.  Paragraphs are Markdown (markdown-it turns them into HTML);
table cells are plain text, escaped."""

from __future__ import annotations

import base64
import re
from functools import cache
from pathlib import Path

import jinja2
from markdown_it import MarkdownIt
from markupsafe import Markup

from pcn.analysis.document import Report
from pcn.analysis.sourced import Sourced


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")


def _md_cell(value) -> str:
    # paper values as written (4.0 stays 4.0); Sourced values format themselves
    return str(value).replace("|", "\\|").replace("\n", " ")


@cache
def _env() -> jinja2.Environment:
    # commonmark without raw HTML, links or images: text from metrics files or numbers.yaml can
    # neither inject markup nor point the page at another file (it stays self-contained)
    md = MarkdownIt("commonmark", {"html": False}).disable(["link", "image", "autolink"])
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pcn.analysis", "templates"),
        autoescape=jinja2.select_autoescape(["html.j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(
        markdown=lambda text: Markup(md.render(text)),
        slug=_slug,
        md_cell=_md_cell,
    )
    env.tests["sourced"] = lambda value: isinstance(value, Sourced)
    return env


def to_markdown(report: Report) -> str:
    return _env().get_template("report.md.j2").render(report=report).rstrip() + "\n"


def _embedded(base: Path, figures: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(title, data URI) of the figures whose PNG exists under ``base``."""
    out = []
    for title, path in figures:
        png = base / path
        if png.is_file():
            out.append((title, "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")))
    return out


def to_html(report: Report, base: Path) -> str:
    """One file: CSS inline, figures as base64 PNG data URIs, no links to other files."""
    sections = [(sec, _embedded(base, sec.figures)) for sec in report.sections]
    return _env().get_template("report.html.j2").render(report=report, sections=sections)
