"""The ``memory`` loader (pcn.data.memory_loader): decoded once, augmented per batch."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from test_loaders import CLASSES, make_folder, to_uint8

from pcn.config import AugConfig
from pcn.data.loaders import build_loader
from pcn.data.memory_loader import random_resized_boxes
from pcn.data.order import epoch_order


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """24 lossless 48x40 images (PNG, so decoded pixels are known exactly)."""
    root = tmp_path_factory.mktemp("memory") / "images"
    rng = np.random.default_rng(1)
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(root / c / f"{i:03d}.png")
    return root


def build(folder, kind="memory", *, train, seed=0, aug=None, img_size=20, batch_size=8, **kw):
    return build_loader(
        beton=None,
        folder=folder,
        kind=kind,
        train=train,
        img_size=img_size,
        batch_size=batch_size,
        aug=aug,
        num_workers=0,
        seed=seed,
        **kw,
    )


def epoch(ld, e):
    ld.set_epoch(e)
    return [(x.clone(), y.clone()) for x, y in ld]


def test_eval_batches_equal_the_torch_loaders(folder):
    m, t = epoch(build(folder, train=False), 0), epoch(build(folder, "torch", train=False), 0)
    assert len(m) == len(t) == 3
    for (mx, my), (tx, ty) in zip(m, t):
        assert torch.equal(mx, tx) and torch.equal(my, ty)


def test_whole_image_crop_is_an_area_resize(folder):
    """scale (1, 1) on a 48x40 image whose ratio is in range: the box is the whole
    image, and roi_align's per-bin averaging equals OpenCV's area filter for an exact
    2x reduction."""
    aug = AugConfig(scale_min=1.0, hflip=0.0)
    ld = build(folder, train=True, aug=aug, img_size=20)
    ld.images, ld.sizes[:, 1] = ld.images[:, :, :, 4:44], 40  # 40x40: an exact 2x reduction to 20 px
    x, y = next(iter(ld))
    order = epoch_order(24, train=True, seed=0, epoch=0)[:8]
    for k, i in enumerate(order):
        rel, label = ld_samples(folder)[i]
        src = np.asarray(Image.open(folder / rel).convert("RGB"))[:, 4:44]
        want = cv2.resize(src, (20, 20), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)
        assert y[k] == label
        assert np.abs(to_uint8(x[k : k + 1])[0] - want).max() < 0.51  # area resize rounds to uint8


def ld_samples(folder):
    from pcn.data.folders import scan_folder

    return scan_folder(folder, "imagefolder").samples


def test_train_batches_are_seeded_and_follow_the_shared_order(folder):
    aug = AugConfig(scale_min=0.3)
    a, b = epoch(build(folder, train=True, seed=3, aug=aug), 2), epoch(build(folder, train=True, seed=3, aug=aug), 2)
    assert len(a) == 3
    for (ax, ay), (bx, by) in zip(a, b):
        assert torch.equal(ax, bx) and torch.equal(ay, by)
    assert a[0][0].shape == (8, 3, 20, 20) and a[0][0].dtype == torch.float32 and a[0][1].dtype == torch.int64
    c = epoch(build(folder, train=True, seed=4, aug=aug), 2)
    assert not torch.equal(a[0][0], c[0][0])
    labels = torch.cat([y for _, y in a]).tolist()
    assert labels == [int(i) // 8 for i in epoch_order(24, train=True, seed=3, epoch=2)]
    # the same images in the same order as the torch loader, which draws its own crops
    t = epoch(build(folder, "torch", train=True, seed=3, aug=aug), 2)
    assert labels == torch.cat([y for _, y in t]).tolist()


def test_flip_mirrors_the_crop(folder):
    keep = next(iter(build(folder, train=True, aug=AugConfig(scale_min=1.0, hflip=0.0))))[0]
    flip = next(iter(build(folder, train=True, aug=AugConfig(scale_min=1.0, hflip=1.0))))[0]
    assert torch.allclose(flip, keep.flip(-1))


def test_random_resized_boxes_follow_torchvision_rules():
    gen = torch.Generator().manual_seed(0)
    boxes = random_resized_boxes(4000, 40, 48, (0.25, 1.0), gen)
    x0, y0, x1, y1 = boxes.unbind(1)
    w, h = x1 - x0, y1 - y0
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 48).all() and (y1 <= 40).all()
    area = w * h / (40 * 48)
    assert area.min() > 0.2 and area.max() <= 1.0  # 0.25 less rounding
    assert (w / h).min() > 0.7 and (w / h).max() < 1.4
    assert area.mean() == pytest.approx(0.6, abs=0.05)  # uniform over (0.25, 1)
    # a very wide image: every draw fails, the fallback is the central 4:3 box
    wide = random_resized_boxes(5, 10, 400, (0.9, 1.0), gen)
    assert torch.equal(wide[0], torch.tensor([193.0, 0.0, 206.0, 10.0]))


def test_images_of_many_sizes_are_cropped_within_their_own_size(tmp_path):
    """Images of assorted sizes share one padded array; each crop box lies within its own
    image, and the resampled crop equals roi_align's on that image alone (the padding
    repeats the image's edge, so nothing from outside it leaks in).  Eval crops equal
    the torch loader's."""
    from torchvision.ops import roi_align

    from pcn.data.folders import scan_folder
    from pcn.data.random_streams import stream_key

    mixed = make_folder(tmp_path / "mixed")  # assorted sizes, 40..72 px
    ld = build(mixed, train=True, aug=AugConfig(scale_min=0.5, hflip=0.0), img_size=20, batch_size=24)
    assert len({tuple(s) for s in ld.sizes.tolist()}) > 10
    x, y = next(iter(ld))
    order = torch.from_numpy(epoch_order(24, train=True, seed=0, epoch=0))
    # the boxes the loader drew for batch 0 of epoch 0 (its own generator)
    gen = torch.Generator().manual_seed(stream_key(ld.key, 0, 0) & 0x7FFFFFFFFFFFFFFF)
    sizes = ld.sizes[order]
    boxes = random_resized_boxes(24, sizes[:, 0], sizes[:, 1], (0.5, 1.0), gen)
    assert (boxes[:, 2] <= sizes[:, 1]).all() and (boxes[:, 3] <= sizes[:, 0]).all() and (boxes >= 0).all()
    samples = scan_folder(mixed).samples
    for k, i in enumerate(order.tolist()):
        rel, label = samples[i]
        src = torch.from_numpy(np.array(Image.open(mixed / rel).convert("RGB"))).permute(2, 0, 1).float()
        assert tuple(ld.sizes[i].tolist()) == tuple(src.shape[1:]) and y[k] == label
        want = roi_align(src[None], torch.cat([torch.zeros(1, 1), boxes[k : k + 1]], 1), output_size=20, aligned=True)
        assert np.abs(to_uint8(x[k : k + 1])[0] - want[0].numpy()).max() < 1e-2
    m, t = epoch(build(mixed, train=False), 0), epoch(build(mixed, "torch", train=False), 0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(m, t))


def test_pil_augmentations_are_refused(folder):
    with pytest.raises(ValueError, match="memory loader applies crop and flip only"):
        build(folder, train=True, aug=AugConfig(auto_augment="rand-m9-mstd0.5-inc1"))


def test_decoded_folders_are_cached_until_a_file_changes(tmp_path, monkeypatch, folder):
    """The second loader reads the array the first stored (doctored here, to see which one
    it used); each transform has its own entry; rewriting an image makes the next loader
    decode again and replaces the stale entry; a truncated entry is decoded again."""
    cache = tmp_path / "cache" / "decoded"
    monkeypatch.setenv("PCN_CACHE_DIR", str(cache.parent))
    images = tmp_path / "images"
    shutil.copytree(folder, images)
    first = build(images, train=False).images
    (entry,) = cache.glob("*.npz")
    with np.load(entry) as stored:
        doctored = {"images": np.zeros_like(stored["images"]), "sizes": stored["sizes"]}
    with open(entry, "wb") as f:
        np.savez(f, **doctored)
    assert torch.count_nonzero(build(images, train=False).images) == 0  # read from the cache
    assert build(images, train=True).images.shape[-2:] == (40, 48)  # stored size, not the eval crop
    assert len(list(cache.glob("*.npz"))) == 2

    path = sorted((images / CLASSES[0]).iterdir())[0]
    Image.open(path).transpose(Image.FLIP_LEFT_RIGHT).save(path)
    fresh = build(images, train=False).images
    assert torch.count_nonzero(fresh) > 0 and not torch.equal(fresh[0], first[0])
    assert torch.equal(fresh[1:], first[1:])
    assert not entry.exists() and len(list(cache.glob("*.npz"))) == 2  # the stale entry is gone

    (entry,) = [p for p in cache.glob("*.npz") if p.stat().st_size < 100_000]  # eval: 24x3x20x20
    entry.write_bytes(entry.read_bytes()[:200])
    assert torch.equal(build(images, train=False).images, fresh)
    entry.write_bytes(b"")
    assert torch.equal(build(images, train=False).images, fresh)


def test_a_killed_cache_writer_leaves_no_entry_and_its_temporary_is_removed(tmp_path, monkeypatch, folder):
    """A process killed while storing a decoded folder runs no cleanup: its half-written array
    (tens of MB at the demo's size) must not be read as an entry, and the next process that
    stores the folder removes it, leaving a live writer's alone."""
    import os
    import socket
    import subprocess
    import sys

    cache = tmp_path / "cache" / "decoded"
    monkeypatch.setenv("PCN_CACHE_DIR", str(cache.parent))
    want = build(folder, train=False).images
    (entry,) = cache.glob("*.npz")
    entry.unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    leftovers = {}
    for who, pid in (("dead", dead.pid), ("live", os.getppid())):
        leftovers[who] = cache / f".{entry.name}.{host}-{pid}-x1y2z3.tmp"
        leftovers[who].mkdir()
        (leftovers[who] / entry.name).write_bytes(b"PK\x03\x04 half an array")
    assert torch.equal(build(folder, train=False).images, want)
    assert entry.is_file() and not leftovers["dead"].exists() and leftovers["live"].exists()


def test_cache_can_be_switched_off(tmp_path, monkeypatch, folder):
    monkeypatch.setenv("PCN_CACHE_DIR", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert build(folder, train=False).images.shape == (24, 3, 20, 20)
    assert not any(tmp_path.rglob("*.np[yz]"))
