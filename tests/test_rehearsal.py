"""The paper-scale rehearsal: its params keep the paper's protocols, its data checks, and
(slow) the whole paper DAG on miniature copies of the real datasets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pcn.config import raw_params, resolve
from pcn.dag.rehearsal import CAPS_FILE, check_data_root, rehearsal_params
from pcn.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _params(tmp_path: Path, **kw):
    caps = yaml.safe_load((ROOT / CAPS_FILE).read_text())
    raw = rehearsal_params(
        raw_params(ROOT / "params.yaml"), caps, tmp_path, slurm=kw.get("slurm", False), quick=kw.get("quick", False)
    )
    return raw, resolve(raw)


def test_rehearsal_keeps_the_paper_protocols_and_caps_only_steps(tmp_path):
    raw, p = _params(tmp_path)
    paper = resolve({**raw_params(ROOT / "params.yaml"), "scale": "paper"})
    assert p.scale == "paper" and p.data.source == "real" and p.data.root == str(tmp_path.resolve())
    # what the paper scale specifies, unchanged
    for key in (
        "model.name",
        "pretrain.img_size",
        "pretrain.lr",
        "pretrain.lr_base_batch",
        "pretrain.aug",
        "pretrain.precision",  # fp16: the two steps run its autocast and loss scaler
        "finetune.precision",
        "finetune.img_size",
        "finetune.min_lr",
        "evaluate.img_size",
        "evaluate.crop_ratio",
        "segmentation.img_size",
        "segmentation.loss",
        "detection.test_size",
        "detection.max_size",
        "experiments.resnet",
        "experiments.depth_width",
    ):
        assert p.section(key) == paper.section(key), key
    assert p.segmentation_classes == 150
    # what a laptop cannot do, capped
    for cfg in (
        p.pretrain,
        p.finetune,
        *(p.experiments.train_for(s) for s in ("ablation", "resnet_pool", "multiclass", "depth_width")),
        p.experiments.train_for("multiclass", "finetuned"),
    ):
        assert cfg.max_steps is not None and cfg.max_steps <= 2 and cfg.batch_size <= 8
    assert p.runtime.device == "cpu" and p.launcher.kind == "local" and p.experiments.enabled


def test_rehearsal_on_slurm_trains_with_two_ddp_tasks_and_quick_drops_the_grid(tmp_path):
    _, p = _params(tmp_path, slurm=True, quick=True)
    assert p.launcher.kind == "slurm" and p.launcher.tasks == 2 and p.launcher.slurm.gpus_per_node == 0
    assert not p.experiments.enabled and p.segmentation.init == p.detection.init == ["pretrained"]
    for cfg in (p.pretrain, p.finetune):
        assert cfg.batch_size % p.launcher.tasks == 0


def test_every_training_job_of_the_full_rehearsal_on_slurm_passes_the_dry_run(tmp_path):
    """Two DDP tasks split every batch; the dry run refuses an odd per-rank batch under mixup
    (the depth x width grid once had 1 per rank and failed at its first step)."""
    from pcn.dag.dryrun import jobs

    _, p = _params(tmp_path, slurm=True)
    planned = jobs(p, train_images=1000)
    assert {j.name.split("@")[0] for j in planned} >= {"pretrain", "finetune", "ablation", "depth_width"}
    assert all(j.batch_per_gpu >= 1 for j in planned)


def test_a_data_root_without_the_official_folders_is_refused_in_one_line(tmp_path):
    """Every missing dataset at once: one run tells all that is to be fetched."""
    (tmp_path / "imagenet").mkdir()
    with pytest.raises(UserError) as exc:
        check_data_root(tmp_path)
    message = str(exc.value)
    assert "\n" not in message and "3 of 4 datasets" in message, message
    for folder in ("imagenetv2-matched-frequency", "ADEChallengeData2016", "coco"):
        assert f"{tmp_path / folder} (" in message, message
    assert f"{tmp_path / 'imagenet'} (" not in message


def test_rehearse_refuses_a_bad_data_root_before_writing_anything(tmp_path):
    work = tmp_path / "work"
    cp = subprocess.run(
        [str(BIN / "pcn"), "rehearse", "--data-root", str(tmp_path / "nowhere"), "--work", str(work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert cp.returncode == 2
    assert (
        cp.stderr.count("\n") == 1
        and "nowhere/imagenet (imagenet)" in cp.stderr
        and ": missing (4 of 4 datasets" in cp.stderr
    )
    assert not work.exists()


@pytest.mark.slow
def test_quick_rehearsal_runs_every_main_line_stage_on_a_data_root(tmp_path):
    """The CI form: the paper scale's main line and transfer (no grid) on a folder in the
    official layouts given with --data-root (miniatures of another seed than the default),
    through the slurm profile when the test cluster is up, else locally."""
    from pcn.data.demo.miniature import write_miniatures

    data, work = tmp_path / "datasets", tmp_path / "rehearsal"
    write_miniatures(data, seed=1, progress=False)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cp = subprocess.run(
        [str(BIN / "pcn"), "rehearse", "--quick", "--data-root", str(data), "--work", str(work)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-3000:]
    summary = json.loads((work / "metrics" / "rehearsal.json").read_text())
    assert all(c["ok"] for c in summary["checks"].values()), summary["checks"]
    assert summary["data_root"] == str(data) and not (work / "datasets").exists()
    for stage in ("convert", "pretrain", "finetune", "eval", "complexity", "segmentation", "detection", "attention"):
        assert (work / "metrics" / f"{stage}.json").is_file(), stage
    assert (work / "reports" / "report.html").is_file()
    params = resolve(yaml.safe_load((work / "params.yaml").read_text()))
    ev = json.loads((work / "metrics" / "eval.json").read_text())
    assert ev["img_size"] == params.evaluate.img_size == 224 and ev["n_images"] == 1000
    pretrain = json.loads((work / "metrics" / "pretrain.json").read_text())
    assert pretrain["model"] == "patchconvnet_s60" and pretrain["num_classes"] == 1000
    assert pretrain["world_size"] == params.launcher.tasks  # 2-task DDP on the test cluster
    # the data-path pass: 20,000 augmented samples through each training loader of the run
    passed = summary["data_pass"]["loaders"]
    assert {s for x in passed for s in x["stages"]} == {"pretrain", "finetune"}  # quick: no grid
    assert all(x["samples"] >= 20_000 and x["loader"] == "ffcv" for x in passed), passed
