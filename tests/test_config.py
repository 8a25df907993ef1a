"""params.yaml: the schema, the scale switch, and one-line errors for bad values."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pcn.config import ParamsError, load_params, resolve

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def raw():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_committed_params_are_valid_at_every_scale(raw):
    for scale in ("demo", "study", "paper"):
        p = resolve({**raw, "scale": scale})
        assert p.scale == scale


def test_scale_switch_applies_overrides(raw):
    demo = resolve({**raw, "scale": "demo"})
    study = resolve({**raw, "scale": "study"})
    paper = resolve({**raw, "scale": "paper"})
    assert demo.data.source == "demo" and demo.launcher.kind == "local"
    assert len(study.experiments.seeds) >= 3, "the study scale needs at least 3 seeds per comparison"
    assert study.data.source == "demo"
    assert paper.data.source == "real" and paper.model.name == "patchconvnet_s60"
    assert paper.data.path("ade20k").name == "ADEChallengeData2016" and paper.segmentation_classes == 150
    assert paper.pretrain.img_size == 224 and paper.pretrain.batch_size == 2048
    assert paper.launcher.kind == "slurm" and paper.launcher.slurm.gpus_per_node == 8
    # overrides merge deeply: keys the paper scale does not override keep their values
    assert paper.tracking.experiment == demo.tracking.experiment


@pytest.mark.parametrize(
    "patch, expected",
    [
        ({"pretrain": {"epochs": -1}}, "pretrain.epochs = -1"),
        ({"pretrain": {"epochs": "many"}}, "pretrain.epochs = 'many'"),
        ({"pretrian": {}}, "unknown key 'pretrian'"),
        ({"pretrain": {"lrr": 0.1}}, "unknown key 'pretrain.lrr'"),
        ({"scale": "huge"}, "scale = 'huge'"),
        ({"data": {"loader": "dali"}}, "data.loader = 'dali'"),
        ({"scales": {"paper": {"pretrain": {"batch_size": 0}}}}, "scales.paper"),
        (
            {"experiments": {"train_by_study": {"ablation": {"epochs": 0}}}},
            "experiments.train_by_study.ablation: epochs = 0",
        ),
        (
            {"experiments": {"train_by_study": {"ablation": {"epoch": 16}}}},
            "experiments.train_by_study.ablation: unknown key 'epoch'",
        ),
        ({"experiments": {"train_by_study": {"ablations": {}}}}, "experiments.train_by_study.ablations"),
    ],
)
def test_bad_values_name_the_key_and_value(raw, patch, expected):
    from pcn.config import deep_merge

    with pytest.raises(ParamsError) as err:
        resolve(deep_merge(raw, patch))
    msg = str(err.value)
    assert expected in msg and "\n" not in msg


def test_cli_exits_2_with_one_line_on_bad_params(tmp_path, raw):
    raw["pretrain"]["batch_size"] = 0
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(raw))
    out = subprocess.run(
        [sys.executable, "-m", "pcn.cli", "--params", str(bad), "params"], capture_output=True, text=True
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "pretrain.batch_size = 0" in lines[0] and str(bad) in lines[0]


def test_missing_and_malformed_params_file(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "params.yaml"
    broken.write_text("pretrain: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(broken)


def test_train_by_study_changes_only_its_comparison(raw):
    """Each comparison trains with `experiments.train` plus its own changes, merged deeply:
    the others keep the shared recipe, and keys a change does not name keep their values."""
    from pcn.config import deep_merge

    patch = {
        "experiments": {
            "train_by_study": {"ablation": {"epochs": 7, "aug": {"hflip": 0.0}}, "resnet_pool": {"img_size": 32}}
        }
    }
    exp = resolve(deep_merge(raw, patch)).experiments
    assert (exp.train_for("ablation").epochs, exp.train_for("ablation").aug.hflip) == (7, 0.0)
    assert exp.train_for("ablation").aug.scale_min == exp.train.aug.scale_min
    assert exp.train_for("resnet_pool").img_size == 32 and exp.train_for("resnet_pool").epochs == exp.train.epochs
    assert exp.train_for("multiclass") == exp.train_for("depth_width") == exp.train


def test_dataset_folders_default_to_the_official_names_under_root():
    p = resolve({"data": {"root": "/d", "coco": "/elsewhere/coco2017"}})
    assert str(p.data.path("imagenet")) == "/d/imagenet"
    assert str(p.data.path("imagenet_v2")) == "/d/imagenetv2-matched-frequency"
    assert str(p.data.path("coco")) == "/elsewhere/coco2017"
    assert p.segmentation_classes == p.data.demo.n_classes + 1  # the demo's shapes and its background


def test_a_bad_top_level_value_fails_at_load_naming_the_scale_in_force(raw):
    """The schema's limit is the generator's (12 shapes): 20 classes fail in `pcn params`,
    not 12 s into training, and the message names the scale in force."""
    from pcn.data.demo.shapes import SHAPES

    bad = {**raw, "scale": "demo", "data": {**raw["data"], "demo": {**raw["data"]["demo"], "n_classes": 20}}}
    with pytest.raises(ParamsError) as err:
        resolve(bad)
    msg = str(err.value)
    assert msg.startswith("params.yaml (scale demo): data.demo.n_classes = 20") and f"{len(SHAPES)}" in msg
    paper_typo = {**raw, "scale": "demo", "scales": {**raw["scales"], "paper": {"pretrain": {"lr": -1}}}}
    with pytest.raises(ParamsError, match=r"\(scale demo in force; the value under scales.paper\): pretrain.lr"):
        resolve(paper_typo)


def test_schema_defaults_are_the_params_yaml_values(raw):
    """One source for every value: where pcn/config/ has a default for a key that
    params.yaml writes at its top level (the demo scale), the two are the same."""
    from pydantic import BaseModel

    from pcn.config import Params

    differ = []

    def walk(written: dict, default: BaseModel, path: str) -> None:
        for key in written.keys() & type(default).model_fields.keys():
            value, where = getattr(default, key), f"{path}{key}"
            if isinstance(value, BaseModel) and isinstance(written[key], dict):
                walk(written[key], value, where + ".")  # a section: key by key
            elif written[key] != (value.model_dump() if isinstance(value, BaseModel) else value):
                differ.append(f"{where}: params.yaml {written[key]!r}, schema {value!r}")

    walk({k: v for k, v in raw.items() if k != "scales"}, Params(), "")
    assert not differ, "schema defaults differ from params.yaml:\n" + "\n".join(differ)


def test_load_params_at_another_scale_leaves_the_file(tmp_path, raw):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    text = path.read_text()
    assert load_params(path, scale="study") == resolve({**raw, "scale": "study"})
    assert load_params(path).scale == raw["scale"] and path.read_text() == text


def test_the_study_tests_the_claims_in_the_setting_they_hold(raw):
    """The study's evidence is never weaker than the demo's: its dense transfer trains at least
    the demo's schedule, and every attention pool of the grid, the ResNet pair's included,
    chooses among at least 16 positions (the PatchConvNet grid's 4x4), not the 2x2 a ResNet
    at stride 16 leaves at 32 px."""
    from pcn.analysis.setting import patch_stride

    demo = resolve({**raw, "scale": "demo"})
    study = resolve({**raw, "scale": "study"})
    for task in ("segmentation", "detection"):
        assert getattr(study, task).iters >= getattr(demo, task).iters, task
    exp = study.experiments
    for group, name, study_name in (
        ("ablations", "baseline", "ablation"),
        ("resnet", "attention", "resnet_pool"),
        ("multiclass", None, "multiclass"),
    ):
        side = exp.train_for(study_name).img_size // patch_stride(study, group, name)
        assert side * side >= 16, (group, side)


def test_resnet_options_reach_both_models_of_the_pair_and_nothing_else(raw):
    from pcn.config import deep_merge, grid_model

    p = resolve(deep_merge(raw, {"experiments": {"resnet_options": {"output_stride": 8}}}))
    for model in p.experiments.resnet.values():
        assert grid_model(p, model, {})[1] == {"output_stride": 8}
    assert "output_stride" not in grid_model(p, None, {})[1]
    assert "output_stride" not in grid_model(p, p.experiments.multiclass_model, {})[1]


def test_a_policy_ffcv_cannot_batch_is_refused_at_load(raw):
    """The paper scale reads FFCV with the recipe's RandAugment; another policy string fails
    in `pcn params`, naming its key and the policies the batched path runs."""
    paper = resolve({**raw, "scale": "paper"})
    assert paper.data.loader == "ffcv" and paper.experiments.loader == "ffcv"
    assert paper.pretrain.aug.auto_augment == "rand-m9-mstd0.5-inc1"
    scales = {**raw["scales"], "paper": {**raw["scales"]["paper"]}}
    scales["paper"]["finetune"] = {**scales["paper"]["finetune"], "aug": {"auto_augment": "rand-m9-mstd0.5"}}
    with pytest.raises(ParamsError) as err:
        resolve({**raw, "scale": "paper", "scales": scales})
    msg = str(err.value)
    assert "\n" not in msg and "finetune.aug.auto_augment = 'rand-m9-mstd0.5'" in msg and "inc1" in msg
    assert "TranslateYRel" in msg  # the ops it supports
    scales["paper"]["data"] = {**scales["paper"]["data"], "loader": "torch"}
    scales["paper"]["experiments"] = {**scales["paper"]["experiments"], "loader": "torch"}
    assert resolve({**raw, "scale": "paper", "scales": scales}).finetune.aug.auto_augment == "rand-m9-mstd0.5"


def test_multiclass_finetuned_is_a_fine_tuning_at_paper_scale(raw):
    """The release's S60 (finetune): a short fine-tuning of the single-token model with a small lr
    and batch; S60 (scratch) trains with the grid's recipe.  The stage and the dry run read it."""
    from pcn.config import recipe
    from pcn.dag.dryrun import jobs

    p = resolve({**raw, "scale": "paper"})
    exp = p.experiments
    scratch, finetuned = exp.train_for("multiclass"), exp.train_for("multiclass", "finetuned")
    assert scratch == exp.train
    assert finetuned.lr * finetuned.batch_size / finetuned.lr_base_batch < scratch.lr / 100
    assert finetuned.batch_size < scratch.batch_size and finetuned.epochs < scratch.epochs / 5
    assert finetuned.img_size == scratch.img_size and finetuned.aug == scratch.aug
    by_name = {j.name: j for j in jobs(p)}
    assert by_name["multiclass@finetuned-0"].schedule == f"{finetuned.epochs} epochs"
    assert by_name["multiclass@finetuned-0"].global_batch == finetuned.batch_size
    assert by_name["multiclass@scratch-0"].global_batch == scratch.batch_size
    # the printed recipe shows both runs and is itself a params.yaml resolving to the same
    view = recipe(p)["experiments"]["train_by_study"]["multiclass"]
    assert view["finetuned"]["lr"] == finetuned.lr and view["lr"] == scratch.lr
    again = resolve({**recipe(p), "scale": "paper"}).experiments
    assert again.train_for("multiclass", "finetuned") == finetuned and again.train_for("multiclass") == scratch
    # at the demo, both runs share the grid's recipe
    demo = resolve(raw).experiments
    assert demo.train_for("multiclass", "finetuned") == demo.train_for("multiclass")


def test_a_bad_run_recipe_names_its_key(raw):
    raw["experiments"]["train_by_study"]["multiclass"] = {"finetuned": {"lr": -1}}
    with pytest.raises(ParamsError, match=r"experiments\.train_by_study\.multiclass\.finetuned: .*lr"):
        resolve(raw)
