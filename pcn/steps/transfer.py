"""Dense-transfer stages: `pcn segmentation` and `pcn detection`, each `--init pretrained|scratch`.

Outputs per stage (``<task>`` or ``<task>_scratch``): ``results/<stage>/`` (predictions,
checkpoint, qualitative figure), ``metrics/<stage>.json``, ``plots/<stage>.csv``
(step, loss). The pretrained init reads the trunk from the DAG's classification
checkpoint named by ``<task>.backbone`` (``results/pretrain/model.pth`` or
``results/finetune/model.pth``) or ``--checkpoint FILE``.

Launching: the job is a :class:`pcn.transfer.TransferTask` (a submitit
``Checkpointable``), submitted by the same launcher as training (local or SLURM).
"""

from __future__ import annotations

from pathlib import Path

from pcn.cli import UserError
from pcn.steps.common import launcher_kind, stage

DEMO_ROOT = Path("data/demo")


def data_root(params, task: str) -> Path:
    if params.data.source == "demo":
        return DEMO_ROOT / ("ade" if task == "segmentation" else "coco")
    root = params.data.ade20k if task == "segmentation" else params.data.coco
    if not root:
        key = "data.ade20k" if task == "segmentation" else "data.coco"
        raise UserError(f"{key} is not set: the {task} stage needs the dataset's root folder")
    return Path(root)


def single_process(launcher):
    """The launcher of a one-process job: one task, one node, at most one GPU."""
    slurm = launcher.slurm.model_copy(update={"nodes": 1, "gpus_per_node": min(1, launcher.slurm.gpus_per_node)})
    return launcher.model_copy(update={"tasks": 1, "slurm": slurm})


def validate_dataset(task: str, root: Path, n_classes: int | None) -> None:
    """Read every annotation and image once; a bad file raises DatasetError naming it."""
    from pcn.transfer.datasets import AdeSegmentation, CocoInstances

    for split in ("train", "val"):
        if task == "segmentation":
            AdeSegmentation(root, split, n_classes=n_classes, check=True)
        else:
            CocoInstances(root, split, check=True)


def _transfer(args, task: str) -> int:
    from pcn.train.launch import launch
    from pcn.transfer import TransferJob, TransferTask

    suffix = "" if args.init == "pretrained" else f"_{args.init}"
    name = f"{task}{suffix}"
    with stage(args, name, ("scale", "seed", "runtime", "model", task), tags={"pcn.init": args.init}) as st:
        p = st.params
        cfg = p.section(task)
        checkpoint = None
        if args.init == "pretrained":
            checkpoint = Path(args.checkpoint) if getattr(args, "checkpoint", None) else Path(cfg.backbone_checkpoint)
            if not checkpoint.is_file():
                raise UserError(f"{checkpoint}: backbone checkpoint not found "
                                f"(run `pcn {cfg.backbone}`, or pass --checkpoint)")
        elif getattr(args, "checkpoint", None):
            raise UserError("--checkpoint is only used with --init pretrained")
        root = data_root(p, task)
        if not root.is_dir():
            raise UserError(f"{root}: dataset folder not found" + (" (run `pcn make-demo`)" if p.data.source == "demo" else ""))
        validate_dataset(task, root, getattr(cfg, "n_classes", None))  # bad input fails here, in one line
        job = TransferJob(
            task=task, init=args.init, model=p.model.name, model_options=dict(p.model.options),
            config=cfg.model_dump(), data_root=str(root), out_dir=f"results/{name}", plots_path=f"plots/{name}.csv",
            checkpoint=str(checkpoint) if checkpoint else None, seed=p.seed, threads=p.runtime.threads,
            device=p.runtime.device, stage=name, mlflow_run_id=st.run.run_id, mlflow_uri=st.uri,
            num_workers=getattr(cfg, "num_workers", 0))
        # Same launcher as training: a submitit job, local or SLURM (one process: no DDP here).
        launcher = single_process(p.launcher).model_copy(update={"kind": launcher_kind(args, p)})
        metrics = launch(TransferTask(job), launcher, Path("logs/submitit") / name)
        if metrics.get("backbone_weights"):
            w = metrics["backbone_weights"]
            print(f"{name}: backbone from {w['source']}: {w['n_used']} tensors used, {w['n_dropped']} dropped "
                  f"({', '.join(w['dropped'])})")
        st.finish(metrics, f"metrics/{name}.json", artifacts=(job.plots_path, f"results/{name}/qualitative.png"))
        headline = ("mIoU", "mAcc", "aAcc") if task == "segmentation" else ("bbox_AP", "bbox_AP50", "segm_AP")
        print(f"{name}: " + ", ".join(f"{k} {metrics[k]:.1f}" for k in headline if metrics.get(k) is not None)
              + f" ({metrics['seconds']:.0f} s)")
    return 0


def segmentation(args) -> int:
    return _transfer(args, "segmentation")


def detection(args) -> int:
    return _transfer(args, "detection")
