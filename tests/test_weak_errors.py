"""Errors that were a traceback far from their cause, or a misleading line, are one line
naming the file, key or value and what was expected (issue 36)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, require_ffcv, run_convert, write_tiny_imagefolder

from pcn.errors import DatasetError

# --- a COCO polygon of fewer than three points ------------------------------------------------


def _coco_json(path: Path, segmentation) -> Path:
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 40, "height": 30}],
                "categories": [{"id": 3, "name": "car"}],
                "annotations": [
                    {"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 1, 10, 10], "iscrowd": 0, "area": 50.0}
                    | {"segmentation": segmentation}
                ],
            }
        )
    )
    return path


@pytest.mark.parametrize(
    "segmentation, expected",
    [
        ([[1, 1, 10, 1]], "a polygon of 4 coordinates, expected x, y pairs of 3 points or more"),
        ([[1, 1, 10, 1, 10]], "a polygon of 5 coordinates, expected x, y pairs of 3 points or more"),
        ([[1, 1, 10, 1, 10, 10], [2, 2]], "a polygon of 2 coordinates"),
        ([[1, 1, 10, 1, 10, 10, 4]], "a polygon of 7 coordinates"),
        ([], "an empty polygon list, expected at least one polygon"),
        ([["1", 1, 10, 1, 10, 10]], "polygon ['1', 1, 10, 1, 10, 10], expected a list of x, y numbers"),
    ],
)
def test_a_coco_polygon_of_fewer_than_three_points_is_refused_when_the_file_is_read(tmp_path, segmentation, expected):
    """pycocotools failed on it with a TypeError inside a loader worker (or read four
    numbers as a box): the annotation file is refused as it is read, naming the annotation."""
    from pcn.transfer.datasets import load_coco_json

    path = _coco_json(tmp_path / "instances_val2017.json", segmentation)
    with pytest.raises(DatasetError) as info:
        load_coco_json(path)
    assert str(info.value).startswith(f"{path}: annotation 7 has {expected}"), str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools 2.0.x under numpy 2
def test_a_coco_file_of_valid_polygons_still_loads(tmp_path):
    from pcn.transfer.datasets import annotation_mask, load_coco_json

    data = load_coco_json(_coco_json(tmp_path / "a.json", [[1, 1, 10, 1, 10, 10], [20, 20, 30, 20, 30, 28]]))
    assert annotation_mask(data["annotations"][0], 30, 40).sum() > 0


# --- a checkpoint holding NaN ----------------------------------------------------------------------


def test_a_checkpoint_with_nan_weights_is_named_not_blamed_on_the_lr(tmp_path):
    """A NaN in the input checkpoint made the first loss NaN: "lower the lr?".  Its load
    names the file and the first bad key instead."""
    from pcn.models.checkpoint import CheckpointError, load_checkpoint
    from pcn.train.engine import load_init

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["1.weight"][0, 1] = float("nan")
    path = tmp_path / "model.pth"
    torch.save({"model": state}, path)
    expected = f"{path}: holds non-finite values (NaN) in key '1.weight'; expected finite weights"
    for load in (load_checkpoint, load_init):
        with pytest.raises(CheckpointError) as info:
            load(model, str(path))
        assert str(info.value).startswith(expected), str(info.value)
    state["1.weight"][0, 1] = float("inf")
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"non-finite values \(inf\) in key '1.weight'"):
        load_checkpoint(model, path)
    state["1.weight"][0, 1] = 0.0
    torch.save(state, path)
    load_checkpoint(model, path)


# --- evaluate's size and crop, at the command line ------------------------------------------------


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--img-size", "-5"], "argument --img-size: expected a whole number >= 1, got -5"),
        (["--img-size", "0"], "argument --img-size: expected a whole number >= 1, got 0"),
        (["--crop-ratio", "0"], "argument --crop-ratio: expected a ratio in (0, 1], got '0'"),
        (["--crop-ratio", "1.5"], "argument --crop-ratio: expected a ratio in (0, 1], got '1.5'"),
        (["--crop-ratio", "nan"], "argument --crop-ratio: expected a ratio in (0, 1], got 'nan'"),
    ],
)
def test_evaluate_refuses_a_bad_size_or_crop_when_parsing(capsys, argv, expected):
    """`--img-size -5` failed in a loader worker, blaming a val image."""
    from pcn.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["evaluate", "--checkpoint", "x.pth", *argv])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"pcn evaluate: error: {expected}"


def test_evaluate_takes_a_good_size_and_crop():
    from pcn.cli import build_parser

    args = build_parser().parse_args(["evaluate", "--checkpoint", "x.pth", "--img-size", "384", "--crop-ratio", "1"])
    assert (args.img_size, args.crop_ratio) == (384, 1.0)


# --- a skipped image, named once -------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_skipped_image_is_named_once(tmp_path):
    """`pcn convert` printed each unreadable image's line twice (a log line and a warning)."""
    require_ffcv()
    import shutil

    data = tmp_path / "datasets"
    write_tiny_imagefolder(data / "imagenet", classes=3, train_per_class=12, val_per_class=2, size=32)
    for c in range(3):
        shutil.copytree(data / "imagenet" / "val" / f"c{c}", data / "imagenetv2-matched-frequency" / str(c))
    (data / "imagenet" / "train" / "c1" / "broken.jpg").write_bytes(b"not an image")
    work = tmp_path / "work"
    work.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source="real", root=str(data), num_workers=1)
    params["data"]["ffcv"].update(max_resolution=32, max_bad_fraction=0.1)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    cp = run_convert(work, timeout=300)
    assert cp.returncode == 0, cp.stderr[-3000:]
    named = [line for line in cp.stderr.splitlines() if "broken.jpg" in line]
    assert len(named) == 1, named
    assert named[0].startswith(
        f"WARNING pcn.data.ffcv_io: skipping unreadable image {data}/imagenet/train/c1/broken.jpg"
    )
