"""Tool verbs: the DAG file, the scale switch, the pipeline run, the dry run, the UI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from pcn.config import load_params, raw_params
from pcn.io import write_text
from pcn.stages import dvc_yaml
from pcn.tracking import PIPELINE_ENV, start_pipeline_run, tracking_uri

DVC_FILE = Path("dvc.yaml")


def expected_dvc_yaml(params_path: str) -> str:
    return dvc_yaml(load_params(params_path), raw_params(params_path))


def dag(args) -> int:
    text = expected_dvc_yaml(args.params)
    if args.check:
        if not DVC_FILE.is_file() or DVC_FILE.read_text() != text:
            print("dvc.yaml is stale: it differs from the stage table for the current params.yaml; run `pcn dag`",
                  file=sys.stderr)
            return 1
        print("dvc.yaml is current")
        return 0
    write_text(DVC_FILE, text)
    print(f"wrote {DVC_FILE} ({len(yaml.safe_load(text)['stages'])} stages)")
    return 0


def show_params(args) -> int:
    print(yaml.safe_dump(load_params(args.params).model_dump(exclude={"scales"}), sort_keys=False), end="")
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


def run_pipeline(args) -> int:
    """One pipeline invocation = one MLflow parent run, then the engine runs the DAG."""
    params = load_params(args.params)
    if DVC_FILE.read_text() != expected_dvc_yaml(args.params):
        print("dvc.yaml is stale for this params.yaml; rewriting it (pcn dag)", file=sys.stderr)
        write_text(DVC_FILE, expected_dvc_yaml(args.params))
    uri = tracking_uri(params.tracking.uri)
    run_id = start_pipeline_run(uri, params.tracking.experiment, args.engine, params.scale)
    env = {**os.environ, PIPELINE_ENV: run_id}
    extra = [a for a in args.extra if a != "--"]  # everything `pcn run` did not know goes to the engine
    if args.engine == "snakemake":
        cmd = ["snakemake", "--cores", str(args.cores), *extra]
    else:
        cmd = ["dvc", "repro", *extra]
    print(f"pipeline run {run_id} ({args.engine}, scale {params.scale}): {' '.join(cmd)}", flush=True)
    rc = subprocess.call(cmd, env=env)
    from pcn.tracking import RunLogger

    RunLogger(run_id, uri).finish("FINISHED" if rc == 0 else "FAILED")
    return rc


def dryrun(args) -> int:
    """The pretraining job in detail, then every training-like job of the DAG and the total cost."""
    from pcn.stages import build_stages
    from pcn.steps.transfer import single_process
    from pcn.train.dryrun import ASSUMED_IMAGES_PER_GPU_S, dry_run, plan
    from pcn.train.launch import slurm_parameters

    params = load_params(args.params)
    print(dry_run(params))
    configs = {"pretrain": params.pretrain, "finetune": params.finetune}
    rows, total = [], 0.0
    for stage in build_stages(params):
        if not stage.gpu:
            continue
        for wc in stage.instances():
            name = stage.instance_name(wc)
            if stage.topic == "transfer":
                cfg = params.section(stage.name.split("_")[0])
                # dense transfer runs one process (no DDP): one GPU, iteration-based schedule
                hours = cfg.iters * cfg.batch_size / (ASSUMED_IMAGES_PER_GPU_S / 4) / 3600
                sb = slurm_parameters(single_process(params.launcher), name)
                rows.append((name, f"{cfg.iters:,} iterations", cfg.batch_size, cfg.batch_size, cfg.lr, hours, sb))
            else:
                cfg = configs.get(stage.name) or params.experiments.train_for(stage.name)
                p = plan(params, cfg=cfg, name=name)
                rows.append((name, f"{p.epochs} epochs", p.global_batch, p.batch_per_rank, p.lr, p.gpu_hours, p.sbatch))
            total += rows[-1][5]
    print(f"\nevery training-like job of the DAG at scale '{params.scale}' ({len(rows)} jobs; nothing is submitted)")
    print(f"  {'job':34s} {'schedule':>20s} {'batch':>6s} {'/GPU':>5s} {'lr':>8s} {'GPU-h':>8s}  resources")
    for name, sched, batch, per, lr, hours, sb in rows:
        res = f"{sb.get('nodes', 1)} node(s) x {sb.get('gpus_per_node', 0)} GPU, {sb.get('cpus_per_task')} CPU/task, " \
              f"{sb.get('mem')}, {sb.get('time')} min"
        print(f"  {name:34s} {sched:>20s} {batch:>6d} {per:>5d} {lr:>8.2g} {hours:>8.1f}  {res}")
    print(f"  total: about {total:,.0f} GPU-hours (an estimate at an assumed {ASSUMED_IMAGES_PER_GPU_S:g} images/s per GPU)")
    return 0


def ui(args) -> int:
    from pcn.analysis.ui import serve

    return serve(load_params(args.params), port=args.port, wait=not args.no_wait)
