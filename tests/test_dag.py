"""One stage table, two front ends: Snakemake and DVC must describe the same DAG."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pcn.config import load_params, raw_params
from pcn.dag.dvc_view import dvc_yaml, expand
from pcn.dag.stages import build_stages

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


def test_every_stage_command_parses_to_a_step_that_finds_its_instance():
    """Each instance's command is one the CLI accepts, naming a step function that exists, and
    its flags carry every wildcard with the instance's value (the step names its MLflow run
    and logs its params sections by them: ``--variant`` fills ``{variant}``), and the step
    module the table makes the stage depend on is the one the CLI runs."""
    import importlib

    from pcn.cli import build_parser

    parser = build_parser()
    for s in build_stages(load_params(ROOT / "params.yaml")):
        for wc in s.instances():
            argv = s.instance(wc).cmd.split()
            assert argv[0] == "pcn", s.cmd
            args = parser.parse_args(argv[1:])
            module, func = args.target.split(":")
            assert callable(getattr(importlib.import_module(module), func, None)), (s.name, args.target)
            assert {k: str(getattr(args, k, None)) for k in wc} == wc, (s.name, argv)
            assert s.step_module == module.replace(".", "/") + ".py" and s.step_module in s.deps, s.name


def test_every_tracked_section_names_a_params_section():
    """The sections a stage tracks are the ones its step logs and reads: a misspelt one would
    track nothing, so each must resolve in the params, for every instance."""
    params = load_params(ROOT / "params.yaml")
    for s in build_stages(params):
        for wc in s.instances():
            for key in s.instance(wc).params:
                try:
                    params.section(key)
                except (AttributeError, KeyError):
                    pytest.fail(f"stage {s.instance_name(wc)} tracks {key!r}, which params.yaml has not")


def test_every_output_has_one_writer_and_every_generated_input_a_writer():
    """A path two stages write would be overwritten by whichever runs last; a generated input
    that no stage writes could never be made; a stage that writes nothing no target runs."""
    instances = [i for s in build_stages(load_params(ROOT / "params.yaml")) for i in expand(s)]
    writers: dict[str, str] = {}
    for i in instances:
        assert i["outs"], f"{i['name']} writes nothing"
        for out in i["outs"]:
            assert out not in writers, f"{out}: written by {writers[out]} and {i['name']}"
            writers[out] = i["name"]
    generated = ("data/ffcv", "results/", "metrics/", "plots/", "reports/")
    for i in instances:
        for dep in i["deps"]:
            if dep.startswith(generated):
                assert dep in writers, f"{i['name']} reads {dep}, which no stage writes"


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


def test_a_step_writes_and_logs_what_its_instance_declares(monkeypatch):
    """A step's paths are the ones its command names, its logged sections and run name its
    instance's (the wildcards its flags give): it writes where both front ends look."""
    import contextlib

    import pcn.steps.common as common
    import pcn.steps.experiments as experiments
    from pcn.cli import build_parser

    logged, written = {}, {}

    @contextlib.contextmanager
    def fake_run(name, params, sections, tags=None, instance=None):
        logged.update(sections)
        logged["run name"] = instance
        logged["tags"] = tags
        yield None

    def fake_train(args, st, **kw):  # the step's wiring, not hours of training
        written.update(outs=st.outs, metrics=st.metrics, plots=st.plots)
        return {}

    monkeypatch.setattr(common, "stage_run", fake_run)
    monkeypatch.setattr(experiments, "train_stage", fake_train)
    record = {s.name: s for s in build_stages(load_params(ROOT / "params.yaml"))}["ablation"]
    one = record.instance({"variant": "avgpool", "seed": "0"})
    args = build_parser().parse_args(["--params", str(ROOT / "params.yaml"), *one.cmd.split()[1:]])
    assert experiments.ablate(args) == 0
    assert written == {
        "outs": ("results/ablations/avgpool-s0/model.pth",),
        "metrics": ("metrics/ablations/avgpool-s0.json",),
        "plots": (),
    }
    assert (written["outs"], written["metrics"]) == (one.outs, one.metrics)
    assert logged["experiments.variants.avgpool"] == {"pool": "avg"}
    assert set(logged) - {"run name", "tags"} == set(one.params), "it logs the sections both front ends track"
    assert logged["run name"] == "ablation@avgpool-0", "the MLflow run is named after its instance"
    assert logged["tags"]["pcn.metrics"] == "metrics/ablations/avgpool-s0.json", "the report finds the run by it"


def test_a_command_names_its_outputs_and_only_declared_paths():
    """The table writes each command from the stage's own paths, and refuses one that names a
    path the stage does not declare or leaves an output out: the step and the DAG agree."""
    from dataclasses import replace

    from pcn.dag.stages import _check_args

    stages = {s.name: s for s in build_stages(load_params(ROOT / "params.yaml"))}
    finetune = stages["finetune"]
    assert "--weights results/pretrain/model.pth" in finetune.cmd
    for s in stages.values():
        words = s.cmd.split()
        assert all(any(p == w or p.startswith(w + "/") for w in words) for p in s.all_paths()), s.cmd
    with pytest.raises(ValueError, match="results/elsewhere.pth, which it does not declare"):
        _check_args(replace(finetune, args=(*finetune.args, ("weights", "results/elsewhere.pth"))))
    with pytest.raises(ValueError, match="does not name its output.*plots/finetune.csv"):
        _check_args(replace(finetune, args=tuple(a for a in finetune.args if a[0] != "plots")))


def test_under_dvc_a_stage_refuses_a_dvc_yaml_of_another_shape(tmp_path):
    """`dvc exp run -S` on a key that changes the DAG's shape would run the stale matrix."""
    import yaml

    from pcn.config import load_params
    from pcn.dag.dvc_view import refuse_stale_dvc_yaml
    from pcn.errors import UserError

    for name in ("params.yaml", "dvc.yaml"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    params_path = tmp_path / "params.yaml"
    raw = yaml.safe_load(params_path.read_text())
    raw["pretrain"]["lr"] *= 2  # a recipe value: the same DAG
    params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    refuse_stale_dvc_yaml(str(params_path), load_params(params_path))
    raw["experiments"]["seeds"] = [*raw["experiments"]["seeds"], 99]  # one more instance per comparison
    params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(UserError, match=r"dvc.yaml is stale .* run `pcn dag`"):
        refuse_stale_dvc_yaml(str(params_path), load_params(params_path))


def test_only_the_dag_and_rehearse_steps_import_the_stage_table():
    """A step takes its paths from its command line: importing the table (even inside a
    function) would let it find them there again.  Only `pcn dag`'s and `pcn rehearse`'s
    modules, which run the table itself, may."""
    import ast

    allowed = {"tools.py", "rehearse.py"}
    importers = []
    for path in sorted((ROOT / "pcn" / "steps").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            # the table itself, or the DVC view that builds it (the stale-dvc.yaml check runs in
            # the DAG layer before the step, pcn.cli, not in each step)
            if {"pcn.dag.stages", "pcn.dag.dvc_view"} & set(names) and path.name not in allowed:
                importers.append(path.name)
    assert not importers, f"steps importing pcn.dag.stages or its DVC view: {importers}"
