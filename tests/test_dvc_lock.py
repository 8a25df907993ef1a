"""dvc.lock after a Snakemake run: the stages that run wrote go into it in one DVC pass."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import require

from pcn.dag.dvc_lock import commit_stages_that_ran, dvc_commit
from pcn.dag.stages import Stage

DVC = str(Path(sys.executable).with_name("dvc"))


def _sh(args, cwd):
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path):
    """A git + DVC repository with a plain stage and a matrix stage, outputs written by hand."""
    if shutil.which("git") is None:
        require("git is not installed", "git")
    _sh(["git", "init", "-q"], tmp_path)
    _sh([DVC, "init", "-q"], tmp_path)
    (tmp_path / "in.txt").write_text("input\n")
    pipeline = {
        "stages": {
            "make": {"cmd": "cp in.txt out/made.txt", "deps": ["in.txt"], "outs": ["out/made.txt"]},
            "grid": {
                "matrix": {"seed": [0, 1]},
                "cmd": "echo ${item.seed} > out/grid-${item.seed}.txt",
                "deps": ["out/made.txt"],
                "outs": ["out/grid-${item.seed}.txt"],
            },
        }
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(pipeline))
    _sh(["git", "add", "-A"], tmp_path)
    _sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], tmp_path)
    return tmp_path


def _write_outputs(root: Path, seeds) -> None:
    (root / "out").mkdir(exist_ok=True)
    (root / "out/made.txt").write_text("input\n")
    for s in seeds:
        (root / f"out/grid-{s}.txt").write_text(f"{s}\n")


STAGES = [
    Stage(name="make", verb="", topic="t", deps=("in.txt",), outs=("out/made.txt",)),
    Stage(
        name="grid",
        verb="",
        topic="t",
        deps=("out/made.txt",),
        outs=("out/grid-{seed}.txt",),
        matrix={"seed": [0, 1]},
    ),
]


def test_the_stages_a_run_wrote_are_recorded_and_dvc_agrees(repo):
    started = time.time_ns()
    _write_outputs(repo, seeds=[0, 1])
    stamp = os.stat(repo / "out/grid-1.txt").st_mtime_ns
    message = commit_stages_that_ran(repo, STAGES, started)
    assert message.startswith("dvc.lock: recorded 3 stage run(s)"), message
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"make", "grid@0", "grid@1"}
    assert os.stat(repo / "out/grid-1.txt").st_mtime_ns == stamp, "the outputs keep their times"
    assert "up to date" in _sh([DVC, "status"], repo)


def test_only_the_stages_that_ran_are_recorded(repo):
    _write_outputs(repo, seeds=[0])  # grid@1 did not run: its output is missing
    assert commit_stages_that_ran(repo, STAGES, 0).startswith("dvc.lock: recorded 2 stage run(s)")
    assert set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"]) == {"make", "grid@0"}


def test_an_unknown_stage_is_named(repo):
    _write_outputs(repo, seeds=[0, 1])
    with pytest.raises(KeyError, match="no such stage .*dvc.yaml: nope"):
        dvc_commit(repo, ["make", "nope"])
    assert not (repo / "dvc.lock").exists(), "nothing is recorded when a name is wrong"
