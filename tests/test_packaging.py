"""The install story: pinned torch, one dependency list in two formats, the README's commands."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower().replace("_", "-")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = _pyproject()["project"]
    wanted = {_name(r): r for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    got = {_name(r): r for r in pip if not r.startswith("-e")}
    assert got.keys() == wanted.keys()
    assert got == wanted, "same packages, same version constraints"


def test_torch_is_pinned_and_setup_installs_pyprojects_pins():
    """torch and torchvision are pinned exactly (a resolver pass could pull another multi-GB
    build); the setup script installs them first, by pin, and must install pyproject's."""
    deps = {_name(r): r for r in _pyproject()["project"]["dependencies"]}
    for pkg in ("torch", "torchvision"):
        assert re.fullmatch(rf"{pkg}==\d+(\.\d+)*", deps[pkg]), f"pyproject.toml: {deps[pkg]} is not an exact pin"
    pins = re.findall(r"(?<![\w.-])([A-Za-z][\w.-]*==[\w.]+)", (ROOT / "scripts" / "setup.sh").read_text())
    assert {"torch", "torchvision"} <= {_name(p) for p in pins}, pins
    for pin in pins:
        assert deps.get(_name(pin)) == pin, (
            f"scripts/setup.sh installs {pin}, pyproject.toml says {deps.get(_name(pin))}"
        )


def test_readme_quickstart_is_two_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert len(commands) == 2, commands
    ci = [
        line
        for line in (ROOT / ".ci/run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci == [commands[1].split("#")[0].strip()]
    assert "demo" in commands[0]


def test_readme_study_scale_is_one_command():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Study scale", 1)[1]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert len(commands) == 1 and "study" in commands[0]


def test_console_script_and_slurm_profile_are_where_the_tools_look():
    assert _pyproject()["project"]["scripts"]["pcn"] == "pcn.cli:main"
    profile = ROOT / "slurm" / "config.yaml"
    assert profile.is_file(), "`snakemake --profile slurm` looks for ./slurm/config.yaml"
    assert "pcn_launcher=slurm" in profile.read_text()


def test_readme_rehearsal_is_one_command_the_quickstart_knows():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Paper scale rehearsal", 1)[1]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert commands == ["bash scripts/quickstart.sh rehearse"]
    assert "rehearse)" in (ROOT / "scripts" / "quickstart.sh").read_text()
