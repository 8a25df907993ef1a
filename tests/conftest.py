"""Shared fixtures: a tiny image folder and the local SLURM cluster."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = ROOT / "scripts" / "slurm-cluster.sh"


def write_tiny_imagefolder(
    root: Path,
    classes: int = 3,
    train_per_class: int = 16,
    val_per_class: int = 4,
    size: int = 40,
    seed: int = 0,
) -> Path:
    """``root/{train,val}/c<k>/<i>.jpg``: noisy images whose mean colour tells the class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    palette = rng.integers(40, 215, size=(classes, 3))
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(palette[c] + rng.normal(0, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:03d}.jpg", quality=90)
    return root


# What provides each part the suite needs, for the one-line message of a test that lacks it
SETUP = {
    "ffcv": "`bash scripts/setup.sh test` builds it (Debian's libopencv-*-dev, libturbojpeg0-dev, then pip)",
    "root": "run the tests as root, as CI does (`bash .ci/run`): mounting a tmpfs needs it",
    "slurm": "`bash scripts/setup.sh test` installs slurm-wlm and munge; scripts/slurm-cluster.sh start runs them",
    "chromium": "`bash scripts/setup.sh test` installs Debian's chromium (/usr/bin/chromium)",
    "git": "apt-get install git",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(missing: str, part: str) -> None:
    """A part the suite needs is missing.  Under CI=true the test fails, in one line naming
    what is missing and what provides it: CI must not pass on skips.  Elsewhere it is
    skipped, and pytest's summary says why."""
    message = f"{missing}; {SETUP[part]}"
    if in_ci():
        pytest.fail(f"CI needs it: {message}", pytrace=False)
    pytest.skip(message, allow_module_level=True)  # a module-level check (test_ffcv.py) skips the module


def require_ffcv():
    """The ffcv package (a pinned dependency and the default loader), or :func:`require`."""
    try:
        import ffcv
    except ImportError as exc:
        require(f"ffcv cannot be imported ({exc})", "ffcv")
    return ffcv


def mount_tmpfs(mount: Path, options: str) -> None:
    """A tmpfs mounted at ``mount`` with ``options`` (``size=2m``, ``ro,size=1m``); mounting
    needs root (:func:`require`).  The caller unmounts it."""
    cp = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True, text=True)
    if cp.returncode != 0:
        require(f"cannot mount a tmpfs ({options}) at {mount}: {cp.stderr.strip() or 'mount failed'}", "root")


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs at ``tmp_path/fs``, a filesystem a test can fill (or remount read-only:
    as root a file's mode bits do not stop a write); unmounted afterwards.  Mounting needs
    root: the test is skipped where it is not permitted."""
    mount = tmp_path / "fs"
    mount.mkdir()
    mount_tmpfs(mount, "size=2m")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def remount_read_only(mount: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True)


@pytest.fixture(scope="session", autouse=True)
def _decoded_cache(tmp_path_factory):
    """The memory loader's cache of decoded folders goes to a temporary directory, not the
    user's; stage subprocesses inherit it."""
    os.environ["PCN_CACHE_DIR"] = str(tmp_path_factory.mktemp("pcn-cache"))


@pytest.fixture(scope="session")
def tiny_imagefolder(tmp_path_factory) -> Path:
    """3 classes, 16 train and 4 val JPEGs (40 px) each; shared read-only by the session."""
    return write_tiny_imagefolder(tmp_path_factory.mktemp("tiny_imagefolder"))


def _cluster(action: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), action],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The one-node SLURM cluster of ``scripts/slurm-cluster.sh`` (started when not running).

    Skips only where SLURM cannot be installed (no root, no apt); any other
    failure to start it is a test error with the script's output.
    """
    if _cluster("status").returncode == 0:
        return "running"
    if shutil.which("slurmctld") is None and (os.geteuid() != 0 or shutil.which("apt-get") is None):
        require("SLURM is not installed and cannot be installed here (needs root and apt-get)", "slurm")
    started = _cluster("start")
    if started.returncode == 3:  # the script's "cannot install SLURM here"
        require(f"SLURM cannot be installed here: {started.stderr.strip().splitlines()[-1]}", "slurm")
    if started.returncode != 0:
        raise RuntimeError(f"scripts/slurm-cluster.sh start failed:\n{started.stdout}\n{started.stderr}")
    return "started"


def stage_argv(name: str, params_path: str | Path = "params.yaml", **wildcards) -> list[str]:
    """The verb and flags of stage ``name`` (one instance: ``wildcards``) as the DAG of
    ``params_path`` runs it: the paths come from the stage table, as under a front end."""
    from pcn.config import load_params
    from pcn.dag.stages import build_stages

    stage = {s.name: s for s in build_stages(load_params(params_path))}[name]
    return shlex.split(stage.instance({k: str(v) for k, v in wildcards.items()}).cmd)[1:]


def run_convert(work: Path, timeout: int) -> subprocess.CompletedProcess:
    """`pcn convert` as the DAG of ``work/params.yaml`` runs it, in ``work``, with a store of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PCN_PIPELINE", "DVC_"))}
    env.update(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")
    argv = [sys.executable, "-m", "pcn.cli", *stage_argv("convert", work / "params.yaml")]
    return subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)


def run_paths(root: Path, params_path: str | Path = ROOT / "params.yaml"):
    """The path map the figures and report stages build from their commands, for a run at ``root``."""
    import argparse

    from pcn.analysis.paths import RunPaths
    from pcn.cli import build_parser

    flags: dict = {}
    for name in ("figures", "report"):
        flags.update({k: v for k, v in vars(build_parser().parse_args(stage_argv(name, params_path))).items() if v})
    return RunPaths.from_args(argparse.Namespace(**flags), Path(root))
