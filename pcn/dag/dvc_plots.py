"""An offline page for `dvc plots show`.

DVC's HTML page loads Vega, Vega-Lite and vega-embed from a CDN, so on a cluster node
without internet it is blank.  This writes ``.dvc/plots.html``, a page template with the
three scripts inlined from the copies Snakemake ships for its own reports (one Vega stack
for both front ends), and ``.dvc/config`` names it (``plots.html_template``).  The file is
generated, not committed: ``scripts/setup.sh`` and ``pcn dag`` write it.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from pcn.io import write_text

TEMPLATE = Path(".dvc") / "plots.html"
SCRIPTS = ("vega", "vega-lite", "vega-embed")  # in load order: each needs the one before

# DVC fills {plot_divs} (and {refresh_tag}); without a {scripts} placeholder it adds no CDN tags.
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC plots</title>
    %s
    <style>
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def offline_page() -> str:
    assets = files("snakemake") / "assets" / "data"
    scripts = "\n".join(f"<script>\n{(assets / name / f'{name}.js').read_text()}\n</script>" for name in SCRIPTS)
    return PAGE % scripts


def write_template(root: Path = Path(".")) -> Path:
    """Write the template under ``root`` unless it is there already, unchanged."""
    path = root / TEMPLATE
    text = offline_page()
    if not path.is_file() or path.read_text() != text:
        write_text(path, text)
    return path


if __name__ == "__main__":
    print(f"wrote {write_template()}")
