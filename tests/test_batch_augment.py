"""The batched RandAugment and random erasing against timm's own, on photographs."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from timm.data import auto_augment as timm_aa
from timm.data.constants import IMAGENET_DEFAULT_MEAN
from timm.data.random_erasing import RandomErasing

from pcn.data.augment.batch import (
    COLOUR_OPS,
    GEOMETRIC_OPS,
    INCREASING_OPS,
    SIGNED_OPS,
    BatchRandAugment,
    apply_op,
    random_erasing,
)
from pcn.data.augment.randaugment_policy import RandAugmentPolicy, check_policy

POLICY = "rand-m9-mstd0.5-inc1"  # the paper's (paper/recipe.yaml)
# timm's hparams for RandAugment in transforms_imagenet_train at 224 px, bicubic (DeiT's
# --train-interpolation, the recipe's)
HPARAMS = {
    "translate_const": int(224 * 0.45),
    "img_mean": tuple(min(255, round(255 * x)) for x in IMAGENET_DEFAULT_MEAN),
    "interpolation": Image.BICUBIC,
}


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """scikit-learn's two sample photographs (china.jpg, flower.jpg), cropped to 192 x 256."""
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    return np.stack([img[100:292, 150:406] for img in images])  # uint8 [2, H, W, 3]


def _timm_op(photo: np.ndarray, name: str, magnitude: float, negate: bool, monkeypatch, hparams=HPARAMS) -> np.ndarray:
    # the sign is the one random draw of a level function: fix it
    monkeypatch.setattr(timm_aa, "_randomly_negate", (lambda v: -v) if negate else (lambda v: v))
    op = timm_aa.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=hparams)
    return np.asarray(op(Image.fromarray(photo)))


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    """2,000 random crops of both photographs (sky, edges, texture), area-resized to 48 x 64,
    as a uint8 [N, 3, H, W] batch with FFCV's channels-last strides."""
    import cv2
    from sklearn.datasets import load_sample_images

    sources = load_sample_images().images
    rng = np.random.default_rng(0)
    out = []
    for i in range(2000):
        image = sources[i % 2]
        w = int(rng.integers(48, 400))
        h = w * 3 // 4
        y, x = rng.integers(0, image.shape[0] - h + 1), rng.integers(0, image.shape[1] - w + 1)
        out.append(
            cv2.resize(np.ascontiguousarray(image[y : y + h, x : x + w]), (64, 48), interpolation=cv2.INTER_AREA)
        )
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def _random_magnitudes(name: str, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mag = torch.rand(n, generator=g, dtype=torch.float64) * 10
    return torch.where(torch.rand(n, generator=g) < 0.5, -mag, mag) if name in SIGNED_OPS else mag


@pytest.mark.parametrize("name", INCREASING_OPS)
def test_opencv_kernels_give_the_torch_kernels_bytes(crops, name):
    """The CPU kernels against the GPU's, on 2,000 photographs at random magnitudes: the
    colour ops byte for byte; the geometric ones apart only by interpolation rounding."""
    mag = _random_magnitudes(name, len(crops), seed=INCREASING_OPS.index(name))
    ours = apply_op(crops, name, mag, HPARAMS, kernels="opencv")
    torchs = apply_op(crops, name, mag, HPARAMS, kernels="torch")
    assert ours.shape == crops.shape and ours.dtype == torch.uint8
    if name in COLOUR_OPS:
        assert torch.equal(ours, torchs)
        assert torch.equal(apply_op(crops, name, mag, HPARAMS), ours)  # auto on the CPU is OpenCV
        return
    diff = (ours.int() - torchs.int()).abs()
    # measured: mean 2-5e-5, one value in 6 million off by more than 1 (a fill edge of a rotation)
    assert diff.float().mean() < 0.01, f"{name}: mean |diff| {diff.float().mean():.4f}"
    assert (diff > 1).float().mean() < 1e-4, f"{name}: {(diff > 1).float().mean():.2e} of values off by more than 1"
    # the same pixels take timm's fill colour (the source point outside the image) on both
    fill = torch.tensor(HPARAMS["img_mean"], dtype=torch.uint8).view(1, 3, 1, 1)
    filled = [(x == fill).all(dim=1) for x in (ours, torchs)]
    assert (filled[0] != filled[1]).float().mean() < 1e-4


def test_opencv_recipe_normalises_to_the_torch_kernels_bytes(crops):
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from pcn.data.augment.batch import BatchAugment

    args = (64, None, 0.25, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, "cpu")
    ours, torchs = (BatchAugment(*args, kernels=k)(crops[:256], key=3) for k in ("opencv", "torch"))
    assert ours.dtype == torch.float32 and torch.equal(ours, torchs)  # erasing included: same draws
    assert ours.is_contiguous(memory_format=torch.channels_last)


def test_unknown_kernels_refused_in_one_line(photos):
    batch = torch.from_numpy(photos).permute(0, 3, 1, 2)
    with pytest.raises(ValueError, match=r"^RandAugment kernels = 'cuda': expected one of auto, torch, opencv$"):
        apply_op(batch, "Invert", torch.zeros(2), HPARAMS, kernels="cuda")


@pytest.mark.parametrize("kernels", ["torch", "opencv"])
@pytest.mark.parametrize(
    ("name", "hparams"),
    [(name, HPARAMS) for name in INCREASING_OPS]
    + [(name, {**HPARAMS, "interpolation": Image.BILINEAR}) for name in sorted(GEOMETRIC_OPS)],
)
def test_each_op_matches_timm_on_photographs(photos, name, hparams, kernels, monkeypatch):
    batch = torch.from_numpy(photos).permute(0, 3, 1, 2).contiguous()
    tolerance = 3.0 if name in GEOMETRIC_OPS else 1.0
    for magnitude in (0.0, 5.0, 9.0, 10.0):
        for negate in (False, True) if name in SIGNED_OPS else (False,):
            signed = -magnitude if negate else magnitude
            ours = apply_op(batch, name, torch.full((len(photos),), signed), hparams, kernels)
            assert ours.dtype == torch.uint8 and ours.shape == batch.shape
            ours = ours.permute(0, 2, 3, 1).numpy().astype(np.float64)
            for i, photo in enumerate(photos):
                if name == "PosterizeIncreasing" and magnitude == 10.0:
                    # 0 bits: black, as Pillow gave when the paper ran (current Pillow refuses 0 bits)
                    assert ours[i].max() == 0
                    continue
                theirs = _timm_op(photo, name, magnitude, negate, monkeypatch, hparams).astype(np.float64)
                diff = np.abs(ours[i] - theirs).mean()
                assert diff <= tolerance, f"{name} m={signed} photo {i}: mean |diff| {diff:.3f}"
    assert name in COLOUR_OPS or name in GEOMETRIC_OPS


def _timm_draws(n: int) -> tuple[list[str], list[float]]:
    """Ops timm's RandAugment applies over ``n`` images, and their signed magnitudes
    (recovered from the geometric and enhance ops' arguments)."""
    ra = timm_aa.rand_augment_transform(POLICY, dict(HPARAMS))
    applied: list[str] = []
    magnitudes: list[float] = []
    per_unit = {"Rotate": 3.0, "ShearX": 0.03, "ShearY": 0.03, "TranslateXRel": 0.045, "TranslateYRel": 0.045}

    def recorder(name):
        def record(img, *args, **kwargs):
            applied.append(name)
            if name in per_unit:
                magnitudes.append(args[0] / per_unit[name])
            elif name in SIGNED_OPS:  # enhance: factor = 1 + level * 0.09
                magnitudes.append((args[0] - 1.0) / 0.09)
            return img

        return record

    for op in ra.ops:
        op.aug_fn = recorder(op.name)
    random.seed(0)
    np.random.seed(0)
    img = Image.new("RGB", (4, 4))
    for _ in range(n):
        ra(img)
    return applied, magnitudes


def test_draws_match_timm_distributions():
    n = 10_000
    timm_ops, timm_mags = _timm_draws(n)
    aug = BatchRandAugment(POLICY, HPARAMS)
    draw = aug.draw(n, torch.Generator().manual_seed(0))
    ours_ops = [aug.ops[k] for k in draw.op[draw.applied].tolist()]
    # how many ops are applied (p 0.5 per layer, 2 layers) and which
    assert abs(len(ours_ops) - len(timm_ops)) < 4 * np.sqrt(n * 2 * 0.25)
    table = np.array([[ours_ops.count(o) for o in INCREASING_OPS], [timm_ops.count(o) for o in INCREASING_OPS]])
    assert stats.chi2_contingency(table).pvalue > 1e-3
    signed = draw.applied & torch.tensor([aug.ops[k] in SIGNED_OPS for k in range(len(aug.ops))])[draw.op]
    ours_mags = draw.magnitude[signed].numpy()
    assert stats.ks_2samp(ours_mags, np.array(timm_mags)).pvalue > 1e-3
    # both sides: gaussian around +-9 with std 0.5, clipped at 10
    assert abs(np.abs(ours_mags).mean() - np.abs(timm_mags).mean()) < 0.05
    assert (np.abs(ours_mags) <= 10).all() and (ours_mags < 0).mean() == pytest.approx(0.5, abs=0.03)


def test_batch_is_a_function_of_the_seed(photos):
    batch = torch.from_numpy(photos).permute(0, 3, 1, 2).repeat(4, 1, 1, 1)
    aug = BatchRandAugment(POLICY, HPARAMS)
    a = aug(batch, torch.Generator().manual_seed(7))
    b = aug(batch, torch.Generator().manual_seed(7))
    c = aug(batch, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, batch)  # 8 images x 2 layers: some op applies


@pytest.mark.parametrize(
    "policy", ["rand-m9-mstd0.5", "rand-m9-inc1-w0", "rand-m9-tweights-inc1", "augmix-m5", "original-mstd0.5", "3a"]
)
def test_unsupported_policies_refused_in_one_line(policy):
    with pytest.raises(ValueError) as err:
        check_policy(policy, "train.aug.auto_augment")
    text = str(err.value)
    assert "\n" not in text and "train.aug.auto_augment" in text and "inc1" in text


@pytest.mark.parametrize(
    "policy",
    ["rand-m9-mstd0.5-inc1", "rand-m7-n3-mstd101-mmax12-p0.8-inc1", "rand-inc1", "rand-n1-m5-mstd1-mstd3-inc1"],
)
def test_policy_parsed_as_timm_does(policy):
    ra = timm_aa.rand_augment_transform(policy, {})
    op = ra.ops[0]
    assert RandAugmentPolicy.parse(policy) == RandAugmentPolicy(
        ops=tuple(o.name for o in ra.ops),
        num_layers=ra.num_layers,
        prob=op.prob,
        magnitude=op.magnitude,
        magnitude_std=op.magnitude_std,
        magnitude_max=op.magnitude_max or 10.0,
    )


def test_random_erasing_matches_timm():
    n, shape = 4000, (3, 32, 48)
    torch.manual_seed(0)
    random.seed(0)
    theirs = RandomErasing(probability=0.25, mode="pixel", device="cpu")(torch.zeros(n, *shape))
    ours = random_erasing(torch.zeros(n, *shape), 0.25, torch.Generator().manual_seed(0))
    areas = [(x != 0).any(dim=0).sum(dim=(0, 1)).numpy() for x in (ours, theirs)]
    erased = [a[a > 0] for a in areas]
    assert abs(len(erased[0]) - len(erased[1])) < 4 * np.sqrt(n * 0.25 * 0.75)
    assert stats.ks_2samp(erased[0], erased[1]).pvalue > 1e-3
    # boxes: one rectangle per image, of standard normal noise
    values = ours[ours != 0]
    assert abs(values.mean()) < 0.05 and abs(values.std() - 1) < 0.05


def test_recipe_hparams_are_timms():
    """The loader's hparams equal those timm's train transform gives its RandAugment."""
    from timm.data.transforms_factory import transforms_imagenet_train

    from pcn.data.augment.batch import randaugment_hparams
    from pcn.data.augment.transforms import IMAGENET_MEAN

    timm_tf = transforms_imagenet_train(img_size=224, auto_augment=POLICY, interpolation="bicubic")
    (ra,) = [t for t in timm_tf.transforms if isinstance(t, timm_aa.RandAugment)]
    ours = randaugment_hparams(224, IMAGENET_MEAN)
    op = ra.ops[0]
    assert op.kwargs["fillcolor"] == ours["img_mean"] and op.kwargs["resample"] == Image.BICUBIC
    assert op.hparams["translate_const"] == ours["translate_const"]
    assert ours["interpolation"] == "bicubic"
