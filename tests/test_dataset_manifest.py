"""A changed file in a real dataset makes the stages that read it stale, in both front ends.

The datasets are dependencies through their stat listings (pcn/dag/manifest.py): the
Snakefile's main process refreshes them at every invocation, DVC's always-changed
``dataset_manifest`` stage at every ``dvc repro``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pcn.config import raw_params, resolve
from pcn.dag.dvc_view import dvc_yaml
from pcn.dag.manifest import LISTER, manifest_path, refresh, walk
from pcn.dag.stages import build_stages

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_a_listing_is_sorted_and_rewritten_only_when_a_file_changes(tmp_path):
    data, listing = tmp_path / "data", tmp_path / "listing.tsv"
    for rel in ("b/2.JPEG", "a/1.JPEG", "a/0.JPEG", "top.csv"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(b"x" * len(rel))
    (data / "b" / "loop").symlink_to(data)  # a link cycle is walked once
    assert refresh(data, listing)
    lines = listing.read_text().splitlines()
    assert [line.split("\t")[0] for line in lines[1:]] == ["a/0.JPEG", "a/1.JPEG", "b/2.JPEG", "top.csv"]
    assert lines[1].split("\t")[1] == "8"
    stamp = listing.stat().st_mtime_ns
    assert not refresh(data, listing), "an unchanged dataset rewrote its listing"
    assert listing.stat().st_mtime_ns == stamp
    os.utime(data / "top.csv", ns=(1, 1))  # a touched file counts: no content is read
    assert refresh(data, listing)
    (data / "a" / "1.JPEG").unlink()
    assert refresh(data, listing)
    assert "a/1.JPEG" not in listing.read_text()
    assert walk(tmp_path / "absent") == []


def paper_raw(root: Path) -> dict:
    raw = raw_params(ROOT / "params.yaml")
    raw["scale"] = "paper"
    raw["scales"]["paper"]["data"]["root"] = str(root)
    return raw


def test_the_demo_walks_nothing_and_real_data_is_a_dependency_of_its_readers():
    demo = build_stages(resolve(raw_params(ROOT / "params.yaml")))
    assert LISTER not in {s.name for s in demo}
    assert not any("data/manifests" in d for s in demo for d in s.deps)
    raw = paper_raw(Path("/datasets"))
    stages = {s.name: s for s in build_stages(resolve(raw))}
    listings = {d: manifest_path(d) for d in ("imagenet", "imagenet_v2", "ade20k", "coco")}
    assert stages[LISTER].outs == tuple(listings.values())
    assert listings["imagenet"] in stages["convert"].deps  # v2 is not converted at paper scale
    assert {listings["imagenet"], listings["imagenet_v2"]} <= set(stages["evaluate"].deps)  # it reads the JPEGs
    assert listings["ade20k"] in stages["segmentation"].deps and listings["coco"] in stages["detection"].deps
    assert not any(d.startswith("data/manifests") for d in stages["pretrain"].deps)  # it reads the .beton
    entry = yaml.safe_load(dvc_yaml(resolve(raw), raw))["stages"][LISTER]
    assert entry["always_changed"] is True
    assert entry["outs"][0] == {listings["imagenet"]: {"cache": False, "persist": True}}


def test_the_listing_stage_takes_its_own_resources_and_gets_no_mlflow_run(tmp_path):
    from pcn.tracking.sync import outputs

    raw = paper_raw(tmp_path)
    raw["scales"]["paper"].setdefault("launcher", {}).setdefault("slurm", {})["resources"] = {LISTER: {"mem_gb": 2}}
    params = resolve(raw)
    assert next(s for s in build_stages(params) if s.name == LISTER).resources.mem_gb == 2
    listing = tmp_path / manifest_path("imagenet")
    listing.parent.mkdir(parents=True)
    listing.write_text("")
    assert outputs(build_stages(params), tmp_path) == []  # `pcn track sync` has nothing to add for it


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    from pcn.data.demo.miniature import write_miniatures

    return Path(write_miniatures(tmp_path_factory.mktemp("manifest") / "datasets", progress=False)["root"])


def _run(args: list[str], work: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cp = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    return cp.stdout + cp.stderr


def _snakemake_dry(work: Path, target: str) -> str:
    return _run([str(BIN / "snakemake"), "-n", target], work)


def _dvc(work: Path, *args: str) -> str:
    return _run([str(BIN / "dvc"), *args], work)


@pytest.mark.slow
def test_a_deleted_val_image_makes_convert_and_what_follows_stale_in_both_front_ends(datasets, tmp_path):
    from pcn.dag.rehearsal import CAPS_FILE, prepare_workspace, rehearsal_params

    data = tmp_path / "datasets"
    shutil.copytree(datasets, data, symlinks=True)
    work = tmp_path / "work"
    raw = rehearsal_params(
        raw_params(ROOT / "params.yaml"), yaml.safe_load((ROOT / CAPS_FILE).read_text()), data, slurm=False, quick=True
    )
    prepare_workspace(ROOT, work, raw)
    (work / "dvc.yaml").write_text(dvc_yaml(resolve(raw), raw))
    _dvc(work, "init", "--no-scm", "-q")
    # a partial run: the conversion, recorded in dvc.lock by the Snakefile's onsuccess
    _run([str(BIN / "snakemake"), "--cores", "2", "convert"], work)
    assert "Nothing to be done" in _snakemake_dry(work, "convert")
    assert "up to date" in _dvc(work, "status", "convert")
    # the snakemake a SLURM job runs (remote mode, re-reading the Snakefile) does not walk
    assert "dataset listings" not in _run([str(BIN / "snakemake"), "-n", "--mode", "remote", "convert"], work)
    assert "dataset listings" in _snakemake_dry(work, "convert")

    # Snakemake walks the datasets at every invocation: its dry run sees the deletion
    val = sorted((data / "imagenet" / "val").rglob("*.JPEG"))
    val[0].unlink()
    dry = _snakemake_dry(work, "pretrain")
    assert "rule convert:" in dry and "Updated input files: data/manifests/imagenet.tsv" in dry, dry
    assert "rule pretrain:" in dry and "Input files updated by another job: data/ffcv" in dry, dry
    assert "modified:           data/manifests/imagenet.tsv" in _dvc(work, "status", "convert")

    # DVC, which has no start hook, walks in its always-changed stage: `dvc repro` runs it
    # first; `dvc repro dataset_manifest` alone is the walk that `dvc status` then reads
    _dvc(work, "commit", "-f", "-q", LISTER, "convert")  # as after a run on the listing above
    val[1].unlink()
    assert "modified:" not in _dvc(work, "status", "convert")  # the listing is not yet refreshed
    _dvc(work, "repro", "-q", LISTER)
    status = _dvc(work, "status", "convert")
    assert "modified:           data/manifests/imagenet.tsv" in status, status
