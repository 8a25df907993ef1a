"""Tests of the synthetic demo-data generator (pcn.data.demo.synthetic)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcn.config import DemoDataConfig
from pcn.data.demo import layouts
from pcn.data.demo import scenes as demo_scenes
from pcn.data.demo.classification import render_classification_sample
from pcn.data.demo.drawing import mask_to_box, render_background, render_object
from pcn.data.demo.scenes import DEMO_CATEGORY_IDS, render_scene
from pcn.data.demo.shapes import SHAPES, class_names, wnids
from pcn.data.demo.spec import DemoSpec, image_rng
from pcn.data.demo.synthetic import SUMMARY_FILE, content_hash, generate

# pycocotools 2.0.x calls np.array(copy=False)-style APIs that numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# The sizes come from the params schema (its defaults, less data), as the demo_data stage builds them.
SMALL = DemoSpec(
    seed=7,
    **DemoDataConfig(n_classes=10, train_per_class=3, val_per_class=2, n_scenes_train=12, n_scenes_val=10).model_dump(),
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "data"
    summary = generate(out, SMALL, progress=False)
    return out, summary


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_different_seed_differs(demo, tmp_path):
    out, summary = demo
    again = generate(tmp_path / "again", SMALL, progress=False)
    assert again["content_hash"] == summary["content_hash"] == summary["hash"]
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    for rel in files[:: max(1, len(files) // 25)]:
        assert (out / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
    other = generate(tmp_path / "other", DemoSpec(**{**SMALL.__dict__, "seed": 8}), progress=False)
    assert other["content_hash"] != summary["content_hash"]
    assert content_hash(out) == summary["content_hash"]
    assert json.loads((out / SUMMARY_FILE).read_text())["content_hash"] == summary["content_hash"]


@pytest.mark.slow  # spawning workers takes seconds (tens of seconds on a loaded machine)
def test_worker_processes_give_the_same_files(demo, tmp_path):
    _, summary = demo
    par = generate(tmp_path / "par", SMALL, progress=False, workers=2)
    assert par["content_hash"] == summary["content_hash"]


def test_per_image_seeding_is_order_independent():
    a = render_classification_sample(image_rng(SMALL, "cls_train", 5), SMALL, 3)
    render_classification_sample(image_rng(SMALL, "cls_train", 4), SMALL, 2)  # unrelated draw
    b = render_classification_sample(image_rng(SMALL, "cls_train", 5), SMALL, 3)
    assert np.array_equal(a[0], b[0]) and a[2] == b[2]


# --------------------------------------------------------------------------- layouts

OFFICIAL = [  # every file the demo writes, as docs/datasets.md specifies the real ones
    r"demo_summary\.json",
    r"imagenet/train/(n9\d{7})/\1_\d+\.JPEG",
    r"imagenet/val/n9\d{7}/ILSVRC2012_val_\d{8}\.JPEG",
    r"imagenet/LOC_val_solution\.csv",
    r"imagenet/LOC_synset_mapping\.txt",
    r"imagenetv2-matched-frequency/\d+/[0-9a-f]{40}\.jpeg",
    r"ADEChallengeData2016/images/training/ADE_train_\d{8}\.jpg",
    r"ADEChallengeData2016/images/validation/ADE_val_\d{8}\.jpg",
    r"ADEChallengeData2016/annotations/training/ADE_train_\d{8}\.png",
    r"ADEChallengeData2016/annotations/validation/ADE_val_\d{8}\.png",
    r"ADEChallengeData2016/objectInfo150\.txt",
    r"coco/(train|val)2017/\d{12}\.jpg",
    r"coco/annotations/instances_(train|val)2017\.json",
]


def test_only_official_files(demo):
    out, _ = demo
    for p in out.rglob("*"):
        if p.is_file():
            rel = p.relative_to(out).as_posix()
            assert any(re.fullmatch(pat, rel) for pat in OFFICIAL), rel
    assert not (out / "imagenet" / "val_objects.json").exists()
    assert not (out / "ADEChallengeData2016" / "classes.json").exists()


def test_wnids_sort_like_the_class_names():
    every = dict(zip(class_names(len(SHAPES)), wnids(len(SHAPES))))
    for n in range(1, len(SHAPES) + 1):
        ids = wnids(n)
        assert ids == sorted(ids) and len(set(ids)) == n
        assert all(re.fullmatch(r"n9\d{7}", w) for w in ids)
        assert ids == [every[name] for name in class_names(n)]  # a shape keeps its wnid


def test_imagenet_layout(demo):
    from torchvision.datasets import ImageFolder

    out, summary = demo
    names, ids = class_names(SMALL.n_classes), wnids(SMALL.n_classes)
    assert summary["classes"] == names and summary["wnids"] == ids
    for split, per in (("train", SMALL.train_per_class), ("val", SMALL.val_per_class)):
        ds = ImageFolder(str(out / "imagenet" / split))
        assert ds.classes == ids  # class index = rank of the sorted wnids = position in class_names
        assert len(ds) == per * SMALL.n_classes == summary["imagenet"][split]
        assert sorted(set(ds.targets)) == list(range(SMALL.n_classes))
        img, _ = ds[0]
        assert img.mode == "RGB" and img.size == (SMALL.image_size, SMALL.image_size)
    mapping = (out / "imagenet" / "LOC_synset_mapping.txt").read_text().splitlines()
    assert mapping == [f"{w} {n}" for w, n in zip(ids, names)]


def test_loc_val_solution(demo):
    """One row per val image; its box is the object mask's extent (last column/row included)."""
    out, _ = demo
    with open(out / "imagenet" / "LOC_val_solution.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["ImageId", "PredictionString"]
    files = {p.stem: p for p in (out / "imagenet" / "val").rglob("*.JPEG")}
    assert sorted(r["ImageId"] for r in rows) == sorted(files)
    ids = wnids(SMALL.n_classes)
    for r in rows:
        wnid, *box = r["PredictionString"].split()
        x0, y0, x1, y1 = (int(v) for v in box)
        assert files[r["ImageId"]].parent.name == wnid
        with Image.open(files[r["ImageId"]]) as im:
            w, h = im.size
        assert 0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h
        i = int(r["ImageId"].rsplit("_", 1)[1]) - 1  # val image i is ILSVRC2012_val_<i+1>
        _, label, xywh, mask = render_classification_sample(image_rng(SMALL, "cls_val", i), SMALL, i % SMALL.n_classes)
        assert ids[label] == wnid and mask_to_box(mask) == xywh == [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def test_imagenet_v2_layout(demo):
    out, summary = demo
    v2 = out / "imagenetv2-matched-frequency"
    assert sorted(int(p.name) for p in v2.iterdir()) == list(range(SMALL.n_classes))
    val_bytes = {p.read_bytes() for p in (out / "imagenet" / "val").rglob("*.JPEG")}
    files = sorted(v2.rglob("*.jpeg"))
    assert len(files) == SMALL.val_per_class * SMALL.n_classes == summary["imagenet_v2"]
    for p in files:
        data = p.read_bytes()
        assert p.stem == hashlib.sha1(data).hexdigest()
        assert data not in val_bytes  # new images, not copies of val
    assert all(len(list(d.iterdir())) == SMALL.val_per_class for d in v2.iterdir())


def _coco(out: Path, split: str):
    from pycocotools.coco import COCO

    return COCO(str(out / "coco" / "annotations" / f"instances_{split}2017.json"))


def test_coco_layout(demo):
    out, summary = demo
    n_poly = n_rle = 0
    cat_ids = list(DEMO_CATEGORY_IDS[: SMALL.n_classes])
    assert cat_ids != list(range(1, SMALL.n_classes + 1))  # not contiguous
    for split, n_img in (("train", SMALL.n_scenes_train), ("val", SMALL.n_scenes_val)):
        coco = _coco(out, split)
        cats = coco.loadCats(coco.getCatIds())
        assert [c["id"] for c in cats] == cat_ids
        assert [c["name"] for c in cats] == class_names(SMALL.n_classes)
        images = coco.dataset["images"]
        assert len(images) == n_img == len(list((out / "coco" / f"{split}2017").iterdir()))
        assert [im["id"] for im in images] != list(range(1, n_img + 1))
        ann_ids = [a["id"] for a in coco.dataset["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids)
        assert {a["image_id"] for a in coco.dataset["annotations"]} <= {im["id"] for im in images}
        assert {a["category_id"] for a in coco.dataset["annotations"]} == set(cat_ids)
        for img in images:
            assert img["file_name"] == f"{img['id']:012d}.jpg"
            with Image.open(out / "coco" / f"{split}2017" / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"]) and im.mode == "RGB"
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            assert 1 <= len(anns) <= SMALL.objects_per_scene[1]
            union = np.zeros((img["height"], img["width"]), dtype=int)
            for a in anns:
                assert a["iscrowd"] == 0 and len(a["bbox"]) == 4 and a["area"] > 0
                m = coco.annToMask(a).astype(bool)
                assert mask_to_box(m) == [int(v) for v in a["bbox"]]
                if isinstance(a["segmentation"], list):
                    n_poly += 1
                    assert all(len(p) >= 6 and len(p) % 2 == 0 for p in a["segmentation"])
                else:  # uncompressed RLE, as COCO stores it: exact
                    n_rle += 1
                    assert isinstance(a["segmentation"]["counts"], list) and m.sum() == a["area"]
                    union += m
            assert union.max() <= 1  # visible masks do not overlap
    assert n_poly > 0 and n_rle > 0  # both segmentation code paths exercised
    assert summary["coco"]["val"]["annotations"] + summary["coco"]["train"]["annotations"] == n_poly + n_rle


def test_ade_layout(demo):
    out, _ = demo
    ade = out / "ADEChallengeData2016"
    names = ["background", *class_names(SMALL.n_classes)]
    info = (ade / "objectInfo150.txt").read_text().splitlines()
    assert info[0].split("\t") == ["Idx", "Ratio", "Train", "Val", "Name"]
    rows = [line.split("\t") for line in info[1:]]
    assert [int(r[0]) for r in rows] == list(range(1, len(names) + 1)) and [r[4] for r in rows] == names
    for split, short, n, col in (
        ("training", "train", SMALL.n_scenes_train, 2),
        ("validation", "val", SMALL.n_scenes_val, 3),
    ):
        imgs = sorted((ade / "images" / split).glob("*.jpg"))
        anns = sorted((ade / "annotations" / split).glob("*.png"))
        assert len(imgs) == len(anns) == n
        assert [p.stem for p in imgs] == [p.stem for p in anns] == [f"ADE_{short}_{i:08d}" for i in range(1, n + 1)]
        images_with = np.zeros(len(names) + 1, dtype=int)
        for ip, ap in zip(imgs, anns):
            with Image.open(ip) as im, Image.open(ap) as lab:
                assert lab.mode == "L" and lab.size == im.size
                arr = np.asarray(lab)
            assert 1 <= arr.min() and arr.max() <= len(names)
            assert (arr == 1).any()  # background present
            images_with[np.unique(arr)] += 1
        assert (images_with[2:] > 0).all()  # every class in every split
        assert [int(r[col]) for r in rows] == images_with[1:].tolist()  # objectInfo150's image counts


def test_ade_and_coco_agree(demo):
    """Scene i of ADE and COCO is the same render: RLE masks equal the label map's class pixels."""
    out, _ = demo
    coco = _coco(out, "val")
    label_of = {cid: k + 2 for k, cid in enumerate(DEMO_CATEGORY_IDS)}
    for i, img in enumerate(coco.dataset["images"]):
        lab = np.asarray(
            Image.open(out / "ADEChallengeData2016" / "annotations" / "validation" / f"ADE_val_{i + 1:08d}.png")
        )
        for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            m = coco.annToMask(a).astype(bool)
            inside = (lab[m] == label_of[a["category_id"]]).mean()
            assert inside >= (1.0 if isinstance(a["segmentation"], dict) else 0.85)


def test_uncompressed_rle_round_trips():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    for shape in ((7, 5), (16, 16), (3, 9)):
        for first in (False, True):
            m = rng.random(shape) < 0.4
            m[0, 0] = first
            rle = layouts.uncompressed_rle(m)
            assert all(isinstance(c, int) for c in rle["counts"]) and sum(rle["counts"]) == m.size
            back = mask_utils.decode(mask_utils.frPyObjects(rle, *shape)).astype(bool)
            assert np.array_equal(back, m)


# --------------------------------------------------------------------------- masks and boxes


@pytest.mark.parametrize("index", range(12))
def test_classification_sample_mask_box_pixels(index):
    rng = image_rng(SMALL, "cls_val", index)
    label = index % SMALL.n_classes
    image, lab, box, mask = render_classification_sample(rng, SMALL, label)
    assert image.dtype == np.uint8 and image.shape == (
        SMALL.image_size,
        SMALL.image_size,
        3,
    )
    assert lab == label and mask.dtype == bool and mask.shape == image.shape[:2]
    assert box == mask_to_box(mask)
    x, y, w, h = box
    side = SMALL.image_size
    assert 0 <= x and 0 <= y and x + w <= side and y + h <= side
    assert 0.25 * side <= max(w, h) <= side  # the labelled object is large
    # the background is drawn first from the same stream: outside the object
    # (and its anti-aliased rim; sub-pixel tips such as a crescent's may reach
    # a little further) the image is exactly the background
    bg = render_background(image_rng(SMALL, "cls_val", index), side, SMALL.strokes)
    bg = np.clip(np.rint(bg), 0, 255).astype(np.uint8)
    rim = mask.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            rim |= np.roll(np.roll(mask, dy, 0), dx, 1)
    same = (image == bg).all(-1)
    assert same[~rim].mean() > 0.995
    diff = np.abs(image.astype(int) - bg.astype(int)).sum(-1)
    assert diff[mask].mean() > 60  # object pixels differ clearly from the background


@pytest.mark.parametrize("index", range(8))
def test_scene_objects(index):
    rng = image_rng(SMALL, "scene_val", index)
    image, objects = render_scene(rng, SMALL, first_class=index % SMALL.n_classes)
    n = SMALL.scene_size
    assert image.shape == (n, n, 3) and 1 <= len(objects) <= SMALL.objects_per_scene[1]
    assert objects[0]["class_id"] == index % SMALL.n_classes
    union = np.zeros((n, n), dtype=int)
    for obj in objects:
        m = obj["mask"]
        assert m.shape == (n, n) and obj["box"] == mask_to_box(m) and obj["area"] == int(m.sum()) > 0
        assert 0 <= obj["class_id"] < SMALL.n_classes
        union += m
    assert union.max() <= 1  # occlusion: visible masks are disjoint
    # the last object is never occluded: its visible mask is the whole shape
    last = objects[-1]
    _, _, w, h = last["box"]
    assert SMALL.scene_object_px[0] // 3 <= max(w, h) <= SMALL.scene_object_px[1]


def test_every_shape_renders():
    rng = np.random.default_rng(0)
    for k in range(len(SHAPES)):
        cov = render_object(rng, k, 40, n_classes=len(SHAPES))
        m = cov >= 0.5
        assert cov.shape == (40, 40) and 0.15 * 1600 < m.sum() < 0.8 * 1600
        # the shape lies within the square (extent within the inscribed circle)
        assert not m[0].any() and not m[-1].any() and not m[:, 0].any() and not m[:, -1].any()


def test_spec_validation():
    with pytest.raises(ValueError):
        dataclasses.replace(SMALL, n_classes=len(SHAPES) + 1)
    with pytest.raises(ValueError):
        dataclasses.replace(SMALL, train_per_class=-1)


def test_the_schema_is_the_one_source_of_the_demo_sizes():
    """The generator has no defaults of its own for what params.yaml sets (``seed`` and every
    ``data.demo`` key), so it cannot draw other data than the params say."""
    required = {f.name for f in dataclasses.fields(DemoSpec) if f.default is dataclasses.MISSING}
    assert required == {"seed", *DemoDataConfig.model_fields}
    with pytest.raises(TypeError, match="train_per_class"):
        DemoSpec(**{k: v for k, v in dataclasses.asdict(SMALL).items() if k != "train_per_class"})


# --------------------------------------------------------------------------- atomic write


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "data"
    calls = {"n": 0}
    real = demo_scenes.write_png

    def flaky(path, label_map):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full (simulated)")
        real(path, label_map)

    monkeypatch.setattr(demo_scenes, "write_png", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        generate(out, SMALL, progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary directory left behind


def test_failed_regeneration_keeps_old_and_success_replaces(tmp_path, monkeypatch):
    out = tmp_path / "data"
    tiny = dataclasses.replace(SMALL, seed=1, train_per_class=1, val_per_class=1, n_scenes_train=2, n_scenes_val=2)
    first = generate(out, tiny, progress=False)
    (out / "marker").write_text("old")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C half-way

    monkeypatch.setattr(demo_scenes, "write_png", boom)
    with pytest.raises(KeyboardInterrupt):
        generate(out, tiny, progress=False)
    assert (out / "marker").exists()  # old data untouched
    monkeypatch.undo()
    second = generate(out, tiny, progress=False)
    assert not (out / "marker").exists()
    assert second["content_hash"] == first["content_hash"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # old copy and temp dirs removed
