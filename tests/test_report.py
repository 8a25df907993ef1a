"""The report and the figures, from fixture metrics files: every reproduced value equals its
source, statuses follow the paper's precision and tolerances, accuracies are compared only at
the paper row's resolution, the HTML is self-contained."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_paths

from pcn.analysis import comparison as C
from pcn.analysis import document as D
from pcn.analysis import report as R
from pcn.analysis import sourced as S
from pcn.analysis.figures import build_figures
from pcn.analysis.render import to_markdown
from pcn.config import resolve

ROOT = Path(__file__).resolve().parents[1]


def _write(root: Path, rel: str, obj) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


def write_fixture_run(root: Path, *, evidence: bool = False, imagenet: bool = False, eval_size: int = 224) -> None:
    """Metrics files in the formats the stages write, with values chosen to exercise every status."""
    shutil.copytree(ROOT / "paper", root / "paper", dirs_exist_ok=True)
    history = [{"epoch": e, "step": 10 * e, "train_loss": 2.3 - 0.2 * e, "val_top1": 10.0 + 7 * e} for e in (1, 2, 3)]
    _write(root, "metrics/pretrain.json", {"top1": 31.0, "top5": 80.0, "history": history})
    _write(root, "metrics/finetune.json", {"top1": 33.25, "top5": 81.0, "history": history[:2]})
    for name, rows in (("pretrain", history), ("finetune", history[:2])):
        lines = ["epoch,step,train_loss,val_loss,val_top1,val_top5,lr,images_per_s"]
        lines += [f"{r['epoch']},{r['step']},{r['train_loss']},,{r['val_top1']},,," for r in rows]
        _write(root, f"plots/{name}.csv", "\n".join(lines) + "\n")
    _write(
        root,
        "metrics/eval.json",
        {
            "top1": 82.13 if imagenet else 34.5,
            "top5": 83.0,
            "mlflow_run_id": "run-eval",
            "img_size": eval_size if imagenet else 80,
            "crop_ratio": 0.875,
        },
    )
    _write(root, "metrics/pixel_baseline.json", {"top1": 18.25})
    _write(
        root,
        "metrics/complexity.json",
        {
            "device": "cpu",
            "rows": [
                {
                    "model": "patchconvnet_demo",
                    "img_size": 64,
                    "params_m": 0.61,
                    "gmacs": 0.04,
                    "throughput": 900.0,
                    "peak_mem_mb": 50.0,
                },
                {
                    "model": "patchconvnet_s60",
                    "img_size": 224,
                    "params_m": 25.2123,
                    "gmacs": 4.15,
                    "throughput": 26.3,
                    "peak_mem_mb": 700.0,
                },
                {
                    "model": "patchconvnet_s120",
                    "img_size": 224,
                    "params_m": 47.74,
                    "gmacs": 8.9,
                    "throughput": 13.0,
                    "peak_mem_mb": 800.0,
                },
                {
                    "model": "resnet50",
                    "img_size": 224,
                    "params_m": 25.56,
                    "gmacs": 4.11,
                    "throughput": 40.0,
                    "peak_mem_mb": 600.0,
                },
            ],
        },
    )
    seeds = [0, 1, 2] if evidence else [0]

    def grp(vals):
        return {
            "n": len(vals),
            "values": vals,
            "mean": float(np.mean(vals)),
            "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
        }

    base = grp([40.0, 41.0, 42.0][: len(seeds)])
    smoke = {"ci95": None, "ci90": None, "verdict": "not resolved (1 seed; 3 needed)", "mdd": None, "test": None}
    avg = {
        **grp([35.0, 36.0, 37.0][: len(seeds)]),
        "vs_baseline": {
            "diff": -5.0,
            "margin": 0.5,
            **(
                {"ci95": [-7.0, -3.0], "ci90": [-6.5, -3.5], "verdict": "worse", "mdd": 2.9, "test": "paired t"}
                if evidence
                else smoke
            ),
        },
    }
    bn = {
        **grp([41.0, 40.0, 42.5][: len(seeds)]),
        "vs_baseline": {
            "diff": 0.17,
            "margin": 0.5,
            **(
                {"ci95": [-2.0, 2.3], "ci90": [-1.5, 1.8], "verdict": "inconclusive", "mdd": 4.1, "test": "paired t"}
                if evidence
                else smoke
            ),
        },
    }
    _write(
        root,
        "metrics/ablations.json",
        {
            "scale": "study" if evidence else "demo",
            "seeds": seeds,
            "evidence": evidence,
            "note": "fixture",
            "baseline_std": base["std"],
            "recipes": {
                # as pcn.analysis.stats.summarize_experiments records them
                "ablations": {"epochs": 16, "max_steps": None, "img_size": 64, "batch_size": 32},
                "resnet": {"epochs": 12, "max_steps": None, "img_size": 224 if imagenet else 32, "batch_size": 128},
                "multiclass": {"epochs": 12, "max_steps": None, "img_size": 224 if imagenet else 64, "batch_size": 32},
                "depth_width": {"epochs": 1, "max_steps": 30, "img_size": 64, "batch_size": 64},
            },
            "ablations": {"baseline": base, "avgpool": avg, "batchnorm": bn},
            "resnet": {
                "avg": grp([30.0] * len(seeds)),
                "attention": {
                    **grp([31.0] * len(seeds)),
                    "vs_avg": {"diff": 1.0, "ci95": None, "verdict": "not resolved"},
                },
            },
            "multiclass": {
                "scratch": grp([38.0] * len(seeds)),
                "finetuned": {
                    **grp([39.5] * len(seeds)),
                    "vs_scratch": {"diff": 1.5, "ci95": None, "verdict": "not resolved"},
                },
            },
            "depth_width": [
                {
                    "width": 64,
                    "depth": 4,
                    "top1": 30.0,
                    "params_m": 0.2,
                    "gmacs": 0.01,
                    "throughput": 3000.0,
                    "peak_mem_mb": 20.0,
                    "img_size": 64,
                },
                {
                    "width": 64,
                    "depth": 8,
                    "top1": 33.0,
                    "params_m": 0.35,
                    "gmacs": 0.02,
                    "throughput": 1800.0,
                    "peak_mem_mb": 25.0,
                    "img_size": 64,
                },
                {
                    "width": 96,
                    "depth": 4,
                    "top1": 34.0,
                    "params_m": 0.4,
                    "gmacs": 0.025,
                    "throughput": 2000.0,
                    "peak_mem_mb": 30.0,
                    "img_size": 64,
                },
            ],
        },
    )
    _write(root, "metrics/segmentation.json", {"mIoU": 21.5, "mAcc": 30.25, "aAcc": 90.5})
    _write(root, "metrics/segmentation_scratch.json", {"mIoU": 8.5, "mAcc": 12.0, "aAcc": 93.0})
    _write(root, "metrics/detection.json", {"bbox_AP": 15.5, "segm_AP": 14.0})
    _write(
        root,
        "metrics/attention.json",
        {
            "patchconvnet": {"pointing_game": 80.0, "iou": 40.5, "n": 200, "model_top1": 50.0},
            "uniform": {"pointing_game": 30.0, "iou": 30.0, "n": 200},
            "threshold": 0.5,
            "n_images": 200,
            "definitions": {"uniform": "constant map"},
        },
    )


def _params(scale: str = "demo", **over):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["scale"] = scale
    # a store that does not exist: run ids are then looked up in the metrics files only
    raw["tracking"]["uri"] = f"sqlite:///{tempfile.gettempdir()}/pcn-no-such-store/mlflow.db"
    for k, v in over.items():
        node = raw
        *path, last = k.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = v
    return resolve(raw)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_run")
    write_fixture_run(root)
    build_figures(run_paths(root), root / "reports" / "figures", {"avgpool": "similar"})
    return root


@pytest.fixture
def demo_run(demo_root, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return demo_root


def _rows(report):
    return {(str(r[0]), str(r[1])): r for r in report.comparison.rows}


def test_lookup_follows_key_paths():
    doc = {"rows": [{"model": "a", "gmacs": 1.5}, {"model": "b", "gmacs": 2.5}], "x": {"vs_y": {"ci95": [-1, 2]}}}
    assert S.lookup(doc, "rows[1].gmacs") == 2.5
    assert S.lookup(doc, "x.vs_y.ci95[0]") == -1
    with pytest.raises(KeyError):
        S.lookup(doc, "rows[0].params_m")


def test_every_reproduced_value_is_read_from_its_row_of_its_metrics_file(demo_run):
    report = R.build_report(run_paths(demo_run), _params())
    values = report.sourced_values()
    assert len(values) > 40
    files = {f for _, f, _ in values}
    assert {
        "metrics/complexity.json",
        "metrics/ablations.json",
        "metrics/eval.json",
        "metrics/attention.json",
        "metrics/pixel_baseline.json",
        "metrics/segmentation.json",
    } <= files
    # each labelled cell shows the fixture's number for that label (a wrong row or key would not)
    rows = _rows(report)
    assert rows[("params (M)", "patchconvnet_s60")][4].value == 25.2123
    assert rows[("params (M)", "patchconvnet_s120")][4].value == 47.74
    assert rows[("GMACs (224 px)", "resnet50")][4].value == 4.11
    tables = {t.caption or t.columns[0]: t for s in report.sections for t in s.tables}
    measured = {r[0]: r[1].value for r in tables["quantity"].rows}
    assert measured["evaluate: val top-1 (%)"] == 34.5 and measured["raw-pixel linear baseline: val top-1 (%)"] == 18.25
    seg = {r[0]: r[1].value for r in tables["segmentation (demo data)"].rows}
    assert seg == {"pretrained": 21.5, "scratch": 8.5}
    # every complexity value in the comparison comes from the complexity row of the row's model
    quantity_keys = {"params (M)": "params_m", "GMACs (224 px)": "gmacs"}
    cx = json.loads((demo_run / "metrics/complexity.json").read_text())
    checked = 0
    for row in report.comparison.rows:
        cell = row[4]
        if isinstance(cell, S.Sourced) and cell.file == "metrics/complexity.json":
            index, key = re.fullmatch(r"rows\[(\d+)\]\.(\w+)", cell.key).groups()
            assert cx["rows"][int(index)]["model"] == row[1] and key == quantity_keys[row[0]], row
            checked += 1
    assert checked >= 5
    md = to_markdown(report)
    for sec in report.sections:
        for t in sec.tables:
            for row in t.rows:
                for cell in row:
                    if isinstance(cell, S.Sourced):
                        assert str(cell) in md


def test_statuses_at_demo_scale(demo_run):
    rows = _rows(R.build_report(run_paths(demo_run), _params()))
    col = 6
    # architecture numbers are reproducible at any scale
    assert rows[("params (M)", "patchconvnet_s60")][col] == D.REPRODUCED  # 25.2123 vs 25.2
    assert rows[("GMACs (224 px)", "patchconvnet_s60")][col] == D.WITHIN  # 4.15 vs 4.0 (5%: 0.2)
    assert rows[("GMACs (224 px)", "patchconvnet_s120")][col] == D.DIFFERS  # 8.9 vs 7.5
    assert rows[("params (M)", "patchconvnet_s120")][col] == D.REPRODUCED
    assert rows[("params (M)", "patchconvnet_b60")][col] == D.NOT_RUN  # not in complexity.models
    assert rows[("GMACs (224 px)", "resnet50")][col] == D.REPRODUCED  # 4.11 vs 4.1
    # ImageNet accuracy, GPU throughput, dense tasks, ablation directions: not at this scale
    for key in (
        ("ImageNet top-1 (%), 224 px", "patchconvnet_s60"),
        ("throughput (im/s)", "patchconvnet_s60"),
        ("peak memory (MB)", "patchconvnet_s60"),
        ("ADE20k mIoU (UperNet)", "patchconvnet_s60"),
        ("COCO box AP (Mask R-CNN)", "patchconvnet_s60"),
        ("multi-class top-1 (%), scratch", "patchconvnet_s60_multi"),
        ("ResNet-50 top-1 (%), avg pooling", "resnet50"),
        ("ablation direction: avgpool", "patchconvnet_demo"),
    ):
        assert rows[key][col] == D.NOT_RUN, key
        assert rows[key][4] == S.NONE, key
    assert {r[col] for r in rows.values()} <= set(D.STATUSES)


def test_statuses_at_paper_scale(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_fixture_run(tmp_path, evidence=True, imagenet=True)
    rows = _rows(R.build_report(run_paths(tmp_path), _params("paper")))
    top1 = rows[("ImageNet top-1 (%), 224 px", "patchconvnet_s60")]
    assert top1[6] == D.REPRODUCED and top1[4].value == 82.13 and top1[7] == "run-eval"
    assert rows[("ImageNet top-1 (%), 224 px", "patchconvnet_s120")][6] == D.NOT_RUN  # another model
    # the ImageNet-21k rows are another protocol: never beside this pipeline's ImageNet-1k run
    row21k = rows[("ImageNet top-1 (%), 224 px, ImageNet-21k pretraining", "patchconvnet_s60")]
    assert row21k[6] == D.NOT_COMPARABLE and row21k[4] == S.NONE and "ImageNet-21k" in row21k[8]
    assert rows[("ResNet-50 top-1 (%), attention pooling", "resnet50_attnpool")][6] == D.DIFFERS  # 31 vs 80.1
    # inconclusive, paper: better; the note says what these seeds could have detected
    bn = rows[("ablation direction: batchnorm", "patchconvnet_s60")]
    assert bn[6] == D.INCONCLUSIVE and bn[8].startswith("3 seeds can detect differences of 4.1 points or more")
    assert rows[("ablation direction: avgpool", "patchconvnet_s60")][6] == D.DIFFERS  # worse, paper: similar
    assert rows[("ablation direction: linear_stem", "patchconvnet_s60")][6] == D.NOT_RUN  # variant not run


def test_top1_is_compared_only_at_the_rows_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_fixture_run(tmp_path, evidence=True, imagenet=True, eval_size=384)
    rows = _rows(R.build_report(run_paths(tmp_path), _params("paper")))
    top1 = rows[("ImageNet top-1 (%), 224 px", "patchconvnet_s60")]
    assert top1[6] == D.NOT_COMPARABLE and top1[4] == S.NONE
    assert "evaluated at 384 px" in top1[8] and "224 px" in top1[8]
    # the grid's pairs likewise, from the resolution their recipe trained and evaluated at
    write_fixture_run(tmp_path, evidence=True, imagenet=False)
    _write(tmp_path, "metrics/eval.json", {"top1": 82.13, "img_size": 224, "crop_ratio": 0.875})
    rows = _rows(R.build_report(run_paths(tmp_path), _params("paper")))
    resnet = rows[("ResNet-50 top-1 (%), avg pooling", "resnet50")]
    assert resnet[6] == D.NOT_COMPARABLE and "grid evaluates at 32 px" in resnet[8]


def _transfer_rows(root: Path, rows: dict) -> Path:
    """paper/numbers.yaml with its transfer tables replaced by ``rows``."""
    paper = yaml.safe_load((ROOT / "paper" / "numbers.yaml").read_text())
    for key in ("ade20k_upernet_miou", "coco_maskrcnn_box_ap", "coco_maskrcnn_mask_ap"):
        paper[key] = rows.get(key, [])
    path = root / "numbers.yaml"
    path.write_text(yaml.safe_dump(paper, allow_unicode=True))
    return path


def test_a_transfer_row_of_another_protocol_is_not_comparable(tmp_path, monkeypatch):
    """A transfer number sits beside a paper row only for the row's model, pretraining data and
    test protocol; another or an unstated protocol is *not comparable*, never *differs*."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_fixture_run(tmp_path, evidence=True, imagenet=True)  # mIoU 21.5, box AP 15.5, mask AP 14.0
    s60 = {"model": "patchconvnet_s60", "source": "test"}
    paper = _transfer_rows(
        tmp_path,
        {
            "ade20k_upernet_miou": [
                {**s60, "value": 21.5, "pretraining": "imagenet1k", "test": "single-scale"},
                {**s60, "value": 49.3, "pretraining": "imagenet21k", "test": "single-scale"},
                {**s60, "value": 49.3, "pretraining": "imagenet1k", "test": "multi-scale+flip"},
                {**s60, "value": 49.3, "pretraining": None, "test": None},
            ],
            "coco_maskrcnn_box_ap": [{**s60, "value": 46.4, "pretraining": "imagenet1k", "test": "single-scale"}],
            "coco_maskrcnn_mask_ap": [
                {**s60, "value": 14.0, "pretraining": "imagenet1k", "test": "single-scale"},
                {**s60, "value": None, "pretraining": "imagenet1k", "test": "single-scale"},
            ],
        },
    )
    report = R.build_report(run_paths(tmp_path), _params("paper"), paper)
    rows = [r for r in report.comparison.rows if str(r[0]).startswith(("ADE20k", "COCO"))]
    by = {(str(r[0]), r[2]): r for r in rows}
    same = by[("ADE20k mIoU (UperNet), single-scale", 21.5)]
    assert same[6] == D.REPRODUCED and same[4].value == 21.5 and same[4].key == "mIoU"
    box = by[("COCO box AP (Mask R-CNN), single-scale", 46.4)]
    assert box[6] == D.DIFFERS and box[4].value == 15.5  # same protocol, another number: differs
    mask = by[("COCO mask AP (Mask R-CNN), single-scale", 14.0)]
    assert mask[6] == D.REPRODUCED and mask[4].key == "segm_AP"
    for key, why in (
        (("ADE20k mIoU (UperNet), single-scale, ImageNet-21k pretraining", 49.3), "pretrained on ImageNet-21k"),
        (("ADE20k mIoU (UperNet), multi-scale+flip", 49.3), "this run scored single-scale only"),
        (("ADE20k mIoU (UperNet)", 49.3), "does not state its pretraining data"),
        (("COCO mask AP (Mask R-CNN), single-scale", S.NONE), "no paper value"),
    ):
        row = by[key]
        assert row[6] == D.NOT_COMPARABLE and row[4] == S.NONE and why in row[8], (key, row[8])
    assert "measured here: single-scale 21.5" in by[("ADE20k mIoU (UperNet), multi-scale+flip", 49.3)][8]
    assert "does not state its test protocol" in by[("ADE20k mIoU (UperNet)", 49.3)][8]  # every reason is given
    # the multi-scale + flip row is compared once the run scored that protocol
    _write(tmp_path, "metrics/segmentation.json", {"mIoU": 21.5, "mIoU_ms_flip": 49.31, "mAcc": 30.25, "aAcc": 90.5})
    rows = _rows(R.build_report(run_paths(tmp_path), _params("paper"), paper))
    ms = rows[("ADE20k mIoU (UperNet), multi-scale+flip", "patchconvnet_s60")]
    assert ms[6] == D.REPRODUCED and ms[4].key == "mIoU_ms_flip"


def test_a_transfer_protocol_outside_the_vocabulary_is_refused_naming_its_key(tmp_path, monkeypatch):
    from pcn.errors import UserError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_fixture_run(tmp_path, imagenet=True)
    row = {"model": "patchconvnet_s60", "value": 49.3, "pretraining": "imagenet22k", "test": None, "source": "x"}
    paper = _transfer_rows(tmp_path, {"ade20k_upernet_miou": [row]})
    with pytest.raises(UserError) as err:
        R.build_report(run_paths(tmp_path), _params("paper"), paper)
    assert str(err.value) == (
        "paper/numbers.yaml: ade20k_upernet_miou[0].pretraining = 'imagenet22k': expected imagenet1k, "
        "imagenet21k or null (not stated)"
    )


def test_the_committed_transfer_rows_state_their_protocol():
    paper = yaml.safe_load((ROOT / "paper" / "numbers.yaml").read_text())
    for key in ("ade20k_upernet_miou", "coco_maskrcnn_box_ap", "coco_maskrcnn_mask_ap"):
        assert paper[key], key
        for row in paper[key]:
            assert {"model", "value", "pretraining", "test", "source"} <= set(row), (key, row)


def test_released_checkpoints_sit_on_their_model_zoo_rows(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_fixture_run(tmp_path)
    base = {"crop_ratio": 0.875, "top5": 95.9, "n_images": 50000}
    _write(
        tmp_path,
        "metrics/released/s60.json",
        {**base, "model": "patchconvnet_s60", "img_size": 224, "top1": 82.08, "checkpoint": "/ckpt/s60_224_1k.pth"},
    )
    _write(
        tmp_path,
        "metrics/released/s60_21k_384.json",
        {**base, "model": "patchconvnet_s60", "img_size": 384, "top1": 84.2, "checkpoint": "s60_384_21k.pth"},
    )
    _write(
        tmp_path,
        "metrics/released/b60_at_384.json",
        {**base, "model": "patchconvnet_b60", "img_size": 384, "top1": 80.0, "checkpoint": "b60_224_1k.pth"},
    )
    report = R.build_report(run_paths(tmp_path), _params())  # any scale: the files are evaluations of published weights
    rows = _rows(report)
    s60 = rows[("released checkpoint top-1 (%), 224 px", "patchconvnet_s60")]
    assert s60[2] == 82.1 and s60[4].value == 82.08 and s60[4].file == "metrics/released/s60.json"
    assert s60[6] == D.REPRODUCED and "s60_224_1k.pth" in s60[8] and "crop 0.875" in s60[8]
    s60_384 = rows[("released checkpoint top-1 (%), 384 px", "patchconvnet_s60")]
    assert s60_384[2] == 84.9 and s60_384[6] == D.DIFFERS  # 84.2 vs 84.9, on the 21k row at 384 px
    b60 = rows[("released checkpoint top-1 (%), 384 px", "patchconvnet_b60")]
    assert b60[2] == 83.5 and b60[6] == D.NOT_COMPARABLE and "row is at 224 px" in b60[8]
    section = next(s for s in report.sections if s.title == "Classification")
    table = next(t for t in section.tables if t.caption.startswith("Released"))
    assert [str(r[1]) for r in table.rows] == ["b60_224_1k.pth", "/ckpt/s60_224_1k.pth", "s60_384_21k.pth"]


def test_the_papers_condition_is_shown_with_its_direction(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_fixture_run(tmp_path, evidence=True)
    report = R.build_report(run_paths(tmp_path), _params("study"))
    bn = _rows(report)[("ablation direction: batchnorm", "patchconvnet_demo")]
    assert bn[2].startswith("better (only with a large enough batch")
    # beside the condition: the batch, resolution and token count the grid ran at (metrics/ablations.json)
    assert "the paper's condition: only with a large enough batch" in bn[8]
    assert "this run's grid: 16 epochs at 64 px, batch 32, 16 tokens (4x4, stride 16)" in bn[8]
    section = next(s for s in report.sections if s.title.startswith("Ablations"))
    table = next(t for t in section.tables if t.caption == "Ablations against the baseline")
    direction = table.columns.index("paper direction")
    assert next(r for r in table.rows if r[0] == "batchnorm")[direction].startswith("better (only with a large")


def test_recipe_section_shows_every_value_with_its_source(demo_run):
    from pcn.analysis import recipe as RC

    report = R.build_report(run_paths(demo_run), _params())
    section = next(s for s in report.sections if s.title == "Paper-scale recipe")
    entries = RC.load_recipe(demo_run / "paper/recipe.yaml")
    assert len(section.tables[0].rows) == len(entries)
    assert "scale **demo**" in " ".join(section.paragraphs)
    md = to_markdown(report)
    assert "facebookresearch/deit#185" in md and "| schedule | (no key) | cosine, warm-up from 1e-6 |" in md
    paper = R.build_report(run_paths(demo_run), _params("paper"))
    text = " ".join(next(s for s in paper.sections if s.title == "Paper-scale recipe").paragraphs)
    assert "agree with every keyed value" in text


@pytest.mark.parametrize(
    "paper,value,status",
    [
        (82.1, 82.14, D.REPRODUCED),
        (82.1, 82.16, D.WITHIN),
        (82.1, 82.5, D.DIFFERS),
        (1322, 1322.4, D.REPRODUCED),
        (1322, 1400, D.WITHIN),
        (82.1, None, D.NOT_RUN),
    ],
)
def test_compare(paper, value, status):
    tol = {"abs": 0.3} if paper < 100 else {"rel": 0.15}
    assert C.compare(paper, value, tol) == status


def test_html_is_self_contained(demo_run):
    report = R.build_report(run_paths(demo_run), _params())
    md, page = R.write_report(report, demo_run / "reports/report.md", demo_run / "reports/report.html")
    text = page.read_text()
    srcs = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', text)
    assert srcs, "no embedded figure"
    assert all(s.startswith(("data:image/png;base64,", "#")) for s in srcs), srcs
    assert "<link" not in text and "@import" not in text and "url(" not in text
    figures = json.loads((demo_run / "reports/figures/index.json").read_text())["figures"]
    assert text.count("<img") == sum(any(f.endswith(".png") for f in v["files"]) for v in figures.values()) > 3
    assert "patchconvnet_s60" in text and "not run at this scale" in text
    assert "](figures/" in md.read_text()


def test_figures_skip_missing_inputs(tmp_path):
    out = tmp_path / "figs"
    manifest = build_figures(run_paths(tmp_path), out)
    assert manifest["figures"] == {}
    assert {
        "training_curves",
        "ablations",
        "depth_width",
        "complexity",
        "attention_single",
        "segmentation_examples",
    } <= set(manifest["skipped"])
    assert json.loads((out / "index.json").read_text()) == manifest


def test_figures_from_metrics(demo_run):
    index = json.loads((demo_run / "reports/figures/index.json").read_text())
    for name in ("training_curves", "ablations", "depth_width", "complexity", "transfer"):
        assert name in index["figures"], index["skipped"]
        for f in index["figures"][name]["files"]:
            assert (demo_run / "reports/figures" / f).stat().st_size > 1000
    assert index["figures"]["ablations"]["sources"] == ["metrics/ablations.json"]
    assert "attention_single" in index["skipped"]  # no results/attention in this fixture


def test_run_ids_from_mlflow(tmp_path, monkeypatch):
    """Without mlflow_run_id in the file, the latest finished run whose pcn.metrics tag names the file."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("patchconvnet", artifact_location=str(tmp_path / "artifacts"))
    complexity = {"pcn.stage": "complexity", "pcn.metrics": "metrics/complexity.json"}
    old = client.create_run(exp, tags=complexity)
    client.set_terminated(old.info.run_id)
    new = client.create_run(exp, tags=complexity)
    client.set_terminated(new.info.run_id)
    failed = client.create_run(exp, tags=complexity)
    client.set_terminated(failed.info.run_id, "FAILED")
    # a file's name inside another's is not a match: ablations/avgpool-s0.json is not avgpool-s01.json
    other = client.create_run(exp, tags={"pcn.stage": "ablation", "pcn.metrics": "metrics/ablations/avgpool-s01.json"})
    client.set_terminated(other.info.run_id)
    abl = client.create_run(exp, tags={"pcn.stage": "ablation", "pcn.metrics": "metrics/ablations/avgpool-s0.json"})
    client.set_terminated(abl.info.run_id)
    later = client.create_run(exp, tags={"pcn.stage": "ablation", "pcn.metrics": "metrics/ablations/avgpool-s01.json"})
    client.set_terminated(later.info.run_id)
    write_fixture_run(tmp_path)
    _write(tmp_path, "metrics/ablations/avgpool-s0.json", {"top1": 35.0})
    params = _params(**{"tracking.uri": uri})
    runs = S.RunIndex(params, S.Metrics(run_paths(tmp_path)))
    assert runs.run_id("metrics/complexity.json") == new.info.run_id
    assert runs.run_id("metrics/ablations/avgpool-s0.json") == abl.info.run_id
    assert runs.run_id("metrics/eval.json") == "run-eval"  # named in the file
    assert runs.run_id("metrics/attention.json") == S.NONE
    rows = _rows(R.build_report(run_paths(tmp_path), params))
    assert rows[("params (M)", "patchconvnet_s60")][7] == new.info.run_id


def test_pair_rows_show_the_papers_direction_from_its_numbers(demo_run):
    report = R.build_report(run_paths(demo_run), _params())
    section = next(s for s in report.sections if s.title.startswith("Ablations"))
    tables = {t.caption: t for t in section.tables}
    attention = next(r for r in tables["ResNet: attention pooling against average pooling"].rows if r[0] == "attention")
    finetuned = next(r for r in tables["Multi-class tokens: fine-tuned against scratch"].rows if r[0] == "finetuned")
    # paper/numbers.yaml: ResNet-50 79.8 -> 80.1 with attention pooling; multi-class 81.1 -> 82.0 fine-tuned
    direction = tables["Ablations against the baseline"].columns.index("paper direction")
    assert attention[direction] == "better (+0.3 top-1)"
    assert finetuned[direction] == "better (+0.9 top-1)"
    avgpool = next(r for r in tables["Ablations against the baseline"].rows if r[0] == "avgpool")
    assert avgpool[direction] == "similar"  # the write-up: attention pooling brings almost no gain
    # smoke runs state what they ran at too (the recipe metrics/ablations.json recorded)
    assert avgpool[-1] == "smoke run, 16 epochs at 64 px, batch 32, 16 tokens (4x4, stride 16)"


def test_comparison_rows_name_their_own_recipe(tmp_path, monkeypatch):
    """Comparisons may train with different recipes (experiments.train_by_study): each
    table says the run length and size its rows were measured with."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_fixture_run(tmp_path, evidence=True)
    report = R.build_report(run_paths(tmp_path), _params("study"))
    section = next(s for s in report.sections if s.title.startswith("Ablations"))
    kinds = {t.caption: {r[-1] for r in t.rows} for t in section.tables if "paper direction" in t.columns}
    assert kinds["Ablations against the baseline"] == {
        "3 seeds, 16 epochs at 64 px, batch 32, 16 tokens (4x4, stride 16)"
    }
    # the ResNets' stride is their last feature map's: the study builds them at output stride 8
    # (experiments.resnet_options), 4x4 at 32 px, where the demo ResNet's own 16 leaves 2x2
    assert kinds["ResNet: attention pooling against average pooling"] == {
        "3 seeds, 12 epochs at 32 px, batch 128, 16 tokens (4x4, stride 8)"
    }
    assert kinds["Multi-class tokens: fine-tuned against scratch"] == {
        "3 seeds, 12 epochs at 64 px, batch 32, 16 tokens (4x4, stride 16)"
    }
    assert any("30 steps at 64 px, batch 64, 16 tokens" in t.caption for t in section.tables)


def test_the_report_names_the_machine_of_every_metrics_file(tmp_path):
    """ "Reproducible" is bit-exact on one machine only, so the report says which machine and
    libraries produced which metrics."""
    from pcn.analysis.sections import machines_section

    a = {"cpu": "CPU A", "cores": 2, "torch": "2.14.1", "onednn": "3.12.0", "mkl": "2024.2", "gpu": None, "host": "a"}
    b = {**a, "cpu": "CPU B", "gpu": "H200", "host": "b"}
    (tmp_path / "metrics" / "ablations").mkdir(parents=True)
    for rel, m in (("pretrain", b), ("evaluate", a), ("ablations/baseline-s0", b), ("old", None)):
        (tmp_path / "metrics" / f"{rel}.json").write_text(json.dumps({"top1": 1.0, **({"machine": m} if m else {})}))
    sec = machines_section(run_paths(tmp_path))
    assert "bit for bit" in sec.paragraphs[0]
    rows = {r[0]: r for r in sec.tables[0].rows}
    assert set(rows) == {"CPU A", "CPU B"}
    assert rows["CPU B"][-1] == "ablations/baseline-s0, pretrain" and rows["CPU B"][5] == "H200"
    assert rows["CPU A"][-1] == "evaluate" and rows["CPU A"][5] == "-"


def test_each_run_records_its_cpu_and_libraries():
    import torch

    from pcn.machine.device import describe

    d = describe()
    assert d["cpu"] and d["cores"] >= 1 and d["torch"] == torch.__version__
    assert d["onednn"] and d["mkl"]  # the libraries whose kernels set the floating-point order


def test_welch_interval_matches_a_textbook_example():
    """Welch's t-test, worked example 1 of its Wikipedia article: t = -2.46 with about 25
    degrees of freedom, two-sided p = 0.021."""
    from scipy.stats import t

    from pcn.analysis.stats import difference, interval, standard_error

    a = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
    b = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]
    d = difference(a, b, margin=1.0)  # two unpaired samples: Welch's t
    assert d["diff"] == pytest.approx(20.82 - 22.99, abs=0.01) and d["test"] == "welch"
    se = abs(d["diff"]) / 2.46  # the standard error the textbook's t implies
    lo, hi = d["ci95"]
    assert (hi - lo) / 2 == pytest.approx(t.ppf(0.975, 25) * se, rel=0.005)
    assert d["verdict"] == "worse"  # p = 0.021: the 95% interval excludes zero ...
    se, df, _ = standard_error(a, b, paired=False)
    assert interval(d["diff"], se, df, 1 - 0.021)[1] == pytest.approx(0, abs=0.01)  # ... and touches it at 97.9%
    # identical seeds on both sides: no interval (one of width zero would call any difference)
    same = difference([40.0] * 3, [40.0] * 3, margin=1.0)
    assert same["ci95"] is None and same["verdict"] == "not resolved (no seed-to-seed variance on either side)"
    assert difference([40.0], [39.0, 41.0], margin=1.0)["ci95"] is None  # one seed: a smoke run, no verdict


def test_html_renders_the_markdown_and_names_each_values_source(demo_run):
    from pcn.analysis.document import Report, Section, Table
    from pcn.analysis.render import to_html

    report = R.build_report(run_paths(demo_run), _params())
    page = to_html(report, demo_run / "reports")
    # paragraphs are Markdown: emphasis becomes markup, never literal asterisks
    assert "Scale <strong>demo</strong>" in page and "**demo**" not in page
    # every measured cell carries its metrics file and key, for a reader to check
    for _, rel, key in report.sourced_values():
        assert f'title="{rel}#{key}"' in page, (rel, key)
    # text from files is escaped, in paragraphs and in cells alike
    hostile = Section(
        "x",
        paragraphs=["<script>alert(1)</script> *ok* [a](other.html) ![b](b.png) <http://x.org>"],
        tables=[Table(["a"], [["<b>cell</b>"]], "<i>cap</i>")],
    )
    page = to_html(Report("t", [hostile], Table([], []), demo_run), demo_run)
    assert "<script>" not in page and "<b>cell" not in page and "<i>cap" not in page
    assert "&lt;script&gt;" in page and "<em>ok</em>" in page
    assert "href=" not in page and "src=" not in page  # still self-contained


def test_every_paper_direction_names_its_source():
    """A direction the report compares against must say where the paper (or the seed write-up)
    states it, or say plainly that it is inferred or unsourced."""
    paper = C.load_paper(ROOT / "paper" / "numbers.yaml")
    kinds = ("write-up", "inferred: write-up", "not in the reference material:", "Table", "Section")
    for name, entry in paper["ablations"].items():
        assert entry["direction"] in ("better", "worse", "similar"), name
        assert str(entry.get("source", "")).startswith(kinds), name
    for group in ("resnet50", "multiclass"):  # the pairs whose direction comes from their two numbers
        assert all(e.get("source") for e in paper[group].values()), group
    # the BatchNorm direction holds only with large batches: the report says so beside it
    assert "large enough batch" in paper["ablations"]["batchnorm"]["condition"]
