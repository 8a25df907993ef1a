"""Tests of the synthetic demo-data generator (pcn.data.synthetic)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcn.data import synthetic as syn
from pcn.data.synthetic import DemoSpec, class_names, generate, mask_to_box

# pycocotools 2.0.x calls np.array(copy=False)-style APIs that numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SMALL = DemoSpec(
    seed=7,
    n_classes=10,
    train_per_class=3,
    val_per_class=2,
    n_scenes_train=12,
    n_scenes_val=10,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "data"
    summary = generate(out, SMALL, progress=False)
    return out, summary


def _rle_decode(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode(
        {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    ).astype(bool)


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_different_seed_differs(demo, tmp_path):
    out, summary = demo
    again = generate(tmp_path / "again", SMALL, progress=False)
    assert again["content_hash"] == summary["content_hash"]
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(tmp_path / "again")
        for p in (tmp_path / "again").rglob("*")
        if p.is_file()
    )
    for rel in files[:: max(1, len(files) // 25)]:
        assert (out / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
    other = generate(
        tmp_path / "other", DemoSpec(**{**SMALL.__dict__, "seed": 8}), progress=False
    )
    assert other["content_hash"] != summary["content_hash"]
    assert syn.content_hash(out) == summary["content_hash"]
    assert (
        json.loads((out / syn.SUMMARY_FILE).read_text())["content_hash"]
        == summary["content_hash"]
    )


@pytest.mark.slow  # spawning workers takes seconds (tens of seconds on a loaded machine)
def test_worker_processes_give_the_same_files(demo, tmp_path):
    _, summary = demo
    par = generate(tmp_path / "par", SMALL, progress=False, workers=2)
    assert par["content_hash"] == summary["content_hash"]


def test_per_image_seeding_is_order_independent():
    a = syn.render_classification_sample(syn._rng(SMALL, "cls_train", 5), SMALL, 3)
    syn.render_classification_sample(
        syn._rng(SMALL, "cls_train", 4), SMALL, 2
    )  # unrelated draw
    b = syn.render_classification_sample(syn._rng(SMALL, "cls_train", 5), SMALL, 3)
    assert np.array_equal(a[0], b[0]) and a[2] == b[2]


# --------------------------------------------------------------------------- layouts


def test_imagefolder_layout(demo):
    from torchvision.datasets import ImageFolder

    out, summary = demo
    names = class_names(SMALL)
    assert names == sorted(names) and len(names) == 10 and summary["classes"] == names
    for split, per in (("train", SMALL.train_per_class), ("val", SMALL.val_per_class)):
        ds = ImageFolder(str(out / "imagenet" / split))
        assert ds.classes == names
        assert len(ds) == per * SMALL.n_classes == summary["imagenet"][split]
        assert sorted(set(ds.targets)) == list(
            range(SMALL.n_classes)
        )  # every class in every split
        img, _ = ds[0]
        assert img.mode == "RGB" and img.size == (SMALL.image_size, SMALL.image_size)


def test_val_objects_json(demo):
    out, _ = demo
    meta = json.loads((out / "imagenet" / "val_objects.json").read_text())
    assert meta["mask_format"] == "coco_rle" and meta["box_format"] == "xywh"
    val_files = {
        p.relative_to(out / "imagenet").as_posix()
        for p in (out / "imagenet" / "val").rglob("*.jpg")
    }
    assert set(meta["images"]) == val_files
    names = class_names(SMALL)
    for rel, rec in meta["images"].items():
        assert rel.split("/")[1] == names[rec["label"]] == rec["class_name"]
        mask = _rle_decode(rec["mask"])
        assert mask.shape == (rec["height"], rec["width"]) == (SMALL.image_size,) * 2
        assert mask_to_box(mask) == rec["box"] and int(mask.sum()) == rec["area"] > 0


def test_coco_layout(demo):
    from pycocotools.coco import COCO

    out, summary = demo
    n_poly = n_rle = 0
    for split, n_img in (("train", SMALL.n_scenes_train), ("val", SMALL.n_scenes_val)):
        coco = COCO(str(out / "coco" / "annotations" / f"instances_{split}.json"))
        cats = coco.loadCats(coco.getCatIds())
        assert [c["id"] for c in cats] == list(range(1, SMALL.n_classes + 1))
        assert [c["name"] for c in cats] == class_names(SMALL)
        assert len(coco.getImgIds()) == n_img
        assert {a["category_id"] for a in coco.dataset["annotations"]} == set(
            range(1, SMALL.n_classes + 1)
        )
        for img in coco.loadImgs(coco.getImgIds()):
            with Image.open(out / "coco" / "images" / split / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"]) and im.mode == "RGB"
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            assert 1 <= len(anns) <= SMALL.objects_per_scene[1]
            union = np.zeros((img["height"], img["width"]), dtype=int)
            for a in anns:
                assert a["iscrowd"] == 0 and len(a["bbox"]) == 4 and a["area"] > 0
                m = coco.annToMask(a).astype(bool)
                if isinstance(a["segmentation"], list):
                    n_poly += 1
                    assert all(
                        len(p) >= 6 and len(p) % 2 == 0 for p in a["segmentation"]
                    )
                    # polygons approximate the visible mask (IoU >= 0.9) with its exact box
                    assert mask_to_box(m) == [int(v) for v in a["bbox"]]
                else:
                    n_rle += 1
                    assert (
                        mask_to_box(m) == [int(v) for v in a["bbox"]]
                        and m.sum() == a["area"]
                    )
                    union += m
            assert union.max() <= 1  # visible masks do not overlap
    assert n_poly > 0 and n_rle > 0  # both segmentation code paths exercised
    assert (
        summary["coco"]["val"]["annotations"] + summary["coco"]["train"]["annotations"]
        == n_poly + n_rle
    )


def test_ade_layout(demo):
    out, _ = demo
    names = json.loads((out / "ade" / "classes.json").read_text())
    assert names == ["background", *class_names(SMALL)]
    for split, n in (
        ("training", SMALL.n_scenes_train),
        ("validation", SMALL.n_scenes_val),
    ):
        imgs = sorted((out / "ade" / "images" / split).glob("*.jpg"))
        anns = sorted((out / "ade" / "annotations" / split).glob("*.png"))
        assert len(imgs) == len(anns) == n
        assert [p.stem for p in imgs] == [p.stem for p in anns]
        seen = set()
        for ip, ap in zip(imgs, anns):
            with Image.open(ip) as im, Image.open(ap) as lab:
                assert lab.mode == "L" and lab.size == im.size
                arr = np.asarray(lab)
            assert arr.min() >= 0 and arr.max() <= len(names)
            assert (arr == 1).any()  # background present
            seen |= set(np.unique(arr).tolist())
        assert set(range(2, SMALL.n_classes + 2)) <= seen  # every class in every split


def test_ade_and_coco_agree(demo):
    """Scene i of ADE and COCO is the same render: RLE masks equal the label map's class pixels."""
    from pycocotools.coco import COCO

    out, _ = demo
    coco = COCO(str(out / "coco" / "annotations" / "instances_val.json"))
    for img in coco.loadImgs(coco.getImgIds()):
        lab = np.asarray(
            Image.open(
                out
                / "ade"
                / "annotations"
                / "validation"
                / f"ADE_val_{img['id']:08d}.png"
            )
        )
        for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            m = coco.annToMask(a).astype(bool)
            inside = (lab[m] == a["category_id"] + 1).mean()
            assert inside >= (1.0 if isinstance(a["segmentation"], dict) else 0.85)


# --------------------------------------------------------------------------- masks and boxes


@pytest.mark.parametrize("index", range(12))
def test_classification_sample_mask_box_pixels(index):
    rng = syn._rng(SMALL, "cls_val", index)
    label = index % SMALL.n_classes
    image, lab, box, mask = syn.render_classification_sample(rng, SMALL, label)
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
    bg = syn.render_background(syn._rng(SMALL, "cls_val", index), side, SMALL.strokes)
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
    rng = syn._rng(SMALL, "scene_val", index)
    image, objects = syn.render_scene(rng, SMALL, first_class=index % SMALL.n_classes)
    n = SMALL.scene_size
    assert image.shape == (n, n, 3) and 1 <= len(objects) <= SMALL.objects_per_scene[1]
    assert objects[0]["class_id"] == index % SMALL.n_classes
    union = np.zeros((n, n), dtype=int)
    for obj in objects:
        m = obj["mask"]
        assert (
            m.shape == (n, n)
            and obj["box"] == mask_to_box(m)
            and obj["area"] == int(m.sum()) > 0
        )
        assert 0 <= obj["class_id"] < SMALL.n_classes
        union += m
    assert union.max() <= 1  # occlusion: visible masks are disjoint
    # the last object is never occluded: its visible mask is the whole shape
    last = objects[-1]
    _, _, w, h = last["box"]
    assert SMALL.scene_object_px[0] // 3 <= max(w, h) <= SMALL.scene_object_px[1]


def test_every_shape_renders():
    rng = np.random.default_rng(0)
    for k in range(len(syn.SHAPES)):
        cov = syn.render_object(rng, k, 40, n_classes=len(syn.SHAPES))
        m = cov >= 0.5
        assert cov.shape == (40, 40) and 0.15 * 1600 < m.sum() < 0.8 * 1600
        # the shape lies within the square (extent within the inscribed circle)
        assert (
            not m[0].any()
            and not m[-1].any()
            and not m[:, 0].any()
            and not m[:, -1].any()
        )


def test_spec_validation():
    with pytest.raises(ValueError):
        DemoSpec(n_classes=len(syn.SHAPES) + 1)
    with pytest.raises(ValueError):
        DemoSpec(train_per_class=-1)


# --------------------------------------------------------------------------- atomic write


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "data"
    calls = {"n": 0}
    real = syn._write_png

    def flaky(path, label_map):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full (simulated)")
        real(path, label_map)

    monkeypatch.setattr(syn, "_write_png", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        generate(out, SMALL, progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary directory left behind


def test_failed_regeneration_keeps_old_and_success_replaces(tmp_path, monkeypatch):
    out = tmp_path / "data"
    tiny = DemoSpec(
        seed=1, train_per_class=1, val_per_class=1, n_scenes_train=2, n_scenes_val=2
    )
    first = generate(out, tiny, progress=False)
    (out / "marker").write_text("old")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C half-way

    monkeypatch.setattr(syn, "_write_png", boom)
    with pytest.raises(KeyboardInterrupt):
        generate(out, tiny, progress=False)
    assert (out / "marker").exists()  # old data untouched
    monkeypatch.undo()
    second = generate(out, tiny, progress=False)
    assert not (out / "marker").exists()
    assert second["content_hash"] == first["content_hash"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "data"
    ]  # old copy and temp dirs removed
