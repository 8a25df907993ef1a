"""The data-path pass: thousands of augmented samples through a training loader, no model;
a rare failing op or image is named in one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import ROOT, require_ffcv, write_tiny_imagefolder

from pcn.config import raw_params, resolve
from pcn.data.sample_pass import SampleFailure, stream, training_loaders

IMAGES = 2_000  # 10 classes x 200: rare draws happen several times per pass
POLICY = "rand-m9-mstd0.5-inc1"  # the paper's RandAugment


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A project folder: ImageNet-shaped train/val of 2,000 + 100 images and their .beton files."""
    require_ffcv()
    from pcn.data.ffcv_io import convert_imagefolder

    work = tmp_path_factory.mktemp("pass")
    inet = write_tiny_imagefolder(work / "datasets" / "imagenet", classes=10, train_per_class=200, val_per_class=10)
    (work / "data" / "ffcv").mkdir(parents=True)
    for split in ("train", "val"):
        convert_imagefolder(
            inet / split,
            work / "data" / "ffcv" / f"{split}.beton",
            max_resolution=64,
            jpeg_quality=90,
            compress_probability=0.5,
            write_mode="proportion",  # as the paper scale: raw and JPEG samples alike
            max_bad_fraction=0.0,
            num_workers=1,
            progress=False,
        )
    return work


def params(work: Path, loader: str = "ffcv"):
    raw = raw_params(ROOT / "params.yaml")
    raw["data"].update(source="real", root=str(work / "datasets"), loader=loader, num_workers=1)
    raw["experiments"]["enabled"] = False
    raw["pretrain"]["aug"].update(auto_augment=POLICY, random_erasing=0.25)
    return resolve(raw)


def pretrain_loader(p):
    return next(s for s in training_loaders(p) if "pretrain" in s.stages)


def test_the_paper_scales_loaders_cover_every_training_stage_once():
    raw = raw_params()
    raw["scale"] = "paper"
    loaders = training_loaders(resolve(raw))
    stages = [s for spec in loaders for s in spec.stages]
    assert sorted(stages) == sorted(
        ["pretrain", "finetune", "ablation", "resnet_pool", "multiclass", "multiclass@finetuned", "depth_width"]
    )
    keys = {(s.kind, s.cfg.img_size, s.cfg.aug.model_dump_json()) for s in loaders}
    assert len(keys) == len(loaders)  # one pass per distinct loader
    assert all(s.kind == "ffcv" and s.cfg.aug.auto_augment.startswith("rand-") for s in loaders)
    assert next(s for s in loaders if "pretrain" in s.stages).cfg.aug.auto_augment == POLICY


def test_a_batch_maps_to_the_images_the_ffcv_loader_read(workspace, monkeypatch):
    """``batch_samples`` (how a failure names its image) agrees with the labels read, over
    two epochs of 2,000 images."""
    from pcn.data.loaders import build_loader, folder_index

    monkeypatch.chdir(workspace)
    index = folder_index(workspace / "datasets/imagenet/train", layout="imagefolder", beton=None, expected_classes=None)
    loader = build_loader(
        beton="data/ffcv/train.beton",
        folder=None,
        kind="ffcv",
        train=True,
        img_size=32,
        batch_size=128,
        num_workers=1,
        seed=3,
        drop_last=False,
    )
    seen = 0
    for epoch in range(2):
        loader.set_epoch(epoch)
        for step, (_images, labels) in enumerate(loader):
            expected = [index.samples[i][1] for i in loader.batch_samples(epoch, step)]
            assert labels.tolist() == expected, (epoch, step)
            seen += len(labels)
    assert seen == 2 * IMAGES


def test_a_rare_failing_batched_op_is_named_with_its_image(workspace, monkeypatch):
    """As Pillow once refused 0-bit posterize: an op that raises only at the top of its
    magnitude range, about 1 image in 150, is found and named, op, magnitude and image."""
    import pcn.data.augment.randaugment_cpu as kernels  # the CPU's RandAugment kernels

    real = kernels.colour_op
    hits = []

    def fragile(batch, slots, name, level):
        if name == "PosterizeIncreasing" and bool((level >= 0.98).any()):
            hits.append(int((level >= 0.98).sum()))
            raise ValueError("bits must be between or equal to 1 and 8")
        return real(batch, slots, name, level)

    monkeypatch.setattr(kernels, "colour_op", fragile)
    monkeypatch.chdir(workspace)
    p = params(workspace)
    with pytest.raises(SampleFailure) as info:
        stream(pretrain_loader(p), p, 5 * IMAGES)
    msg = str(info.value)
    assert "\n" not in msg
    m = re.fullmatch(
        r"data pass, ffcv 64 px \(pretrain\), epoch (\d+), batch (\d+): (\S+\.jpg): "
        r"RandAugment op PosterizeIncreasing at magnitude (\S+) raised ValueError: bits must be .*",
        msg,
    )
    assert m, msg
    assert Path(m[3]).is_file() and Path(m[3]).is_relative_to(workspace / "datasets/imagenet/train")
    assert 9.8 <= float(m[4]) <= 10.0  # the culprit's own magnitude, found image by image
    assert hits


def test_a_rare_failing_pil_op_names_its_image_through_the_torch_loader(workspace, monkeypatch):
    """The official path (PIL RandAugment in DataLoader workers): the worker's traceback is
    reduced to one line naming timm's op, its magnitude and the image."""
    from PIL import Image

    rotate = Image.Image.rotate

    def fragile(self, angle, *a, **kw):
        if abs(angle) > 29.0:  # magnitude above 9.67: a few rotations in a hundred
            raise OSError("simulated failure at large angles")
        return rotate(self, angle, *a, **kw)

    monkeypatch.setattr(Image.Image, "rotate", fragile)  # forked workers inherit it
    monkeypatch.chdir(workspace)
    p = params(workspace, loader="torch")
    with pytest.raises(SampleFailure) as info:
        stream(pretrain_loader(p), p, 5 * IMAGES)
    msg = str(info.value)
    m = re.fullmatch(
        r"data pass, torch 64 px \(pretrain\), epoch \d+, batch \d+: (\S+\.jpg): "
        r"RandAugment op Rotate at magnitude (\S+) raised OSError: simulated failure at large angles",
        msg,
    )
    assert m, msg
    assert Path(m[1]).is_file() and float(m[2]) > 9.6


def test_non_finite_pixels_are_named_with_their_image(workspace, monkeypatch):
    import pcn.data.augment.batch as B

    real, calls = B.BatchAugment.__call__, []

    def poisoned(self, images, key):
        out = real(self, images, key)
        calls.append(1)
        if len(calls) == 7:
            out[5, 0, 3, 3] = torch.nan
        return out

    monkeypatch.setattr(B.BatchAugment, "__call__", poisoned)
    monkeypatch.chdir(workspace)
    p = params(workspace)
    with pytest.raises(SampleFailure, match=r"epoch 0, batch 6: \S+\.jpg: non-finite pixel values after augmentation$"):
        stream(pretrain_loader(p), p, IMAGES)


def test_a_clean_pass_streams_the_samples_asked(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    p = params(workspace)
    out = stream(pretrain_loader(p), p, 2 * IMAGES + 1)
    assert out["samples"] >= 2 * IMAGES + 1 and out["epochs"] == 3
