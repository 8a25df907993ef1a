"""Conversion of image folders to FFCV .beton files (pcn.data.ffcv_io)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require_ffcv, run_convert
from PIL import Image

require_ffcv()  # under CI=true a missing FFCV fails the module; elsewhere it is skipped

from pcn.data.ffcv_io import check_metadata, convert_imagefolder, read_metadata
from pcn.data.folders import scan_folder
from pcn.errors import DatasetError

# numba's dispatcher finaliser raises a harmless KeyError when FFCV's compiled
# code is garbage-collected.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

CONVERT = {
    "max_resolution": 64,
    "jpeg_quality": 90,
    "compress_probability": 0.5,
    "write_mode": "raw",
    "max_bad_fraction": 0.0,
    "num_workers": 2,
    "progress": False,
}


def make_folder(root: Path, classes, per_class: int, size=(24, 20), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in classes:
        d = root / str(c)
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i:04d}.jpg", quality=90)
    return root


def beton_labels(path: Path) -> list[int]:
    from ffcv.reader import Reader

    return [int(x) for x in Reader(str(path)).metadata["f1"]]


def test_converts_1000_images_with_a_progress_bar(tmp_path, capfd):
    src = make_folder(tmp_path / "src", [f"c{i}" for i in range(4)], 250, size=(16, 16))
    dst = tmp_path / "out.beton"
    metrics = convert_imagefolder(src, dst, **{**CONVERT, "progress": True})
    err = capfd.readouterr().err
    assert "1000/1000" in err and "img/s" in err, err[-500:]
    assert metrics["n_images"] == 1000 and metrics["n_skipped"] == 0 and metrics["n_classes"] == 4
    assert metrics["images_per_s"] > 0 and metrics["seconds"] > 0
    assert dst.is_file()
    meta = read_metadata(dst)
    assert meta["num_samples"] == 1000 and meta["class_names"] == [
        "c0",
        "c1",
        "c2",
        "c3",
    ]
    assert meta["source_hash"] == metrics["source_hash"]
    assert beton_labels(dst) == [i // 250 for i in range(1000)]
    assert not list(tmp_path.glob(".*.tmp"))


def test_corrupt_and_empty_files_are_skipped_and_named(tmp_path, caplog):
    src = make_folder(tmp_path / "src", ["a", "b"], 10)
    (src / "a" / "empty.jpg").write_bytes(b"")
    good = (src / "b" / "0000.jpg").read_bytes()
    (src / "b" / "corrupt.jpg").write_bytes(good[: len(good) // 3])  # truncated JPEG
    metrics = convert_imagefolder(src, tmp_path / "o.beton", **{**CONVERT, "max_bad_fraction": 0.1})
    skipped = [r.getMessage() for r in caplog.records if "skipping unreadable image" in r.getMessage()]
    assert len(skipped) == 2 and "empty.jpg" in " ".join(skipped) and "corrupt.jpg" in " ".join(skipped)
    assert metrics["n_skipped"] == 2 and metrics["n_images"] == 20
    assert sorted(metrics["skipped_files"]) == ["a/empty.jpg", "b/corrupt.jpg"]
    assert read_metadata(tmp_path / "o.beton")["num_samples"] == 20


def test_too_many_bad_images_is_an_error(tmp_path, caplog):
    src = make_folder(tmp_path / "src", ["a"], 9)
    (src / "a" / "bad.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DatasetError, match=r"1 of 10 images.*10\.00%.*max_bad_fraction = 0\.05"):
        convert_imagefolder(src, tmp_path / "o.beton", **{**CONVERT, "max_bad_fraction": 0.05})
    assert "bad.jpg" in caplog.text
    assert not (tmp_path / "o.beton").exists()


def test_failure_mid_write_leaves_no_file(tmp_path, monkeypatch):
    from ffcv.writer import DatasetWriter

    src = make_folder(tmp_path / "src", ["a", "b"], 5)

    def broken(self, dataset, **kwargs):
        Path(self.fname).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(DatasetWriter, "from_indexed_dataset", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_imagefolder(src, tmp_path / "o.beton", **CONVERT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.slow
def test_killed_conversion_leaves_no_beton(tmp_path):
    src = make_folder(tmp_path / "src", [f"c{i}" for i in range(4)], 400, size=(48, 48))
    dst = tmp_path / "o.beton"
    code = (
        "import sys; from pcn.data.ffcv_io import convert_imagefolder as c; "
        "c(sys.argv[1], sys.argv[2], max_resolution=64, jpeg_quality=90, compress_probability=0.5, "
        "write_mode='jpg', max_bad_fraction=0.0, num_workers=1, progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(src), str(dst)], start_new_session=True)
    try:
        deadline = time.time() + 60
        while not list(tmp_path.glob(".o.beton.*.tmp")):  # the writer has started
            assert proc.poll() is None, "conversion ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not dst.exists()
    # The next conversion clears the dead one's temporary file and completes.
    convert_imagefolder(src, dst, **{**CONVERT, "num_workers": 1})
    assert dst.is_file() and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    "setup, expected",
    [
        (lambda root: None, "no such directory"),
        (lambda root: root.write_text("x"), "not a directory"),
        (lambda root: root.mkdir(), "no class subfolders"),
        (
            lambda root: (root.mkdir(), (root / "a.jpg").write_bytes(b"x")),
            "no class subfolders",
        ),
        (
            lambda root: (
                (root / "a").mkdir(parents=True),
                (root / "a" / "notes.txt").write_text("x"),
            ),
            "no images",
        ),
    ],
)
def test_wrong_folder_is_a_clear_error(tmp_path, setup, expected):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DatasetError, match=expected) as info:
        convert_imagefolder(root, tmp_path / "o.beton", **CONVERT)
    assert str(root) in str(info.value)


def test_imagenet_v2_layout_labels_by_integer(tmp_path):
    names = [str(i) for i in range(11)]  # lexicographic order would be 0, 1, 10, 2, ...
    src = make_folder(tmp_path / "src", names, 2)
    v2 = scan_folder(src, "imagenet_v2")
    assert v2.class_names == names
    assert {rel.split("/")[0]: label for rel, label in v2.samples} == {n: int(n) for n in names}
    assert scan_folder(src, "imagefolder").class_names[:4] == ["0", "1", "10", "2"]
    dst = tmp_path / "v2.beton"
    convert_imagefolder(src, dst, **CONVERT, layout="imagenet_v2")
    assert beton_labels(dst) == [i // 2 for i in range(22)]
    assert read_metadata(dst)["layout"] == "imagenet_v2"
    (src / "x").mkdir()
    with pytest.raises(DatasetError, match="not an integer"):
        scan_folder(src, "imagenet_v2")


def test_sidecar_mismatch_is_refused(tmp_path):
    from pcn.data.loaders import build_loader

    a = tmp_path / "a.beton"
    b = tmp_path / "b.beton"
    convert_imagefolder(make_folder(tmp_path / "A", ["x", "y"], 3), a, **CONVERT)
    convert_imagefolder(make_folder(tmp_path / "B", ["x", "y"], 3, seed=1), b, **CONVERT)
    assert check_metadata(a, ["x", "y"])["num_samples"] == 6

    def load(path, classes=None):
        return build_loader(
            beton=path,
            folder=None,
            kind="ffcv",
            train=False,
            img_size=16,
            batch_size=2,
            num_workers=1,
            seed=0,
            expected_classes=classes,
        )

    with pytest.raises(
        DatasetError,
        match=r"a\.beton: class list differs from train: missing z \(1 of 2\); extra y \(1 not among the 2\)$",
    ):
        load(a, ["x", "z"])
    side_a = json.loads((tmp_path / "a.beton.json").read_text())
    # Another dataset's sidecar (same count, other images): fingerprint differs.
    (tmp_path / "a.beton.json").write_text((tmp_path / "b.beton.json").read_text())
    with pytest.raises(DatasetError, match="fingerprint"):
        load(a)
    (tmp_path / "a.beton.json").write_text(json.dumps({**side_a, "num_samples": 7}))
    with pytest.raises(DatasetError, match="holds 6 samples but its sidecar says 7"):
        load(a)
    (tmp_path / "a.beton.json").unlink()
    with pytest.raises(DatasetError, match="sidecar missing"):
        load(a)


def test_proportion_mode_stores_the_same_beton_content_every_time(tmp_path):
    """Half JPEG, half raw, chosen per image from its pixels: two conversions, from
    processes whose global numpy RNG differ (ffcv draws from it in its writer
    workers), store the same mode and bytes for every sample, so training
    downstream is repeatable."""
    from ffcv.reader import Reader

    src = make_folder(tmp_path / "src", ["a", "b", "c"], 40, size=(16, 16))
    stored = []
    for state, name in enumerate(("one", "two")):
        np.random.seed(state)  # what a fresh process has: some state or other
        dst = tmp_path / f"{name}.beton"
        metrics = convert_imagefolder(src, dst, **{**CONVERT, "write_mode": "proportion"})
        reader = Reader(str(dst))
        fields = reader.metadata["f0"]
        size = {int(r["ptr"]): int(r["size"]) for r in reader.alloc_table}
        data = np.memmap(dst, dtype=np.uint8, mode="r")
        blobs = [bytes(data[p : p + size[p]]) for p in map(int, fields["data_ptr"])]
        stored.append((fields["mode"].tolist(), blobs))
    modes = stored[0][0]
    assert 0.25 < sum(modes) / len(modes) < 0.75, "about half JPEG"
    assert metrics["jpeg_fraction"] == pytest.approx(modes.count(0) / len(modes))  # ffcv: jpg 0, raw 1
    assert stored[0] == stored[1]


def test_a_killed_conversion_leaves_no_worker_behind(tmp_path):
    """SIGKILL to `convert` (nothing of ours runs then) still ends its forked writers."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import write_tiny_imagefolder

    # 8,000 images: the writers are still busy (and, orphaned, would block) when the kill comes
    src = write_tiny_imagefolder(tmp_path / "src", classes=4, train_per_class=2000, val_per_class=1, size=64)
    (tmp_path / "out").mkdir()
    conv = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "from pcn.data.ffcv_io import convert_imagefolder\n"
                f"convert_imagefolder({str(src / 'train')!r}, {str(tmp_path / 'out' / 'train.beton')!r}, "
                "max_resolution=64, jpeg_quality=90, compress_probability=0.0, write_mode='raw', "
                "max_bad_fraction=0.0, num_workers=2, progress=False)"
            ),
        ]
    )

    def children() -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(conv.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    deadline = time.monotonic() + 120
    # kill while ffcv's writers run: its temporary .beton exists (after the verify pass)
    while not any((tmp_path / "out").iterdir()) and conv.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    workers = children()
    assert conv.poll() is None and len(workers) >= 2, "the conversion finished before it could be killed"
    conv.send_signal(signal.SIGKILL)
    conv.wait()
    time.sleep(3)  # unfixed, the writers and the resource tracker were still there minutes later

    def running(pid: int) -> bool:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"

    assert not [p for p in workers if running(p)]


def test_a_full_disk_ends_convert_in_one_line_with_no_temp_file(tmp_path, small_tmpfs):
    """data/ffcv linked to a 2 MiB filesystem that the .beton files overflow: an FFCV worker
    dies of ENOSPC; `pcn convert` must end (not wait for it for ever) in one line naming
    the output, leave no temporary file, keep the link and end its MLflow run FAILED."""
    import shutil

    import mlflow
    import yaml
    from conftest import ROOT, write_tiny_imagefolder

    data = tmp_path / "datasets"
    write_tiny_imagefolder(data / "imagenet", classes=3, train_per_class=120, val_per_class=4, size=64)
    for c in range(3):  # ImageNet-v2's layout: class folders by label
        shutil.copytree(data / "imagenet" / "val" / f"c{c}", data / "imagenetv2-matched-frequency" / str(c))
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (small_tmpfs / "ffcv").mkdir()  # a folder on scratch, as on a cluster
    os.symlink(small_tmpfs / "ffcv", work / "data" / "ffcv")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source="real", root=str(data), num_workers=2)
    params["data"]["ffcv"].update(max_resolution=64, write_mode="raw")
    (work / "params.yaml").write_text(yaml.safe_dump(params))

    start = time.monotonic()
    cp = run_convert(work, timeout=120)
    seconds = time.monotonic() - start
    assert seconds < 60, f"a full disk took {seconds:.0f} s to end the conversion"
    errors = [line for line in cp.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert cp.returncode == 2 and len(errors) == 1, cp.stderr[-3000:]
    assert errors[0].startswith("pcn convert: error: ") and "no space left on device" in errors[0]
    assert str(small_tmpfs) in errors[0] and "MB free there" in errors[0], errors[0]
    assert os.path.islink(work / "data" / "ffcv") and os.listdir(small_tmpfs) == ["ffcv"]  # no temp file
    assert sorted(os.listdir(work / "data")) == ["ffcv"]
    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(params["tracking"]["experiment"]).experiment_id])
    assert [(r.info.run_name, r.info.status) for r in runs if r.info.run_name == "convert"] == [("convert", "FAILED")]
