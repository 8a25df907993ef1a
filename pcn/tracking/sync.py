"""`pcn track sync`: MLflow rebuilt from the workspace, which stays the record.

Every stage writes its metrics to ``metrics/*.json`` (or its outputs, for the figures and the
report) whether or not MLflow answered.  A stage output has its MLflow run when the run its
metrics file names is in the store, or when a sync already made one for this very file (the
``pcn.record`` and ``pcn.record_sha`` tags).  For every other one, :func:`sync` creates the run
the stage would have made: its params sections, its metrics (a training curve step by step
from its plots file), its tags, and its files (metrics, plots, figures, report, checkpoint) as
artifacts, under one parent run per sync.  That covers a stage that ran while MLflow was
unreachable and a store that was lost or deleted; a second sync adds nothing.

The stages come from the caller (the DAG's table): tracking sits below the DAG and never imports it.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcn.config import Params, section_values
from pcn.errors import UserError
from pcn.io import read_json
from pcn.tracking.runs import (
    RunLogger,
    experiment_id,
    flatten,
    off_reason,
    source_tags,
    start_pipeline_run,
    tracking_uri,
)
from pcn.tracking.runs import (
    client as mlflow_client,
)

RECORD_TAG = "pcn.record"
SHA_TAG = "pcn.record_sha"


@dataclass(frozen=True)
class Output:
    """One stage instance's output in the workspace: the file that records it, and its stage."""

    instance: str
    stage: Any  # the DAG's Stage record (pcn.dag.stage), its wildcards filled in
    record: Path
    sha: str


def _sha(path: Path) -> str:
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode())
            h.update(f.read_bytes())
        return h.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def outputs(stages: list, root: Path = Path(".")) -> list[Output]:
    """Every instance of ``stages`` (the DAG's table) whose record is in the workspace: its metrics file, or for a stage
    without one (figures, report) its first output."""
    found = []
    for stage in stages:
        if stage.always_changed:
            continue  # the dataset listings: a dependency's fingerprint, not a result; no run
        for wc in stage.instances():
            one = stage.instance(wc)
            record = root / (one.metrics or one.outs)[0]
            if record.exists():
                found.append(Output(stage.instance_name(wc), one, record, _sha(record)))
    return found


def _run_exists(client, run_id: str | None) -> bool:
    if not run_id:
        return False
    try:
        client.get_run(run_id)
        return True
    except Exception:  # noqa: BLE001 - MlflowException (not in this store) or a malformed id
        return False


def _named_run(record: Path) -> str | None:
    if record.suffix != ".json":
        return None
    try:
        return json.loads(record.read_text()).get("mlflow_run_id")
    except (OSError, ValueError, AttributeError):
        return None


def missing(params: Params, stages: list, root: Path = Path(".")) -> list[Output]:
    """The stage outputs that have no MLflow run in the store of ``tracking.uri``."""
    uri = tracking_uri(params.tracking.uri)
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(params.tracking.experiment)
    synced: set[tuple[str, str]] = set()
    if exp is not None:
        for run in client.search_runs([exp.experiment_id], f"tags.`{RECORD_TAG}` != ''", max_results=50_000):
            synced.add((run.data.tags.get(RECORD_TAG, ""), run.data.tags.get(SHA_TAG, "")))
    return [
        o
        for o in outputs(stages, root)
        if (str(o.record.relative_to(root)), o.sha) not in synced
        and not _run_exists(client, _named_run(o.record))
        and not (exp is not None and _run_during(client, exp.experiment_id, o))
    ]


def _run_during(client, exp_id: str, o: Output) -> bool:
    """For a stage without a metrics file (figures, report), which names no run: whether a run
    of the stage was open when its output was written."""
    if o.record.suffix == ".json":
        return False
    written_ms = o.record.stat().st_mtime * 1000
    runs = client.search_runs([exp_id], f"tags.`pcn.stage` = '{o.stage.name}'", max_results=1000)
    before_ms = 2000  # file-system and clock granularity
    # Snakemake touches a job's outputs when it sees the job end, seconds after the stage
    # closed its run (2.2 s for the demo's report on 2 cores)
    after_ms = 30_000
    return any(
        r.info.start_time - before_ms <= written_ms <= (r.info.end_time or float("inf")) + after_ms for r in runs
    )


def _curve(path: Path) -> list[tuple[int, dict[str, float]]]:
    """(step, numeric columns) of each row of a stage's plots CSV (epoch or step first)."""
    rows = []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            values = {}
            for k, v in row.items():
                try:
                    values[k] = float(v)
                except (TypeError, ValueError):
                    continue
            step = int(values.pop("epoch", values.pop("step", i)))
            rows.append((step, values))
    return rows


def _artifacts(stage, root: Path) -> list[Path]:
    """The files a stage's run carries: metrics, plots, figures, reports and checkpoints (its
    single-file outputs; of its folders, those it shows in the report, not data or results)."""
    paths = [*stage.metrics, *stage.plots, *stage.report, *(o for o in stage.outs if Path(o).suffix)]
    return [root / p for p in dict.fromkeys(paths) if (root / p).exists()]


def _create(o: Output, params: Params, uri: str, parent: str, root: Path) -> str:
    client = mlflow_client(uri)
    # the record tags last: a run that failed half-way is not taken for synced, and the next sync redoes it
    record_tags = {RECORD_TAG: str(o.record.relative_to(root)), SHA_TAG: o.sha}
    tags = {
        "mlflow.parentRunId": parent,
        "pcn.kind": "stage",
        "pcn.stage": o.stage.name,
        "pcn.instance": o.instance,
        "pcn.scale": params.scale,
        "pcn.synced": "true",
        **source_tags(),  # the commit of the sync, not of the stage (which the files do not record)
    }
    # the record first: a broken one is named before any run is created (none left RUNNING)
    metrics: dict[str, Any] = read_json(o.record) if o.record.suffix == ".json" else {}
    run = client.create_run(experiment_id(uri, params.tracking.experiment), run_name=o.instance, tags=tags)
    log = RunLogger(run.info.run_id, uri, artifact_uri=run.info.artifact_uri)
    # RunLogger turns a failed call into tracking off for the process (a stage must go on);
    # here it is an error
    log.log_params(section_values(params, o.stage.params))
    if metrics:
        log.log_metrics(
            {k: v for k, v in flatten(metrics).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        )
    for plots in o.stage.plots:
        if (root / plots).exists() and plots.endswith(".csv"):
            for step, values in _curve(root / plots):
                log.log_metrics(values, step=step)
    for path in _artifacts(o.stage, root):
        log.log_artifact(path)
    problem = off_reason(uri)
    if problem:
        client.set_terminated(run.info.run_id, "FAILED")
        raise UserError(f"pcn track sync: {o.instance}: {problem}")
    for k, v in record_tags.items():
        client.set_tag(run.info.run_id, k, v)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def sync(params: Params, stages: list, root: Path = Path("."), echo=print) -> int:
    """Create the missing stage runs; the number created."""
    todo = missing(params, stages, root)
    if not todo:
        echo("pcn track sync: every stage output has its MLflow run; nothing to add")
        return 0
    uri = tracking_uri(params.tracking.uri)
    parent = start_pipeline_run(uri, params.tracking.experiment, "sync", params.scale)
    try:
        for o in todo:
            run_id = _create(o, params, uri, parent, root)
            echo(f"  {o.instance}: run {run_id} from {o.record.relative_to(root)}")
    except BaseException:
        RunLogger(parent, uri).finish("FAILED")  # never left RUNNING
        raise
    RunLogger(parent, uri).finish("FINISHED")
    echo(f"pcn track sync: added {len(todo)} stage run(s) to {uri}")
    return len(todo)


def summary(params: Params, stages: list, root: Path = Path(".")) -> str:
    """One line for the end of a pipeline run: how many runs a sync would add."""
    try:
        n = len(missing(params, stages, root))
    except Exception as exc:  # noqa: BLE001 - a report on tracking must not fail the pipeline
        return f"tracking: MLflow unreachable ({exc.__class__.__name__}); `pcn track sync` adds the runs later"
    if n == 0:
        return "tracking: every stage output has its MLflow run"
    return f"tracking: {n} stage output(s) have no MLflow run; `pcn track sync` adds them"
