"""paper/recipe.yaml: every value has a source, and scales.paper in params.yaml sets the same values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pcn.analysis import recipe as R
from pcn.config import load_params, resolve

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, entries: list) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump({"entries": entries}))
    return p


def _paper(**changes):
    """params.yaml at scale paper, with dotted changes to its `scales.paper` block."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in changes.items():
        node = raw["scales"]["paper"]
        *path, last = dotted.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return resolve({**raw, "scale": "paper"})


def test_committed_recipe_agrees_with_params_at_paper_scale():
    entries = R.load_recipe(ROOT / "paper/recipe.yaml")
    R.check_recipe(entries, load_params(ROOT / "params.yaml", scale="paper"))
    keyed = {k for e in entries for k in e.keys}
    # the recipe covers what the brief of a reproduction needs, each with a key
    for key in (
        "pretrain.optimizer",
        "pretrain.lr",
        "pretrain.lr_base_batch",
        "pretrain.batch_size",
        "pretrain.epochs",
        "pretrain.warmup_epochs",
        "pretrain.schedule_step",
        "pretrain.weight_decay",
        "pretrain.drop_path",
        "pretrain.layerscale_init",
        "pretrain.ema_decay",
        "pretrain.aug.auto_augment",
        "pretrain.aug.mixup",
        "pretrain.aug.repeated_aug",
        "finetune.lr",
        "finetune.min_lr",
        "evaluate.img_size",
        "evaluate.crop_ratio",
        "segmentation.iters",
        "segmentation.loss",
        "detection.test_size",
        "detection.max_size",
        "experiments.train_by_study.resnet_pool.lr",
    ):
        assert key in keyed, key


def test_fine_tuning_holds_its_learning_rate_constant():
    # README_deit.md's 384-px fine-tuning command: --lr 5e-6 --min-lr 5e-6
    p = load_params(ROOT / "params.yaml", scale="paper")
    assert p.finetune.min_lr == p.finetune.lr


def test_resnet_pair_trains_with_its_own_recipe():
    p = load_params(ROOT / "params.yaml", scale="paper")
    resnet, grid = p.experiments.train_for("resnet_pool"), p.experiments.train
    assert (resnet.lr, resnet.weight_decay, resnet.aug.auto_augment) != (
        grid.lr,
        grid.weight_decay,
        grid.aug.auto_augment,
    )


def test_an_entry_without_a_source_is_refused_naming_it(tmp_path):
    path = _write(tmp_path, [{"topic": "weight decay", "key": "pretrain.weight_decay", "value": 0.05}])
    with pytest.raises(R.RecipeError, match=r"entries\[0\] \(weight decay\): no 'source'") as exc:
        R.load_recipe(path)
    assert "\n" not in str(exc.value)


def test_not_stated_needs_a_reason(tmp_path):
    path = _write(tmp_path, [{"topic": "batch", "key": "segmentation.batch_size", "value": 16, "source": "not stated"}])
    with pytest.raises(R.RecipeError, match=r"\(batch\).*chosen because"):
        R.load_recipe(path)
    ok = _write(
        tmp_path,
        [
            {
                "topic": "batch",
                "key": "segmentation.batch_size",
                "value": 16,
                "source": "not stated; chosen because the comparison rows use it",
            }
        ],
    )
    assert R.load_recipe(ok)[0].keys == ("segmentation.batch_size",)


def test_a_value_that_disagrees_with_params_fails(tmp_path):
    entries = R.load_recipe(
        _write(
            tmp_path,
            [
                {"topic": "peak lr", "key": ["pretrain.lr", "experiments.train.lr"], "value": 0.003, "source": "s"},
                {
                    "topic": "test size",
                    "key": ["detection.test_size", "detection.max_size"],
                    "value": [800, 1333],
                    "source": "s",
                },
                {"topic": "random erasing", "key": None, "value": 0.25, "source": "s"},
            ],
        )
    )
    R.check_recipe(entries, _paper())
    with pytest.raises(R.RecipeError, match=r"peak lr: experiments\.train\.lr = 0\.004 in params\.yaml"):
        R.check_recipe(entries, _paper(**{"experiments.train.lr": 0.004}))
    with pytest.raises(R.RecipeError, match=r"test size: detection\.max_size = 1000 .* 1333 in the recipe"):
        R.check_recipe(entries, _paper(**{"detection.max_size": 1000}))


def test_a_key_the_schema_does_not_have_is_reported():
    entry = R.Entry("typo", ("pretrain.lrr",), 0.003, "s")
    assert R.disagreements([entry], _paper()) == ["typo: pretrain.lrr is not a key of the resolved paper-scale params"]


def test_markdown_table_shows_every_entry_with_its_source():
    entries = R.load_recipe(ROOT / "paper/recipe.yaml")
    md = R.to_markdown(entries)
    assert md.count("\n") == len(entries) + 2
    assert "| optimizer | pretrain.optimizer, experiments.train.optimizer | lamb | facebookresearch/deit#185" in md
    assert "| schedule | (no key) | cosine, warm-up from 1e-6 |" in md
    stepping = "pretrain.schedule_step, finetune.schedule_step, experiments.train.schedule_step"
    assert f"| schedule stepping | {stepping} | epoch |" in md
    assert md.splitlines()[0].endswith("| unverified: what would confirm it |")
    drop_path = next(line for line in md.splitlines() if line.startswith("| drop path"))
    assert drop_path.rstrip(" |").endswith("likely under-regularised at 0.1")


# --- unverified values: named before GPU time is spent ---------------------------------------------


def _committed():
    return R.load_recipe(ROOT / "paper/recipe.yaml")


def _topic(entries, topic: str) -> R.Entry:
    return next(e for e in entries if e.topic == topic)


def test_unverified_must_say_what_would_confirm_the_value(tmp_path):
    base = {"topic": "epochs", "key": "pretrain.epochs", "value": 300, "source": "main.py default"}
    for bad in ("", "  ", None, 3):
        with pytest.raises(R.RecipeError, match=r"entries\[0\] \(epochs\): unverified = .*non-empty string") as exc:
            R.load_recipe(_write(tmp_path, [{**base, "unverified": bad}]))
        assert "\n" not in str(exc.value)
    with pytest.raises(R.RecipeError, match=r"\(epochs\): check = '': expected a non-empty string"):
        R.load_recipe(_write(tmp_path, [{**base, "check": ""}]))
    (entry,) = R.load_recipe(_write(tmp_path, [{**base, "unverified": " the paper's table "}]))
    assert entry.unverified == "the paper's table"
    (entry,) = R.load_recipe(_write(tmp_path, [base]))
    assert entry.unverified is None and R.unverified([entry]) == []


def test_the_unconfirmed_values_are_marked_drop_path_first():
    listed = R.unverified(_committed())
    keys = [set(e.keys) for e in listed]
    assert keys[0] == {"pretrain.drop_path", "experiments.train.drop_path"}
    for key in ("pretrain.epochs", "pretrain.lr_base_batch", "experiments.variants", "experiments.depth_width"):
        assert any(key in k for k in keys), key
    assert all(e.unverified and e.unverified == e.unverified.strip() for e in listed)
    # the rest keep the recipe's order
    entries = _committed()
    rest = [entries.index(e) for e in listed[1:]]
    assert rest == sorted(rest)


def test_the_lr_scaling_entry_states_both_readings_and_the_one_taken():
    entry = _topic(_committed(), "lr batch scaling (lr x batch / base)")
    for needle in (
        "(a) 3e-3 is the lr used at batch 2048",
        "--unscale-lr",
        "(b) 3e-3 is main.py's base lr",
        "1.2e-2",
        "100e3cd2",
        "4da66916",
        "could not be checked",
        "The pipeline takes (a)",
    ):
        assert needle in entry.source, needle
    p = load_params(ROOT / "params.yaml", scale="paper")
    from pcn.train.parts import scaled_lr

    assert scaled_lr(p.pretrain) == pytest.approx(3e-3) and p.pretrain.batch_size == 2048


# --- the loader and the interpolation, as the params and the loaders have them -----------------------

LOADER, INTERPOLATION = "image loader", "train-time interpolation"


def test_loader_and_interpolation_entries_match_the_params_and_the_code():
    import re

    from pcn.data.augment.batch import randaugment_hparams
    from pcn.data.augment.transforms import IMAGENET_MEAN, TrainAug, torch_train_transform

    entries = _committed()
    p = load_params(ROOT / "params.yaml", scale="paper")
    loader = _topic(entries, LOADER)
    assert loader.keys[0] == "data.loader" and loader.value == p.data.loader
    # no key sets the interpolation: the value is the constant both loaders build with
    interpolation = _topic(entries, INTERPOLATION)
    assert interpolation.keys == () and interpolation.value == "bicubic"
    assert randaugment_hparams(224, IMAGENET_MEAN)["interpolation"] == interpolation.value  # FFCV's batched ops
    transform = torch_train_transform(224, TrainAug(auto_augment=p.pretrain.aug.auto_augment))
    crop, _, randaugment, *_ = transform.transforms
    assert crop.interpolation.value == interpolation.value  # the torch loader's random-resized crop
    assert {op.kwargs["resample"].name.lower() for op in randaugment.ops} == {interpolation.value}
    # and the text says so wherever it names them
    text = " ".join(f"{e.source} {e.check or ''} {e.unverified or ''}" for e in entries)
    assert re.findall(r"paper scale trains through (?:the )?(\w+)", text, re.I), "the loader is named"
    assert {m.lower() for m in re.findall(r"paper scale trains through (?:the )?(\w+)", text, re.I)} == {p.data.loader}
    assert {m.lower() for m in re.findall(r"PIL's (bilinear|bicubic|nearest)", text)} == {interpolation.value}


# --- dense transfer: every setting the code uses, each with its source or its reason -----------------


def test_dense_transfer_settings_are_listed_as_the_code_has_them():
    from pcn.transfer.datasets import ade_train_transforms
    from pcn.transfer.pyramid import create_pyramid_backbone

    entries = _committed()
    keyed = {k for e in entries for k in e.keys}
    for key in ("segmentation.weight_decay", "detection.weight_decay", "detection.min_sizes", "detection.fpn_channels"):
        assert key in keyed, key
    topics = {e.topic: e for e in entries}
    for topic in (
        "dense-transfer trunk drop path",
        "dense-transfer necks",
        "ADE20k training augmentation",
        "COCO training augmentation",
        "UperNet schedule",
        "Mask R-CNN lr schedule",
        "dense-transfer precision",
    ):
        assert topic in topics, topic
        assert topics[topic].source.startswith(R.UNSTATED), topic  # chosen, with its reason
    # the trunk trains without stochastic depth
    backbone, _ = create_pyramid_backbone("patchconvnet_demo", features="last")
    rates = [m.drop_prob for m in backbone.modules() if hasattr(m, "drop_prob")]
    assert all(r == topics["dense-transfer trunk drop path"].value for r in rates)
    assert any(type(m).__name__ == "LayerNorm2d" for m in backbone.norms)
    # ADE20k: the shorter side rescaled to 0.5-2x the crop (256-1024 px at 512)
    resize = ade_train_transforms(512).transforms[0]
    assert (resize.min_size, resize.max_size - 1) == (256, 1024)
    assert "256-1024 px at 512" in topics["ADE20k training augmentation"].value
    assert "no crop branch" in topics["COCO training augmentation"].value


def test_multiclass_initialisation_starts_from_the_single_token_models_predictions(tmp_path):
    """The recipe's reason for single_to_multiclass: at step 0 class c's logit is the baseline's."""
    import timm
    import torch

    import pcn.models  # noqa: F401  (registers the models)
    from pcn.steps.experiments import single_to_multiclass

    assert "multi-class fine-tuning initialisation" in {e.topic for e in _committed()}
    torch.manual_seed(0)
    single = timm.create_model("patchconvnet_demo", num_classes=10).eval()
    multi = timm.create_model("patchconvnet_demo_multi", num_classes=10).eval()
    torch.save({"model": single.state_dict()}, tmp_path / "single.pth")
    single_to_multiclass(str(tmp_path / "single.pth"), str(tmp_path / "multi.pth"), 10)
    multi.load_state_dict(torch.load(tmp_path / "multi.pth", weights_only=True)["model"], strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(multi(x), single(x), rtol=1e-4, atol=1e-5)


# --- pcn dryrun: the unconfirmed values first, each job's effective lr -------------------------------


def test_dryrun_names_the_unconfirmed_values_before_the_costs_and_each_jobs_effective_lr():
    from pcn.dag.dryrun import dry_run, jobs, unverified_text

    params = _paper(**{"experiments.enabled": False})
    text = dry_run(params, recipe=ROOT / "paper/recipe.yaml")
    lines = text.splitlines()
    assert lines[0].startswith("5 values of the paper's recipe no source here confirms")
    assert lines[1].startswith("  pretrain.drop_path, experiments.train.drop_path = 0.1: ")
    listed = lines[1:6]
    for entry, line in zip(R.unverified(_committed()), listed):
        assert line.endswith(f": {entry.unverified}")
    assert text.index("depth_width = [384, 36]") < text.index("pretrain dry run") < text.index("GPU-h")
    # every training-like job with its effective lr and how it follows from the params
    for job in jobs(params):
        row = next(line for line in lines if line.split()[:2] == [job.name, job.model])
        assert f" {job.lr:.3g} {job.lr_rule}" in row, row
    assert "0.003 x 2048/2048" in text and "5e-06 x 512/512" in text and "0.0001 (not scaled)" in text
    # another scale's value is shown beside the recipe's; a missing recipe is said, not raised
    demo = load_params(ROOT / "params.yaml", scale="demo")
    line = next(x for x in unverified_text(demo, ROOT / "paper/recipe.yaml") if "drop_path" in x)
    assert "(paper recipe; scale 'demo' sets pretrain.drop_path = " in line
    assert unverified_text(demo, ROOT / "no-such-recipe.yaml") == [
        f"unconfirmed values: not listed ({ROOT / 'no-such-recipe.yaml'} not found)"
    ]
