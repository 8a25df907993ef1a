"""The two data loaders behind build_loader (pcn.data.loaders)."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require
from PIL import Image

from pcn.config import AugConfig
from pcn.data.augment.transforms import IMAGENET_MEAN, IMAGENET_STD, center_crop_box
from pcn.data.loaders import build_loader
from pcn.data.order import epoch_order
from pcn.errors import DatasetError

CLASSES = ["cat", "dog", "eel"]
# numba's dispatcher finaliser raises a harmless KeyError when FFCV's compiled
# pipelines are garbage-collected (stock FFCV pipelines do the same).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def make_folder(root: Path, classes=CLASSES, per_class: int = 8, seed: int = 0) -> Path:
    """Smooth JPEGs of assorted non-square sizes (smaller than max_resolution)."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = int(rng.integers(40, 72)), int(rng.integers(40, 72))
            coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
            Image.fromarray(coarse).resize((w, h), Image.BICUBIC).save(root / c / f"{i:03d}.jpg", quality=92)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loaders")
    folder = make_folder(root / "images")
    beton = None
    try:
        from pcn.data.ffcv_io import convert_imagefolder

        beton = root / "data.beton"
        convert_imagefolder(
            folder,
            beton,
            max_resolution=256,
            jpeg_quality=90,
            compress_probability=0.5,
            write_mode="raw",
            max_bad_fraction=0.0,
            num_workers=1,
            progress=False,
        )
    except ImportError:
        pass
    return folder, beton


def loader(
    data,
    kind,
    *,
    train,
    seed=0,
    num_workers=1,
    aug=None,
    img_size=32,
    batch_size=8,
    **kw,
):
    folder, beton = data
    if kind == "ffcv" and beton is None:
        require("ffcv cannot be imported", "ffcv")
    return build_loader(
        beton=beton,
        folder=folder,
        kind=kind,
        train=train,
        img_size=img_size,
        batch_size=batch_size,
        aug=aug,
        num_workers=num_workers,
        seed=seed,
        **kw,
    )


def to_uint8(images: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images * std + mean) * 255).numpy()


def batches(ld, epoch=0):
    ld.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in ld]


def test_center_crop_box_is_ffcvs():
    from ffcv.fields.rgb_image import get_center_crop

    for h, w in [(64, 48), (375, 500), (101, 99), (7, 300)]:
        assert center_crop_box(h, w, 0.875) == get_center_crop(h, w, None, 0.875)


def test_ffcv_and_torch_eval_images_agree(data):
    f = loader(data, "ffcv", train=False)
    t = loader(data, "torch", train=False)
    assert f.class_names == t.class_names == CLASSES
    assert f.num_classes == t.num_classes == 3 and f.num_samples == t.num_samples == 24
    assert len(f) == len(t) == 3
    fb, tb = batches(f), batches(t)
    for (fx, fy), (tx, ty) in zip(fb, tb):
        assert fx.shape == tx.shape == (8, 3, 32, 32) and fx.dtype == tx.dtype == torch.float32
        assert fy.dtype == ty.dtype == torch.int64 and torch.equal(fy, ty)
        diff = np.abs(to_uint8(fx) - to_uint8(tx))
        assert diff.mean() < 0.5 and diff.max() < 2, (diff.mean(), diff.max())
    assert torch.cat([y for _, y in fb]).tolist() == [i // 8 for i in range(24)]


@pytest.mark.parametrize("kind", ["torch", pytest.param("ffcv", marks=pytest.mark.slow)])
def test_same_seed_same_batches(data, kind):
    """Identical batches for a seed, whatever the number of workers (FFCV: threads)."""
    aug = AugConfig(scale_min=0.3)
    a = batches(loader(data, kind, train=True, seed=3, aug=aug), epoch=2)
    b = batches(loader(data, kind, train=True, seed=3, aug=aug, num_workers=2), epoch=2)
    assert len(a) == len(b) == 3  # drop_last for training: 24 // 8
    for (ax, ay), (bx, by) in zip(a, b):
        assert torch.equal(ax, bx) and torch.equal(ay, by)
    c = batches(loader(data, kind, train=True, seed=4, aug=aug), epoch=2)
    assert not torch.equal(a[0][0], c[0][0])


def test_epochs_differ_and_order_is_shared(data):
    t = loader(data, "torch", train=True)
    e0, e1 = batches(t, 0), batches(t, 1)
    assert not torch.equal(e0[0][0], e1[0][0])
    labels = torch.cat([y for _, y in e1]).tolist()
    order = epoch_order(24, train=True, seed=0, epoch=1)
    assert labels == [int(i) // 8 for i in order[:24]]  # the order FFCV's loader uses too


def test_train_batches_look_like_the_recipe(data):
    for kind in ("torch", "ffcv"):
        x, y = next(iter(loader(data, kind, train=True, img_size=24)))
        # FFCV hands out its own buffer, NCHW with channels-last strides (no copy)
        layout = torch.channels_last if kind == "ffcv" else torch.contiguous_format
        assert x.shape == (8, 3, 24, 24) and x.dtype == torch.float32
        assert x.is_contiguous(memory_format=layout)
        assert y.dtype == torch.int64
        assert -2.2 < x.min() and x.max() < 2.7  # normalised with ImageNet mean/std


PAPER_AUG = AugConfig(auto_augment="rand-m9-mstd0.5-inc1", random_erasing=0.25, repeated_aug=3)


def test_randaugment_and_erasing_in_both_loaders(data):
    x, _ = next(iter(loader(data, "torch", train=True, aug=PAPER_AUG)))
    assert x.shape == (8, 3, 32, 32)
    a = batches(loader(data, "ffcv", train=True, aug=PAPER_AUG), epoch=1)
    b = batches(loader(data, "ffcv", train=True, aug=PAPER_AUG, num_workers=2), epoch=1)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))  # resumable
    x = torch.cat([p[0] for p in a])
    assert x.shape == (24, 3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
    plain = batches(loader(data, "ffcv", train=True, aug=AugConfig(repeated_aug=3)), epoch=1)
    assert all(torch.equal(p[1], q[1]) for p, q in zip(a, plain))  # same images, augmented
    assert not torch.equal(a[0][0], plain[0][0])
    assert not torch.equal(a[0][0], batches(loader(data, "ffcv", train=True, aug=PAPER_AUG), epoch=2)[0][0])
    with pytest.raises(ValueError, match="aug.auto_augment = 'rand-m9-mstd0.5'.*inc1"):
        loader(data, "ffcv", train=True, aug=AugConfig(auto_augment="rand-m9-mstd0.5"))


def test_repeated_aug_in_the_ffcv_loader(data):
    """DeiT's RASampler: the ranks see the same images, each with its own augmentation."""
    ranks = [
        batches(loader(data, "ffcv", train=True, aug=PAPER_AUG, batch_size=4, rank=r, world_size=3)) for r in range(3)
    ]
    assert len(ranks[0]) == 2  # ceil(24 / 3) images per rank, batches of 4
    for r in (1, 2):
        assert all(torch.equal(p[1], q[1]) for p, q in zip(ranks[0], ranks[r]))  # same labels in order
        assert not torch.equal(ranks[0][0][0], ranks[r][0][0])  # different augmentations
    order = epoch_order(24, train=True, seed=0, epoch=0, rank=1, world_size=3, repeats=3)
    assert torch.cat([y for _, y in ranks[1]]).tolist() == [int(i) // 8 for i in order[:8]]


def test_missing_ffcv_is_a_clear_error(data, monkeypatch):
    real_import = builtins.__import__

    def no_ffcv(name, *args, **kwargs):
        if name.startswith("ffcv"):
            raise ImportError("No module named 'ffcv'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ffcv)
    with pytest.raises(ImportError, match="install it.*data.loader: torch"):
        build_loader(
            beton=data[1] or "x.beton",
            folder=None,
            kind="ffcv",
            train=False,
            img_size=16,
            batch_size=4,
            num_workers=0,
            seed=0,
        )


def test_repeated_augmentation_spreads_copies_over_ranks():
    orders = [epoch_order(512, train=True, seed=0, epoch=0, rank=r, world_size=3, repeats=3) for r in range(3)]
    assert all(len(o) == 512 // 3 for o in orders)  # an epoch stays one dataset's worth
    for k in range(len(orders[0])):  # each sample's three copies land on three ranks
        assert orders[0][k] == orders[1][k] == orders[2][k]
    assert not np.array_equal(
        orders[0],
        epoch_order(512, train=True, seed=1, epoch=0, world_size=3, repeats=3),
    )


def test_repeated_aug_in_the_torch_loader(data):
    folder, _ = data
    ld = build_loader(
        beton=None,
        folder=folder,
        kind="torch",
        train=True,
        img_size=16,
        batch_size=4,
        aug=AugConfig(repeated_aug=3),
        num_workers=0,
        seed=0,
        rank=1,
        world_size=2,
    )
    assert len(ld) == 3  # RepeatAugSampler: ceil(24 / 2) samples per rank, batches of 4
    x, _ = next(iter(ld))
    assert x.shape == (4, 3, 16, 16)


def test_v2_layout_in_the_torch_loader(tmp_path):
    folder = make_folder(tmp_path / "v2", [str(i) for i in range(11)], per_class=1)
    ld = build_loader(
        beton=None,
        folder=folder,
        kind="torch",
        train=False,
        img_size=16,
        batch_size=11,
        num_workers=0,
        seed=0,
        layout="imagenet_v2",
    )
    _, y = next(iter(ld))
    assert y.tolist() == list(range(11)) and ld.class_names[10] == "10"

    def v2(train_classes):
        return build_loader(
            beton=None,
            folder=folder,
            kind="torch",
            train=False,
            img_size=16,
            batch_size=4,
            num_workers=0,
            seed=0,
            layout="imagenet_v2",
            expected_classes=train_classes,
        )

    # expected_classes are the train split's wnids: v2 must hold the folders 0..K-1
    assert v2([f"n{i:08d}" for i in range(11)]).num_classes == 11
    with pytest.raises(DatasetError, match=r"v2: class list differs from train: missing 11 \(1 of 12\)$"):
        v2([f"n{i:08d}" for i in range(12)])
    with pytest.raises(DatasetError, match=r"v2: class list differs from train: extra 10 \(1 not among the 10\)$"):
        v2([f"n{i:08d}" for i in range(10)])


def test_val_classes_must_be_trains(data):
    folder, _ = data
    with pytest.raises(DatasetError) as info:
        build_loader(
            beton=None,
            folder=folder,
            kind="torch",
            train=False,
            img_size=16,
            batch_size=4,
            num_workers=0,
            seed=0,
            expected_classes=["cat", "dog", "eel", "fox"],
        )
    assert str(info.value) == f"{folder}: class list differs from train: missing fox (1 of 4)"


@pytest.mark.slow
def test_three_augment_both_loaders(data):
    aug = AugConfig(three_augment=True, color_jitter=0.3)
    for kind in ("torch", "ffcv"):
        a = batches(loader(data, kind, train=True, aug=aug))
        b = batches(loader(data, kind, train=True, aug=aug))
        assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
        plain = batches(loader(data, kind, train=True))
        assert not torch.equal(a[0][0], plain[0][0])
        assert torch.isfinite(a[0][0]).all()


def _paper_train_transform(img_size: int):
    from pcn.config import load_params
    from pcn.data.augment.transforms import TrainAug, torch_train_transform

    aug = load_params(Path(__file__).resolve().parents[1] / "params.yaml", scale="paper").pretrain.aug
    assert aug.auto_augment == "rand-m9-mstd0.5-inc1"
    return torch_train_transform(img_size, TrainAug.from_config(aug))


def test_paper_randaugment_posterizes_to_black_at_zero_bits_as_paper_era_pillow():
    """PosterizeIncreasing at magnitude 10 keeps 0 bits: Pillow 13 refuses, the paper's Pillow gave black."""
    from PIL import ImageOps

    img = Image.fromarray(np.random.default_rng(0).integers(1, 256, (8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="bits"):
        ImageOps.posterize(img, 0)  # why the recipe needs its own posterize
    transform = _paper_train_transform(8)
    (randaugment,) = [t for t in transform.transforms if hasattr(t, "ops")]
    (op,) = [op for op in randaugment.ops if op.name == "PosterizeIncreasing"]
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
    assert not np.asarray(op(img)).any()
    op.magnitude = 5  # 2 bits: Pillow's own posterize, unchanged
    assert np.array_equal(np.asarray(op(img)), np.asarray(ImageOps.posterize(img, 2)))


def test_paper_train_transform_survives_100k_draws():
    """The RandAugment of the paper's pretrain transform (pcn.data.augment.transforms.torch_train_transform)
    on an 8x8 image, 100,000 times (5 s; the whole transform costs 3x): about 0.18% of the draws
    reach 0-bit posterize; none may raise."""
    import random

    transform = _paper_train_transform(8)
    (randaugment,) = [t for t in transform.transforms if hasattr(t, "ops")]
    zero_bits = []
    for op in randaugment.ops:
        if op.name.startswith("Posterize"):
            fn = op.aug_fn

            def counted(img, bits, _fn=fn, **kw):
                zero_bits.append(bits <= 0)
                return _fn(img, bits, **kw)

            op.aug_fn = counted
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    for _ in range(100_000):
        randaugment(img)
    assert sum(zero_bits) > 50  # the draws did reach 0 bits (about 180 expected)
    for _ in range(2_000):  # and the whole transform around it
        assert transform(img).shape == (3, 8, 8)


def test_torch_train_transform_resamples_bicubic_as_deit():
    """DeiT's --train-interpolation bicubic: the random-resized crop and RandAugment's geometric ops."""
    from torchvision.transforms import InterpolationMode

    transform = _paper_train_transform(32)
    crop = transform.transforms[0]
    assert crop.interpolation == InterpolationMode.BICUBIC
    (randaugment,) = [t for t in transform.transforms if hasattr(t, "ops")]
    rotate = next(op for op in randaugment.ops if op.name == "Rotate")
    assert rotate.kwargs["resample"] == Image.Resampling.BICUBIC
