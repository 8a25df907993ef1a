"""A typo never destroys the project (issue 36): no output path replaces the workspace, an
input of the command, or a folder holding what its stage did not write; an output that
cannot be written is refused before the work; a full disk ends a demo-size conversion."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, mount_tmpfs, require_ffcv, run_convert, stage_argv

from pcn.errors import UserError
from pcn.io import OUTPUT_MARKER, FolderOwner, atomic_path, check_output, check_output_folder

require_ffcv()

# numba's dispatcher finaliser raises a harmless KeyError when FFCV's compiled code is collected;
# pycocotools 2.0.x (the demo's COCO masks) uses numpy APIs that numpy 2 warns about
pytestmark = [
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

TINY_DEMO = {"n_classes": 3, "train_per_class": 6, "val_per_class": 2, "n_scenes_train": 12, "n_scenes_val": 10}


def _listing(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256): what a refusal must leave as it was."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "mlflow" not in p.name and "mlartifacts" not in p.parts
    }


def _pcn(work: Path, *argv: str) -> int:
    """``pcn ARGV`` in ``work``, in this process: its exit code."""
    from pcn.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
        mp.delenv("PCN_PIPELINE_RUN_ID", raising=False)
        mp.delenv("DVC_STAGE", raising=False)
        rc = main(list(argv))
    return rc


def _errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if "error" in line.lower() or "Traceback" in line]


@pytest.fixture(scope="module")
def demo_project(tmp_path_factory) -> Path:
    """A project (params.yaml, a .git folder, results) with the tiny demo made and converted
    by the DAG's own commands."""
    work = tmp_path_factory.mktemp("project") / "work"
    (work / ".git").mkdir(parents=True)
    (work / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (work / "results").mkdir()
    (work / "results" / "notes.md").write_text("hours of work\n")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["demo"].update(TINY_DEMO)
    params["data"].update(num_workers=1)
    params["data"]["ffcv"].update(max_resolution=64)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    for name in ("demo_data", "convert"):
        assert _pcn(work, *stage_argv(name, work / "params.yaml")) == 0, name
    assert (work / "data" / "ffcv" / OUTPUT_MARKER).read_text() == "convert\n"
    return work


@pytest.fixture
def project(demo_project, tmp_path) -> Path:
    """A copy of the demo project that a test may break."""
    work = tmp_path / "work"
    shutil.copytree(demo_project, work, symlinks=True)
    return work


# --- refused before anything is replaced -------------------------------------------------------


@pytest.mark.parametrize(
    "out, expected",
    [
        (".", ".: is the workspace {work}; expected an output path inside it"),
        ("..", "..: holds the workspace {work}; expected an output path inside it"),
        ("data", "data: holds data/demo/imagenet/train, an input of this command; expected a path of its own"),
        ("data/demo", "data/demo: holds data/demo/imagenet/train, an input of this command"),
    ],
)
def test_convert_over_the_workspace_or_its_input_is_refused_and_nothing_is_lost(project, capsys, out, expected):
    """`pcn convert --out .` replaced the whole project (.git, params.yaml, results) with the
    .beton files; `--out data` deleted data/demo, the images it had just read."""
    before = _listing(project)
    rc = _pcn(project, "convert", "--out", out, "--metrics", "x.json")
    errors = _errors(capsys)
    assert rc == 2 and len(errors) == 1, errors
    assert errors[0].startswith(f"pcn convert: error: {expected.format(work=project.resolve())}"), errors[0]
    assert _listing(project) == before
    assert not (project / "x.json").exists()


def test_make_demo_over_the_workspace_or_another_stages_output_is_refused(project, capsys):
    real = project / "datasets"  # a real dataset root, laid out as the demo is, without its summary
    (real / "imagenet" / "train").mkdir(parents=True)
    (real / "imagenet" / "train" / "img.JPEG").write_bytes(b"a real image")
    before = _listing(project)
    for out, expected in (
        (".", f".: is the workspace {project.resolve()}"),
        ("data", "data: holds 'demo', which pcn make-demo does not write"),
        ("data/ffcv", "data/ffcv: is pcn convert's output; expected an empty folder or pcn make-demo's own output"),
        ("datasets", "datasets: lacks demo_summary.json, which pcn make-demo writes"),
        ("params.yaml", "params.yaml: is a file; expected pcn make-demo's output folder (or nothing) there"),
    ):
        rc = _pcn(project, "make-demo", "--out", out)
        errors = _errors(capsys)
        assert rc == 2 and len(errors) == 1 and errors[0].startswith(f"pcn make-demo: error: {expected}"), errors
    assert _listing(project) == before


def test_a_folder_holding_a_foreign_file_is_refused(project, capsys):
    (project / "data" / "ffcv" / "notes.txt").write_text("mine")
    before = _listing(project)
    rc = _pcn(project, *stage_argv("convert", project / "params.yaml"))
    errors = _errors(capsys)
    assert rc == 2 and errors == [
        "pcn convert: error: data/ffcv: holds 'notes.txt', which pcn convert does not write; "
        "expected an empty folder or pcn convert's own output"
    ]
    assert _listing(project) == before


def test_an_output_file_over_an_input_file_is_refused(project, capsys):
    """`--metrics params.yaml` replaced the params with the metrics."""
    before = _listing(project)
    rc = _pcn(project, "convert", "--out", "data/ffcv", "--metrics", "params.yaml")
    errors = _errors(capsys)
    assert rc == 2 and errors == [
        "pcn convert: error: params.yaml: is an input of this command; expected an output path of its own"
    ]
    assert _listing(project) == before


def test_the_dag_commands_rerun_over_their_own_outputs_marked_or_not(project, capsys):
    """The stage's own folder is replaced: marked, or written before the marker (only its
    kinds of file; the demo's with its summary), which then gets the marker."""
    (project / "data" / "ffcv" / OUTPUT_MARKER).unlink()  # as written before the marker
    for name in ("demo_data", "convert"):
        assert _pcn(project, *stage_argv(name, project / "params.yaml")) == 0, (name, _errors(capsys))
    assert (project / "data" / "ffcv" / OUTPUT_MARKER).read_text() == "convert\n"
    assert sorted(os.listdir(project / "data" / "ffcv")) == sorted(
        [OUTPUT_MARKER] + [f"{s}.beton{x}" for s in ("train", "val", "v2") for x in ("", ".json")]
    )
    assert not (project / "data" / "demo" / OUTPUT_MARKER).exists()  # its content hash covers every file
    assert _pcn(project, *stage_argv("convert", project / "params.yaml")) == 0


def test_an_output_on_a_read_only_filesystem_is_refused_before_the_work(project, tmp_path, capsys):
    """An output on a read-only filesystem was an OSError traceback after the whole work."""
    ro = tmp_path / "ro"
    ro.mkdir()
    mount_tmpfs(ro, "ro,size=1m")
    try:
        shutil.rmtree(project / "data" / "ffcv")
        rc = _pcn(project, "convert", "--out", "data/ffcv", "--metrics", f"{ro}/metrics/convert.json")
        errors = _errors(capsys)
        assert rc == 2 and errors == [
            f"pcn convert: error: {ro}/metrics/convert.json: cannot be written: {ro} is on a read-only "
            "filesystem; expected a writable folder"
        ]
        assert not (project / "data" / "ffcv").exists(), "the conversion ran before the output was checked"
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


# --- the checks themselves ----------------------------------------------------------------------


def test_a_marked_folder_is_replaced_only_by_its_own_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    convert, other = FolderOwner("convert", ("*.beton",)), FolderOwner("attention", ("*.png",))
    with atomic_path("out", directory=True, owner=convert) as tmp:
        (tmp / "train.beton").write_text("x")
    assert (tmp_path / "out" / OUTPUT_MARKER).read_text() == "convert\n"
    check_output_folder("out", convert)
    with pytest.raises(UserError, match=r"^out: is pcn convert's output; expected an empty folder or pcn attention"):
        check_output_folder("out", other)
    (tmp_path / "empty").mkdir()
    check_output_folder("empty", other)  # an empty folder is anyone's
    check_output_folder("missing", other)


def test_snakemakes_timestamp_in_an_output_folder_is_not_foreign(tmp_path, monkeypatch):
    """Snakemake touches .snakemake_timestamp in each directory output after its job: a rerun
    by hand must still replace the folder (a marked one, and one written before the marker)."""
    monkeypatch.chdir(tmp_path)
    convert = FolderOwner("convert", ("*.beton", "*.beton.json"))
    demo = FolderOwner("make-demo", ("imagenet", "demo_summary.json"), "demo_summary.json")
    for folder, names in (("ffcv", ["train.beton", "train.beton.json"]), ("demo", []), ("marked", [OUTPUT_MARKER])):
        (tmp_path / folder).mkdir()
        for name in (*names, ".snakemake_timestamp"):
            (tmp_path / folder / name).write_text("convert\n")
    check_output_folder("ffcv", convert)
    check_output_folder("marked", convert)
    check_output_folder("demo", demo)  # only the timestamp: as good as empty


def test_atomic_path_checks_again_before_it_replaces(tmp_path, monkeypatch):
    """A folder that gained a foreign file during the work is left as it is."""
    monkeypatch.chdir(tmp_path)
    owner = FolderOwner("convert", ("*.beton",))
    with pytest.raises(UserError, match=r"^out: holds 'notes.txt', which pcn convert does not write"):
        with atomic_path("out", directory=True, owner=owner) as tmp:
            (tmp / "train.beton").write_text("new")
            (tmp_path / "out").mkdir()
            (tmp_path / "out" / "notes.txt").write_text("mine")
    assert os.listdir(tmp_path) == ["out"] and os.listdir(tmp_path / "out") == ["notes.txt"]


def test_any_folder_output_over_the_workspace_is_refused(tmp_path, monkeypatch):
    """Writers that name no owner (the figures, the attention maps) keep the workspace too."""
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    for out in (".", "..", str(tmp_path)):
        with pytest.raises(UserError, match="the workspace"):
            with atomic_path(out, directory=True):
                pass
    assert os.listdir(tmp_path) == ["work"]
    with pytest.raises(UserError, match=r"^data: holds data/demo/x, an input"):
        check_output("data", inputs=["data/demo/x"])
    os.symlink("params.yaml", "link")  # a link to an input is that input
    with pytest.raises(UserError, match=r"^link: is an input"):
        check_output("link", inputs=["params.yaml"])


# --- a full disk at the demo's size ---------------------------------------------------------------


@pytest.mark.slow
def test_a_full_disk_ends_a_demo_size_conversion_in_one_line_within_a_minute(tmp_path):
    """`pcn convert` of 10,000 images with data/ on a 100 MB filesystem printed its one line
    and never exited: a writer died of ENOSPC with more chunks queued than a pipe holds, and
    Python's exit joined the queue's feeder thread, blocked on that pipe, for ever."""
    from conftest import write_tiny_imagefolder

    work = tmp_path / "work"
    data = work / "data"
    data.mkdir(parents=True)
    mount_tmpfs(data, "size=100m")
    try:
        datasets = tmp_path / "datasets"  # the demo's 10,000 training images (and 500 val, 500 v2)
        write_tiny_imagefolder(datasets / "imagenet", classes=10, train_per_class=1000, val_per_class=50, size=64)
        for c in range(10):
            shutil.copytree(datasets / "imagenet" / "val" / f"c{c}", datasets / "imagenetv2-matched-frequency" / str(c))
        (data / "demo").write_bytes(b"\0" * (60 << 20))  # the demo's 60 MB of images beside data/ffcv
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["data"].update(source="real", root=str(datasets), num_workers=2)
        params["data"]["ffcv"].update(max_resolution=64, write_mode="raw")
        (work / "params.yaml").write_text(yaml.safe_dump(params))

        start = time.monotonic()
        try:
            cp = run_convert(work, timeout=180)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"the conversion never ended after a full disk: {str(exc.stderr)[-600:]}")
        seconds = time.monotonic() - start
        errors = [line for line in cp.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
        assert cp.returncode == 2 and len(errors) == 1, cp.stderr[-3000:]
        assert errors[0].startswith("pcn convert: error: ") and "no space left on device" in errors[0], errors[0]
        assert f"{data}/ffcv/train.beton" in errors[0], errors[0]  # the output, not its temporary sibling
        assert seconds < 60, f"a full disk took {seconds:.0f} s to end the conversion"
        assert sorted(os.listdir(data)) == ["demo"], "a temporary file was left"
    finally:
        subprocess.run(["umount", "-l", str(data)], capture_output=True)
