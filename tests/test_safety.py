"""Bad input never runs code, destroys data or passes silently: names and paths stay shell
words, params refuse what they cannot mean, a broken metrics file is named, the DAG's
generated files are not hand-edited behind its back."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pcn.config import ParamsError, load_params, resolve
from pcn.dag.stage import Stage
from pcn.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _pcn(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}", **env}
    env.pop("PCN_PIPELINE_RUN_ID", None)
    return subprocess.run(
        [sys.executable, "-m", "pcn.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _one_error_line(cp: subprocess.CompletedProcess, verb: str) -> str:
    assert cp.returncode == 2, cp.stdout + cp.stderr
    lines = [line for line in cp.stderr.splitlines() if line.strip()]
    assert "Traceback" not in cp.stderr, cp.stderr
    assert lines[-1].startswith(f"pcn {verb}: error: "), cp.stderr
    return lines[-1]


# --- names and shell words ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda raw: raw["experiments"]["variants"].update({"x$(touch pwned)": {}}), "experiments.variants"),
        (lambda raw: raw["experiments"]["variants"].update({"no se": {}}), "experiments.variants"),
        (lambda raw: raw["experiments"]["variants"].update({"a-b": {}}), "experiments.variants"),
        (lambda raw: raw["experiments"]["resnet"].update({"avg;rm": "resnet_demo"}), "experiments.resnet"),
        (lambda raw: raw["experiments"].update({"seeds": [0, -1]}), "experiments.seeds"),
        (lambda raw: raw["experiments"].update({"depth_width": [[64, 0]]}), "experiments.depth_width"),
    ],
)
def test_a_name_that_would_become_a_file_a_run_or_a_shell_word_is_checked_at_load(edit, key, tmp_path):
    raw = _raw()
    edit(raw)
    with pytest.raises(ParamsError, match=key) as err:
        resolve(raw)
    assert "\n" not in str(err.value)
    # and no stage ran it: `pcn dag` refuses before writing dvc.yaml
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    _one_error_line(_pcn(["dag"], tmp_path), "dag")
    assert not (tmp_path / "dvc.yaml").exists() and not (tmp_path / "pwned").exists()


def test_every_word_of_a_stage_command_reaches_the_step_as_one_word(tmp_path):
    """A path with a space or shell syntax in it: the shell sees it as one word, runs nothing."""
    odd = "my data/x$(touch pwned)`touch pwned2`;touch pwned3"
    stage = Stage("s", "figures", "report", args=(("out", odd), ("metrics", "metrics/{variant}-s{seed}.json")))
    argv_printer = "printf '%s\\n'"
    cmd = stage.cmd.format(variant="no_se", seed=0).replace("pcn", argv_printer, 1)
    out = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["figures", "--out", odd, "--metrics", "metrics/no_se-s0.json"]
    assert not list(tmp_path.iterdir()), "the shell ran a command substitution"


def test_a_data_root_with_a_space_stays_one_word_in_dvc_yaml_and_snakemake():
    import shlex

    from pcn.dag.dvc_view import dvc_yaml
    from pcn.dag.stages import build_stages

    raw = _raw()
    raw["data"]["root"] = "my data"
    params = resolve(raw)
    make_demo = next(s for s in build_stages(params) if s.name == "demo_data")
    assert shlex.split(make_demo.cmd) == ["pcn", "make-demo", "--out", "my data"]
    written = yaml.safe_load(dvc_yaml(params, raw))["stages"]["demo_data"]["cmd"]
    assert shlex.split(written) == ["pcn", "make-demo", "--out", "my data"]
    # the plain paths of the committed dvc.yaml are not quoted: only what needs it is
    assert "'" not in (ROOT / "dvc.yaml").read_text().split("stages:", 1)[1]


# --- params ---------------------------------------------------------------------------------------


def test_a_key_written_twice_in_params_yaml_is_refused_naming_both_lines(tmp_path):
    text = (ROOT / "params.yaml").read_text() + "\npretrain:\n  epochs: 3\n"
    (tmp_path / "params.yaml").write_text(text)
    first = 1 + next(i for i, line in enumerate(text.splitlines()) if line.startswith("pretrain:"))
    last = len(text.splitlines()) - 1
    line = _one_error_line(_pcn(["params"], tmp_path), "params")
    assert f"key 'pretrain' is written twice, at lines {first} and {last}" in line, line


@pytest.mark.parametrize("key, value", [("lr", float("inf")), ("lr", float("nan")), ("epochs", True)])
def test_a_number_that_is_infinite_nan_or_a_boolean_is_refused(key, value):
    raw = _raw()
    raw["pretrain"][key] = value
    with pytest.raises(ParamsError, match=rf"pretrain\.{key} = "):
        resolve(raw)


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, verb, said",
    [
        (["run", "--cores", "0"], "run", "argument --cores: expected a whole number >= 1, got 0"),
        (["ui", "--port", "70000"], "ui", "argument --port: expected a port from 1 to 65535, got 70000"),
        (["ui", "--port", "-1"], "ui", "argument --port: expected a whole number >= 1, got -1"),
        (["ui", "--port", "0"], "ui", "argument --port: expected a whole number >= 1, got 0"),
        (["detection", "--init", "scratch", "--out", "x", "--metrics", "y.json"], "detection", "--plots"),
    ],
)
def test_a_bad_argument_is_one_line_before_anything_starts(args, verb, said, tmp_path):
    cp = _pcn(args, tmp_path)
    assert cp.returncode == 2 and "Traceback" not in cp.stderr, cp.stderr
    assert cp.stderr.strip().splitlines()[-1].startswith(f"pcn {verb}: error: ")
    assert said in cp.stderr
    assert list(tmp_path.iterdir()) == [], "it started something"


# --- generated and recorded files ---------------------------------------------------------------


def test_a_hand_edited_stage_command_in_dvc_yaml_is_refused_naming_the_stage(tmp_path):
    """`evaluate` pointed at the pretrain weights would run and write a wrong top-1."""
    from pcn.dag.dvc_view import refuse_stale_dvc_yaml

    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    params = load_params(tmp_path / "params.yaml")
    refuse_stale_dvc_yaml(str(tmp_path / "params.yaml"), params)  # as generated: runs
    text = (tmp_path / "dvc.yaml").read_text()
    assert "--weights results/finetune/model.pth" in text
    (tmp_path / "dvc.yaml").write_text(
        text.replace("--weights results/finetune/model.pth", "--weights results/pretrain/model.pth", 1)
    )
    with pytest.raises(UserError, match=r"stage 'evaluate' \(cmd\) differs from the stage table.*pcn dag"):
        refuse_stale_dvc_yaml(str(tmp_path / "params.yaml"), params)


def _truncated(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2)
    path.write_text(text[: len(text) // 2])  # a full disk or a killed writer


def test_a_truncated_metrics_file_fails_the_report_naming_it(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    _truncated(tmp_path / "metrics" / "eval.json", {"top1": 95.4, "top5": 99.0, "v2_top1": 93.8})
    (tmp_path / "reports" / "figures").mkdir(parents=True)
    args = ["report", "--metrics", "metrics", "--figures", "reports/figures"]
    args += ["--paper", str(ROOT / "paper" / "numbers.yaml"), "--recipe", str(ROOT / "paper" / "recipe.yaml")]
    cp = _pcn([*args, "--out", "reports/report.md", "reports/report.html"], tmp_path)
    line = _one_error_line(cp, "report")
    assert "metrics/eval.json: not valid JSON (line " in line, line
    assert not (tmp_path / "reports" / "report.md").exists()


def test_a_truncated_metrics_file_fails_track_sync_naming_it_and_leaves_no_run_running(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    _truncated(tmp_path / "metrics" / "eval.json", {"top1": 95.4, "top5": 99.0, "mlflow_run_id": "0" * 32})
    line = _one_error_line(_pcn(["track", "sync"], tmp_path), "track")
    assert "metrics/eval.json: not valid JSON" in line, line
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        states = [s for (s,) in db.execute("select status from runs")]
    assert "RUNNING" not in states, states


def test_the_test_clusters_state_folder_must_be_private(tmp_path):
    """`stop` kills the pids it reads there: a folder others can write is refused."""
    shared = tmp_path / "state"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    env = {**os.environ, "PCN_SLURM_DIR": str(shared)}
    cp = subprocess.run(
        ["bash", str(ROOT / "scripts" / "slurm-cluster.sh"), "stop"], env=env, capture_output=True, text=True
    )
    assert cp.returncode == 1, cp.stderr
    assert f"{shared} is writable by other users" in cp.stderr
