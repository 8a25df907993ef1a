"""What a user sees: the MLflow UI started by `pcn ui` and the HTML report, in headless Chromium.

Screenshots go to the test's tmp folder (printed) and, with PCN_KEEP_SCREENSHOTS set,
are copied to reports/screenshots/.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from conftest import require, run_paths

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_MS = 120_000  # MLflow's UI took ~17 s to render its runs table on a 2-core machine


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        require(f"{CHROMIUM} not found", "chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keep(shots: Path) -> None:
    print(f"screenshots: {shots}")
    if os.environ.get("PCN_KEEP_SCREENSHOTS"):
        dest = ROOT / "reports" / "screenshots"
        dest.mkdir(parents=True, exist_ok=True)
        for f in shots.glob("*.png"):
            shutil.copyfile(f, dest / f.name)
        print(f"copied to {dest}")


def _pcn_ui(project: Path, port: int) -> tuple[subprocess.Popen, str]:
    """`pcn ui` as a user starts it in the project; returns it and the link it printed."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "pcn.cli", "ui", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=project, env={**env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:  # it prints the link once the server answers
        if line.startswith("MLflow UI: "):
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, line.split()[-1]
    raise AssertionError(f"pcn ui exited with code {proc.wait()} before printing a link")


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
            return True
    except OSError:
        return False


def test_mlflow_ui_shows_pipeline_and_stage_runs(browser, tmp_path, monkeypatch):
    """`pcn ui` lands on the model-training view of the experiment (not MLflow 3's GenAI
    navigation): the stage runs listed, each with its headline metric (top1) in a column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import yaml

    from pcn.config import load_params
    from pcn.tracking import runs as tracking

    # a project with the default store (sqlite:///mlflow.db beside params.yaml), no server running
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["tracking"]["uri"] = None
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params("params.yaml")
    uri = tracking.tracking_uri(params.tracking.uri)
    # runs as the pipeline creates them: a parent per invocation, one child per stage
    parent = tracking.start_pipeline_run(uri, params.tracking.experiment, "snakemake", "demo")
    monkeypatch.setenv(tracking.PIPELINE_ENV, parent)
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([1, 2, 3], [3, 1, 2])
    fig.savefig(tmp_path / "training_curves.png")
    plt.close(fig)
    stages = {}
    for name, metric in (("evaluate", {"top1": 42.5}), ("figures", {"figures": 3})):
        with tracking.stage_run(name, params, {"scale": "demo"}) as run:
            run.log_metrics(metric)
            if name == "evaluate":
                run.log_artifact(tmp_path / "training_curves.png", "figures")
            stages[name] = run.run_id
    tracking.RunLogger(parent, uri).finish()
    exp_id = mlflow.MlflowClient(uri).get_experiment_by_name(params.tracking.experiment).experiment_id

    port = _free_port()
    proc, url = _pcn_ui(tmp_path, port)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs?")
        assert "workflowType=machine_learning" in url
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.get_by_text("3 matching runs").wait_for()
        # the stage runs, as they are, without expanding their pipeline run ...
        for name in stages:
            page.get_by_role("link", name=name, exact=True).wait_for()
        page.get_by_text("pipeline-snakemake-demo").first.wait_for()
        # ... with the headline metric as a column, its value in the stage's row
        page.get_by_role("columnheader", name="top1").first.wait_for()
        # (the grid draws a row's pinned name and its other cells as two rows of one row-id)
        cell = page.locator(f'[role="row"][row-id="{stages["evaluate"]}"] [col-id="metrics.`top1`"]')
        cell.get_by_text("42.5").wait_for()
        # the model-training navigation (runs, models), not the GenAI one (judges, prompts)
        nav = page.locator("aside")
        nav.get_by_text("Runs", exact=True).wait_for()
        for genai in ("Judges", "Prompts", "Evaluation runs"):
            assert nav.get_by_text(genai, exact=True).count() == 0, genai
        page.screenshot(path=shots / "mlflow-runs.png")
        # one stage run: its metric ...
        page.get_by_role("link", name="evaluate", exact=True).click()
        page.wait_for_url(f"**/runs/{stages['evaluate']}**")
        page.get_by_text("top1").first.wait_for()
        page.get_by_text("42.5").first.wait_for()
        page.screenshot(path=shots / "mlflow-stage-run.png", full_page=True)
        # ... and its figure artifact, written by the stage with no server, served by this one
        page.goto(f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs/{stages['evaluate']}/artifacts")
        page.get_by_text("figures", exact=True).first.click()
        page.get_by_text("training_curves.png").first.click()
        preview = page.locator('img[src^="blob:"]').first
        preview.wait_for()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=preview.element_handle())
        page.screenshot(path=shots / "mlflow-artifact.png")
        page.close()
    finally:
        proc.send_signal(signal.SIGTERM)  # what a service manager (or Ctrl-C) does
        code = proc.wait(timeout=60)
        _keep(shots)
    assert code == 0
    assert not _answers(port), "pcn ui exited but left its server running"
    assert len(list(shots.glob("*.png"))) == 3


def test_html_report_renders(browser, tmp_path, monkeypatch):
    from test_report import (
        _params as report_params,  # tests/ is on sys.path under pytest
    )
    from test_report import write_fixture_run

    from pcn.analysis import report as R
    from pcn.analysis.figures import build_figures

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_fixture_run(tmp_path)
    build_figures(run_paths(tmp_path), tmp_path / "reports" / "figures")
    _, page_path = R.write_report(
        R.build_report(run_paths(tmp_path), report_params()),
        tmp_path / "reports/report.md",
        tmp_path / "reports/report.html",
    )
    # the file is self-contained: view a copy far from its figures folder
    lone = tmp_path / "elsewhere" / "report.html"
    lone.parent.mkdir()
    shutil.copyfile(page_path, lone)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.set_default_timeout(30_000)
    failed = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.goto(lone.as_uri())
    table = page.locator("section#paper-vs-reproduced table")
    table.wait_for()
    assert table.is_visible()
    assert table.locator("tbody tr").count() > 20
    assert page.locator("td.status-reproduced").count() >= 1
    assert page.locator("td.status-not-run-at-this-scale").count() >= 1
    page.screenshot(path=shots / "report-top.png")
    img = page.locator("figure img").first
    img.scroll_into_view_if_needed()
    assert img.is_visible()
    assert page.evaluate("img => img.naturalWidth", img.element_handle()) > 100
    img.screenshot(path=shots / "report-figure.png")
    page.screenshot(path=shots / "report-full.png", full_page=True)
    assert failed == []
    page.close()
    _keep(shots)


def test_mlflow_ui_shows_a_registered_model(browser, tmp_path, monkeypatch):
    """The fine-tuned model's registry page, as `pcn ui` serves it: its version, linked to its run."""
    import timm
    import yaml

    import pcn.models  # noqa: F401
    from pcn.config import load_params
    from pcn.tracking.registry import log_model
    from pcn.tracking.runs import stage_run

    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "PCN_PIPELINE_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["tracking"]["uri"] = None
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    model = timm.create_model("patchconvnet_demo", num_classes=5).eval()
    with stage_run("finetune", load_params("params.yaml"), {}) as run:
        assert log_model(run, model, 32, arch="patchconvnet_demo", options={}, register_as="patchconvnet-demo") == 1

    port = _free_port()
    proc, _ = _pcn_ui(tmp_path, port)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"http://127.0.0.1:{port}/#/models/patchconvnet-demo?workflowType=machine_learning")
        page.get_by_text("Version 1").first.wait_for()
        page.screenshot(path=shots / "mlflow-registered-model.png")
        page.goto(f"http://127.0.0.1:{port}/#/models/patchconvnet-demo/versions/1")
        page.get_by_text("finetune").first.wait_for()  # the source run, by name
        page.screenshot(path=shots / "mlflow-model-version.png")
        page.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        _keep(shots)
