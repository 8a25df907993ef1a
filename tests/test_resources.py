"""Every job sized to its stage: the stage table's resources, the overrides, and the limits check."""

from __future__ import annotations

import math
import re
import subprocess

import pytest
import yaml

from pcn.config import ParamsError, raw_params, resolve
from pcn.dag.stage_resources import plugin_resources
from pcn.dag.stages import build_stages
from pcn.train.launch import slurm_parameters

LIGHT = ("complexity", "summarize", "figures", "report")


def paper(slurm: dict | None = None) -> object:
    raw = raw_params()
    raw["scale"] = "paper"
    raw["launcher"]["slurm"] = {**raw["launcher"]["slurm"], **(slurm or {})}
    return resolve(raw)


def test_paper_jobs_are_sized_to_their_stages_and_all_get_account_and_qos():
    p = paper({"account": "proj7", "qos": "normal", "constraint": "a100"})
    stages = {s.name: s for s in build_stages(p)}
    for name in LIGHT:
        r = stages[name].resources
        assert r.cpus_per_task == 1 and r.mem_gb <= 16 and r.time_min <= 240, (name, r)
    workers = p.data.num_workers
    for name in ("evaluate", "attention"):
        r = stages[name].resources
        assert r.cpus_per_task == workers + 1 and r.gpus_per_node == 1, (name, r)
    assert stages["convert"].resources.cpus_per_task == workers
    for s in stages.values():
        if s.submits_job:  # submitit's job: the sbatch parameters
            sb = slurm_parameters(p.launcher, s.name)
            assert sb["additional_parameters"] == {"account": "proj7", "qos": "normal"}, s.name
            assert sb["constraint"] == "a100" and sb["time"] == s.resources.time_min
        else:  # the executor plugin's job: the rule's resources, by the plugin's names
            res = plugin_resources(s, p)
            assert (res["slurm_account"], res["qos"], res["constraint"]) == ("proj7", "normal", "a100"), s.name
            assert res["mem_mb"] == s.resources.mem_gb * 1024 and res["cpus_per_task"] == s.resources.cpus_per_task
            assert res["runtime"] == s.resources.time_min


def test_a_stage_override_reaches_its_job_and_only_its_job():
    p = paper(
        {
            "partition": "gpu",
            "resources": {"report": {"mem_gb": 2, "partition": "cpu"}, "pretrain": {"time_min": 600}},
        }
    )
    stages = {s.name: s for s in build_stages(p)}
    assert plugin_resources(stages["report"], p)["mem_mb"] == 2048
    assert plugin_resources(stages["report"], p)["slurm_partition"] == "cpu"
    assert plugin_resources(stages["figures"], p)["slurm_partition"] == "gpu"
    assert slurm_parameters(p.launcher, "pretrain")["time"] == 600 == stages["pretrain"].resources.time_min
    assert slurm_parameters(p.launcher, "finetune")["time"] == p.launcher.slurm.time_min


def test_an_unknown_stage_or_key_in_resources_is_one_line_naming_it():
    with pytest.raises(ParamsError, match=r"launcher\.slurm\.resources\.reprot: no such stage") as err:
        build_stages(paper({"resources": {"reprot": {"mem_gb": 2}}}))
    assert "\n" not in str(err.value)
    # a stage this scale leaves out (the grid's summary) may still be named
    raw = raw_params()
    raw["scale"] = "paper"
    raw["scales"]["paper"]["experiments"]["enabled"] = False
    raw["launcher"]["slurm"]["resources"] = {"summarize": {"mem_gb": 2}}
    assert "summarize" not in [s.name for s in build_stages(resolve(raw))]
    with pytest.raises(ParamsError, match=r"unknown key 'launcher\.slurm\.resources\.report\.memory'"):
        paper({"resources": {"report": {"memory": 2}}})


def _dryrun(tmp_path, monkeypatch, capsys, slurm: dict) -> tuple[int, str, str]:
    from pcn.cli import main

    raw = raw_params()
    raw["scale"] = "paper"
    raw["launcher"]["slurm"] = {**raw["launcher"]["slurm"], **slurm}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    rc = main(["--params", str(path), "dryrun"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_dryrun_lists_every_job_and_refuses_one_over_the_configured_limits(tmp_path, monkeypatch, capsys):
    # no cluster answers: the real scontrol finds no configuration
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "no-cluster.conf"))
    limits = {"default": {"max_time_min": 4320, "cpus_per_node": 128, "mem_gb_per_node": 512, "gpus_per_node": 8}}
    rc, out, err = _dryrun(tmp_path, monkeypatch, capsys, {"limits": limits, "qos": "normal"})
    assert rc == 0, err
    p = paper()
    instances = [s.instance_name(wc) for s in build_stages(p) for wc in s.instances()]
    for name in instances:
        assert any(line.split()[:1] == [name] and "GB" in line for line in out.splitlines()), name
    assert "'qos': 'normal'" in out and "limits from launcher.slurm.limits" in out

    limits["default"]["mem_gb_per_node"] = 256
    rc, out, err = _dryrun(tmp_path, monkeypatch, capsys, {"limits": limits})
    assert rc == 2
    assert err.strip().splitlines() == [
        "pcn dryrun: error: stage pretrain asks for 480 GB of memory per node; partition (default) grants at most "
        "256 (launcher.slurm.limits)"
    ]


@pytest.mark.slurm
def test_dryrun_reads_the_limits_of_a_cluster_that_answers(slurm_cluster, tmp_path, monkeypatch, capsys):
    from pcn.dag.slurm_limits import DEFAULT, cluster_limits

    limits = cluster_limits()
    assert limits and DEFAULT in limits
    node = subprocess.run(["scontrol", "show", "node", "-o"], capture_output=True, text=True, check=True).stdout
    cpus = int(re.search(r"CPUTot=(\d+)", node).group(1))
    assert limits[DEFAULT].cpus_per_node == cpus and limits[DEFAULT].mem_gb_per_node >= 1
    # the one-node test cluster cannot hold the paper's 10-worker conversion
    rc, _, err = _dryrun(tmp_path, monkeypatch, capsys, {})
    assert rc == 2
    assert f"stage convert asks for 10 CPUs per node; partition (default) grants at most {cpus}" in err
    assert "scontrol/sinfo" in err


def _with(**loaders) -> object:
    raw = raw_params()
    raw["scale"] = "paper"
    for key, value in loaders.items():
        section, name = key.split("__")
        raw["scales"]["paper"].setdefault(section, {})[name] = value
    return resolve(raw)


def test_a_scale_converts_only_the_splits_its_stages_read_and_only_readers_wait_on_them():
    from pcn.dag.stage_resources import CONVERT_IMAGES_PER_WORKER_S, TIME_MARGIN
    from pcn.data.splits import FFCV_DIR, IMAGENET_SPLIT_IMAGES, ffcv_splits

    p = paper()
    assert (p.data.loader, p.evaluate.loader) == ("ffcv", "torch")
    assert ffcv_splits(p) == ("train", "val")  # training and its per-epoch val; evaluate reads JPEGs
    demo = resolve(raw_params())
    assert ffcv_splits(demo) == ("train", "val", "v2")
    # the job's time follows the images of the converted splits only
    workers = p.data.num_workers
    per_minute = CONVERT_IMAGES_PER_WORKER_S * workers * 60
    minutes = (IMAGENET_SPLIT_IMAGES["train"] + IMAGENET_SPLIT_IMAGES["val"]) / per_minute
    assert {s.name: s for s in build_stages(p)}["convert"].resources.time_min == 10 + math.ceil(TIME_MARGIN * minutes)
    # nothing read through FFCV: no conversion, and no stage waits on data/ffcv
    none = _with(data__loader="torch", experiments__loader="torch")
    assert ffcv_splits(none) == ()
    stages = build_stages(none)
    assert "convert" not in {s.name for s in stages}
    assert not [s.name for s in stages if FFCV_DIR in s.deps]
