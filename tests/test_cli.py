"""The command line: help without torch, and the models registered whatever the import order."""

from __future__ import annotations

import subprocess
import sys


def _python(code: str) -> str:
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    return cp.stdout.strip()


def test_help_does_not_import_torch():
    """`pcn --help` (and every tool verb's parser) stays fast: torch and timm load only in
    the verbs that use them, after the CLI has set OMP_WAIT_POLICY."""
    out = _python(
        "import sys, pcn.cli; pcn.cli.build_parser().format_help(); "
        "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    assert out == "[]"


def test_the_models_register_in_timm_by_importing_pcn_models_and_only_then():
    """One way to register: ``import pcn.models`` (timm's ``@register_model`` in the model
    files), before or after timm; ``import pcn`` alone loads neither torch nor timm."""
    for order in ("import pcn.models, timm", "import timm, pcn.models"):
        assert _python(f"{order}; import timm; print(timm.is_model('patchconvnet_s60'))") == "True", order
    assert _python("import sys, pcn; print(sorted(m for m in ('torch', 'timm') if m in sys.modules))") == "[]"
    assert _python("import pcn, timm; print(timm.is_model('patchconvnet_s60'))") == "False"


def _pcn_params(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pcn.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_params_prints_one_scales_resolved_recipe_without_changing_the_file():
    """`pcn params --scale study`: the top level, scales.study and each comparison's changes
    merged into one YAML recipe, which itself resolves to the same values."""
    from pathlib import Path

    import yaml

    from pcn.config import GRID_STUDIES, RUN_RECIPES, resolve

    params_file = Path(__file__).resolve().parents[1] / "params.yaml"
    before = params_file.read_bytes()
    raw = yaml.safe_load(before)
    out = _pcn_params("--params", str(params_file), "params", "--scale", "study")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"# {params_file} resolved at scale study\n")
    printed = yaml.safe_load(out.stdout)
    assert params_file.read_bytes() == before, "printing a scale leaves params.yaml as it is"

    study = resolve({**raw, "scale": "study"})
    assert printed["scale"] == "study" and "scales" not in printed
    assert printed["experiments"]["seeds"] == study.experiments.seeds
    for name in GRID_STUDIES:  # every comparison's whole recipe, not its changes
        shown = printed["experiments"]["train_by_study"][name]
        runs = RUN_RECIPES.get(name, ())  # a run's own recipe is shown beside it (multiclass@finetuned)
        assert {k: v for k, v in shown.items() if k not in runs} == study.experiments.train_for(name).model_dump()
        for run in runs:
            assert shown[run] == study.experiments.train_for(name, run).model_dump()
    ablation = printed["experiments"]["train_by_study"]["ablation"]
    assert (ablation["epochs"], ablation["batch_size"], ablation["aug"]["scale_min"]) == (16, 32, 0.8)

    again = resolve(printed)
    assert again.model_dump(exclude={"scales", "experiments"}) == study.model_dump(exclude={"scales", "experiments"})
    for name in GRID_STUDIES:
        assert again.experiments.train_for(name) == study.experiments.train_for(name)


def test_params_prints_one_key_and_refuses_an_unknown_one(tmp_path):
    import argparse
    from pathlib import Path

    import pytest

    from pcn.config import ParamsError
    from pcn.steps.tools import show_params

    params_file = str(Path(__file__).resolve().parents[1] / "params.yaml")
    out = _pcn_params("--params", params_file, "params", "--scale", "paper", "pretrain.lr")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1:] == ["0.003"]
    out = _pcn_params("--params", params_file, "params", "--scale", "demo", "experiments.seeds")
    assert out.stdout.splitlines()[1:] == ["- 0"]
    with pytest.raises(ParamsError, match="pretrain.lrr: no such key"):
        show_params(argparse.Namespace(params=params_file, scale="demo", key="pretrain.lrr"))


def test_version_is_the_packages():
    import tomllib
    from pathlib import Path

    version = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["version"]
    out = _pcn_params("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"pcn {version}", out.stdout + out.stderr


def test_dryrun_help_names_the_scale_in_force_not_the_paper_scale():
    out = _pcn_params("dryrun", "--help")
    assert out.returncode == 0 and "scale in force" in out.stdout and "paper scale" not in out.stdout, out.stdout
