"""`pcn evaluate --checkpoint FILE`: a checkpoint in the official release format
({'model': state_dict}) scored on ImageNet val and ImageNet-v2 (official layouts) under
the paper's evaluation protocol, into metrics/released/<model>-<img_size>-<sha>.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_paths

import pcn.models  # noqa: F401  (registers the models)
from pcn.cli import main

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]  # sorted: class index = rank
IMG_SIZE = 32
KEYS = {
    "model",
    "img_size",
    "crop_ratio",
    "top1",
    "top5",
    "n_images",
    "v2_top1",
    "v2_top5",
    "v2_n_images",
    "checkpoint",
}


def paper_view(img, img_size: int, crop_ratio: float) -> torch.Tensor:
    """The protocol written out: bicubic resize of the shorter side to img_size / crop_ratio,
    centre crop, ImageNet mean/std."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    x = TF.resize(img, int(img_size / crop_ratio), interpolation=InterpolationMode.BICUBIC, antialias=True)
    x = TF.to_tensor(TF.center_crop(x, [img_size, img_size]))
    return TF.normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A released-format checkpoint of a small PatchConvNet and val / v2 folders whose every
    image sits in the class the model predicts for it under the paper's protocol: scored
    under that protocol, top-1 is exactly 100% on both splits."""
    import timm
    from PIL import Image

    root = tmp_path_factory.mktemp("release")
    rng = np.random.default_rng(0)
    staging = root / "staging"
    staging.mkdir()
    paths, images = [], []
    for i in range(40):
        h, w = (int(v) for v in rng.integers(36, 90, size=2))  # aspect ratios both ways
        pixels = (rng.random((h, w, 3)) * rng.integers(60, 255, size=3)).astype(np.uint8)
        path = staging / f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        Image.fromarray(pixels).save(path, format="JPEG", quality=90)
        with Image.open(path) as f:
            images.append(f.convert("RGB"))
        paths.append(path)
    x = torch.stack([paper_view(img, IMG_SIZE, ratio) for img in images for ratio in (0.875, 1.0)])

    torch.manual_seed(0)
    model = timm.create_model("patchconvnet_demo", num_classes=len(WNIDS), layerscale_init=1.0).eval()
    with torch.no_grad():
        # A random model predicts one class for every image; a classifier along the main
        # directions of its features, centred, makes its predictions depend on the image
        # (and on the crop).  Values only: the checkpoint keeps the release's keys and shapes.
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        centred = features - features.mean(0)
        model.head.weight.copy_(torch.linalg.svd(centred, full_matrices=False).Vh[: len(WNIDS)] * 10)
        model.head.bias.copy_(-model.head.weight @ features.mean(0))
        logits = model(x).view(len(images), 2, len(WNIDS))
    torch.save({"model": model.state_dict()}, root / "demo_release.pth")

    kept, moved = [], 0
    for path, (paper, whole) in zip(paths, logits):
        top2 = paper.topk(2).values
        if top2[0] - top2[1] < 0.05:  # keep clear decisions: channels_last rounding must not flip them
            continue
        kept.append((path, int(paper.argmax())))
        moved += int(whole.argmax()) != kept[-1][1]
    assert len({p for _, p in kept}) > 1 and moved > 0, "the fixture's model must tell the images and crops apart"

    imagenet, v2 = root / "data" / "imagenet", root / "data" / "imagenetv2-matched-frequency"
    for c, wnid in enumerate(WNIDS):
        for d in (imagenet / "train" / wnid, imagenet / "val" / wnid, v2 / str(c)):
            d.mkdir(parents=True)
        shutil.copy(kept[0][0], imagenet / "train" / wnid / f"{wnid}_{c}.JPEG")
    for n, (path, pred) in enumerate(kept):
        shutil.copy(path, imagenet / "val" / WNIDS[pred] / path.name)
        shutil.copy(path, v2 / str(pred) / f"{n:040x}.jpeg")
    (root / "params.yaml").write_text(
        "data:\n  root: data\n  num_workers: 0\nevaluate:\n  batch_size: 8\nruntime:\n  threads: 1\n"
    )
    return root, len(kept)


def run(root: Path, monkeypatch, *argv: str) -> int:
    monkeypatch.chdir(root)
    return main(["--params", "params.yaml", "evaluate", *argv])


def result_of(root: Path, checkpoint: str) -> Path:
    from pcn.steps.evaluate import file_sha256

    return root / "metrics" / "released" / f"patchconvnet_demo-{IMG_SIZE}-{file_sha256(root / checkpoint)[:12]}.json"


def test_released_checkpoint_scores_val_and_v2_under_the_paper_protocol(release, monkeypatch):
    root, n = release
    assert run(root, monkeypatch, "--checkpoint", "demo_release.pth", "--img-size", str(IMG_SIZE)) == 0
    out = result_of(root, "demo_release.pth")
    doc = json.loads(out.read_text())
    assert KEYS <= set(doc), doc
    # the model is recognised from the checkpoint's keys and shapes; 32 px -> crop 0.875
    assert (doc["model"], doc["img_size"], doc["crop_ratio"]) == ("patchconvnet_demo", IMG_SIZE, 0.875)
    assert doc["checkpoint"] == "demo_release.pth"
    assert (doc["top1"], doc["top5"], doc["n_images"]) == (100.0, 100.0, n)
    # v2's folder names are the class indices (not sorted as strings): same images, same score
    assert (doc["v2_top1"], doc["v2_top5"], doc["v2_n_images"]) == (100.0, 100.0, n)
    assert not (root / "metrics" / "eval.json").exists(), "a released checkpoint must not replace the DAG's metrics"

    # Another crop ratio scores the same images differently: the protocol decides the score.
    assert (
        run(
            root,
            monkeypatch,
            "--checkpoint",
            "demo_release.pth",
            "--model",
            "patchconvnet_demo",
            "--img-size",
            str(IMG_SIZE),
            "--crop-ratio",
            "1.0",
        )
        == 0
    )
    assert json.loads(out.read_text())["top1"] < 100.0


def test_two_checkpoints_of_one_architecture_keep_two_results(release, monkeypatch):
    """A second fine-tuning of the same model scored after the first must not replace its
    result, and the report lists both."""
    from pcn.analysis import report as R
    from pcn.config import load_params

    root, n = release
    other = torch.load(root / "demo_release.pth", weights_only=True)
    other["model"]["head.bias"] = other["model"]["head.bias"] + torch.arange(len(WNIDS)) * 100.0  # one class wins
    torch.save(other, root / "other_release.pth")
    for name in ("demo_release.pth", "other_release.pth"):
        assert run(root, monkeypatch, "--checkpoint", name, "--img-size", str(IMG_SIZE)) == 0
    first, second = (json.loads(result_of(root, c).read_text()) for c in ("demo_release.pth", "other_release.pth"))
    assert (first["checkpoint"], first["top1"]) == ("demo_release.pth", 100.0)
    assert second["checkpoint"] == "other_release.pth" and second["top1"] < 100.0

    shutil.copytree(Path(__file__).resolve().parents[1] / "paper", root / "paper", dirs_exist_ok=True)
    report = R.build_report(run_paths(root), load_params(root / "params.yaml"))
    section = next(s for s in report.sections if s.title == "Classification")
    table = next(t for t in section.tables if t.caption.startswith("Released"))
    assert sorted(str(r[1]) for r in table.rows) == ["demo_release.pth", "other_release.pth"]


def test_multi_class_release_is_told_from_the_single_token_one():
    import timm

    from pcn.steps.evaluate import released_model

    for name in ("patchconvnet_demo", "patchconvnet_demo_multi"):
        sd = timm.create_model(name, num_classes=len(WNIDS)).state_dict()
        found, model = released_model(sd, "release.pth")
        assert (found, model.num_classes) == (name, len(WNIDS))
        torch.testing.assert_close(model.state_dict()["cls_token"], sd["cls_token"])


def test_paper_protocol_by_resolution():
    from PIL import Image

    from pcn.steps.evaluate import PAPER_CROP_RATIO, released_transform

    # the PatchConvNet release resizes by 256/224 at every size (1.0 above 224 px is DeiT III's)
    assert PAPER_CROP_RATIO == 0.875
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (375, 500, 3), dtype=np.uint8))
    for size in (224, 384):
        x = released_transform(size, PAPER_CROP_RATIO)(img)
        assert x.shape == (3, size, size)
        torch.testing.assert_close(x, paper_view(img, size, PAPER_CROP_RATIO))


@pytest.mark.parametrize(
    "content, message",
    [
        ("text", "not a PyTorch checkpoint"),
        ({"epoch": 3}, "entry 'epoch'"),
        ({"model": {"fc.weight": torch.zeros(2, 2)}}, "no registered PatchConvNet"),
    ],
)
def test_bad_checkpoint_fails_in_one_line(release, monkeypatch, capsys, content, message):
    root, _ = release
    bad = root / "bad.pth"
    if content == "text":
        bad.write_text("not a checkpoint\n")
    else:
        torch.save(content, bad)
    assert run(root, monkeypatch, "--checkpoint", "bad.pth") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.pth" in err[0] and message in err[0], err


def test_checkpoint_of_another_model_names_the_first_bad_key(release, monkeypatch, capsys):
    root, _ = release
    assert run(root, monkeypatch, "--checkpoint", "demo_release.pth", "--model", "patchconvnet_s60") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "demo_release.pth" in err[0] and "key" in err[0], err


def test_the_dags_evaluate_with_the_torch_loader_is_the_released_protocol(release, monkeypatch):
    """evaluate.loader: torch (the paper scale's) scores the pipeline's own model as a released
    checkpoint is scored: the fixture's images sit in the class the model predicts under the
    official protocol, so the DAG's evaluate stage gives 100% as `pcn evaluate --checkpoint` does."""
    root, n = release
    (root / "results" / "finetune").mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "demo_release.pth", root / "results" / "finetune" / "model.pth")
    (root / "params_dag.yaml").write_text(
        yaml.safe_dump(
            {
                "data": {"root": "data", "num_workers": 0},
                "model": {"name": "patchconvnet_demo"},
                "evaluate": {"batch_size": 8, "img_size": IMG_SIZE, "crop_ratio": 0.875, "loader": "torch"},
                "runtime": {"threads": 1},
            }
        )
    )
    monkeypatch.chdir(root)
    assert (
        main(
            ["--params", "params_dag.yaml", "evaluate", "--weights", "results/finetune/model.pth"]
            + ["--metrics", "metrics/eval.json"]
        )
        == 0
    )
    doc = json.loads((root / "metrics" / "eval.json").read_text())
    assert (doc["loader"], doc["img_size"], doc["crop_ratio"]) == ("torch", IMG_SIZE, 0.875)
    assert (doc["top1"], doc["n_images"], doc["v2_top1"], doc["v2_n_images"]) == (100.0, n, 100.0, n)
    (root / "metrics" / "eval.json").unlink()  # the released checkpoint's test checks it is absent
