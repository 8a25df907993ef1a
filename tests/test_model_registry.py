"""MLflow as the model record: a stage's model logged with its run, versions registered and
loaded back from ``models:/`` URIs, bad URIs refused in one line (a real SQLite store)."""

from __future__ import annotations

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
        version = log_model(run, model, 32, register_as=NAME if register else None)
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
    # the run's artifacts hold the MLflow model, signature and input example included
    folder = Path("mlartifacts") / client.get_run(run2).info.artifact_uri.split(":/", 1)[1] / "model"
    assert "signature" in (folder / "MLmodel").read_text() and (folder / "input_example.json").is_file()


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
