"""Dense-transfer stages: `pcn segmentation` and `pcn detection`, each `--init pretrained|scratch`.

Outputs per stage (``<task>`` or ``<task>_scratch``), as its command names them: ``--out``
(predictions, checkpoint, qualitative figure), ``--metrics`` and ``--plots`` (step, loss).
The pretrained init reads the trunk from ``--checkpoint FILE``: in the DAG, the
classification model of the stage ``<task>.backbone`` names (pretrain or finetune).

Datasets: ``data.path("ade20k")`` (the ADEChallengeData2016 folder) and
``data.path("coco")`` (the folder with ``{train,val}2017/`` and ``annotations/``), in
the official layouts of docs/datasets.md; segmentation has ``segmentation_classes``
classes (150 for ADE20k).

Launching: the job is a :class:`pcn.transfer.TransferTask` (a submitit
``Checkpointable``), submitted by the same launcher as training (local or SLURM)
with all of its resources: one DDP rank per task (per GPU on SLURM), the global
``batch_size`` split evenly over the ranks.
"""

from __future__ import annotations

from pathlib import Path

from pcn.config.names import TRANSFER_TASKS, transfer_stage
from pcn.dag.stage import stage_sections
from pcn.errors import UserError
from pcn.steps.common import SUBMITIT_LOGS, launcher_kind, outputs, stage


def data_root(params, task: str) -> Path:
    """The dataset folder of ``task``, in its official layout."""
    return params.data.path(TRANSFER_TASKS[task])


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

    name = transfer_stage(task, args.init)
    with stage(args, name, stage_sections(name, task), {"pcn.init": args.init}, **outputs(args)) as st:
        p = st.params
        cfg = p.section(task)
        checkpoint = None
        if args.init == "pretrained":
            if not args.checkpoint:
                raise UserError("--init pretrained: pass --checkpoint FILE, the backbone's weights")
            checkpoint = Path(args.checkpoint)
            if not checkpoint.is_file():
                raise UserError(
                    f"{checkpoint}: backbone checkpoint not found (run `pcn {cfg.backbone}`, or pass --checkpoint)"
                )
        elif args.checkpoint:
            raise UserError("--checkpoint is only used with --init pretrained")
        config = cfg.model_dump()
        if task == "segmentation":
            try:
                config["n_classes"] = p.segmentation_classes
            except ValueError as exc:
                raise UserError(str(exc)) from None
        # Same launcher as training, with all its resources: a submitit job, local or SLURM, DDP over its tasks.
        launcher = p.launcher.model_copy(update={"kind": launcher_kind(args, p)})
        world = launcher.ranks
        if cfg.batch_size % world:
            raise UserError(
                f"{task}.batch_size = {cfg.batch_size} does not split over the launcher's {world} ranks "
                f"(the global batch: a multiple of {world} expected)"
            )
        root = data_root(p, task)
        if not root.is_dir():
            raise UserError(
                f"{root}: dataset folder not found" + (" (run `pcn make-demo`)" if p.data.source == "demo" else "")
            )
        validate_dataset(task, root, config.get("n_classes"))  # bad input fails here, in one line
        job = TransferJob(
            task=task,
            init=args.init,
            model=p.model.name,
            model_options=dict(p.model.options),
            config=config,
            data_root=str(root),
            out_dir=st.out,
            plots_path=st.plots_path,
            checkpoint=str(checkpoint) if checkpoint else None,
            seed=p.seed,
            threads=p.runtime.threads,
            device=p.runtime.device,
            stage=name,
            mlflow_run_id=st.run.run_id,
            mlflow_uri=st.uri,
            num_workers=p.data.num_workers,
        )
        metrics = launch(TransferTask(job), launcher, SUBMITIT_LOGS / name)
        if metrics.get("backbone_weights"):
            w = metrics["backbone_weights"]
            print(
                f"{name}: backbone from {w['source']}: {w['n_used']} tensors used, {w['n_dropped']} dropped "
                f"({', '.join(w['dropped'])})"
            )
        st.finish(metrics, artifacts=(job.plots_path, f"{st.out}/qualitative.png"))
        headline = (
            ("mIoU", "mIoU_ms_flip", "mAcc", "aAcc") if task == "segmentation" else ("bbox_AP", "bbox_AP50", "segm_AP")
        )
        print(
            f"{name}: "
            + ", ".join(f"{k} {metrics[k]:.1f}" for k in headline if metrics.get(k) is not None)
            + f" ({metrics['seconds']:.0f} s on {metrics['ranks']} rank{'s' if metrics['ranks'] > 1 else ''})"
        )
    return 0


def segmentation(args) -> int:
    return _transfer(args, "segmentation")


def detection(args) -> int:
    return _transfer(args, "detection")
