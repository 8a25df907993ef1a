"""The dense-transfer stages with each pyramid source: ``last`` (the paper's) and ``blocks``.

Runs the segmentation and detection stages' code (``pcn.transfer``) as the DAG would at a
scale, from the DAG's classification checkpoint, once per run spec, each on one thread,
``--jobs`` at a time; every run writes its outputs into a temporary folder, never the DAG's.  A
spec is ``task:features`` with optional ``:key=value,...`` changes to the task's section
(values as YAML), e.g. ``segmentation:last:multiscale_flip_test=true``; the keys ``init``
(pretrained | scratch) and ``seed`` set the run's trunk init and seed instead.  The results file
holds each run's metrics (scores, seconds) and the 1-thread sgemm GFLOP/s measured in the
same run, the figure that carries the times to another machine.

    python benchmarks/bench_dense_features.py --scale demo \\
        --run segmentation:last --run segmentation:blocks --run detection:last --run detection:blocks \\
        --out benchmarks/results_dense_features.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

HEADLINE = ("mIoU", "mIoU_ms_flip", "mAcc", "aAcc", "bbox_AP", "bbox_AP50", "segm_AP")
TIMES = ("train_seconds", "eval_seconds", "seconds")


def parse_spec(spec: str) -> tuple[str, str, dict]:
    task, features, *rest = spec.split(":")
    if task not in ("segmentation", "detection") or features not in ("last", "blocks"):
        raise SystemExit(f"--run {spec!r}: expected segmentation|detection:last|blocks[:key=value,...]")
    changes = {}
    for item in ",".join(rest).split(",") if rest else []:
        key, _, value = item.partition("=")
        changes[key] = yaml.safe_load(value)
    return task, features, changes


def run_one(scale: str, spec: str, work: str) -> dict:
    from pcn.config import load_params
    from pcn.dag.stages import checkpoint_path
    from pcn.steps.transfer import data_root
    from pcn.transfer import TransferJob, detection, segmentation

    task, features, changes = parse_spec(spec)
    init, seed = changes.pop("init", "pretrained"), changes.pop("seed", None)
    p = load_params(scale=scale)
    cfg = p.section(task)
    config = {**cfg.model_dump(), "features": features, **changes}
    if task == "segmentation":
        config["n_classes"] = p.segmentation_classes
    name = spec.replace(":", "_").replace(",", "_").replace("=", "-")
    out = Path(work) / name
    job = TransferJob(
        task=task,
        init=init,
        model=p.model.name,
        model_options=dict(p.model.options),
        config=config,
        data_root=str(data_root(p, task)),
        out_dir=str(out / "results"),
        plots_path=str(out / "loss.csv"),
        checkpoint=checkpoint_path(cfg.backbone) if init == "pretrained" else None,
        seed=p.seed if seed is None else seed,
        threads=1,
        device="cpu",
        num_workers=p.data.num_workers,  # as the stage: the workers draw the augmentations
        stage=name,
        resume=False,
    )
    t0 = time.perf_counter()
    metrics = (segmentation if task == "segmentation" else detection).run(job)
    return {
        "spec": spec,
        "task": task,
        "features": features,
        "init": init,
        "seed": job.seed,
        "changes": changes,
        "iters": config["iters"],
        **{k: metrics[k] for k in HEADLINE + TIMES if metrics.get(k) is not None},
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    from pcn.machine.speed import sgemm_gflops
    from pcn.tracking.runs import git_commit

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="demo")
    ap.add_argument("--run", action="append", required=True, help="task:features[:key=value,...]")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    for spec in args.run:
        parse_spec(spec)
    gflops = sgemm_gflops()
    with tempfile.TemporaryDirectory() as work, ProcessPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(run_one, [args.scale] * len(args.run), args.run, [work] * len(args.run)))
    result = {
        "scale": args.scale,
        "commit": git_commit(),
        "sgemm_1thread_gflops": round(gflops, 1),
        "sgemm_1thread_gflops_after": round(sgemm_gflops(), 1),
        "jobs": args.jobs,
        "runs": runs,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
