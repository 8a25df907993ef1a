"""Localisation scores on hand-made maps whose answers are known, and the map plumbing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pcn.analysis import attention as A


def _square(shape=(8, 8), y0=2, y1=5, x0=2, x1=5):
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_pointing_hit_inside_and_outside():
    mask = _square()
    inside = np.zeros((8, 8))
    inside[3, 3] = 1.0
    outside = np.zeros((8, 8))
    outside[7, 0] = 1.0
    assert A.pointing_hit(inside, mask) == 1.0
    assert A.pointing_hit(outside, mask) == 0.0


def test_pointing_ties_give_the_expected_hit():
    mask = _square()  # 9 of 64 pixels
    assert A.pointing_hit(np.ones((8, 8)), mask) == pytest.approx(9 / 64)
    two = np.zeros((8, 8))
    two[3, 3] = two[0, 0] = 2.0  # two maxima, one inside
    assert A.pointing_hit(two, mask) == 0.5


def test_threshold_iou_known_values():
    mask = _square()  # 3x3
    exact = mask.astype(float)
    assert A.threshold_iou(exact, mask, 0.5) == 1.0
    # a 3x4 blob covering the mask and one extra column: IoU 9/12
    blob = np.zeros((8, 8))
    blob[2:5, 2:6] = 1.0
    blob[0, 0] = 0.4  # below 0.5 x max: not kept
    assert A.threshold_iou(blob, mask, 0.5) == pytest.approx(9 / 12)
    # lowering the threshold keeps the weak pixel too
    assert A.threshold_iou(blob, mask, 0.3) == pytest.approx(9 / 13)
    disjoint = np.zeros((8, 8))
    disjoint[6:, 6:] = 1.0
    assert A.threshold_iou(disjoint, mask, 0.5) == 0.0
    # uniform map keeps everything: IoU = area fraction
    assert A.threshold_iou(np.ones((8, 8)), mask, 0.5) == pytest.approx(9 / 64)


def test_scores_reject_bad_input():
    mask = _square()
    with pytest.raises(ValueError, match="shape"):
        A.pointing_hit(np.ones((4, 4)), mask)
    with pytest.raises(ValueError, match="threshold"):
        A.threshold_iou(np.ones((8, 8)), mask, 1.5)
    with pytest.raises(ValueError, match="non-negative"):
        A.threshold_iou(-np.ones((8, 8)), mask, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        A.pointing_hit(np.full((8, 8), np.nan), mask)


def test_box_mask_and_references():
    b = A.box_mask([2, 1, 3, 4], (8, 8))  # x, y, w, h
    assert b.sum() == 12 and b[1, 2] and b[4, 4] and not b[5, 2] and not b[1, 5]
    c = A.centre_map((9, 9))
    assert np.unravel_index(c.argmax(), c.shape) == (4, 4)


def test_localisation_table_with_references():
    n, s = 4, 16
    masks = np.zeros((n, s, s), dtype=bool)
    masks[:, 1:5, 1:5] = True  # 16 of 256 pixels, off-centre
    boxes = masks.copy()
    perfect = masks.astype(np.float32)
    wrong = np.zeros((n, s, s), dtype=np.float32)
    wrong[:, 12:, 12:] = 1.0
    table = A.localisation_table({"perfect": perfect, "wrong": wrong}, masks, boxes, 0.5)
    assert table["perfect"] == {"pointing_game": 100.0, "pointing_game_box": 100.0, "iou": 100.0, "n": 4}
    assert table["wrong"]["pointing_game"] == 0.0 and table["wrong"]["iou"] == 0.0
    assert table["uniform"]["pointing_game"] == pytest.approx(100 * 16 / 256)
    assert table["uniform"]["iou"] == pytest.approx(100 * 16 / 256)
    assert table["centre"]["pointing_game"] == 0.0  # the object is not at the centre


def test_upsample_and_label_maps():
    low = np.zeros((2, 3, 4, 4), dtype=np.float32)
    low[0, 1, 0, 0] = 1.0
    low[1, 2, 3, 3] = 1.0
    up = A.upsample(low, 16)
    assert up.shape == (2, 3, 16, 16) and up.min() >= 0
    picked = A.label_maps(up, [1, 2])
    assert picked.shape == (2, 16, 16)
    assert np.unravel_index(picked[0].argmax(), (16, 16))[0] < 4  # top-left patch
    assert np.unravel_index(picked[1].argmax(), (16, 16))[0] >= 12  # bottom-right patch
    assert A.upsample(low[:, 0], 8).shape == (2, 8, 8)


def test_read_val_objects_and_load_images(tmp_path):
    from PIL import Image

    from pcn.data.synthetic import encode_rle

    root = tmp_path / "imagenet"
    images = {}
    for i, (label, name) in enumerate([(0, "circle"), (1, "square")]):
        d = root / "val" / name
        d.mkdir(parents=True)
        img = np.full((32, 32, 3), 40, dtype=np.uint8)
        mask = np.zeros((32, 32), dtype=bool)
        mask[8:20, 10:24] = True
        img[mask] = 220
        Image.fromarray(img).save(d / f"val_{i:06d}.jpg", quality=95)
        images[f"val/{name}/val_{i:06d}.jpg"] = {"label": label, "class_name": name, "width": 32, "height": 32,
                                                 "box": [10, 8, 14, 12], "area": int(mask.sum()),
                                                 "mask": encode_rle(mask)}
    (root / "val_objects.json").write_text(json.dumps({"version": 1, "classes": ["circle", "square"],
                                                       "images": images}))
    classes, items = A.read_val_objects(root / "val_objects.json", 5)
    assert classes == ["circle", "square"] and [it.label for it in items] == [0, 1]
    assert items[0].mask.sum() == 14 * 12
    imgs, x, masks, boxes = A.load_images(items, 16)
    assert imgs.shape == (2, 16, 16, 3) and tuple(x.shape) == (2, 3, 16, 16)
    assert masks.shape == (2, 16, 16) and (masks == boxes).all()  # a rectangle is its own box
    assert abs(int(masks[0].sum()) - 14 * 12 // 4) <= 8


@pytest.mark.parametrize("multiclass", [False, True])
def test_maps_of_a_demo_model(multiclass):
    import timm
    import torch

    import pcn.models  # noqa: F401

    torch.manual_seed(0)
    name = "patchconvnet_demo_multi" if multiclass else "patchconvnet_demo"
    model = timm.create_model(name, num_classes=3, embed_dim=32, depth=2)
    x = torch.randn(2, 3, 32, 32)
    logits, maps = A.attention_maps(model, x)
    assert logits.shape == (2, 3)
    assert maps.shape == ((2, 3, 4, 4) if multiclass else (2, 4, 4))


def test_class_activation_maps_of_the_avgpool_variant():
    import timm
    import torch

    import pcn.models  # noqa: F401

    torch.manual_seed(0)
    model = timm.create_model("patchconvnet_demo", num_classes=3, embed_dim=32, depth=2, pool="avg")
    x = torch.randn(3, 3, 32, 32)
    maps = A.class_activation_maps(model, x, [0, 1, 2])
    assert set(maps) == {"gradcam", "cam"}
    for m in maps.values():
        assert m.shape == (3, 32, 32) and m.min() >= 0 and m.max() <= 1 + 1e-6
