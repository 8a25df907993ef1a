"""One stage table, two front ends: Snakemake and DVC must describe the same DAG."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pcn.config import load_params, raw_params
from pcn.stages import build_stages, dvc_yaml, expand

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snakemake_jobs(cwd: Path) -> dict[str, dict]:
    """Every job of `snakemake -n -p --forceall`, keyed like DVC names its stages."""
    out = subprocess.run(
        [str(BIN / "snakemake"), "-n", "-p", "--forceall", "all"], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout
    jobs = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head or head.group(1) == "all":
            continue
        field = lambda key: (re.search(rf"^\s+{key}: (.*)$", block, re.M) or [None, ""])[1]  # noqa: E731, B023
        wildcards = [kv.split("=", 1)[1] for kv in field("wildcards").split(", ") if kv]
        name = head.group(1) + ("@" + "-".join(wildcards) if wildcards else "")
        cmd = re.search(r"^Shell command: (.*?) > logs/", block, re.M).group(1)
        jobs[name] = {
            "name": name,
            "cmd": cmd,
            "deps": sorted(p for p in field("input").split(", ") if p),
            "outs": sorted(p for p in field("output").split(", ") if p),
        }
    return jobs


def dvc_stages(cwd: Path) -> dict[str, dict]:
    from dvc.repo import Repo

    with Repo(str(cwd)) as repo:
        return {
            s.addressing: {
                "name": s.addressing,
                "cmd": s.cmd,
                "deps": sorted(str(d.def_path) for d in s.deps if str(d.def_path) != "params.yaml"),
                "outs": sorted(str(o.def_path) for o in s.outs),
            }
            for s in repo.index.stages
        }


def test_committed_dvc_yaml_is_current():
    expected = dvc_yaml(load_params(ROOT / "params.yaml"), raw_params(ROOT / "params.yaml"))
    assert (ROOT / "dvc.yaml").read_text() == expected, "dvc.yaml is stale: run `pcn dag`"


@pytest.mark.parametrize("key", ["experiments.train_by_study.resnet_pool", "experiments.variants.avgpool"])
def test_every_tracked_key_is_written_in_params_yaml(key):
    """DVC reads params.yaml itself, without pcn's defaults: a key a stage tracks but the file
    lacks would fail `dvc repro` at that stage, so `pcn dag` refuses it up front, by name."""
    from pcn.config import ParamsError

    raw = raw_params(ROOT / "params.yaml")
    parent, _, leaf = key.rpartition(".")
    node = raw
    for part in parent.split("."):
        node = node[part]
    node.pop(leaf)
    params = load_params(ROOT / "params.yaml")  # the schema's default stands in for the missing key
    with pytest.raises(ParamsError, match=re.escape(repr(key))):
        dvc_yaml(params, raw)


def test_snakemake_and_dvc_describe_the_same_dag():
    table = {i["name"]: i for s in build_stages(load_params(ROOT / "params.yaml")) for i in expand(s)}
    smk, dvc = snakemake_jobs(ROOT), dvc_stages(ROOT)
    assert set(smk) == set(dvc) == set(table)
    for name in table:
        assert smk[name] == dvc[name] == table[name], name


def test_experiment_grid_expands_to_variant_x_seed():
    params = load_params(ROOT / "params.yaml")
    names = {i["name"] for s in build_stages(params) for i in expand(s)}
    for variant in params.experiments.variants:
        for seed in params.experiments.seeds:
            assert f"ablation@{variant}-{seed}" in names


def test_every_stage_is_a_pcn_verb_with_help():
    from pcn.steps import VERBS

    verbs = set(VERBS)
    for s in build_stages(load_params(ROOT / "params.yaml")):
        assert s.cmd.split()[0] == "pcn" and s.cmd.split()[1] in verbs, s.cmd


@pytest.mark.parametrize("stage", ["pretrain", "finetune", "ablation", "report"])
def test_every_stage_declares_outputs_and_params(stage):
    s = {s.name: s for s in build_stages(load_params(ROOT / "params.yaml"))}[stage]
    assert s.all_paths() and s.params


def test_snakemake_lint_and_format():
    lint = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "Snakefile", "workflow"], cwd=ROOT, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@pytest.mark.parametrize("backbone", ["pretrain", "finetune"])
def test_pretrained_transfer_depends_on_its_backbone_checkpoint(backbone):
    params = load_params(ROOT / "params.yaml")
    params = params.model_copy(update={"detection": params.detection.model_copy(update={"backbone": backbone})})
    deps = {i["name"]: i["deps"] for s in build_stages(params) for i in expand(s)}
    assert f"results/{backbone}/model.pth" in deps["detection"]
    assert not any(d.startswith("results/") for d in deps["detection_scratch"])
