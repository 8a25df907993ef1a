"""Localisation scores on hand-made maps whose answers are known, and the map plumbing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_paths

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


def test_boxes_mask_is_the_union_of_pixel_edge_boxes_and_references():
    b = A.boxes_mask([(2, 1, 5, 5)], (8, 8))  # x_min, y_min, x_max, y_max: columns 2..4, rows 1..4
    assert b.sum() == 12 and b[1, 2] and b[4, 4] and not b[5, 2] and not b[1, 5]
    two = A.boxes_mask([(0, 0, 2, 2), (1, 1, 3, 3)], (8, 8))  # overlapping: 4 + 4 - 1 pixels
    assert two.sum() == 7
    assert A.boxes_mask([(3.2, 3.2, 3.4, 3.4)], (8, 8)).sum() == 1  # thinner than a pixel: still one
    assert A.boxes_mask([(6, 6, 20, 20)], (8, 8)).sum() == 4  # clipped to the image
    c = A.centre_map((9, 9))
    assert np.unravel_index(c.argmax(), c.shape) == (4, 4)


def test_localisation_table_with_references():
    n, s = 4, 16
    regions = np.zeros((n, s, s), dtype=bool)
    regions[:, 1:5, 1:5] = True  # 16 of 256 pixels, off-centre
    perfect = regions.astype(np.float32)
    wrong = np.zeros((n, s, s), dtype=np.float32)
    wrong[:, 12:, 12:] = 1.0
    table = A.localisation_table({"perfect": perfect, "wrong": wrong}, regions, 0.5)
    assert table["perfect"] == {"pointing_game": 100.0, "iou": 100.0, "n": 4}
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


def _val_folder(root, stems_sizes):
    """``root/val/<wnid>/<stem>.JPEG``: a grey image with a bright rectangle on columns 10..23, rows 8..19."""
    from PIL import Image

    for wnid, stem, (w, h) in stems_sizes:
        d = root / "val" / wnid
        d.mkdir(parents=True, exist_ok=True)
        img = np.full((h, w, 3), 40, dtype=np.uint8)
        img[8:20, 10:24] = 220
        Image.fromarray(img).save(d / f"{stem}.JPEG", format="JPEG", quality=95)


def test_loc_solution_boxes_are_matched_by_stem_and_scaled(tmp_path):
    root = tmp_path / "imagenet"
    _val_folder(root, [("n01", "ILSVRC2012_val_00000002", (32, 32)), ("n02", "ILSVRC2012_val_00000001", (64, 32))])
    (root / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00000001,n02 10 8 23 19 n01 0 0 4 4 n02 40 0 63 7\n"  # two boxes of its class, one other
        "ILSVRC2012_val_00000002,n01 10 8 23 19 \n"
        "ILSVRC2012_val_00000099,n01 0 0 1 1\n"
    )  # an image not in this val folder: ignored
    items = A.read_val_boxes(root / "val", root / "LOC_val_solution.csv", ["n01", "n02"], 5)
    assert [(it.path.stem, it.label, it.class_name, it.size) for it in items] == [
        ("ILSVRC2012_val_00000001", 1, "n02", (32, 64)),
        ("ILSVRC2012_val_00000002", 0, "n01", (32, 32)),
    ]
    assert items[0].boxes == [(10, 8, 23, 19), (40, 0, 63, 7)]  # only the labelled class's (last pixel inclusive)
    imgs, x, regions = A.load_images(items, 16)
    assert imgs.shape == (2, 16, 16, 3) and tuple(x.shape) == (2, 3, 16, 16) and regions.shape == (2, 16, 16)
    # 64x32 -> 16x16: x by 1/4, y by 1/2; the union of (2.5, 4, 6, 10) and (10, 0, 16, 4), whose
    # pixels are those with their centre inside (column 2's centre 2.5 is on the edge: in)
    assert regions[0].sum() == 4 * 6 + 6 * 4 and regions[0][4:10, 2:6].all() and regions[0][0:4, 10:16].all()
    assert regions[1].sum() == 7 * 6 and regions[1][4:10, 5:12].all()  # 32 -> 16: by 1/2
    bright = imgs[1].mean(-1) > 128  # the rectangle lands where its scaled box says
    assert (bright == regions[1]).mean() > 0.95
    assert A.read_val_boxes(root / "val", root / "LOC_val_solution.csv", ["n01", "n02"], 1)[0].label == 1


@pytest.mark.parametrize(
    "row, problem",
    [
        ("ILSVRC2012_val_00000001,n02 10 8 24", "line 2: PredictionString 'n02 10 8 24' is not groups"),
        ("ILSVRC2012_val_00000001,n02 10 8 24 x", "line 2: box 'n02 10 8 24 x' has a coordinate that is not a number"),
        ("ILSVRC2012_val_00000001,n02 10 8 4 20", "line 2: box 'n02 10 8 4 20' is not x_min <= x_max"),
        ("ILSVRC2012_val_00000001", "line 2: expected 'ImageId,PredictionString'"),
        ("ILSVRC2012_val_00000002,n01 1 1 2 2", "no row for val image ILSVRC2012_val_00000001"),
        ("ILSVRC2012_val_00000001,n01 1 1 2 2", "row ILSVRC2012_val_00000001 has no box of its class n02"),
    ],
)
def test_malformed_loc_solution_is_one_line_naming_file_and_line(tmp_path, row, problem):
    from pcn.errors import DatasetError

    root = tmp_path / "imagenet"
    _val_folder(root, [("n02", "ILSVRC2012_val_00000001", (32, 32))])
    csv_path = root / "LOC_val_solution.csv"
    csv_path.write_text(f"ImageId,PredictionString\n{row}\n")
    with pytest.raises(DatasetError) as info:
        A.read_val_boxes(root / "val", csv_path, ["n02"], 5)
    msg = str(info.value)
    assert msg.startswith(f"{csv_path}: ") and problem in msg and "\n" not in msg
    csv_path.write_text("image,boxes\n")
    with pytest.raises(DatasetError, match="line 1: header 'image,boxes', expected 'ImageId,PredictionString'"):
        A.read_val_boxes(root / "val", csv_path, ["n02"], 5)
    csv_path.unlink()
    with pytest.raises(DatasetError, match="LOC_val_solution.csv: file missing"):
        A.read_val_boxes(root / "val", csv_path, ["n02"], 5)


def test_synset_names_from_the_mapping_else_wnids(tmp_path):
    mapping = tmp_path / "LOC_synset_mapping.txt"
    mapping.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    assert A.synset_names(mapping, ["n01443537", "n09999999"]) == ["goldfish", "n09999999"]
    assert A.synset_names(tmp_path / "absent.txt", ["n01440764"]) == ["n01440764"]


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


def test_attention_stage_scores_maps_against_the_loc_boxes(tmp_path, monkeypatch, capsys):
    """`pcn attention` on a dataset in the official layout (tiny untrained models stand in
    for the DAG's checkpoints): every map is scored against LOC_val_solution.csv's boxes;
    without boxes the maps are drawn unscored, or with attention.require_boxes it fails in one line."""
    import timm
    import yaml
    from test_readers import ROOT, write_imagenet

    import pcn.analysis.attention_study as S
    import pcn.models  # noqa: F401
    from pcn.cli import main

    data = tmp_path / "datasets"
    write_imagenet(data)
    work = tmp_path / "work"
    work.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source="real", root=str(data))
    params["attention"].update(n_images=6, n_figure=2)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    tiny = {"embed_dim": 32, "depth": 1}
    models = {
        "patchconvnet": ("patchconvnet_demo", tiny),
        "patchconvnet_finetuned": ("patchconvnet_demo", tiny),
        "patchconvnet_multiclass": ("patchconvnet_demo_multi", tiny),
        "cam": ("patchconvnet_demo", {**tiny, "pool": "avg"}),
    }
    monkeypatch.setattr(S, "method_models", lambda p, ckpts: {m: (c, *models[m]) for m, c in ckpts.items()})
    monkeypatch.setattr(S, "_model", lambda name, opts, ckpt, k: timm.create_model(name, num_classes=k, **opts).eval())
    argv = ["attention", "--weights", *(f"{m}={m}.pth" for m in models)]
    argv += ["--out", "results/attention", "--metrics", "metrics/attention.json"]
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    monkeypatch.delenv("PCN_PIPELINE_RUN_ID", raising=False)

    loc = data / "imagenet" / "LOC_val_solution.csv"
    saved = loc.read_text()
    loc.unlink()
    # no boxes in either form: the maps are drawn, localisation is recorded as not scored
    assert main(argv) == 0
    m = json.loads((work / "metrics" / "attention.json").read_text())
    assert m["localisation_scored"] is False and m["ground_truth"] is None
    assert "not scored" in m["localisation_not_scored"] and A.VOC_DIR in m["localisation_not_scored"]
    assert "pointing_game" not in m["patchconvnet"] and m["patchconvnet"]["n"] == 6
    assert (work / "results" / "attention" / "attention_single.png").is_file()
    assert not (work / "results" / "attention" / "localisation.png").exists()
    from pcn.analysis.sections import attention_section
    from pcn.analysis.sourced import Metrics

    section = attention_section(Metrics(run_paths(work)))  # the report says so, and shows no empty table
    assert any(par.startswith("Localisation not scored: ") for par in section.paragraphs) and not section.tables
    # unless the boxes are required: then one line naming both forms
    params["attention"]["require_boxes"] = True
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    capsys.readouterr()
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pcn attention:")]
    assert errors == [
        f"pcn attention: error: {data / 'imagenet'}: no ImageNet val boxes, neither {A.LOC_CSV} (Kaggle) nor "
        f"{A.VOC_DIR}/ (image-net.org's per-image XML), and attention.require_boxes is true"
    ]

    loc.write_text(saved)
    assert main(argv) == 0
    m = json.loads((work / "metrics" / "attention.json").read_text())
    assert m["ground_truth"] == str(loc) and m["n_images"] == 6
    (table,) = attention_section(Metrics(run_paths(work))).tables  # one row per scored map, not the definitions
    assert "definitions" not in [row[0] for row in table.rows] and len(table.rows) == 7
    for method in (
        "patchconvnet",
        "patchconvnet_finetuned",
        "patchconvnet_multiclass",
        "gradcam",
        "cam",
        "centre",
        "uniform",
    ):
        assert set(m[method]) >= {"pointing_game", "iou", "n"} and "pointing_game_box" not in m[method]
        assert m[method]["n"] == 6 and 0 <= m[method]["pointing_game"] <= 100
    with np.load(work / "results" / "attention" / "maps.npz") as saved_maps:
        regions = saved_maps["regions"]
        assert regions.shape == (6, m["img_size"], m["img_size"]) and regions.any(axis=(1, 2)).all()
    # the uniform map's scores are the boxes' mean area fraction
    assert m["uniform"]["pointing_game"] == pytest.approx(100 * regions.mean(), rel=1e-6)


@pytest.mark.parametrize("enabled", [True, False])
def test_attention_reads_exactly_the_checkpoints_its_stage_depends_on(enabled):
    """Without the grid (experiments.enabled: false) the stage draws the main line's map
    alone; the checkpoints its command names are its dependencies, and each has a model."""
    import yaml
    from test_readers import ROOT

    from pcn.analysis.attention_study import method_models
    from pcn.cli import build_parser
    from pcn.config import resolve
    from pcn.dag.stages import build_stages

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["experiments"]["enabled"] = enabled
    p = resolve(raw)
    stage = {s.name: s for s in build_stages(p)}["attention"]
    args = build_parser().parse_args(stage.cmd.split()[1:])
    checkpoints = dict(w.split("=", 1) for w in args.weights)
    read = sorted(path for path, _, _ in method_models(p, checkpoints).values())
    assert read == sorted(d for d in stage.deps if d.endswith(".pth"))
    assert (len(read) == 1) == (not enabled)


@pytest.fixture(scope="module")
def miniatures(tmp_path_factory):
    """The rehearsal's miniature ImageNet in each of its val-box forms: Kaggle's CSV,
    image-net.org's per-image VOC XML, and none."""
    from pcn.data.demo.miniature import write_miniatures

    root = tmp_path_factory.mktemp("miniatures")
    return {b: write_miniatures(root / b, boxes=b, progress=False)["root"] for b in ("csv", "voc", "none")}


def test_the_val_boxes_read_the_same_from_the_csv_and_the_voc_xml(miniatures):
    from pathlib import Path

    from pcn.data.folders import class_folders

    read = {}
    for form in ("csv", "voc"):
        inet = Path(miniatures[form]) / "imagenet"
        source = A.box_source(inet)
        assert source.name == {"csv": A.LOC_CSV, "voc": A.VOC_DIR}[form]
        items = A.read_val_boxes(inet / "val", source, class_folders(inet / "train"), 50)
        read[form] = [(it.path.name, it.label, it.boxes) for it in items]
    assert len(read["csv"]) == 50 and all(boxes for _, _, boxes in read["csv"])
    assert read["voc"] == read["csv"]


def test_without_boxes_the_images_come_unscored_and_require_boxes_names_both_forms(miniatures):
    from pathlib import Path

    from pcn.data.folders import class_folders

    inet = Path(miniatures["none"]) / "imagenet"
    assert A.box_source(inet) is None
    items = A.read_val_boxes(inet / "val", None, class_folders(inet / "train"), 5)
    assert len(items) == 5 and all(it.boxes == [] for it in items)
    message = A.no_boxes_message(inet)
    assert A.LOC_CSV in message and A.VOC_DIR in message and "\n" not in message


def test_a_malformed_voc_annotation_is_one_line_naming_the_file(tmp_path):
    from pcn.errors import DatasetError

    folder = tmp_path / A.VOC_DIR / "val"
    folder.mkdir(parents=True)
    (folder / "ILSVRC2012_val_00000001.xml").write_text(
        "<annotation><object><name>n01</name><bndbox><xmin>5</xmin><ymin>1</ymin>"
        "<xmax>2</xmax><ymax>4</ymax></bndbox></object></annotation>"
    )
    with pytest.raises(DatasetError, match=r"ILSVRC2012_val_00000001\.xml: not a PASCAL VOC annotation") as err:
        A.read_boxes(A.box_source(tmp_path))
    assert "\n" not in str(err.value)
