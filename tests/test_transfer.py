"""Dense transfer: pyramid shapes and weights, loaders on bad input, metrics, re-scoring of outputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINY_OPTIONS = {"embed_dim": 32, "depth": 4}  # a patchconvnet_demo small enough for seconds-long runs


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """The real demo generator at toy size: 64 px scenes, 3 classes, 12 train / 6 val scenes."""
    from pcn.data.synthetic import DemoSpec, generate

    root = tmp_path_factory.mktemp("tiny_demo") / "demo"
    spec = DemoSpec(seed=0, n_classes=3, train_per_class=1, val_per_class=1, image_size=32, scene_size=64,
                    n_scenes_train=12, n_scenes_val=6, scene_object_px=(16, 32))
    generate(root, spec, progress=False)
    return root


@pytest.fixture
def demo_copy(tiny_demo, tmp_path) -> Path:
    """A writable copy of the tiny demo data, to break."""
    out = tmp_path / "demo"
    shutil.copytree(tiny_demo, out)
    return out


def _job(task, init, root, out, iters=3, checkpoint=None, **cfg):
    from pcn.transfer import TransferJob

    config = {"img_size": 64, "iters": iters, "batch_size": 2, "lr": 1e-3, "weight_decay": 0.01,
              "decoder_channels": 16, "fpn_channels": 16, "min_sizes": [64]}
    config.update(cfg)
    name = task if init == "pretrained" else f"{task}_{init}"
    return TransferJob(task=task, init=init, model="patchconvnet_demo", model_options=dict(TINY_OPTIONS),
                       config=config, data_root=str(root), out_dir=str(out / "results" / name),
                       plots_path=str(out / "plots" / f"{name}.csv"), checkpoint=checkpoint, threads=1,
                       device="cpu", stage=name)


def _classification_checkpoint(path: Path, **options) -> Path:
    import timm

    import pcn.models  # noqa: F401

    model = timm.create_model("patchconvnet_demo", num_classes=3, **(options or TINY_OPTIONS))
    torch.save({"model": model.state_dict()}, path)
    return path


# --- pyramid -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 96, 128, 160])
@pytest.mark.parametrize("name,options,stem", [
    ("patchconvnet_demo", {}, 8),
    ("patchconvnet_s60", {"embed_dim": 32, "depth": 4}, 16),
])
def test_pyramid_strides(name, options, stem, size):
    from pcn.transfer.pyramid import create_pyramid_backbone

    backbone, _ = create_pyramid_backbone(name, options)
    assert backbone.stem_stride == stem
    feats = backbone(torch.randn(2, 3, size, size))
    padded = -(-size // 32) * 32  # the input is padded to a multiple of 32
    assert [tuple(f.shape[-2:]) for f in feats] == [(padded // s, padded // s) for s in (4, 8, 16, 32)]
    assert [f.shape[1] for f in feats] == backbone.out_channels


def test_pyramid_non_square_and_blocks():
    from pcn.transfer.pyramid import create_pyramid_backbone, evenly_spaced_blocks

    assert evenly_spaced_blocks(8) == [1, 3, 5, 7]
    assert evenly_spaced_blocks(60) == [14, 29, 44, 59]
    backbone, _ = create_pyramid_backbone("patchconvnet_demo", TINY_OPTIONS)
    assert backbone.indices == [0, 1, 2, 3]
    feats = backbone(torch.randn(1, 3, 80, 48))  # padded to 96 x 64
    assert [tuple(f.shape[-2:]) for f in feats] == [(24, 16), (12, 8), (6, 4), (3, 2)]


def test_trunk_weights_used_and_dropped(tmp_path):
    import timm

    from pcn.models.checkpoint import CheckpointError
    from pcn.transfer.pyramid import create_pyramid_backbone

    ckpt = _classification_checkpoint(tmp_path / "model.pth")
    backbone, report = create_pyramid_backbone("patchconvnet_demo", TINY_OPTIONS, ckpt)
    summary = report.summary()
    assert {"head", "cls_token", "blocks_token_only", "norm"} <= set(summary["dropped"])
    assert not any(k.startswith(("head.", "blocks_token_only.", "norm.")) or k == "cls_token" for k in report.used)
    saved = torch.load(ckpt, weights_only=True)["model"]
    assert torch.equal(backbone.trunk.state_dict()["blocks.3.gamma_1"], saved["blocks.3.gamma_1"])
    assert summary["n_used"] == len(backbone.trunk.state_dict())
    # A checkpoint of another width: the first bad key is named.
    other = _classification_checkpoint(tmp_path / "wide.pth", embed_dim=48, depth=4)
    with pytest.raises(CheckpointError, match=r"wide\.pth: wrong shape for key 'patch_embed"):
        create_pyramid_backbone("patchconvnet_demo", TINY_OPTIONS, other)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_pyramid_backbone("patchconvnet_demo", TINY_OPTIONS, tmp_path / "missing.pth")
    del timm


def test_upernet_logits_at_input_size():
    from pcn.transfer.pyramid import create_pyramid_backbone
    from pcn.transfer.segmentation import UperNetSegmenter

    backbone, _ = create_pyramid_backbone("patchconvnet_demo", TINY_OPTIONS)
    model = UperNetSegmenter(backbone, n_classes=5, decoder_channels=16)
    assert model(torch.randn(2, 3, 80, 112)).shape == (2, 5, 80, 112)


# --- metrics -------------------------------------------------------------------------------


def test_miou_hand_computed():
    from pcn.transfer.metrics import confusion_matrix, segmentation_scores

    #            gt: 0 0 0 0 1 1 2 2  (and two ignored pixels, class 3 absent)
    #          pred: 0 0 1 1 1 2 2 2
    # class 0: TP 2, union 4 -> 1/2;  class 1: TP 1, union 2 + 3 - 1 = 4 -> 1/4
    # class 2: TP 2, union 3 -> 2/3;  class 3: never present, never predicted -> no IoU
    target = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, -1, 255])
    pred = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 3, 3])
    conf = confusion_matrix(pred, target, 4, ignore_index=255)
    assert conf.sum() == 8
    s = segmentation_scores(conf)
    assert s["mIoU"] == pytest.approx((1 / 2 + 1 / 4 + 2 / 3) / 3 * 100)  # 47.22
    assert s["mAcc"] == pytest.approx((2 / 4 + 1 / 2 + 2 / 2) / 3 * 100)  # 66.67
    assert s["aAcc"] == pytest.approx(5 / 8 * 100)
    assert s["per_class_iou"][3] is None
    # A class predicted but never present counts as IoU 0.
    s2 = segmentation_scores(confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 0]), 2))
    assert s2["per_class_iou"] == [50.0, 0.0] and s2["mIoU"] == 25.0


# --- loaders on bad input ------------------------------------------------------------------


def test_ade_loader_reads_demo(tiny_demo):
    from pcn.transfer.datasets import AdeSegmentation, ade_train_transforms

    ds = AdeSegmentation(tiny_demo / "ade", "train", transforms=ade_train_transforms(64))
    assert ds.n_classes == 4 and len(ds) == 12
    image, label, _ = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert label.shape == (64, 64) and int(label.max()) <= 4
    assert ds.pixel_counts().sum() > 0


def test_ade_label_map_of_another_size(demo_copy):
    from pcn.transfer.datasets import AdeSegmentation, DatasetError

    png = sorted((demo_copy / "ade/annotations/validation").glob("*.png"))[1]
    Image.fromarray(np.ones((40, 64), np.uint8)).save(png)
    with pytest.raises(DatasetError, match=rf"{png.name}: label map is 64x40, its image .*64x64"):
        AdeSegmentation(demo_copy / "ade", "val")


def test_ade_label_id_above_n(demo_copy):
    from pcn.transfer.datasets import AdeSegmentation, DatasetError

    png = sorted((demo_copy / "ade/annotations/training").glob("*.png"))[2]
    label = np.array(Image.open(png))
    label[5, 5] = 9  # 4 classes: ids 1..4
    Image.fromarray(label).save(png)
    with pytest.raises(DatasetError, match=rf"{png.name}: label id 9 above the 4 classes"):
        AdeSegmentation(demo_copy / "ade", "train")


def test_ade_image_missing_or_unreadable(demo_copy):
    from pcn.transfer.datasets import AdeSegmentation, DatasetError

    jpg = min((demo_copy / "ade/images/validation").glob("*.jpg"))
    jpg.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=rf"{jpg.name}: unreadable image"):
        AdeSegmentation(demo_copy / "ade", "val")
    jpg.unlink()
    (demo_copy / "ade/annotations/validation" / (jpg.stem + ".png")).unlink()
    AdeSegmentation(demo_copy / "ade", "val")  # a pair removed together is fine
    orphan = min((demo_copy / "ade/annotations/validation").glob("*.png"))
    orphan.unlink()
    with pytest.raises(DatasetError, match=rf"{orphan.name}: label map missing"):
        AdeSegmentation(demo_copy / "ade", "val")


def _coco_file(root: Path, split: str = "val") -> Path:
    return root / "coco" / "annotations" / f"instances_{split}.json"


def _edit_coco(root: Path, edit, split: str = "val") -> Path:
    path = _coco_file(root, split)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def test_coco_loader_reads_demo(tiny_demo):
    from pcn.transfer.datasets import CocoInstances, coco_train_transforms

    ds = CocoInstances(tiny_demo / "coco", "train", transforms=coco_train_transforms())
    kinds = {type(a["segmentation"]).__name__ for anns in ds.anns.values() for a in anns}
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 64, 64)
    assert target["masks"].shape[0] == target["boxes"].shape[0] == target["labels"].shape[0] >= 1
    assert set(target["labels"].tolist()) <= {1, 2, 3}
    assert ds.n_degenerate == 0
    assert "list" in kinds  # polygons (the demo also writes RLE for about one object in six)


def test_coco_not_json(demo_copy):
    from pcn.transfer.datasets import CocoInstances, DatasetError

    path = _coco_file(demo_copy)
    path.write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"instances_val\.json: not valid JSON"):
        CocoInstances(demo_copy / "coco", "val")


def test_coco_unknown_image_and_category(demo_copy):
    from pcn.transfer.datasets import CocoInstances, DatasetError

    def bad_image(d):
        d["annotations"][0]["image_id"] = 999

    _edit_coco(demo_copy, bad_image)
    with pytest.raises(DatasetError, match=r"instances_val\.json: annotation \d+ refers to image id 999"):
        CocoInstances(demo_copy / "coco", "val")

    def bad_category(d):
        d["annotations"][0]["image_id"] = d["images"][0]["id"]
        d["annotations"][1]["category_id"] = 77

    _edit_coco(demo_copy, bad_category)
    with pytest.raises(DatasetError, match=r"instances_val\.json: annotation \d+ refers to category id 77"):
        CocoInstances(demo_copy / "coco", "val")


def test_coco_image_missing_or_unreadable(demo_copy):
    from pcn.transfer.datasets import CocoInstances, DatasetError

    image = sorted((demo_copy / "coco/images/val").glob("*.jpg"))[3]
    image.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DatasetError, match=rf"{image.name}: unreadable image"):
        CocoInstances(demo_copy / "coco", "val")
    image.unlink()
    with pytest.raises(DatasetError, match=rf"{image.name}: image file missing"):
        CocoInstances(demo_copy / "coco", "val")


def test_coco_degenerate_boxes_skipped_and_counted(demo_copy):
    from pcn.transfer.datasets import CocoInstances

    def flatten(d):
        d["annotations"][0]["bbox"][2] = 0
        d["annotations"][1]["bbox"][3] = 0.0

    _edit_coco(demo_copy, flatten)
    with pytest.warns(UserWarning, match="degenerate box"):
        ds = CocoInstances(demo_copy / "coco", "val")
    assert ds.n_degenerate == 2
    kept = sum(len(a) for a in ds.anns.values())
    assert kept == len(ds.data["annotations"]) - 2


# --- training, outputs and re-scoring ---------------------------------------------------------


def test_segmentation_predictions_rescore(tiny_demo, tmp_path):
    """The saved PNGs, scored with a plain confusion matrix, give the reported numbers."""
    from pcn.transfer import TransferTask

    ckpt = _classification_checkpoint(tmp_path / "pre.pth")
    job = _job("segmentation", "pretrained", tiny_demo / "ade", tmp_path, iters=3, checkpoint=str(ckpt))
    m = TransferTask(job)()
    assert m["backbone_weights"]["n_dropped"] > 0 and "head" in m["backbone_weights"]["dropped"]
    pred_dir, ann_dir = Path(m["predictions_dir"]), Path(m["annotations_dir"])
    n = m["n_classes"]
    conf = np.zeros((n, n), np.int64)
    anns = sorted(ann_dir.glob("*.png"))
    assert sorted(p.name for p in pred_dir.glob("*.png")) == [a.name for a in anns]
    for ann in anns:
        gt = np.array(Image.open(ann)).astype(np.int64).ravel()
        pr = np.array(Image.open(pred_dir / ann.name)).astype(np.int64).ravel()
        assert pr.min() >= 1 and pr.max() <= n
        keep = gt > 0
        np.add.at(conf, (gt[keep] - 1, pr[keep] - 1), 1)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = tp[union > 0] / union[union > 0] * 100
    assert m["mIoU"] == pytest.approx(iou.mean(), abs=1e-9)
    assert m["aAcc"] == pytest.approx(tp.sum() / conf.sum() * 100, abs=1e-9)
    assert set(m["per_class_iou"]) == set(json.loads((tiny_demo / "ade/classes.json").read_text()))
    assert (Path(job.out_dir) / "qualitative.png").stat().st_size > 0
    assert torch.load(Path(job.out_dir) / "model.pth", weights_only=True)["model"]
    lines = Path(job.plots_path).read_text().splitlines()
    assert lines[0] == "step,loss" and len(lines) == 4
    assert not job.work_dir.exists()


def test_detection_results_rescore(tiny_demo, tmp_path):
    """The written detections, scored by pycocotools directly, give the reported AP."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from pcn.transfer import TransferTask

    job = _job("detection", "scratch", tiny_demo / "coco", tmp_path, iters=3, lr=1e-4)
    m = TransferTask(job)()
    results = json.loads(Path(m["results_file"]).read_text())
    assert isinstance(results, list) and m["n_detections"] == len(results) > 0
    assert {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(results[0])
    for iou in ("bbox", "segm"):
        gt = COCO(m["annotations_file"])
        dets = [{k: v for k, v in r.items() if not (iou == "segm" and k == "bbox")} for r in results]
        ev = COCOeval(gt, gt.loadRes(dets), iou)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert m[f"{iou}_AP"] == pytest.approx(ev.stats[0] * 100, abs=1e-9)
        assert m[f"{iou}_AP50"] == pytest.approx(ev.stats[1] * 100, abs=1e-9)
    assert m["n_degenerate_skipped"] == 0
    assert (Path(job.out_dir) / "qualitative.png").is_file()


def test_training_resumes_from_last_checkpoint(tiny_demo, tmp_path, monkeypatch):
    import pcn.transfer as T
    from pcn.transfer import segmentation

    monkeypatch.setattr(T, "CHECKPOINT_EVERY", 2)
    job = _job("segmentation", "scratch", tiny_demo / "ade", tmp_path, iters=5)
    real_loop = T.train_loop
    calls = {"n": 0}

    def crash_at_3(job_, model, opt, sched, loader_from, step_fn, iters, *a, **k):
        def step(batch):
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt("preempted")
            return step_fn(batch)
        return real_loop(job_, model, opt, sched, loader_from, step, iters, *a, **k)

    monkeypatch.setattr(segmentation, "train_loop", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        segmentation.run(job)
    assert job.last_path.is_file() and not Path(job.out_dir).exists()  # nothing half-written
    assert torch.load(job.last_path, weights_only=True)["step"] == 2
    monkeypatch.setattr(segmentation, "train_loop", real_loop)
    m = segmentation.run(job)
    assert m["resumed_from"] == 2
    assert len(Path(job.plots_path).read_text().splitlines()) == 1 + 5
    assert not job.work_dir.exists()


# --- the stages through the CLI ------------------------------------------------------------------


def _stage_dir(tmp_path: Path, demo: Path, iters: int = 2, backbone: str = "pretrain") -> Path:
    """A working directory with params.yaml (tiny model, short runs), data/demo and a classification
    checkpoint at results/<backbone>/model.pth, the one both tasks are told to start from."""
    import yaml

    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    shutil.copytree(demo, work / "data" / "demo")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"] = {"name": "patchconvnet_demo", "options": dict(TINY_OPTIONS)}
    params["runtime"]["threads"] = 1
    params["segmentation"].update(img_size=64, iters=iters, batch_size=2, decoder_channels=16)
    params["detection"].update(img_size=64, iters=iters, batch_size=2, fpn_channels=16, min_sizes=[56, 64])
    for task in ("segmentation", "detection"):
        params[task]["backbone"] = backbone
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    (work / "results" / backbone).mkdir(parents=True)
    _classification_checkpoint(work / "results" / backbone / "model.pth")
    return work


def _pcn(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    env.pop("PCN_PIPELINE_RUN_ID", None)
    return subprocess.run([sys.executable, "-m", "pcn.cli", *args], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def test_cli_bad_coco_exits_2_and_writes_nothing(demo_copy, tmp_path, monkeypatch, capsys):
    from pcn.cli import main

    work = _stage_dir(tmp_path, demo_copy)
    _coco_file(work / "data" / "demo").write_text("not json")
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    monkeypatch.delenv("PCN_PIPELINE_RUN_ID", raising=False)
    assert main(["detection", "--init", "scratch"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pcn detection: error:")]
    assert errors == [("pcn detection: error: data/demo/coco/annotations/instances_val.json: "
                       "not valid JSON (Expecting value at line 1)")]
    assert not (work / "results" / "detection_scratch").exists()
    assert not (work / "metrics").exists() and not (work / "plots").exists()


def test_cli_missing_backbone_checkpoint_names_it(tiny_demo, tmp_path, monkeypatch, capsys):
    from pcn.cli import main

    work = _stage_dir(tmp_path, tiny_demo, backbone="finetune")
    (work / "results" / "finetune" / "model.pth").unlink()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    monkeypatch.delenv("PCN_PIPELINE_RUN_ID", raising=False)
    assert main(["segmentation", "--init", "pretrained"]) == 2
    assert ("pcn segmentation: error: results/finetune/model.pth: backbone checkpoint not found "
            "(run `pcn finetune`, or pass --checkpoint)") in capsys.readouterr().err
    assert not (work / "results" / "segmentation").exists()


@pytest.mark.slow
@pytest.mark.parametrize("task,init", [("segmentation", "pretrained"), ("detection", "scratch")])
def test_stage_outputs(tiny_demo, tmp_path, task, init):
    work = _stage_dir(tmp_path, tiny_demo, backbone="finetune" if init == "pretrained" else "pretrain")
    r = _pcn(work, task, "--init", init)
    assert r.returncode == 0, r.stderr[-3000:]
    name = task if init == "pretrained" else f"{task}_{init}"
    metrics = json.loads((work / "metrics" / f"{name}.json").read_text())
    if task == "segmentation":
        assert {"mIoU", "mAcc", "aAcc", "per_class_iou", "predictions_dir", "annotations_dir", "init", "iters",
                "seconds"} <= set(metrics)
        assert len(list((work / metrics["predictions_dir"]).glob("*.png"))) == 6
        assert "backbone from results/finetune/model.pth" in r.stdout  # segmentation.backbone
    else:
        keys = {f"{i}_{k}" for i in ("bbox", "segm") for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
        assert keys | {"results_file", "annotations_file", "n_degenerate_skipped"} <= set(metrics)
        assert (work / metrics["results_file"]).is_file()
    assert metrics["init"] == init and metrics["iters"] == 2
    assert (work / "plots" / f"{name}.csv").read_text().splitlines()[0] == "step,loss"
    assert (work / "results" / name / "qualitative.png").is_file()
    assert (work / "results" / name / "model.pth").is_file()
