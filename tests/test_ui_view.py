"""`pcn ui`'s link and the shared view it saves in the experiment, without a browser
(tests/test_browser.py opens them in Chromium)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def experiment(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, mlflow.MlflowClient(uri).create_experiment("patchconvnet")


def test_the_link_opens_the_training_view_of_the_experiment():
    from pcn.analysis.ui import runs_url

    assert runs_url(5000, "3") == (
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=pcn"
    )
    assert runs_url(5000, "3", view=False) == "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
    assert runs_url(5000, None) == "http://127.0.0.1:5000/#/?workflowType=machine_learning"


def test_the_saved_view_shows_the_headline_metrics_best_top1_first(experiment):
    import mlflow

    from pcn.analysis.ui import save_training_view
    from pcn.tracking.runs import EXPERIMENT_TAGS

    uri, exp_id = experiment
    assert save_training_view(uri, exp_id) is None
    tags = mlflow.MlflowClient(uri).get_experiment(exp_id).tags
    view = json.loads(tags["mlflow.sharedViewState.pcn"])
    assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`top1`", False)
    assert view["selectedColumns"][:2] == ["metrics.`top1`", "metrics.`v2_top1`"]
    assert "metrics.`mIoU`" in view["selectedColumns"] and "metrics.`bbox_AP`" in view["selectedColumns"]
    assert all(tags[k] == v for k, v in EXPERIMENT_TAGS.items())  # an older experiment gets its kind
    assert save_training_view(uri, exp_id) is None  # every `pcn ui` writes it again


def test_a_store_that_cannot_take_the_view_says_why(tmp_path):
    from pcn.analysis.ui import save_training_view

    problem = save_training_view(f"sqlite:///{tmp_path / 'mlflow.db'}", "12345")
    assert problem and "\n" not in problem
