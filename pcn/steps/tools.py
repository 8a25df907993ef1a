"""Tool verbs: the DAG file, the scale switch, the pipeline run, the dry run, the UI."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import yaml

from pcn.config import ParamsError, load_params, recipe
from pcn.dag import frontend
from pcn.dag.dvc_view import expected_dvc_yaml
from pcn.dag.engine_process import run_engine
from pcn.dag.stages import build_stages
from pcn.errors import UserError
from pcn.io import write_text
from pcn.tracking.runs import PIPELINE_ENV, finish_pipeline_run, one_line, start_pipeline_run, tracking_uri, turn_off

DVC_FILE = Path("dvc.yaml")


def dag(args) -> int:
    text = expected_dvc_yaml(args.params)
    if args.check:
        if not DVC_FILE.is_file() or DVC_FILE.read_text() != text:
            print(
                "dvc.yaml is stale: it differs from the stage table for the current params.yaml; run `pcn dag`",
                file=sys.stderr,
            )
            return 1
        print("dvc.yaml is current")
        return 0
    write_text(DVC_FILE, text)
    print(f"wrote {DVC_FILE} ({len(yaml.safe_load(text)['stages'])} stages)")
    from pcn.dag.dvc_plots import write_template

    write_template()  # `dvc plots show` renders offline (.dvc/config names it)
    return 0


def show_params(args) -> int:
    """The resolved values of one scale (params.yaml's own, or --scale), whole or one dotted key."""
    params = load_params(args.params, scale=getattr(args, "scale", None))
    doc: object = recipe(params)
    key = getattr(args, "key", None)
    for part in key.split(".") if key else []:
        if not isinstance(doc, dict) or part not in doc:
            raise ParamsError(f"{key}: no such key in the resolved params (see `pcn params`)")
        doc = doc[part]
    print(f"# {args.params} resolved at scale {params.scale}{': ' + key if key else ''}")
    text = yaml.safe_dump(doc, sort_keys=False, width=120)
    print(text.removesuffix("...\n") if not isinstance(doc, (dict, list)) else text, end="")
    return 0


def set_scale(args) -> int:
    path = Path(args.params)
    text = path.read_text()
    new, n = re.subn(r"(?m)^scale:\s*\S+", f"scale: {args.scale}", text, count=1)
    if n == 0:
        new = f"scale: {args.scale}\n" + text
    if new != text:
        write_text(path, new)
    load_params(path)  # validate the result before telling the user it worked
    dvc_text = expected_dvc_yaml(args.params)
    if not DVC_FILE.is_file() or DVC_FILE.read_text() != dvc_text:
        write_text(DVC_FILE, dvc_text)
    print(f"{path}: scale = {args.scale}; dvc.yaml rewritten for it")
    return 0


def _unlock_after_a_killed_run() -> None:
    """Snakemake's own locks left by a killed run make the next one refuse to start.  This
    process holds the front-end lock, and every Snakemake of the project takes it at its
    start, so none runs now: the locks are stale, and go as `snakemake --unlock` would."""
    locks = Path(".snakemake/locks")
    if locks.is_dir() and any(locks.iterdir()):
        print("removing Snakemake's locks left by a run that was killed (.snakemake/locks)", flush=True)
        shutil.rmtree(locks)


def run_pipeline(args) -> int:
    """One pipeline invocation = one MLflow parent run, then the engine runs the DAG."""
    params = load_params(args.params)
    frontend.acquire(f"pcn run --engine {args.engine}")  # refuses while another front end runs
    try:
        if not DVC_FILE.is_file() or DVC_FILE.read_text() != expected_dvc_yaml(args.params):
            print("dvc.yaml is stale for this params.yaml; rewriting it (pcn dag)", file=sys.stderr)
            write_text(DVC_FILE, expected_dvc_yaml(args.params))
        from pcn.dag.preflight import check_datasets

        # a missing dataset is named now, not hours in
        print(check_datasets(params, (s.name for s in build_stages(params))), flush=True)
        uri = tracking_uri(params.tracking.uri)
        try:
            run_id = start_pipeline_run(uri, params.tracking.experiment, args.engine, params.scale)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop a pipeline
            turn_off(uri, one_line(exc))  # each stage probes again and runs untracked
            run_id = None
        env = {**os.environ, **({PIPELINE_ENV: run_id} if run_id else {})}
        # the engine, its jobs' `pcn` and DVC from this environment, activated or not
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        extra = [a for a in args.extra if a != "--"]  # everything `pcn run` did not know goes to the engine
        if args.engine == "snakemake":
            _unlock_after_a_killed_run()
            cmd = ["snakemake", "--cores", str(args.cores), *extra]
        else:
            cmd = ["dvc", "repro", *extra]
        print(f"pipeline run {run_id} ({args.engine}, scale {params.scale}): {' '.join(cmd)}", flush=True)
        rc = run_engine(cmd, env, keep_fds=[fd for fd in (frontend.held_fd(),) if fd is not None])
    finally:
        frontend.release()
    finish_pipeline_run(run_id, uri, "FINISHED" if rc == 0 else "KILLED" if rc > 128 else "FAILED")
    from pcn.tracking.sync import summary

    print(summary(params, build_stages(params)), flush=True)
    return rc


def track(args) -> int:
    """``pcn track sync``: the MLflow run of every stage output that has none (pcn.tracking.sync)."""
    from mlflow.exceptions import MlflowException

    from pcn.tracking.runs import TrackingOff
    from pcn.tracking.sync import sync

    params = load_params(args.params)
    try:
        sync(params, build_stages(params))
    except (MlflowException, OSError, TrackingOff) as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise UserError(
            f"tracking store {tracking_uri(params.tracking.uri)} unreachable ({first[:200]}); "
            "start it (README, paper scale) and sync again"
        ) from None
    return 0


def dryrun(args) -> int:
    """Every training-like job of the DAG with its GPU-hours, the total and the experiment grid's
    share; every job with its resources; refused when one asks more than its partition grants."""
    from pcn.dag.dryrun import dry_run, every_job
    from pcn.dag.slurm_limits import check_jobs

    params = load_params(args.params)
    print(dry_run(params))
    source = check_jobs(((name, r) for name, _, r in every_job(params)), params.launcher.slurm.limits)
    print(f"every job fits its partition's limits; limits from {source}")
    return 0


def ui(args) -> int:
    from pcn.analysis.ui import serve

    return serve(load_params(args.params), port=args.port, wait=not args.no_wait)


def machine(args) -> int:
    from pcn.machine.speed import report

    print(report())
    return 0
