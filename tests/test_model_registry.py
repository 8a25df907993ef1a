"""MLflow as the model record: a stage's model logged with its run, versions registered and
loaded back from ``models:/`` URIs, bad URIs refused in one line (a real SQLite store).

A registered model is data, never code: its weights are a state dict read with
``torch.load(weights_only=True)`` into the model built from its recorded timm name and
options, so a version whose files hold pickled code is refused without running it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NAME = "patchconvnet-test"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A project folder with the default store (sqlite:///mlflow.db, artifacts in mlartifacts/)."""
    from pcn.config import resolve

    for var in ("MLFLOW_TRACKING_URI", "PCN_PIPELINE_RUN_ID", "DVC_STAGE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["tracking"]["uri"] = None
    return resolve(raw), f"sqlite:///{tmp_path / 'mlflow.db'}"


def _tiny_model(seed: int):
    import timm
    import torch

    import pcn.models  # noqa: F401

    torch.manual_seed(seed)
    return timm.create_model("patchconvnet_demo", num_classes=5).eval()


def _log(params, seed: int, register: bool = True):
    from pcn.tracking.registry import log_model
    from pcn.tracking.runs import stage_run

    model = _tiny_model(seed)
    with stage_run("finetune", params, {}) as run:
        version = log_model(
            run, model, 32, arch="patchconvnet_demo", options={}, register_as=NAME if register else None
        )
    return model, run.run_id, version


def test_versions_are_linked_to_their_runs_and_load_back(store):
    import torch
    from mlflow import MlflowClient

    from pcn.tracking.registry import NEWEST, load_version, resolve_version

    params, uri = store
    first, run1, v1 = _log(params, seed=0)
    second, run2, v2 = _log(params, seed=1)
    assert (v1, v2) == (1, 2)
    client = MlflowClient(uri)
    assert client.get_model_version(NAME, "1").run_id == run1
    assert int(client.get_model_version_by_alias(NAME, NEWEST).version) == 2
    x = torch.randn(2, 3, 32, 32)
    for uri_text, original in (
        (f"models:/{NAME}/1", first),
        (f"models:/{NAME}@newest", second),
        (f"models:/{NAME}/latest", second),
    ):
        version = resolve_version(uri_text, uri)
        loaded, img_size = load_version(version, uri)
        assert img_size == 32
        with torch.no_grad():
            assert torch.equal(loaded(x), original(x)), uri_text
    # the run's artifacts hold the MLflow model, signature and input example included, its
    # weights as a state dict of tensors and its recipe as JSON: no pickled module
    folder = Path("mlartifacts") / client.get_run(run2).info.artifact_uri.split(":/", 1)[1] / "model"
    assert "signature" in (folder / "MLmodel").read_text() and (folder / "input_example.json").is_file()
    state = torch.load(folder / "state_dict.pt", weights_only=True)
    assert set(state) == set(second.state_dict())
    spec = json.loads((folder / "pcn_model.json").read_text())
    assert (spec["timm_model"], spec["options"], spec["num_classes"], spec["img_size"]) == (
        "patchconvnet_demo",
        {},
        5,
        32,
    )
    assert not list(folder.rglob("model.pth")), "no pickled module in the store"
    tags = client.get_model_version(NAME, "2").tags
    assert (tags["pcn.timm_model"], tags["pcn.num_classes"], tags["pcn.img_size"]) == ("patchconvnet_demo", "5", "32")


def test_a_model_logged_without_registering_makes_no_version(store):
    from mlflow import MlflowClient

    params, uri = store
    _, run_id, version = _log(params, seed=0, register=False)
    assert version is None
    assert MlflowClient(uri).search_model_versions(f"run_id = '{run_id}'") == []


BAD_URIS = [
    ("models:/nobody/1", f"no registered model 'nobody' (registered: {NAME})"),
    (f"models:/{NAME}/7", "has no version 7 (versions: 1;"),
    (f"models:/{NAME}@best", "has no alias 'best'"),
    ("runs:/abc/model", "expected models:/<name>/<version>"),
]


def test_an_unknown_model_is_refused_in_one_line(store):
    from pcn.errors import UserError
    from pcn.tracking.registry import resolve_version

    params, uri = store
    _log(params, seed=0)
    for model_uri, says in BAD_URIS:
        with pytest.raises(UserError) as err:
            resolve_version(model_uri, uri)
        assert says in str(err.value) and "\n" not in str(err.value), model_uri


# --- item 2: names with quotes -------------------------------------------------------------------

QUOTED_NAMES = ["it's", 'say "hi"', "both ' and \""]


def test_a_name_with_quotes_is_searched_exactly(store):
    """The registry's filter quotes the name as MLflow's grammar reads it (single or double
    quotes, no escapes): a quote in a name neither breaks the search nor widens it."""
    from mlflow import MlflowClient

    from pcn.errors import UserError
    from pcn.tracking.registry import resolve_version

    _, uri = store
    client = MlflowClient(uri)
    for name, versions in [("it", 2), *((n, 1) for n in QUOTED_NAMES)]:
        client.create_registered_model(name)
        for _ in range(versions):
            client.create_model_version(name, "file:///nowhere/model")
    for name in QUOTED_NAMES:
        assert resolve_version(f"models:/{name}/1", uri).name == name
        with pytest.raises(UserError) as err:
            resolve_version(f"models:/{name}/9", uri)
        assert "has no version 9 (versions: 1;" in str(err.value) and "\n" not in str(err.value), name


# --- item 1: a registered model is loaded as data --------------------------------------------------

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]


class _Payload:
    """Pickled, it runs code when unpickled: it writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _project(root: Path) -> None:
    """params.yaml and tiny ImageNet val / v2 folders (4 classes) for `pcn evaluate`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    imagenet, v2 = root / "data" / "imagenet", root / "data" / "imagenetv2-matched-frequency"
    for c, wnid in enumerate(WNIDS):
        for d in (imagenet / "train" / wnid, imagenet / "val" / wnid, v2 / str(c)):
            d.mkdir(parents=True)
        for path in (
            imagenet / "train" / wnid / f"{wnid}_{c}.JPEG",
            imagenet / "val" / wnid / f"ILSVRC2012_val_{c + 1:08d}.JPEG",
            v2 / str(c) / f"{c:040x}.jpeg",
        ):
            Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(path, format="JPEG")
    (root / "params.yaml").write_text(
        "data:\n  root: data\n  num_workers: 0\nevaluate:\n  batch_size: 8\nruntime:\n  threads: 1\n"
    )


def _register_folder(params, uri: str, name: str, folder: Path) -> None:
    """``folder`` as the ``model`` artifact of a new run, registered as a version of ``name``:
    what anyone who can write to the store can do."""
    from mlflow import MlflowClient

    from pcn.tracking.runs import stage_run

    with stage_run("finetune", params, {}) as run:
        run.log_artifact(folder)
    client = MlflowClient(uri)
    client.create_registered_model(name)
    client.create_model_version(name, f"{client.get_run(run.run_id).info.artifact_uri}/model", run_id=run.run_id)


def _pickled_mlflow_model(folder: Path, marker: Path) -> None:
    """An MLflow pytorch model as ``mlflow.pytorch.save_model`` writes it (pickle format),
    its data/model.pth replaced by a pickle that runs code."""
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    example = torch.zeros(1, 3, 32, 32)
    model = _tiny_model(0)
    with torch.no_grad():
        signature = infer_signature(example.numpy(), model(example).numpy())
    mlflow.pytorch.save_model(
        model, folder, signature=signature, serialization_format="pickle", pip_requirements=["torch"]
    )
    torch.save(_Payload(marker), folder / "data" / "model.pth")


def _state_dict_holding_code(folder: Path, marker: Path) -> None:
    """The files pcn logs, the state dict replaced by a pickle that runs code."""
    import torch

    folder.mkdir(parents=True)
    spec = {"format": 1, "timm_model": "patchconvnet_demo", "options": {}, "num_classes": 4, "img_size": 32}
    (folder / "pcn_model.json").write_text(json.dumps(spec))
    torch.save({"model": _Payload(marker)}, folder / "state_dict.pt")


def _options_that_load_a_file(folder: Path, marker: Path) -> None:
    """A valid state dict, but options asking timm to load another file (a pickle that runs code)."""
    import torch

    folder.mkdir(parents=True)
    torch.save(_Payload(marker), folder / "other.pth")
    torch.save(_tiny_model(0).state_dict(), folder / "state_dict.pt")
    options = {"checkpoint_path": str(folder / "other.pth")}
    spec = {"format": 1, "timm_model": "patchconvnet_demo", "options": options, "num_classes": 5, "img_size": 32}
    (folder / "pcn_model.json").write_text(json.dumps(spec))


@pytest.mark.parametrize(
    "craft, says",
    [
        (_pickled_mlflow_model, "no state dict"),
        (_state_dict_holding_code, "contains code"),
        (_options_that_load_a_file, "checkpoint_path"),
    ],
)
def test_a_registered_model_holding_code_is_refused_without_running_it(store, tmp_path, capsys, craft, says):
    import torch

    from pcn.cli import main

    params, uri = store
    _project(tmp_path)
    # the payload does run code when unpickled, as torch.load(weights_only=False) does
    probe = tmp_path / "probe"
    torch.save(_Payload(probe), tmp_path / "probe.pth")
    torch.load(tmp_path / "probe.pth", weights_only=False)
    assert probe.read_text() == "ran"

    marker = tmp_path / "marker"
    craft(tmp_path / "staging" / "model", marker)
    _register_folder(params, uri, "crafted", tmp_path / "staging" / "model")
    capsys.readouterr()
    assert main(["--params", "params.yaml", "evaluate", "--model", "models:/crafted/1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "crafted" in err[0] and says in err[0], err
    assert not marker.exists(), "the registered model's pickled code ran"
    assert not (tmp_path / "metrics" / "registered").exists()


def test_a_registered_model_evaluates(store, tmp_path, capsys):
    """`pcn evaluate --model models:/NAME/1` on a model the pipeline registered: built from
    its recorded name and options, its weights read as tensors only."""
    import timm
    import torch

    from pcn.cli import main
    from pcn.tracking.registry import log_model
    from pcn.tracking.runs import stage_run

    params, _ = store
    _project(tmp_path)
    torch.manual_seed(0)
    model = timm.create_model("patchconvnet_demo", num_classes=len(WNIDS), layerscale_init=0.1).eval()
    with stage_run("finetune", params, {}) as run:
        assert (
            log_model(run, model, 32, arch="patchconvnet_demo", options={"layerscale_init": 0.1}, register_as=NAME) == 1
        )
    assert main(["--params", "params.yaml", "evaluate", "--model", f"models:/{NAME}/1"]) == 0
    scored = json.loads((tmp_path / "metrics" / "registered" / f"{NAME}-v1.json").read_text())
    assert scored["img_size"] == 32 and scored["n_images"] == len(WNIDS) and scored["v2_n_images"] == len(WNIDS)
    assert 0 <= scored["top1"] <= 100 and scored["source_run_id"] == run.run_id
