"""The readers of the official dataset layouts (docs/datasets.md), on the real files' quirks.

Each fixture is built here, in the official layout, with the quirk it tests: a PNG
named ``.JPEG``, CMYK and grayscale JPEGs, images of many sizes, COCO's
non-contiguous category ids, crowd regions in uncompressed RLE, objects made of
several polygons, images without annotations.  A split missing, a class list that
differs from train's, or another layout is refused in one line naming the path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import require_ffcv, stage_argv
from PIL import Image

from pcn.data.folders import open_rgb, scan_folder
from pcn.errors import DatasetError

ROOT = Path(__file__).resolve().parents[1]
WNIDS = ["n01440764", "n01443537", "n01484850"]
SIZES = [(40, 30), (64, 48), (33, 57), (50, 50), (72, 41)]  # (width, height)
# numba's dispatcher finaliser raises a harmless KeyError when FFCV's compiled code is collected.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _picture(rng: np.random.Generator, size: tuple[int, int], colour) -> np.ndarray:
    """Smooth noise around ``colour`` (JPEG keeps it close): H x W x 3 uint8."""
    w, h = size
    coarse = np.clip(np.asarray(colour) + rng.normal(0, 30, size=(5, 5, 3)), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))


def _save(arr: np.ndarray, path: Path, mode: str = "RGB", fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr).convert(mode)
    im.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


# --- ImageNet ---------------------------------------------------------------------------------


def write_imagenet(root: Path, per_class: int = 3, seed: int = 0) -> dict[str, tuple[Path, np.ndarray]]:
    """``root/imagenet/{train,val}``, ``LOC_val_solution.csv`` and ``root/imagenetv2-matched-frequency``;
    returns the quirky files with the RGB pixels they were made from."""
    rng = np.random.default_rng(seed)
    palette = [(200, 60, 60), (60, 200, 60), (60, 60, 200)]
    inet, v2 = root / "imagenet", root / "imagenetv2-matched-frequency"
    quirks: dict[str, tuple[Path, np.ndarray]] = {}
    loc = ["ImageId,PredictionString"]
    val_number = 0
    for label, wnid in enumerate(WNIDS):
        for i in range(per_class):
            size = SIZES[(label + i) % len(SIZES)]
            arr = _picture(rng, size, palette[label])
            path = inet / "train" / wnid / f"{wnid}_{i + 1}.JPEG"
            kind = {(0, 0): "png_named_jpeg", (1, 0): "cmyk", (2, 0): "grayscale"}.get((label, i))
            if kind == "png_named_jpeg":
                _save(arr, path, fmt="PNG")
            else:
                _save(arr, path, {"cmyk": "CMYK", "grayscale": "L"}.get(kind, "RGB"))
            if kind:
                quirks[kind] = (path, arr)
            val_number += 1
            stem = f"ILSVRC2012_val_{val_number:08d}"
            val = _picture(rng, SIZES[(label + i + 2) % len(SIZES)], palette[label])
            _save(val, inet / "val" / wnid / f"{stem}.JPEG", "CMYK" if (label, i) == (0, 1) else "RGB")
            h, w = val.shape[:2]
            loc.append(f"{stem},{wnid} 2 3 {w // 2} {h // 2} {wnid} {w // 3} {h // 3} {w - 1} {h - 1}")
            _save(_picture(rng, size, palette[label]), v2 / str(label) / f"{label:02d}{i:038x}.jpeg")
    (inet / "LOC_val_solution.csv").write_text("\n".join(loc) + "\n")
    return quirks


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("datasets")
    return root, write_imagenet(root)


def test_png_named_jpeg_cmyk_and_grayscale_read_as_rgb_by_content(imagenet):
    _, quirks = imagenet
    path, arr = quirks["png_named_jpeg"]
    assert path.suffix == ".JPEG" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(np.asarray(open_rgb(path)), arr)  # lossless: the exact pixels
    path, arr = quirks["cmyk"]
    with Image.open(path) as im:
        assert im.mode == "CMYK"
    rgb = np.asarray(open_rgb(path))
    assert rgb.shape == arr.shape and np.abs(rgb.astype(int) - arr).mean() < 12  # the colours, not inverted
    path, arr = quirks["grayscale"]
    with Image.open(path) as im:
        assert im.mode == "L"
    grey = np.asarray(open_rgb(path)).astype(int)
    assert grey.shape == arr.shape and (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def _unnormalise(x: torch.Tensor) -> np.ndarray:
    from pcn.data.augment.transforms import IMAGENET_MEAN, IMAGENET_STD

    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x.float() * std + mean) * 255).numpy()


@pytest.mark.parametrize("kind, train", [("torch", False), ("memory", False), ("memory", True), ("ffcv", False)])
def test_every_imagenet_loader_reads_the_quirky_train_split(imagenet, tmp_path, kind, train):
    """All 9 files of assorted sizes come out as 3-channel images; the grayscale file as grey."""
    from pcn.data.loaders import build_loader

    root, quirks = imagenet
    folder = root / "imagenet" / "train"
    beton = None
    if kind == "ffcv":
        require_ffcv()
        from pcn.data.ffcv_io import convert_imagefolder

        beton = tmp_path / "train.beton"
        convert_imagefolder(
            folder,
            beton,
            max_resolution=128,
            jpeg_quality=90,
            compress_probability=0.0,
            write_mode="raw",
            max_bad_fraction=0.0,
            num_workers=1,
            progress=False,
        )
    ld = build_loader(
        beton=beton,
        folder=folder,
        kind=kind,
        train=train,
        img_size=24,
        batch_size=9,
        num_workers=0 if kind != "ffcv" else 1,
        seed=0,
        expected_classes=WNIDS,
    )
    x, y = next(iter(ld))
    x, y = x.clone(), y.clone()
    assert tuple(x.shape) == (9, 3, 24, 24) and torch.isfinite(x).all()
    if train:
        return  # the order is shuffled; the eval checks below name each file
    samples = scan_folder(folder).samples
    assert y.tolist() == [label for _, label in samples]
    grey = next(k for k, (rel, _) in enumerate(samples) if folder / rel == quirks["grayscale"][0])
    pixels = _unnormalise(x[grey : grey + 1])[0]
    assert np.abs(pixels[0] - pixels[1]).max() < 0.05 and np.abs(pixels[1] - pixels[2]).max() < 0.05


def test_ffcv_stores_each_quirky_file_as_its_rgb_pixels(imagenet, tmp_path):
    """What FFCV's writer stores (raw mode) is PIL's RGB decoding of the file's content."""
    require_ffcv()
    from ffcv.reader import Reader

    from pcn.data.ffcv_io import convert_imagefolder

    root, quirks = imagenet
    folder = root / "imagenet" / "train"
    dst = tmp_path / "train.beton"
    convert_imagefolder(
        folder,
        dst,
        max_resolution=128,
        jpeg_quality=90,
        compress_probability=0.0,
        write_mode="raw",
        max_bad_fraction=0.0,
        num_workers=1,
        progress=False,
    )
    fields = Reader(str(dst)).metadata["f0"]
    data = np.memmap(dst, dtype=np.uint8, mode="r")
    samples = scan_folder(folder).samples
    for k, (rel, _) in enumerate(samples):
        h, w, ptr = int(fields["height"][k]), int(fields["width"][k]), int(fields["data_ptr"][k])
        stored = np.asarray(data[ptr : ptr + h * w * 3]).reshape(h, w, 3)
        assert np.array_equal(stored, np.asarray(open_rgb(folder / rel))), rel
    assert {folder / rel for rel, _ in samples} >= {p for p, _ in quirks.values()}


def test_pixel_baseline_reads_the_quirky_splits(imagenet):
    from pcn.eval.pixel_baseline import fit_pixel_baseline

    root, _ = imagenet
    m = fit_pixel_baseline(root / "imagenet" / "train", root / "imagenet" / "val", epochs=20)
    assert m["n_train"] == 9 and m["n_val"] == 9 and m["chance"] == pytest.approx(100 / 3, abs=0.01)


def _copy(imagenet, tmp_path) -> Path:
    import shutil

    root = tmp_path / "datasets"
    shutil.copytree(imagenet[0], root)
    return root


def test_val_or_v2_with_other_classes_is_refused_in_one_line(imagenet, tmp_path):
    from pcn.eval.pixel_baseline import fit_pixel_baseline

    root = _copy(imagenet, tmp_path)
    train = scan_folder(root / "imagenet" / "train")
    assert train.class_names == WNIDS
    val, v2 = root / "imagenet" / "val", root / "imagenetv2-matched-frequency"
    assert scan_folder(v2, "imagenet_v2", WNIDS).class_names == ["0", "1", "2"]
    os.rename(val / WNIDS[2], val / "n09999999")
    with pytest.raises(DatasetError) as info:
        scan_folder(val, train_classes=WNIDS)
    assert str(info.value) == (
        f"{val}: class list differs from train: missing n01484850 (1 of 3); extra n09999999 (1 not among the 3)"
    )
    with pytest.raises(DatasetError, match=r"val: class list differs from train: missing n01484850"):
        fit_pixel_baseline(root / "imagenet" / "train", val, epochs=1)
    os.rename(v2 / "1", v2 / "3")  # folders 0, 2, 3: K = 3 means 0..2
    with pytest.raises(DatasetError) as info:
        scan_folder(v2, "imagenet_v2", WNIDS)
    assert str(info.value) == f"{v2}: class list differs from train: missing 1 (1 of 3); extra 3 (1 not among the 3)"


def _train_renamed(r: Path) -> None:
    os.rename(r / "imagenet" / "train", r / "imagenet" / "training")


def _v2_by_wnid(r: Path) -> None:
    os.rename(r / "imagenetv2-matched-frequency" / "0", r / "imagenetv2-matched-frequency" / WNIDS[0])


def _val_flat(r: Path) -> None:
    """val as shipped, before ``valprep.sh`` sorts it into class folders."""
    val = r / "imagenet" / "val"
    for p in list(val.glob("*/*.JPEG")):
        os.rename(p, val / p.name)
    for d in val.iterdir():
        if d.is_dir():
            d.rmdir()


@pytest.mark.parametrize(
    "setup, message",
    [
        (_train_renamed, "{r}/imagenet/train: no such directory (expected an image folder <root>/<class>/<image>)"),
        (
            _v2_by_wnid,
            "{r}/imagenetv2-matched-frequency: class folder 'n01440764' is not an integer "
            "(the imagenet_v2 layout names class folders 0..K-1 by label)",
        ),
        (
            _val_flat,
            "{r}/imagenet/val: no class subfolders (expected <root>/<class>/<image>, one folder per class); "
            "it holds images directly, as ImageNet's val tarball unpacks: sort them into one folder per class "
            "first (the usual valprep.sh does, or the labels of LOC_val_solution.csv; docs/datasets.md)",
        ),
    ],
)
def test_a_layout_that_is_not_the_official_one_is_named(imagenet, tmp_path, setup, message):
    root = _copy(imagenet, tmp_path)
    setup(root)
    with pytest.raises(DatasetError) as info:
        for split, layout in (
            ("imagenet/train", "imagefolder"),
            ("imagenet/val", "imagefolder"),
            ("imagenetv2-matched-frequency", "imagenet_v2"),
        ):
            scan_folder(root / split, layout, WNIDS)
    assert str(info.value) == message.format(r=root)


# --- the convert stage -------------------------------------------------------------------------


def _work(tmp_path: Path, data_root: Path, source: str = "real") -> Path:
    work = tmp_path / "work"
    work.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source=source, root=str(data_root), num_workers=1)
    params["data"]["ffcv"].update(max_resolution=64)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    return work


def _convert(work: Path, monkeypatch, capsys) -> tuple[int, list[str]]:
    from pcn.cli import main

    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    monkeypatch.delenv("PCN_PIPELINE_RUN_ID", raising=False)
    rc = main(stage_argv("convert"))
    return rc, [line for line in capsys.readouterr().err.splitlines() if line.startswith("pcn convert:")]


@pytest.mark.parametrize(
    "break_it, message",
    [
        (
            lambda r: __import__("shutil").rmtree(r / "imagenet" / "val" / WNIDS[2]),
            "{r}/imagenet/val: class list differs from train: missing n01484850 (1 of 3)",
        ),
        (
            lambda r: __import__("shutil").rmtree(r / "imagenetv2-matched-frequency" / "2"),
            "{r}/imagenetv2-matched-frequency: class list differs from train: missing 2 (1 of 3)",
        ),
        (
            lambda r: __import__("shutil").rmtree(r / "imagenetv2-matched-frequency"),
            "{r}/imagenetv2-matched-frequency: no such directory (expected an image folder <root>/<class>/<image>)",
        ),
        (
            lambda r: __import__("shutil").rmtree(r / "imagenet" / "val"),
            "{r}/imagenet/val: no such directory (expected an image folder <root>/<class>/<image>)",
        ),
    ],
)
def test_convert_refuses_before_writing_anything(imagenet, tmp_path, monkeypatch, capsys, break_it, message):
    require_ffcv()
    root = _copy(imagenet, tmp_path)
    break_it(root)
    work = _work(tmp_path, root)
    (work / "metrics").mkdir()
    (work / "metrics" / "convert.json").write_text('{"from": "the last good run"}\n')
    rc, errors = _convert(work, monkeypatch, capsys)
    assert rc == 2 and errors == [f"pcn convert: error: {message.format(r=root)}"]
    assert not (work / "data").exists()
    assert (work / "metrics" / "convert.json").read_text() == '{"from": "the last good run"}\n'


def test_convert_writes_train_val_and_v2_and_num_classes_counts_train(imagenet, tmp_path, monkeypatch, capsys):
    require_ffcv()
    from pcn.config import load_params
    from pcn.data.ffcv_io import check_metadata
    from pcn.steps.train import num_classes

    root, _ = imagenet
    work = _work(tmp_path, root)
    rc, errors = _convert(work, monkeypatch, capsys)
    assert rc == 0 and errors == []
    metrics = json.loads((work / "metrics" / "convert.json").read_text())
    assert {s: metrics["splits"][s]["n_images"] for s in ("train", "val", "v2")} == {"train": 9, "val": 9, "v2": 9}
    # evaluation through a loader with the train classes: v2's labels are 0..K-1
    assert check_metadata(work / "data/ffcv/v2.beton", WNIDS)["class_names"] == ["0", "1", "2"]
    with pytest.raises(DatasetError, match=r"v2\.beton: class list differs from train: missing 3 \(1 of 4\)$"):
        check_metadata(work / "data/ffcv/v2.beton", [*WNIDS, "n09999999"])
    with pytest.raises(DatasetError, match=r"val\.beton: class list differs from train: missing n09999999"):
        check_metadata(work / "data/ffcv/val.beton", [*WNIDS, "n09999999"])
    for source in ("real", "demo"):  # the class count is the train split's, whatever the source
        params = yaml.safe_load((work / "params.yaml").read_text())
        params["data"]["source"] = source
        (work / "params.yaml").write_text(yaml.safe_dump(params))
        assert num_classes(load_params(work / "params.yaml")) == 3


def test_convert_writes_only_the_splits_a_stage_reads_through_ffcv(imagenet, tmp_path, monkeypatch, capsys):
    """As at paper scale: evaluate reads the original JPEGs (evaluate.loader torch), so
    ImageNet-v2 is neither converted nor even needed by the conversion."""
    require_ffcv()
    root = _copy(imagenet, tmp_path)
    __import__("shutil").rmtree(root / "imagenetv2-matched-frequency")
    work = _work(tmp_path, root)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["evaluate"]["loader"] = "torch"
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    rc, errors = _convert(work, monkeypatch, capsys)
    assert rc == 0 and errors == []
    assert sorted(p.name for p in (work / "data/ffcv").glob("*.beton")) == ["train.beton", "val.beton"]
    assert set(json.loads((work / "metrics" / "convert.json").read_text())["splits"]) == {"train", "val"}


# --- LOC_val_solution.csv on the fixture ------------------------------------------------------


def test_attention_ground_truth_reads_every_val_image(imagenet):
    from pcn.analysis import attention as A

    root, _ = imagenet
    items = A.read_val_boxes(root / "imagenet" / "val", root / "imagenet" / "LOC_val_solution.csv", WNIDS, 100)
    assert len(items) == 9 and all(len(it.boxes) == 2 for it in items)
    assert [it.path.stem for it in items] == [f"ILSVRC2012_val_{k:08d}" for k in range(1, 10)]
    images, _, regions = A.load_images(items, 32)
    assert images.shape == (9, 32, 32, 3) and regions.any(axis=(1, 2)).all()
    # box 2 ends on the image's last column and row: it reaches the resized image's corner
    assert regions[:, -1, -1].all() and not regions[:, 0, -1].any()


# --- ADE20k -----------------------------------------------------------------------------------

ADE_NAMES = ["wall", "building, edifice", "sky", "floor, flooring"]


def write_ade(root: Path, n_classes: int = 4, object_info: bool = True, seed: int = 0) -> Path:
    """``root/ADEChallengeData2016``: 5 train and 3 val scenes of assorted sizes (one grayscale
    and one CMYK JPEG), label maps with ids 0..N."""
    rng = np.random.default_rng(seed)
    ade = root / "ADEChallengeData2016"
    for split, short, n in (("training", "train", 5), ("validation", "val", 3)):
        for k in range(1, n + 1):
            w, h = SIZES[(k + (split == "validation")) % len(SIZES)]
            stem = f"ADE_{short}_{k:08d}"
            mode = {1: "L", 2: "CMYK"}.get(k, "RGB") if split == "training" else "RGB"
            _save(_picture(rng, (w, h), (120, 120, 120)), ade / "images" / split / f"{stem}.jpg", mode)
            label = rng.integers(0, n_classes + 1, size=(h, w), dtype=np.uint8)
            (ade / "annotations" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(label, mode="L").save(ade / "annotations" / split / f"{stem}.png")
    if object_info:
        rows = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i}\t0.1\t5\t3\t{name}" for i, name in enumerate(ADE_NAMES, 1)]
        (ade / "objectInfo150.txt").write_text("\n".join(rows[: n_classes + 1]) + "\n")
    return ade


@pytest.fixture
def ade(tmp_path) -> Path:
    return write_ade(tmp_path)


def test_ade_reads_the_official_layout_at_every_size(ade):
    from pcn.transfer.datasets import AdeSegmentation, ade_train_transforms

    ds = AdeSegmentation(ade, "train", 4)
    assert ds.class_names == ["wall", "building", "sky", "floor"] and ds.n_classes == 4 and len(ds) == 5
    counts = np.zeros(5, dtype=np.int64)
    for i in range(len(ds)):
        image, label, name = ds[i]
        with Image.open(ade / "annotations" / "training" / f"{name}.png") as png:
            raw = np.asarray(png)
        assert image.shape == (3, *raw.shape) and torch.equal(label, torch.from_numpy(raw.astype(np.int64)))
        counts += np.bincount(raw.ravel(), minlength=5)
    assert ds.pixel_counts().tolist() == counts[1:].tolist()  # ids 1..N -> classes 0..N-1; 0 is left out
    grey, _, _ = ds[0]  # ADE_train_00000001 is a grayscale JPEG
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    aug = AdeSegmentation(ade, "train", 4, transforms=ade_train_transforms(32))
    for i in range(len(aug)):
        image, label, _ = aug[i]
        assert image.shape == (3, 32, 32) and label.shape == (32, 32) and int(label.max()) <= 4
    assert len(AdeSegmentation(ade, "val", 4)) == 3


def test_ade_names_default_without_object_info(tmp_path):
    from pcn.transfer.datasets import AdeSegmentation

    ade = write_ade(tmp_path, object_info=False)
    assert AdeSegmentation(ade, "val", 4).class_names == ["class_1", "class_2", "class_3", "class_4"]
    with pytest.raises(ValueError, match="n_classes = None: expected the number of label ids"):
        AdeSegmentation(ade, "val", None)


@pytest.mark.parametrize("object_info", [True, False])
def test_ade_says_that_a_csv_of_class_names_is_ignored(tmp_path, object_info):
    from pcn.transfer.datasets import AdeSegmentation

    ade = write_ade(tmp_path, object_info=object_info)
    (ade / "objectInfo150.csv").write_text("Idx,Ratio,Train,Val,Name\n1,0.1,1,1,mirror\n")
    with pytest.warns(UserWarning, match=r"objectInfo150.csv ignored: ADE20k's class names are read from") as rec:
        names = AdeSegmentation(ade, "val", 4).class_names
    assert ("which is missing" in str(rec[0].message)) != object_info
    assert names[0] != "mirror"


def test_ade_errors_name_the_file(ade):
    from pcn.transfer.datasets import AdeSegmentation
    from pcn.transfer.datasets import DatasetError as AdeError

    with pytest.raises(AdeError, match=r"objectInfo150\.txt: lists 4 classes, expected 5 \(segmentation\.n_classes\)"):
        AdeSegmentation(ade, "val", 5)
    with pytest.raises(AdeError, match=r"ADE_train_\d+\.png: label id 4 above the 3 classes"):
        (ade / "objectInfo150.txt").unlink()
        AdeSegmentation(ade, "train", 3)
    (ade / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n1\t0.1\t5\t3\twall\n2 0.1 5 3 sky\n")
    with pytest.raises(AdeError) as info:
        AdeSegmentation(ade, "val", 2)
    assert str(info.value) == (
        f"{ade / 'objectInfo150.txt'}: line 3: expected 5 tab-separated fields 'Idx Ratio Train Val Name'"
    )
    (ade / "objectInfo150.txt").unlink()
    os.rename(ade / "images" / "validation", ade / "images" / "val")
    with pytest.raises(AdeError) as info:
        AdeSegmentation(ade, "val", 4)
    assert str(info.value).startswith(
        f"{ade / 'images' / 'validation'}: folder missing (expected the ADEChallengeData2016 layout"
    )
    with pytest.raises(AdeError, match=r"images/training: folder missing"):
        AdeSegmentation(ade.parent, "train", 4)  # the folder above the dataset's


# --- COCO ---------------------------------------------------------------------------------------

CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 5, "name": "airplane", "supercategory": "vehicle"},
    {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
]


def _runs(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts of a mask: run lengths in column-major order, zeros first."""
    flat = mask.ravel(order="F").astype(np.uint8)
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    return counts + [run]


def _crowd_mask(h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[5:20, 30:50] = True
    m[25:30, 0:10] = True
    return m


def write_coco(root: Path, seed: int = 0) -> Path:
    """``root/coco``: train2017 with a multi-polygon object, an uncompressed-RLE crowd region,
    an image without annotations (grayscale), a CMYK image; category ids 1, 5, 90."""
    rng = np.random.default_rng(seed)
    coco = root / "coco"
    files = [(1, 64, 48, "RGB"), (2, 40, 56, "L"), (3, 80, 30, "CMYK")]
    images = []
    for image_id, w, h, mode in files:
        name = f"{image_id:012d}.jpg"
        _save(_picture(rng, (w, h), (90, 140, 190)), coco / "train2017" / name, mode)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
    crowd = _crowd_mask(48, 64)
    annotations = [
        {
            "id": 11,
            "image_id": 1,
            "category_id": 5,
            "iscrowd": 0,
            "area": 200.0,
            "bbox": [2, 2, 36, 10],
            "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12], [28, 2, 38, 2, 38, 12, 28, 12]],
        },  # two parts
        {
            "id": 12,
            "image_id": 1,
            "category_id": 90,
            "iscrowd": 1,
            "area": float(crowd.sum()),
            "bbox": [0, 5, 50, 25],
            "segmentation": {"size": [48, 64], "counts": _runs(crowd)},
        },
        {
            "id": 13,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 0,
            "area": 100.0,
            "bbox": [10, 30, 10, 10],
            "segmentation": [[10, 30, 20, 30, 20, 40, 10, 40]],
        },
        {
            "id": 31,
            "image_id": 3,
            "category_id": 90,
            "iscrowd": 0,
            "area": 50.0,
            "bbox": [60, 10, 10, 5],
            "segmentation": [[60, 10, 70, 10, 70, 15, 60, 15]],
        },
    ]
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
    )
    return coco


@pytest.fixture
def coco(tmp_path) -> Path:
    return write_coco(tmp_path)


def test_coco_category_ids_map_to_contiguous_labels_and_back(coco):
    from pcn.transfer.datasets import CocoInstances

    ds = CocoInstances(coco, "train")
    assert ds.cat_to_label == {1: 1, 5: 2, 90: 3} and ds.label_to_cat == {1: 1, 2: 5, 3: 90}
    assert ds.class_names == ["person", "airplane", "toothbrush"]
    _, target = ds[0]
    assert target["labels"].tolist() == [2, 1]  # the airplane and the person; the crowd region is left out
    assert [ds.label_to_cat[int(v)] for v in target["labels"]] == [5, 1]


def test_coco_multi_polygon_object_is_one_mask_of_all_its_parts(coco):
    from pcn.transfer.datasets import CocoInstances

    _, target = CocoInstances(coco, "train")[0]
    plane = target["masks"][0].numpy().astype(bool)
    assert plane[7, 7] and plane[7, 33] and not plane[7, 20]  # both squares, not the gap between them
    assert 150 <= plane.sum() <= 250  # two 10x10 squares, as pycocotools rasterises polygons
    assert target["boxes"][0].tolist() == [2, 2, 38, 12]


def test_coco_crowd_region_in_uncompressed_rle_decodes_exactly(coco):
    from pcn.transfer.datasets import CocoInstances, annotation_mask

    ds = CocoInstances(coco, "train")
    crowd = next(a for a in ds.data["annotations"] if a["iscrowd"])
    assert isinstance(crowd["segmentation"]["counts"], list)
    assert np.array_equal(annotation_mask(crowd, 48, 64).astype(bool), _crowd_mask(48, 64))
    assert all(not a.get("iscrowd") for anns in ds.anns.values() for a in anns)  # not a training target


def test_coco_image_without_annotations_is_an_item_with_empty_targets(coco):
    from pcn.transfer.datasets import CocoInstances, coco_train_transforms

    ds = CocoInstances(coco, "train", transforms=coco_train_transforms())
    image, target = ds[1]  # 000000000002.jpg: no annotation, and a grayscale JPEG
    assert image.shape == (3, 56, 40) and image.dtype == torch.float32
    assert torch.allclose(image[0], image[1]) and torch.allclose(image[1], image[2])
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,) and target["masks"].shape == (0, 56, 40)
    cmyk, target = ds[2]  # many sizes: every item keeps its own
    assert cmyk.shape == (3, 30, 80) and target["masks"].shape == (1, 30, 80)


def _edit(coco: Path, edit) -> None:
    path = coco / "annotations" / "instances_train2017.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def test_coco_errors_name_the_file(coco):
    from pcn.transfer.datasets import CocoInstances
    from pcn.transfer.datasets import DatasetError as CocoError

    ann_file = coco / "annotations" / "instances_train2017.json"
    _edit(coco, lambda d: d["annotations"][1]["segmentation"]["counts"].append(3))
    with pytest.raises(CocoError) as info:
        CocoInstances(coco, "train")
    assert str(info.value) == (
        f"{ann_file}: annotation 12 has uncompressed RLE counts that do not sum to 48 x 64 = 3072 pixels of its image 1"
    )
    _edit(coco, lambda d: d["annotations"][1]["segmentation"].update(size=[64, 48]))
    with pytest.raises(
        CocoError, match=r"annotation 12 has an RLE of size \[64, 48\] \(height, width\), its image 1 is 48x64"
    ):
        CocoInstances(coco, "train")
    _edit(coco, lambda d: d["annotations"][0].update(category_id=2))
    with pytest.raises(CocoError, match=r"instances_train2017\.json: annotation 11 refers to category id 2"):
        CocoInstances(coco, "train")
    with pytest.raises(CocoError) as info:
        CocoInstances(coco, "val")
    assert str(info.value).startswith(f"{coco / 'val2017'}: folder missing (expected the COCO layout")
    (coco / "val2017").mkdir()
    with pytest.raises(CocoError, match=r"annotations/instances_val2017\.json: annotation file missing"):
        CocoInstances(coco, "val")
    os.rename(coco / "train2017", coco / "train")
    with pytest.raises(CocoError, match=r"coco/train2017: folder missing"):
        CocoInstances(coco, "train")


# --- the miniatures: every reader on every dataset at once ------------------------------------


@pytest.mark.slow
def test_every_reader_reads_the_miniatures(tmp_path):
    """The rehearsal's miniatures (1000 classes, 150 ADE ids, 80 COCO categories, every quirk)."""
    from pcn.analysis import attention as A
    from pcn.data.demo.miniature import write_miniatures
    from pcn.transfer.datasets import AdeSegmentation, CocoInstances

    root = tmp_path / "mini"
    summary = write_miniatures(root, progress=False, ade_train=10, ade_val=10, coco_train=10, coco_val=8)
    train = scan_folder(root / "imagenet" / "train")
    assert train.num_classes == 1000
    assert len(scan_folder(root / "imagenet" / "val", train_classes=train.class_names).samples) == 1000
    assert scan_folder(root / "imagenetv2-matched-frequency", "imagenet_v2", train.class_names).num_classes == 1000
    for key in ("imagenet_png_named_jpeg", "imagenet_cmyk", "imagenet_grayscale", "coco_grayscale"):
        for rel in summary["quirks"][key]:
            assert open_rgb(root / rel).mode == "RGB"
    items = A.read_val_boxes(
        root / "imagenet" / "val", root / "imagenet" / "LOC_val_solution.csv", train.class_names, 1000
    )
    assert len(items) == 1000 and all(it.boxes for it in items)
    for split in ("train", "val"):
        ade = AdeSegmentation(root / "ADEChallengeData2016", split, 150)
        assert ade.n_classes == 150 and len(ade.class_names) == 150
        ds = CocoInstances(root / "coco", split)
        assert len(ds.categories) == 80 and max(ds.label_to_cat.values()) == 90
        for i in range(len(ds)):
            image, target = ds[i]
            assert image.shape[0] == 3 and target["masks"].shape[0] == target["labels"].shape[0]
