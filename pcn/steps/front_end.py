"""`pcn front-end`: the DAG's first stage, for a bare `dvc repro`.

DVC has no start hook, and it restores a stage from its run cache without running the
stage's command ("Stage 'summarize' is cached - skipping run, checking out outputs"), so
no check of a stage's own could stop a `dvc repro` that writes beside a running Snakemake.
This stage runs at every `dvc repro` (always_changed) before every other (each depends on
its output). Like every stage step under DVC, it takes the front-end lock first (pcn.cli,
pcn.dag.dvc_view.dvc_stage_guard), so it fails in one line while another front end runs,
and DVC stops before it restores anything. Its output never changes after it is written
(the same bytes, the file left alone), so no stage after it reruns because it ran.
"""

from __future__ import annotations

from pathlib import Path

from pcn.io import write_text
from pcn.steps.common import audit_as

MARK = "the front-end check of this project's DAG: every stage depends on it (pcn/steps/front_end.py)\n"


def front_end(args) -> int:
    audit_as("front_end")
    out = Path(args.out)
    if not out.is_file() or out.read_text() != MARK:
        write_text(out, MARK)
    return 0
