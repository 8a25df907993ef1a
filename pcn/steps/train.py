"""Training stages: pretrain and finetune (the experiments reuse :func:`train_stage`)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from pcn.config import Params, TrainConfig
from pcn.data.splits import data_paths
from pcn.errors import UserError
from pcn.io import write_text
from pcn.steps.common import SUBMITIT_LOGS, StageRun, launcher_kind, outputs, stage
from pcn.tracking.registry import registered_name

PLOT_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "images_per_s")


def num_classes(params: Params) -> int:
    """The number of class folders of the train split, for demo and real data alike."""
    from pcn.data.folders import class_folders

    return len(class_folders(data_paths(params)["train"]))


def train_stage(
    args,
    st: StageRun,
    *,
    cfg: TrainConfig,
    model: str | None = None,
    options: dict[str, Any] | None = None,
    init: str | None = None,
    seed: int | None = None,
    threads: int | None = None,
    extra: dict | None = None,
    loader: str | None = None,
    mlflow_model: bool = False,
    register_as: str | None = None,
) -> dict:
    """Build the job from params, launch it (local or SLURM), write metrics and plots where
    the command says: its model file (in the job's folder), metrics and plots (if any).
    With ``mlflow_model`` the trained model also goes into the stage's MLflow run as an
    MLflow model, registered as a new version of ``register_as`` if given."""
    from pcn.train.job import DataSpec, TrainJob
    from pcn.train.launch import launch

    p = st.params
    paths = data_paths(p, getattr(args, "ffcv", None))
    # model.options belong to the pipeline's model (and its variants), not to other families
    opts = {**(p.model.options if model is None else {}), **(options or {})}
    plots_path = st.plots_path if st.plots else None
    job = TrainJob(
        model=model or p.model.name,
        model_options=opts,
        num_classes=num_classes(p),
        train=cfg,
        data=DataSpec(
            train_beton=str(paths["train_beton"]),
            val_beton=str(paths["val_beton"]),
            train_folder=str(paths["train"]),
            val_folder=str(paths["val"]),
            loader=loader or p.data.loader,
            num_workers=p.data.num_workers,
            crop_ratio=cfg.eval_crop_ratio or p.evaluate.crop_ratio,
        ),
        out_dir=str(Path(st.out).parent),
        seed=p.seed if seed is None else seed,
        threads=threads or p.runtime.threads,
        device=p.runtime.device,
        init_checkpoint=init,
        metrics_path=None,
        stage=st.name,
        mlflow_run_id=st.run.run_id,
        mlflow_uri=st.uri,
    )
    if job.final_path != Path(st.out):  # a job names its model file itself: refuse before hours of training
        raise UserError(f"--out {st.out}: a training job writes <folder>/{job.final_path.name}; name such a file")
    launcher = p.launcher.model_copy(update={"kind": launcher_kind(args, p)})
    result = launch(job, launcher, SUBMITIT_LOGS / st.name)
    # The resume state only serves an interrupted run; once the stage has succeeded a
    # rerun (new code, new params) must train again, not resume at the end.
    job.last_path.unlink(missing_ok=True)
    result = {**(extra or {}), **result}
    history = result.get("history", [])
    if plots_path:
        write_text(plots_path, history_csv(history))
    if mlflow_model:
        result["registered_version"] = _log_trained_model(st, job, register_as)
    st.finish(result, artifacts=(plots_path,) if plots_path else ())
    return result


def _log_trained_model(st: StageRun, job, register_as: str | None) -> int | None:
    from pcn.models.checkpoint import load_checkpoint
    from pcn.tracking.registry import log_model
    from pcn.train.engine import build_model

    model = build_model(job)
    load_checkpoint(model, job.final_path, strict=True)
    # Logged as a state dict with the recipe that rebuilds the model (pcn.tracking.registry):
    # the architecture's options; the training-only ones build_model adds (drop_path_rate,
    # layerscale_init) change no output of the trained model in eval mode.
    return log_model(
        st.run, model, job.train.img_size, arch=job.model, options=dict(job.model_options), register_as=register_as
    )


def history_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PLOT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def pretrain(args) -> int:
    with stage(args, "pretrain", **outputs(args)) as st:
        train_stage(args, st, cfg=st.params.pretrain, mlflow_model=True)
    return 0


def finetune(args) -> int:
    with stage(args, "finetune", **outputs(args)) as st:
        train_stage(
            args,
            st,
            cfg=st.params.finetune,
            init=args.weights,
            mlflow_model=True,
            register_as=registered_name(st.params.scale),
        )
    return 0
