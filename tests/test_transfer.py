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
from conftest import stage_argv
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINY_OPTIONS = {"embed_dim": 32, "depth": 4}  # a patchconvnet_demo small enough for seconds-long runs


# --- fixtures: tiny datasets in the official layouts (docs/datasets.md) ----------------------

ADE_CLASSES = 6  # label ids 1..6; the scenes use 1..3 only, so 4..6 are absent from val
COCO_CATEGORIES = [
    {"id": 3, "name": "car", "supercategory": "vehicle"},  # COCO's ids skip numbers
    {"id": 17, "name": "cat", "supercategory": "animal"},
    {"id": 88, "name": "teddy bear", "supercategory": "indoor"},
]
COLOURS = {1: (220, 40, 40), 2: (40, 220, 40), 3: (40, 40, 220)}
SCENE = (64, 80)  # height, width: not square, so the longer-side cap matters


def _scene(rng, objects: list[tuple[int, tuple[int, int, int, int]]]) -> np.ndarray:
    """Noise with one flat coloured rectangle (x0, y0, x1, y1) per object of class/category k."""
    image = rng.integers(0, 80, (*SCENE, 3), dtype=np.uint8)
    for k, (x0, y0, x1, y1) in objects:
        image[y0:y1, x0:x1] = COLOURS[k]
    return image


def _boxes(rng, n: int) -> list[tuple[int, int, int, int]]:
    out = []
    for _ in range(n):
        w, h = (int(v) for v in rng.integers(14, 28, 2))
        x0, y0 = int(rng.integers(0, SCENE[1] - w)), int(rng.integers(0, SCENE[0] - h))
        out.append((x0, y0, x0 + w, y0 + h))
    return out


def write_ade(root: Path, n_train: int = 8, n_val: int = 4, seed: int = 0) -> Path:
    """``ADEChallengeData2016/{images,annotations}/{training,validation}/ADE_<split>_<8 digits>``."""
    ade = root / "ADEChallengeData2016"
    rng = np.random.default_rng(seed)
    for split, folder, n in (("train", "training", n_train), ("val", "validation", n_val)):
        (ade / "images" / folder).mkdir(parents=True)
        (ade / "annotations" / folder).mkdir(parents=True)
        for k in range(1, n + 1):
            objects = list(zip((1, 2, 3), _boxes(rng, 3)))
            label = np.zeros(SCENE, np.uint8)  # 0 = other (ignored)
            for c, (x0, y0, x1, y1) in objects:
                label[y0:y1, x0:x1] = c
            stem = f"ADE_{split}_{k:08d}"
            Image.fromarray(_scene(rng, objects)).save(ade / "images" / folder / f"{stem}.jpg", quality=95)
            Image.fromarray(label).save(ade / "annotations" / folder / f"{stem}.png")
    return ade


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: run lengths of the column-major mask, starting with a run of zeros."""
    flat = mask.flatten(order="F")
    cuts = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, cuts, flat.size]).tolist()
    return {"counts": ([0] if flat[0] else []) + runs, "size": list(mask.shape)}


def write_coco(root: Path, n_train: int = 8, n_val: int = 4, seed: int = 0) -> Path:
    """``coco/{train,val}2017/<12 digits>.jpg`` and ``coco/annotations/instances_{train,val}2017.json``:
    non-contiguous category and image ids, polygons, one crowd region (uncompressed RLE) in val
    and one train image without annotations."""
    coco = root / "coco"
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in COCO_CATEGORIES]
    ann_id = 1
    for split, n, first_id in (("train", n_train, 9), ("val", n_val, 139)):
        (coco / f"{split}2017").mkdir(parents=True)
        images, anns = [], []
        for k in range(n):
            image_id = first_id + 146 * k
            boxes = [] if (split == "train" and k == n - 1) else _boxes(rng, 2)
            ks = [int(rng.integers(1, 4)) for _ in boxes]
            name = f"{image_id:012d}.jpg"
            Image.fromarray(_scene(rng, list(zip(ks, boxes)))).save(coco / f"{split}2017" / name, quality=95)
            images.append({"id": image_id, "file_name": name, "height": SCENE[0], "width": SCENE[1]})
            for kk, (x0, y0, x1, y1) in zip(ks, boxes):
                anns.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": cats[kk - 1],
                        "iscrowd": 0,
                        "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                        "area": float((x1 - x0) * (y1 - y0)),
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                    }
                )
                ann_id += 1
            if split == "val" and k == 0:  # a crowd region: COCOeval's ignore
                mask = np.zeros(SCENE, np.uint8)
                mask[40:60, 50:76] = 1
                anns.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": cats[0],
                        "iscrowd": 1,
                        "segmentation": _uncompressed_rle(mask),
                        "area": float(mask.sum()),
                        "bbox": [50, 40, 26, 20],
                    }
                )
                ann_id += 1
        (coco / "annotations").mkdir(exist_ok=True)
        (coco / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps(
                {"info": {"description": "test"}, "images": images, "annotations": anns, "categories": COCO_CATEGORIES}
            )
        )
    return coco


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A data root holding ``ADEChallengeData2016/`` and ``coco/``."""
    root = tmp_path_factory.mktemp("tiny_data")
    write_ade(root)
    write_coco(root)
    return root


@pytest.fixture
def data_copy(tiny_data, tmp_path) -> Path:
    """A writable copy of the tiny datasets, to break."""
    out = tmp_path / "data"
    shutil.copytree(tiny_data, out)
    return out


def _job(task, init, data, out, iters=3, checkpoint=None, **cfg):
    from pcn.transfer import TransferJob

    config = {
        "img_size": 64,
        "iters": iters,
        "batch_size": 2,
        "lr": 1e-3,
        "weight_decay": 0.01,
        "decoder_channels": 16,
        "fpn_channels": 16,
        "min_sizes": [64],
        "test_size": 64,
        "max_size": 96,
        "n_classes": ADE_CLASSES,
        "loss": "weighted_ce_dice",
    }
    config.update(cfg)
    name = task if init == "pretrained" else f"{task}_{init}"
    root = data / ("ADEChallengeData2016" if task == "segmentation" else "coco")
    return TransferJob(
        task=task,
        init=init,
        model="patchconvnet_demo",
        model_options=dict(TINY_OPTIONS),
        config=config,
        data_root=str(root),
        out_dir=str(out / "results" / name),
        plots_path=str(out / "plots" / f"{name}.csv"),
        checkpoint=checkpoint,
        threads=1,
        device="cpu",
        stage=name,
    )


def _classification_checkpoint(path: Path, **options) -> Path:
    import timm

    import pcn.models  # noqa: F401

    model = timm.create_model("patchconvnet_demo", num_classes=3, **(options or TINY_OPTIONS))
    torch.save({"model": model.state_dict()}, path)
    return path


# --- pyramid -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 96, 128, 160])
@pytest.mark.parametrize(
    "name,options,stem",
    [
        ("patchconvnet_demo", {}, 8),
        ("patchconvnet_s60", {"embed_dim": 32, "depth": 4}, 16),
    ],
)
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


def test_pyramid_from_the_last_block_as_the_paper():
    """features: last: every level is made from the last block's output (the paper's dense
    transfer); blocks: the finer levels come from earlier blocks (XCiT's taps)."""
    import timm

    from pcn.transfer.pyramid import create_pyramid_backbone, pyramid_blocks

    assert pyramid_blocks(8, "last") == [7, 7, 7, 7] and pyramid_blocks(8, "blocks") == [1, 3, 5, 7]
    with pytest.raises(ValueError, match="features = 'first'"):
        pyramid_blocks(8, "first")
    torch.manual_seed(0)
    last, _ = create_pyramid_backbone("patchconvnet_demo", TINY_OPTIONS, features="last")
    torch.manual_seed(0)
    blocks, _ = create_pyramid_backbone("patchconvnet_demo", TINY_OPTIONS, features="blocks")
    assert len(last.trunk.blocks) == len(blocks.trunk.blocks) == TINY_OPTIONS["depth"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out_last, out_blocks = last(x), blocks(x)
        # the demo trunk's stride 8 is level 1's: identity neck after the level's norm
        trunk_maps = last.trunk.forward_intermediates(x, output_fmt="NCHW", intermediates_only=True)
    assert [f.shape for f in out_last] == [f.shape for f in out_blocks]
    torch.testing.assert_close(out_last[1], last.norms[1](trunk_maps[-1]))
    torch.testing.assert_close(out_blocks[1], blocks.norms[1](trunk_maps[1]))
    assert not torch.allclose(out_last[1], out_blocks[1])
    del timm


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_dense_tasks_read_their_features_setting(tiny_data, tmp_path, task):
    from pcn.transfer import detection, segmentation

    build = segmentation.build_model if task == "segmentation" else detection.build_model
    for features, indices in (("last", [3, 3, 3, 3]), ("blocks", [0, 1, 2, 3])):
        model, _ = build(_job(task, "scratch", tiny_data, tmp_path, features=features), 3)
        pyramid = model.backbone if task == "segmentation" else model.backbone.body
        assert pyramid.indices == indices


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


def _paper_segmentation() -> dict:
    """The paper scale's resolved segmentation section."""
    import yaml

    from pcn.config import resolve

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["scale"] = "paper"
    return resolve(raw).segmentation.model_dump()


def test_upernet_aux_head_at_paper_settings(tiny_data, tmp_path):
    """At paper scale UperNet trains mmseg's auxiliary FCN head on the stride-16 level, and its
    loss enters the total with weight 0.4; in eval mode only the decode head's logits come out."""
    from pcn.transfer.segmentation import IGNORE_TARGET, build_model, segmentation_loss

    paper = _paper_segmentation()
    assert paper["aux_loss_weight"] == 0.4
    job = _job("segmentation", "scratch", tiny_data, tmp_path, aux_loss_weight=paper["aux_loss_weight"])
    model, _ = build_model(job, ADE_CLASSES)
    assert model.aux_head is not None
    assert model.aux_head.conv[0].in_channels == model.backbone.out_channels[2]  # mmseg's in_index 2
    x = torch.randn(2, 3, 64, 80)
    model.train()
    logits, aux = model(x)
    assert logits.shape == aux.shape == (2, ADE_CLASSES, 64, 80)
    target = torch.randint(0, ADE_CLASSES, (2, 64, 80))
    target[:, :4] = IGNORE_TARGET
    ce = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_TARGET)
    loss = segmentation_loss(ce, (logits, aux), target, paper["aux_loss_weight"])
    assert loss.item() == pytest.approx((ce(logits, target) + 0.4 * ce(aux, target)).item(), rel=1e-6)
    loss.backward()
    assert model.aux_head.classifier.weight.grad.abs().sum() > 0
    model.eval()
    assert isinstance(model(x), torch.Tensor)
    # weight 0: no auxiliary head at all
    assert build_model(_job("segmentation", "scratch", tiny_data, tmp_path, aux_loss_weight=0), 3)[0].aux_head is None


def test_multiscale_flip_test_averages_the_probabilities_of_every_pass():
    """mmseg's aug_test: ratios 0.5..1.75 of the test image, each also flipped; every pass's
    logits resized to the label map's size, softmaxed, flipped back, then averaged."""
    import torch.nn.functional as F

    from pcn.transfer.pyramid import create_pyramid_backbone
    from pcn.transfer.segmentation import MS_RATIOS, UperNetSegmenter, class_probabilities, predict

    torch.manual_seed(0)
    backbone, _ = create_pyramid_backbone("patchconvnet_demo", TINY_OPTIONS)
    model = UperNetSegmenter(backbone, n_classes=5, decoder_channels=16, aux_head=True).eval()
    assert MS_RATIOS == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    image = torch.randn(3, 40, 56)
    size = (45, 63)  # the label map's, not the test image's
    sizes = [(20, 28), (30, 42), (40, 56), (50, 70), (60, 84), (70, 98)]  # 40 x 56 times each ratio
    by_hand = torch.zeros(5, *size)
    with torch.no_grad():
        for hw in sizes:
            scaled = F.interpolate(image[None], size=hw, mode="bilinear", align_corners=False)
            for flipped in (False, True):
                x = torch.flip(scaled, dims=[3]) if flipped else scaled
                up = F.interpolate(model(x), size=size, mode="bilinear", align_corners=False)
                p = torch.softmax(up, dim=1)[0]
                by_hand += torch.flip(p, dims=[2]) if flipped else p
    by_hand /= 12
    got = class_probabilities(model, image, size, MS_RATIOS, flip=True)
    torch.testing.assert_close(got, by_hand, rtol=1e-5, atol=1e-6)
    assert torch.equal(predict(model, image, size, MS_RATIOS, True), by_hand.argmax(0))
    # the single-scale test is the one unflipped pass at ratio 1
    with torch.no_grad():
        single = F.interpolate(model(image[None]), size=size, mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(class_probabilities(model, image, size), single.softmax(0))


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


def test_miou_absent_classes_follow_mmseg():
    """mmseg's IoUMetric: 0/0 is NaN and np.nanmean skips it; absent but predicted is IoU 0 and counts."""
    from pcn.transfer.metrics import confusion_matrix, segmentation_scores

    # 4 classes: 0 and 1 present; 2 absent but predicted once; 3 absent and never predicted
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 0, 1, 2])
    s = segmentation_scores(confusion_matrix(pred, target, 4))
    assert s["per_class_iou"] == [100.0, 50.0, 0.0, None]
    assert s["mIoU"] == pytest.approx((100 + 50 + 0) / 3)
    assert s["per_class_acc"] == [100.0, 50.0, None, None] and s["mAcc"] == 75.0


# --- sampling ------------------------------------------------------------------------------


def test_iteration_sampler_shards_every_global_batch():
    """Under DDP the ranks together see the one-process run's batches, each rank an equal slice,
    from any resume point."""
    from pcn.transfer import IterationSampler

    n, batch, iters = 7, 4, 5
    single = list(IterationSampler(n, batch, iters, seed=3))
    assert len(single) == iters * batch and sorted(single[:n]) == list(range(n))  # a permutation per pass
    shards = [list(IterationSampler(n, batch, iters, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert all(
        len(sh) == len(IterationSampler(n, batch, iters, 3, rank=r, world_size=2)) == iters * 2
        for r, sh in enumerate(shards)
    )
    for it in range(iters):
        assert shards[0][2 * it : 2 * it + 2] + shards[1][2 * it : 2 * it + 2] == single[batch * it : batch * (it + 1)]
    resumed = list(IterationSampler(n, batch, iters, seed=3, start=2, rank=1, world_size=2))
    assert resumed == shards[1][4:]
    with pytest.raises(ValueError, match="global batch of 4 does not split over 3 ranks"):
        IterationSampler(n, batch, iters, seed=3, rank=0, world_size=3)


def test_evaluation_shards_cover_the_set_once():
    from pcn.train.distributed import DistEnv
    from pcn.transfer import shard

    parts = [shard(10, DistEnv(rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for part in parts for i in part) == list(range(10))
    assert shard(10, DistEnv()) == list(range(10))


# --- loaders on bad input ------------------------------------------------------------------


def test_ade_loader_reads_official_layout(tiny_data):
    from pcn.transfer.datasets import AdeSegmentation, ade_train_transforms

    ds = AdeSegmentation(
        tiny_data / "ADEChallengeData2016", "train", n_classes=ADE_CLASSES, transforms=ade_train_transforms(64)
    )
    assert ds.n_classes == ADE_CLASSES and len(ds) == 8 and len(ds.class_names) == ADE_CLASSES
    image, label, _ = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert label.shape == (64, 64) and int(label.max()) <= 3
    assert ds.pixel_counts()[:3].min() > 0 and ds.pixel_counts()[3:].sum() == 0


def test_ade_label_map_of_another_size(data_copy):
    from pcn.transfer.datasets import AdeSegmentation, DatasetError

    ade = data_copy / "ADEChallengeData2016"
    png = sorted((ade / "annotations/validation").glob("*.png"))[1]
    Image.fromarray(np.ones((40, 64), np.uint8)).save(png)
    with pytest.raises(DatasetError, match=rf"{png.name}: label map is 64x40, its image .*80x64"):
        AdeSegmentation(ade, "val", n_classes=ADE_CLASSES)


def test_ade_label_id_above_n(data_copy):
    from pcn.transfer.datasets import AdeSegmentation, DatasetError

    ade = data_copy / "ADEChallengeData2016"
    png = sorted((ade / "annotations/training").glob("*.png"))[2]
    label = np.array(Image.open(png))
    label[5, 5] = 9
    Image.fromarray(label).save(png)
    with pytest.raises(DatasetError, match=rf"{png.name}: label id 9 above the {ADE_CLASSES} classes"):
        AdeSegmentation(ade, "train", n_classes=ADE_CLASSES)


def test_ade_image_missing_or_unreadable(data_copy):
    from pcn.transfer.datasets import AdeSegmentation, DatasetError

    ade = data_copy / "ADEChallengeData2016"
    jpg = min((ade / "images/validation").glob("*.jpg"))
    jpg.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=rf"{jpg.name}: unreadable image"):
        AdeSegmentation(ade, "val", n_classes=ADE_CLASSES)
    jpg.unlink()
    (ade / "annotations/validation" / (jpg.stem + ".png")).unlink()
    AdeSegmentation(ade, "val", n_classes=ADE_CLASSES)  # a pair removed together is fine
    orphan = min((ade / "annotations/validation").glob("*.png"))
    orphan.unlink()
    with pytest.raises(DatasetError, match=rf"{orphan.stem}"):
        AdeSegmentation(ade, "val", n_classes=ADE_CLASSES)


def _coco_file(root: Path, split: str = "val") -> Path:
    return root / "coco" / "annotations" / f"instances_{split}2017.json"


def _edit_coco(root: Path, edit, split: str = "val") -> Path:
    path = _coco_file(root, split)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def test_coco_loader_reads_official_layout(tiny_data):
    from pcn.transfer.datasets import CocoInstances, coco_train_transforms

    ds = CocoInstances(tiny_data / "coco", "train", transforms=coco_train_transforms())
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, *SCENE)
    assert target["masks"].shape[0] == target["boxes"].shape[0] == target["labels"].shape[0] >= 1
    assert set(target["labels"].tolist()) <= {1, 2, 3}  # contiguous labels for the model
    assert ds.label_to_cat == {1: 3, 2: 17, 3: 88} and ds.cat_to_label == {3: 1, 17: 2, 88: 3}
    assert ds.n_degenerate == 0


def test_coco_not_json(data_copy):
    from pcn.transfer.datasets import CocoInstances, DatasetError

    path = _coco_file(data_copy)
    path.write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"instances_val2017\.json: not valid JSON"):
        CocoInstances(data_copy / "coco", "val")


def test_coco_unknown_image_and_category(data_copy):
    from pcn.transfer.datasets import CocoInstances, DatasetError

    def bad_image(d):
        d["annotations"][0]["image_id"] = 999

    _edit_coco(data_copy, bad_image)
    with pytest.raises(DatasetError, match=r"instances_val2017\.json: annotation \d+ refers to image id 999"):
        CocoInstances(data_copy / "coco", "val")

    def bad_category(d):
        d["annotations"][0]["image_id"] = d["images"][0]["id"]
        d["annotations"][1]["category_id"] = 77

    _edit_coco(data_copy, bad_category)
    with pytest.raises(DatasetError, match=r"instances_val2017\.json: annotation \d+ refers to category id 77"):
        CocoInstances(data_copy / "coco", "val")


def test_coco_image_missing_or_unreadable(data_copy):
    from pcn.transfer.datasets import CocoInstances, DatasetError

    image = sorted((data_copy / "coco/val2017").glob("*.jpg"))[3]
    image.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DatasetError, match=rf"{image.name}: unreadable image"):
        CocoInstances(data_copy / "coco", "val")
    image.unlink()
    with pytest.raises(DatasetError, match=rf"{image.name}: image file missing"):
        CocoInstances(data_copy / "coco", "val")


def test_coco_degenerate_boxes_skipped_and_counted(data_copy):
    from pcn.transfer.datasets import CocoInstances

    def flatten(d):
        d["annotations"][0]["bbox"][2] = 0
        d["annotations"][1]["bbox"][3] = 0.0

    _edit_coco(data_copy, flatten)
    with pytest.warns(UserWarning, match="degenerate box"):
        ds = CocoInstances(data_copy / "coco", "val")
    assert ds.n_degenerate == 2
    kept = sum(len(a) for a in ds.anns.values())
    crowd = sum(1 for a in ds.data["annotations"] if a.get("iscrowd"))
    assert kept == len(ds.data["annotations"]) - 2 - crowd


# --- training, outputs and re-scoring ---------------------------------------------------------


def _rescore_segmentation(m: dict) -> tuple[np.ndarray, list[str]]:
    """The confusion matrix of the saved prediction PNGs against the val label maps."""
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
    return conf, [a.name for a in anns]


def test_segmentation_predictions_rescore(tiny_data, tmp_path):
    """The saved PNGs, scored with a plain confusion matrix, give the reported numbers; one
    per-class IoU per class, null exactly where a class is neither in val nor predicted."""
    from pcn.transfer import TransferTask

    ckpt = _classification_checkpoint(tmp_path / "pre.pth")
    job = _job("segmentation", "pretrained", tiny_data, tmp_path, iters=2, checkpoint=str(ckpt))
    m = TransferTask(job)()
    assert m["backbone_weights"]["n_dropped"] > 0 and "head" in m["backbone_weights"]["dropped"]
    assert m["ranks"] == 1 and m["batch_per_rank"] == 2 and m["n_classes"] == ADE_CLASSES
    conf, _ = _rescore_segmentation(m)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = tp[union > 0] / union[union > 0] * 100
    assert m["mIoU"] == pytest.approx(iou.mean(), abs=1e-9)
    assert m["aAcc"] == pytest.approx(tp.sum() / conf.sum() * 100, abs=1e-9)
    per_class = list(m["per_class_iou"].values())
    assert len(per_class) == ADE_CLASSES
    assert [v is None for v in per_class] == (union == 0).tolist()
    assert all(v is not None for v in per_class[:3])  # ids 1..3 are in every val scene
    assert (Path(job.out_dir) / "qualitative.png").stat().st_size > 0
    assert torch.load(Path(job.out_dir) / "model.pth", weights_only=True)["model"]
    lines = Path(job.plots_path).read_text().splitlines()
    assert lines[0] == "step,loss" and len(lines) == 3
    assert not job.work_dir.exists()


def test_multiscale_flip_scores_rescore_from_their_predictions(tiny_data, tmp_path):
    """With multiscale_flip_test the stage scores both protocols; each set of saved maps gives
    its own reported mIoU."""
    from pcn.transfer import TransferTask

    job = _job("segmentation", "scratch", tiny_data, tmp_path, iters=2, multiscale_flip_test=True)
    m = TransferTask(job)()
    assert m["test_ratios"] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    for key, folder in (("mIoU", "predictions_dir"), ("mIoU_ms_flip", "predictions_dir_ms_flip")):
        conf, _ = _rescore_segmentation({**m, "predictions_dir": m[folder]})
        tp = np.diag(conf)
        union = conf.sum(0) + conf.sum(1) - tp
        assert m[key] == pytest.approx((tp[union > 0] / union[union > 0] * 100).mean(), abs=1e-9), key
    off = TransferTask(_job("segmentation", "scratch", tiny_data, tmp_path / "off", iters=2))()
    assert (
        "mIoU_ms_flip" not in off
        and not (tmp_path / "off" / "results" / "segmentation_scratch" / "predictions_ms_flip").exists()
    )


def test_mask_ap_is_100_for_the_ground_truth_masks(tiny_data):
    """pycocotools' segm AP of detections equal to the val file's masks is 100; one mask
    shifted off its object costs AP."""
    from pcn.transfer.metrics import coco_ground_truth, coco_scores

    gt = coco_ground_truth(tiny_data / "coco" / "annotations" / "instances_val2017.json")
    results = []
    for ann in gt.loadAnns(gt.getAnnIds(iscrowd=False)):
        rle = gt.annToRLE(ann)
        rle = {
            "size": rle["size"],
            "counts": rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"],
        }
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": ann["bbox"],
                "score": 1.0,
                "segmentation": rle,
            }
        )
    assert len(results) > 3
    assert coco_scores(gt, results, "segm")["AP"] == pytest.approx(100.0)
    assert coco_scores(gt, results, "bbox")["AP"] == pytest.approx(100.0)
    from pycocotools import mask as mask_utils

    wrong = mask_utils.decode({**results[0]["segmentation"], "counts": results[0]["segmentation"]["counts"].encode()})
    wrong = np.roll(wrong, wrong.shape[1] // 2, axis=1)
    bad = mask_utils.encode(np.asfortranarray(wrong))
    results[0] = {**results[0], "segmentation": {"size": bad["size"], "counts": bad["counts"].decode("ascii")}}
    assert coco_scores(gt, results, "segm")["AP"] < 100.0


def test_segmentation_loss_follows_config(tiny_data, tmp_path):
    from pcn.transfer.datasets import AdeSegmentation
    from pcn.transfer.segmentation import IGNORE_TARGET, SegmentationLoss, build_criterion

    train = AdeSegmentation(tiny_data / "ADEChallengeData2016", "train", n_classes=ADE_CLASSES)
    ce = build_criterion(_job("segmentation", "scratch", tiny_data, tmp_path, loss="ce"), train)
    assert type(ce) is torch.nn.CrossEntropyLoss and ce.weight is None and ce.ignore_index == IGNORE_TARGET
    weighted = build_criterion(_job("segmentation", "scratch", tiny_data, tmp_path, loss="weighted_ce_dice"), train)
    assert isinstance(weighted, SegmentationLoss) and weighted.dice is not None
    assert weighted.ce.weight.shape == (ADE_CLASSES,)
    # Plain CE over the labelled pixels only: unlabelled pixels (target -1) change nothing.
    logits, target = torch.randn(1, ADE_CLASSES, 4, 4), torch.randint(0, 3, (1, 4, 4))
    masked = target.clone()
    masked[0, 0] = -1
    expected = torch.nn.functional.cross_entropy(
        logits.permute(0, 2, 3, 1)[0, 1:].reshape(-1, ADE_CLASSES), target[0, 1:].reshape(-1)
    )
    assert ce(logits, masked) == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="segmentation.loss = 'focal'"):
        build_criterion(_job("segmentation", "scratch", tiny_data, tmp_path, loss="focal"), train)


def test_detection_results_use_the_val_file_ids_and_rescore(tiny_data, tmp_path):
    """The results file speaks the val file's category and image ids, and pycocotools on the val
    file itself (crowd region included) gives the reported AP."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from pcn.transfer import TransferTask

    job = _job("detection", "scratch", tiny_data, tmp_path, iters=2, lr=1e-4)
    m = TransferTask(job)()
    assert Path(m["annotations_file"]) == tiny_data / "coco" / "annotations" / "instances_val2017.json"
    results = json.loads(Path(m["results_file"]).read_text())
    assert isinstance(results, list) and m["n_detections"] == len(results) > 0
    assert {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(results[0])
    val = json.loads(Path(m["annotations_file"]).read_text())
    assert {r["category_id"] for r in results} <= {c["id"] for c in val["categories"]} == {3, 17, 88}
    assert {r["image_id"] for r in results} <= {im["id"] for im in val["images"]}
    gt = COCO(m["annotations_file"])
    for iou in ("bbox", "segm"):
        dets = [{k: v for k, v in r.items() if not (iou == "segm" and k == "bbox")} for r in results]
        ev = COCOeval(gt, gt.loadRes(dets), iou)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert m[f"{iou}_AP"] == pytest.approx(ev.stats[0] * 100, abs=1e-9)
        assert m[f"{iou}_AP50"] == pytest.approx(ev.stats[1] * 100, abs=1e-9)
    assert m["n_degenerate_skipped"] == 0 and m["test_size"] == 64 and m["max_size"] == 96
    assert m["n_train_images"] == 7 and m["n_train_images_without_objects"] == 1
    assert (Path(job.out_dir) / "qualitative.png").is_file()
    assert not job.work_dir.exists()


def test_detection_test_and_max_size_reach_the_transform(tiny_data, tmp_path):
    """Training draws the shorter side from min_sizes, testing uses test_size; both cap the longer
    side at max_size (the COCO protocol at 800 / 1333)."""
    from pcn.transfer.detection import build_model, use_test_size

    job = _job("detection", "scratch", tiny_data, tmp_path, min_sizes=[48, 56], test_size=60, max_size=70)
    model, _ = build_model(job, n_classes=3)
    assert model.transform.min_size == (48, 56) and model.transform.max_size == 70
    use_test_size(model, job)
    model.eval()
    image = torch.rand(3, *SCENE)  # 64 x 80: shorter side 60 would make it 75 wide > 70
    batch, _ = model.transform([image])
    assert batch.image_sizes == [(56, 70)]  # the longer side capped: 80 * 70 / 80, 64 * 70 / 80
    job_wide = _job("detection", "scratch", tiny_data, tmp_path, test_size=40, max_size=1333)
    use_test_size(model, job_wide)
    assert model.transform([image])[0].image_sizes == [(40, 50)]


def test_detection_keeps_mmdetection_counts_at_coco_sizes_and_scales_them_down(tiny_data, tmp_path):
    """At COCO's sizes the detector samples as mmdetection's Mask R-CNN (512 RoIs, RPN 2000 -> 1000
    in training, 1000 -> 1000 at test, adaptive RoIAlign); on small scenes the per-image counts
    shrink with the area, never below their floors."""
    from pcn.transfer.detection import build_model, scaled_count

    assert [scaled_count(2000, s, floor=500) for s in (64, 400, 800, 1024)] == [500, 500, 2000, 2000]
    big, _ = build_model(_job("detection", "scratch", tiny_data, tmp_path, img_size=1024), n_classes=3)
    small, _ = build_model(_job("detection", "scratch", tiny_data, tmp_path, img_size=128), n_classes=3)
    counts = {
        m: (m.roi_heads.fg_bg_sampler.batch_size_per_image, m.rpn._pre_nms_top_n, m.rpn._post_nms_top_n)
        for m in (big, small)
    }
    assert counts[big] == (512, {"training": 2000, "testing": 1000}, {"training": 1000, "testing": 1000})
    assert counts[small] == (128, {"training": 500, "testing": 500}, {"training": 500, "testing": 500})
    for pool in (big.roi_heads.box_roi_pool, big.roi_heads.mask_roi_pool):
        assert pool.sampling_ratio == 0


def test_training_resumes_exactly_through_the_shared_loop(tiny_data, tmp_path, monkeypatch):
    """Transfer trains through the classification engine's loop and its resume state: a crash
    resumes from the last periodic state, a stop request (preemption) saves at once, and the
    resumed run ends with the weights and losses of the run that was never interrupted."""
    from pcn.train.loop import FORMAT
    from pcn.transfer import loop, segmentation

    monkeypatch.setattr(loop, "CHECKPOINT_EVERY", 2)
    ref_job = _job("segmentation", "scratch", tiny_data, tmp_path / "ref", iters=5)
    ref = segmentation.run(ref_job)
    assert ref["resumed_from"] == 0
    job = _job("segmentation", "scratch", tiny_data, tmp_path / "run", iters=5)
    calls = {"n": 0}

    def crash_at_step_4() -> bool:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return False

    with pytest.raises(KeyboardInterrupt):
        segmentation.run(job, stop=crash_at_step_4)
    assert not Path(job.out_dir).exists()  # nothing half-written
    saved = torch.load(job.last_path, weights_only=True)
    assert saved["format"] == FORMAT and saved["global_step"] == 2  # CHECKPOINT_EVERY=2
    assert segmentation.run(job, stop=lambda: True) == {"status": "interrupted", "global_step": 3}
    assert torch.load(job.last_path, weights_only=True)["global_step"] == 3 and not Path(job.out_dir).exists()
    m = segmentation.run(job)
    assert m["resumed_from"] == 3 and m["final_loss"] == ref["final_loss"]
    assert Path(job.plots_path).read_text() == Path(ref_job.plots_path).read_text()
    got, want = (torch.load(Path(j.out_dir) / "model.pth", weights_only=True)["model"] for j in (job, ref_job))
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert m["mIoU"] == ref["mIoU"]
    assert not job.work_dir.exists()


def test_segmentation_needs_two_images_per_rank_on_the_cpu(tiny_data, tmp_path):
    from pcn.transfer import segmentation

    job = _job("segmentation", "scratch", tiny_data, tmp_path, batch_size=1)
    with pytest.raises(ValueError, match="segmentation.batch_size = 1 gives 1 image per rank; BatchNorm needs 2"):
        segmentation.run(job)
    assert not Path(job.out_dir).exists()


@pytest.mark.parametrize("task", ["segmentation", pytest.param("detection", marks=pytest.mark.slow)])
def test_two_rank_ddp_through_the_local_launcher(tiny_data, tmp_path, task):
    """Two gloo ranks through submitit's local executor (the stages' own path): each takes half of
    the global batch and scores half of val; rank 0 gathers and writes the outputs."""
    from pcn.config import LauncherConfig
    from pcn.train.launch import launch
    from pcn.transfer import TransferTask

    # Segmentation: 2 images per rank, as at paper scale (BatchNorm on the CPU is per rank), with
    # the paper's auxiliary head and both tests.
    per_rank = 2 if task == "segmentation" else 1
    extra = {"aux_loss_weight": 0.4, "multiscale_flip_test": True} if task == "segmentation" else {}
    job = _job(task, "scratch", tiny_data, tmp_path, iters=2, batch_size=2 * per_rank, **extra)
    m = launch(TransferTask(job), LauncherConfig(kind="local", tasks=2), tmp_path / "logs", echo=lambda _: None)
    assert m["ranks"] == 2 and m["batch_per_rank"] == per_rank
    assert len(Path(job.plots_path).read_text().splitlines()) == 1 + 2
    assert not job.work_dir.exists()
    if task == "segmentation":
        for key, folder in (("aAcc", "predictions_dir"), ("aAcc_ms_flip", "predictions_dir_ms_flip")):
            conf, names = _rescore_segmentation({**m, "predictions_dir": m[folder]})
            assert len(names) == 4  # both shards' predictions, every val image once
            tp = np.diag(conf)
            assert m[key] == pytest.approx(tp.sum() / conf.sum() * 100, abs=1e-9)
    else:
        results = json.loads(Path(m["results_file"]).read_text())
        assert {r["image_id"] for r in results} == {139, 285, 431, 577}  # both shards' images


# --- the stages through the CLI ------------------------------------------------------------------


def _stage_dir(tmp_path: Path, data: Path, iters: int = 2, backbone: str = "pretrain") -> Path:
    """A working directory with params.yaml (tiny model, short runs), the datasets under data/demo
    and a classification checkpoint at results/<backbone>/model.pth, the one both tasks start from."""
    import yaml

    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    shutil.copytree(data, work / "data" / "demo")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"] = {"name": "patchconvnet_demo", "options": dict(TINY_OPTIONS)}
    params["runtime"]["threads"] = 1
    params["data"]["num_workers"] = 0
    params["segmentation"].update(img_size=64, iters=iters, batch_size=2, decoder_channels=16, n_classes=ADE_CLASSES)
    params["detection"].update(
        img_size=64, iters=iters, batch_size=2, fpn_channels=16, min_sizes=[56, 64], test_size=64, max_size=96
    )
    for task in ("segmentation", "detection"):
        params[task]["backbone"] = backbone
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    (work / "results" / backbone).mkdir(parents=True)
    _classification_checkpoint(work / "results" / backbone / "model.pth")
    return work


def _pcn(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    env.pop("PCN_PIPELINE_RUN_ID", None)
    return subprocess.run(
        [sys.executable, "-m", "pcn.cli", *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _main_in(work: Path, monkeypatch, *argv: str) -> int:
    from pcn.cli import main

    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    monkeypatch.delenv("PCN_PIPELINE_RUN_ID", raising=False)
    monkeypatch.delenv("PCN_LAUNCHER", raising=False)
    return main(list(argv))


def test_cli_bad_coco_exits_2_and_writes_nothing(data_copy, tmp_path, monkeypatch, capsys):
    work = _stage_dir(tmp_path, data_copy)
    _coco_file(work / "data" / "demo").write_text("not json")
    assert _main_in(work, monkeypatch, *stage_argv("detection_scratch", work / "params.yaml")) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pcn detection: error:")]
    assert errors == [
        (
            "pcn detection: error: data/demo/coco/annotations/instances_val2017.json: "
            "not valid JSON (Expecting value at line 1)"
        )
    ]
    assert not (work / "results" / "detection_scratch").exists()
    assert not (work / "metrics").exists() and not (work / "plots").exists()


def test_cli_missing_backbone_checkpoint_names_it(tiny_data, tmp_path, monkeypatch, capsys):
    work = _stage_dir(tmp_path, tiny_data, backbone="finetune")
    (work / "results" / "finetune" / "model.pth").unlink()
    assert _main_in(work, monkeypatch, *stage_argv("segmentation", work / "params.yaml")) == 2
    assert (
        "pcn segmentation: error: results/finetune/model.pth: backbone checkpoint not found "
        "(run `pcn finetune`, or pass --checkpoint)"
    ) in capsys.readouterr().err
    assert not (work / "results" / "segmentation").exists()


def test_cli_batch_must_split_over_the_ranks(tiny_data, tmp_path, monkeypatch, capsys):
    import yaml

    work = _stage_dir(tmp_path, tiny_data)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["launcher"]["tasks"] = 3
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    assert _main_in(work, monkeypatch, *stage_argv("segmentation_scratch", work / "params.yaml")) == 2
    assert (
        "pcn segmentation: error: segmentation.batch_size = 2 does not split over the launcher's 3 ranks "
        "(the global batch: a multiple of 3 expected)"
    ) in capsys.readouterr().err
    assert not (work / "results" / "segmentation_scratch").exists()


@pytest.mark.slow
@pytest.mark.parametrize("task,init", [("segmentation", "pretrained"), ("detection", "scratch")])
def test_stage_outputs(tiny_data, tmp_path, task, init):
    work = _stage_dir(tmp_path, tiny_data, backbone="finetune" if init == "pretrained" else "pretrain")
    name = task if init == "pretrained" else f"{task}_{init}"
    r = _pcn(work, *stage_argv(name, work / "params.yaml"))
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((work / "metrics" / f"{name}.json").read_text())
    if task == "segmentation":
        assert {
            "mIoU",
            "mAcc",
            "aAcc",
            "per_class_iou",
            "predictions_dir",
            "annotations_dir",
            "init",
            "iters",
            "seconds",
        } <= set(metrics)
        assert len(metrics["per_class_iou"]) == ADE_CLASSES
        assert len(list((work / metrics["predictions_dir"]).glob("*.png"))) == 4
        assert "backbone from results/finetune/model.pth" in r.stdout  # segmentation.backbone
    else:
        keys = {f"{i}_{k}" for i in ("bbox", "segm") for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
        assert keys | {"results_file", "annotations_file", "n_degenerate_skipped"} <= set(metrics)
        assert (work / metrics["results_file"]).is_file()
    assert metrics["init"] == init and metrics["iters"] == 2
    assert (work / "plots" / f"{name}.csv").read_text().splitlines()[0] == "step,loss"
    assert (work / "results" / name / "qualitative.png").is_file()
    assert (work / "results" / name / "model.pth").is_file()
