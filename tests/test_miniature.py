"""Tests of the rehearsal's miniature datasets (pcn.data.demo.miniature): the real class structure
and the real files' quirks, in the official layouts of docs/datasets.md."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcn.data.demo.layouts import coco_categories, imagenet_classes
from pcn.data.demo.miniature import write_miniatures

# pycocotools 2.0.x calls np.array(copy=False)-style APIs that numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SMALL = dict(train_per_class=1, val_per_class=1, v2_per_class=1, ade_train=12, ade_val=10, coco_train=12, coco_val=8)

# COCO 2017's category ids: 1..90 without these
COCO_MISSING_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("mini") / "datasets"
    return root, write_miniatures(root, seed=3, progress=False, **SMALL)


def _coco(root: Path, split: str):
    from pycocotools.coco import COCO

    return COCO(str(root / "coco" / "annotations" / f"instances_{split}2017.json"))


# --------------------------------------------------------------------------- ImageNet and v2


def test_imagenet_has_the_1000_real_classes(mini):
    root, summary = mini
    wnids = [w for w, _ in imagenet_classes()]
    assert len(set(wnids)) == 1000 and wnids == sorted(wnids) and wnids[0] == "n01440764"
    for split in ("train", "val"):
        folders = sorted(p.name for p in (root / "imagenet" / split).iterdir())
        assert folders == wnids
        assert all(len(list((root / "imagenet" / split / w).iterdir())) == 1 for w in wnids)
    assert sorted(int(p.name) for p in (root / "imagenetv2-matched-frequency").iterdir()) == list(range(1000))
    for p in (root / "imagenetv2-matched-frequency").rglob("*"):
        if p.is_file():
            assert p.suffix == ".jpeg" and p.stem == hashlib.sha1(p.read_bytes()).hexdigest()
    assert summary["imagenet"]["train"] == summary["imagenet"]["val"] == summary["imagenet"]["v2"] == 1000
    mapping = (root / "imagenet" / "LOC_synset_mapping.txt").read_text().splitlines()
    assert mapping[0] == "n01440764 tench, Tinca tinca" and len(mapping) == 1000


def test_imagenet_file_names_and_sizes(mini):
    root, _ = mini
    train = sorted((root / "imagenet" / "train").rglob("*.JPEG"))
    val = sorted((root / "imagenet" / "val").rglob("*.JPEG"))
    assert all(p.name.startswith(p.parent.name + "_") for p in train)
    numbers = sorted(int(p.stem.removeprefix("ILSVRC2012_val_")) for p in val)
    assert numbers == list(range(1, 1001))
    by_class = [int(p.stem[-8:]) for p in sorted(val, key=lambda p: p.parent.name)]
    assert by_class != sorted(by_class)  # val numbers do not follow the classes
    sizes = set()
    for p in train[::50] + val[::50]:
        with Image.open(p) as im:
            sizes.add(im.size)
            assert all(48 <= s <= 320 for s in im.size)
    assert len(sizes) > 20 and len({round(w / h, 1) for w, h in sizes}) > 5  # many sizes and aspect ratios


def test_imagenet_quirks(mini):
    root, summary = mini
    q = summary["quirks"]
    (png,) = q["imagenet_png_named_jpeg"]
    with Image.open(root / png) as im:
        assert png.endswith(".JPEG") and "/train/" in png and im.format == "PNG"
    for key, mode in (("imagenet_cmyk", "CMYK"), ("imagenet_grayscale", "L")):
        splits = set()
        for rel in q[key]:
            with Image.open(root / rel) as im:
                assert im.format == "JPEG" and im.mode == mode, rel
                splits.add(rel.split("/")[1])
        assert splits == {"train", "val"}, key
    formats = {}
    for p in list((root / "imagenet" / "train").rglob("*.JPEG"))[:300]:
        with Image.open(p) as im:
            formats[p.relative_to(root).as_posix()] = (im.format, im.mode)
    odd = {k for k, v in formats.items() if v != ("JPEG", "RGB")}
    assert odd <= set(q["imagenet_png_named_jpeg"] + q["imagenet_cmyk"] + q["imagenet_grayscale"])


def test_loc_val_solution_boxes(mini):
    root, summary = mini
    with open(root / "imagenet" / "LOC_val_solution.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    files = {p.stem: p for p in (root / "imagenet" / "val").rglob("*.JPEG")}
    assert len(rows) == 1000 and {r["ImageId"] for r in rows} == set(files)
    n_boxes, multi = 0, 0
    for r in rows:
        parts = r["PredictionString"].split()
        assert len(parts) % 5 == 0 and parts
        with Image.open(files[r["ImageId"]]) as im:
            w, h = im.size
        for k in range(0, len(parts), 5):
            wnid, x0, y0, x1, y1 = parts[k], *map(int, parts[k + 1 : k + 5])
            assert wnid == files[r["ImageId"]].parent.name
            assert 0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h
        n_boxes += len(parts) // 5
        multi += len(parts) > 5
    assert multi > 0 and n_boxes == summary["imagenet"]["boxes"]


# --------------------------------------------------------------------------- ADE20k


def test_ade_every_id_in_both_splits(mini):
    root, summary = mini
    ade = root / "ADEChallengeData2016"
    for split, short, n in (("training", "train", SMALL["ade_train"]), ("validation", "val", SMALL["ade_val"])):
        anns = sorted((ade / "annotations" / split).glob("*.png"))
        imgs = sorted((ade / "images" / split).glob("*.jpg"))
        assert [p.stem for p in anns] == [p.stem for p in imgs] == [f"ADE_{short}_{i:08d}" for i in range(1, n + 1)]
        seen, sizes = set(), set()
        for ip, ap in zip(imgs, anns):
            with Image.open(ip) as im, Image.open(ap) as lab:
                assert lab.mode == "L" and lab.size == im.size and im.mode == "RGB"
                seen |= set(np.unique(np.asarray(lab)).tolist())
                sizes.add(im.size)
        assert seen == set(range(0, 151)), split  # 0 = other, and all 150 classes
        assert len(sizes) > n // 2
    rows = [line.split("\t") for line in (ade / "objectInfo150.txt").read_text().splitlines()]
    assert rows[0] == ["Idx", "Ratio", "Train", "Val", "Name"]
    assert [int(r[0]) for r in rows[1:]] == list(range(1, 151))
    assert all(int(r[2]) >= 1 and int(r[3]) >= 1 for r in rows[1:])
    assert summary["ade"]["n_labels"] == 150


# --------------------------------------------------------------------------- COCO


def test_coco_real_categories_and_references(mini):
    root, _ = mini
    real = list(coco_categories())
    assert len(real) == 80 and {c["id"] for c in real} == set(range(1, 91)) - COCO_MISSING_IDS
    assert (real[0]["name"], real[-1]["name"], real[-1]["id"]) == ("person", "toothbrush", 90)
    for split in ("train", "val"):
        coco = _coco(root, split)
        assert coco.dataset["categories"] == real
        images = {im["id"]: im for im in coco.dataset["images"]}
        anns = coco.dataset["annotations"]
        assert len(images) == SMALL[f"coco_{split}"] == len(list((root / "coco" / f"{split}2017").iterdir()))
        assert {a["image_id"] for a in anns} <= set(images)
        assert {a["category_id"] for a in anns if not a["iscrowd"]} == {c["id"] for c in real}  # every category
        for im in images.values():
            assert im["file_name"] == f"{im['id']:012d}.jpg"
            with Image.open(root / "coco" / f"{split}2017" / im["file_name"]) as pil:
                assert pil.size == (im["width"], im["height"])
        for a in anns:
            m = coco.annToMask(a).astype(bool)
            x, y, w, h = a["bbox"]
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            assert (cols[0], rows[0]) == (x, y) and x + w <= images[a["image_id"]]["width"]
            assert abs(m.sum() - a["area"]) <= 0.1 * a["area"]
    ids = [a["id"] for s in ("train", "val") for a in _coco(root, s).dataset["annotations"]]
    assert len(set(ids)) == len(ids)


def test_coco_quirks(mini):
    root, summary = mini
    crowd = multi = 0
    unannotated = []
    for split in ("train", "val"):
        coco = _coco(root, split)
        annotated = {a["image_id"] for a in coco.dataset["annotations"]}
        unannotated += [
            f"coco/{split}2017/{im['file_name']}" for im in coco.dataset["images"] if im["id"] not in annotated
        ]
        for a in coco.dataset["annotations"]:
            seg = a["segmentation"]
            if a["iscrowd"]:
                crowd += 1
                assert isinstance(seg, dict) and isinstance(seg["counts"], list)  # uncompressed RLE
                assert seg["size"] == [coco.imgs[a["image_id"]]["height"], coco.imgs[a["image_id"]]["width"]]
            elif isinstance(seg, list) and len(seg) > 1:
                multi += 1
    assert crowd > 0 and multi > 0
    assert crowd == summary["quirks"]["coco_crowd_uncompressed_rle"]
    assert multi == summary["quirks"]["coco_multi_polygon"]
    assert sorted(unannotated) == sorted(summary["quirks"]["coco_unannotated"])
    assert any("train2017" in u for u in unannotated) and any("val2017" in u for u in unannotated)
    (gray,) = summary["quirks"]["coco_grayscale"]
    with Image.open(root / gray) as im:
        assert im.mode == "L"


# --------------------------------------------------------------------------- writing


def test_bad_counts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="ade_val = 2"):
        write_miniatures(tmp_path / "m", ade_val=2)
    assert not (tmp_path / "m").exists()


@pytest.mark.slow  # a second full write (about 15 s)
def test_same_seed_same_files(mini, tmp_path):
    _, summary = mini
    again = write_miniatures(tmp_path / "datasets", seed=3, progress=False, **SMALL)
    assert again["content_hash"] == summary["content_hash"] == summary["hash"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datasets"]  # written via a renamed temp folder
