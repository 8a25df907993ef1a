"""Every dataset the scale's stages read is looked for before the first stage starts: by
`pcn run`, `pcn rehearse`, a bare `snakemake` (the Snakefile's onstart) and a bare `dvc repro`
(the first stage it runs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import stage_argv

from pcn.analysis.attention import LOC_CSV, VOC_DIR
from pcn.config import raw_params, resolve
from pcn.dag.preflight import check_datasets
from pcn.dag.stages import build_stages
from pcn.errors import DatasetError

ROOT = Path(__file__).resolve().parents[1]


def _check(params) -> str:
    """The check the front ends run: for the stages of the DAG of ``params``."""
    return check_datasets(params, [s.name for s in build_stages(params)])


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    from pcn.data.demo.miniature import write_miniatures

    return Path(write_miniatures(tmp_path_factory.mktemp("preflight") / "datasets", progress=False)["root"])


def paper_raw(root: Path, **attention) -> dict:
    raw = raw_params()
    raw["scale"] = "paper"
    raw["scales"]["paper"]["data"]["root"] = str(root)
    raw["attention"] = {**raw["attention"], **attention}
    return raw


def test_every_dataset_path_of_the_paper_scale_is_checked_in_seconds(datasets, tmp_path):
    t0 = time.monotonic()
    assert "are there" in _check(resolve(paper_raw(datasets)))
    assert time.monotonic() - t0 < 10
    copy = tmp_path / "datasets"
    shutil.copytree(datasets, copy, symlinks=True)
    shutil.rmtree(copy / "ADEChallengeData2016" / "annotations" / "validation")
    with pytest.raises(DatasetError) as err:
        _check(resolve(paper_raw(copy)))
    assert str(err.value).startswith(f"{copy}/ADEChallengeData2016/annotations/validation: missing; stage segmentation")
    assert "\n" not in str(err.value)


def test_required_boxes_are_found_in_either_form_or_named_both(datasets, tmp_path):
    copy = tmp_path / "datasets"
    shutil.copytree(datasets, copy, symlinks=True)
    (copy / "imagenet" / LOC_CSV).unlink()
    _check(resolve(paper_raw(copy)))  # not required: the maps go unscored
    with pytest.raises(DatasetError, match=rf"{LOC_CSV} or .*{VOC_DIR}: missing; stage attention"):
        _check(resolve(paper_raw(copy, require_boxes=True)))
    (copy / "imagenet" / VOC_DIR).mkdir()
    (copy / "imagenet" / VOC_DIR / "ILSVRC2012_val_00000001.xml").write_text("<annotation/>")
    _check(resolve(paper_raw(copy, require_boxes=True)))


PROBE = """
include: "{workflow}"


rule probe:
    output:
        "probe.txt",
    shell:
        "touch {{output}}"
"""


def _paper_work_without_coco_val(datasets: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(datasets, project): a copy of the miniatures lacking COCO's val2017, and a project
    folder whose params.yaml reads them at paper scale."""
    copy = tmp_path / "datasets"
    shutil.copytree(datasets, copy, symlinks=True)
    shutil.rmtree(copy / "coco" / "val2017")
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(paper_raw(copy)))
    return copy, work


def test_a_bare_snakemake_names_a_missing_dataset_before_any_job(datasets, tmp_path):
    copy, work = _paper_work_without_coco_val(datasets, tmp_path)
    (work / "probe.smk").write_text(PROBE.format(workflow=ROOT / "workflow" / "Snakefile"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "snakemake", "-s", "probe.smk", "--cores", "1", "probe"]
    cp = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert cp.returncode != 0
    assert f"{copy}/coco/val2017: missing; stage detection" in cp.stdout + cp.stderr
    assert not (work / "probe.txt").exists(), "a job ran before the datasets were checked"


def test_under_dvc_the_first_stage_names_a_dataset_another_stage_reads(datasets, tmp_path):
    """A bare `dvc repro` runs `pcn convert` first: it must name COCO's missing val images
    (read by detection, hours later) before converting anything."""
    copy, work = _paper_work_without_coco_val(datasets, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_STAGE": "convert", "MLFLOW_TRACKING_URI": "file:./mlruns"}
    env.pop("PCN_PIPELINE_RUN_ID", None)
    subprocess.run([sys.executable, "-m", "pcn.cli", "dag"], cwd=work, env=env, check=True, capture_output=True)
    cmd = [sys.executable, "-m", "pcn.cli", *stage_argv("convert", work / "params.yaml")]
    cp = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert cp.returncode == 2, cp.stderr
    assert (
        cp.stderr.strip()
        .splitlines()[-1]
        .startswith(f"pcn convert: error: {copy}/coco/val2017: missing; stage detection")
    )
    assert not (work / "data").exists() and not (work / "metrics").exists()
