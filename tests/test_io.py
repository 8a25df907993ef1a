"""Atomic output: a killed writer's leftovers are removed by the next writer, a live one's kept."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from pcn.io import atomic_path


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("directory", [True, False])
def test_leftovers_of_a_killed_writer_are_removed_by_the_next(tmp_path, directory):
    host = socket.gethostname()
    dead = tmp_path / f".ffcv.{host}-{_dead_pid()}-abc123.tmp"
    live = tmp_path / f".ffcv.{host}-{os.getppid()}-def456.tmp"  # a writer still running
    other_host = tmp_path / ".ffcv.elsewhere-1-ghi789.tmp"  # a shared file system: not ours to judge
    for d in (dead, live, other_host):
        d.mkdir()
        (d / "train.beton").write_bytes(b"x" * 1024)
    with atomic_path(tmp_path / "ffcv", directory=directory) as out:
        (out / "a" if directory else out).write_text("done")
    assert not dead.exists() and live.exists() and other_host.exists()
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ffcv."))
    assert leftovers == sorted([live.name, other_host.name])


def test_a_failed_write_leaves_the_previous_output(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "good" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_linked_output_folder_stays_a_link_and_is_written_at_its_target(tmp_path, monkeypatch):
    """data/ffcv linked to scratch: the new folder replaces the target, the link stays, and
    nothing is written on the project's side (no real folder, no .ffcv.old)."""
    monkeypatch.chdir(tmp_path)
    scratch = tmp_path / "scratch"
    (scratch / "ffcv").mkdir(parents=True)
    (scratch / "ffcv" / "train.beton").write_text("old")
    (tmp_path / "data").mkdir()
    os.symlink(scratch / "ffcv", "data/ffcv")
    for _ in range(2):  # a second run replaces the first
        with atomic_path("data/ffcv", directory=True) as out:
            assert out.parent == scratch and out.stat().st_dev == scratch.stat().st_dev
            (out / "train.beton").write_text("new")
    assert os.path.islink("data/ffcv") and os.readlink("data/ffcv") == str(scratch / "ffcv")
    assert (scratch / "ffcv" / "train.beton").read_text() == "new"
    assert sorted(os.listdir("data")) == ["ffcv"] and sorted(os.listdir(scratch)) == ["ffcv"]


def test_files_under_a_linked_results_folder_are_written_at_its_target(tmp_path, monkeypatch):
    from pcn.io import write_json

    monkeypatch.chdir(tmp_path)
    scratch = tmp_path / "scratch" / "results"
    scratch.mkdir(parents=True)
    os.symlink(scratch, "results")
    (tmp_path / "elsewhere.json").write_text("{}")
    os.makedirs("metrics")
    os.symlink(tmp_path / "elsewhere.json", "metrics/eval.json")  # a linked file stays linked too
    with atomic_path("results/finetune/model.pth") as tmp:
        assert tmp.parent.parent == scratch / "finetune"
        tmp.write_bytes(b"weights")
    write_json("metrics/eval.json", {"top1": 1.0})
    assert os.path.islink("results") and (scratch / "finetune" / "model.pth").read_bytes() == b"weights"
    assert os.listdir(scratch / "finetune") == ["model.pth"]
    assert os.path.islink("metrics/eval.json") and '"top1"' in (tmp_path / "elsewhere.json").read_text()


def test_a_full_disk_is_one_line_naming_the_output_and_leaves_the_old_file(small_tmpfs):
    """Metrics (an OSError) and a checkpoint (torch.save hides the errno in a RuntimeError)."""
    import torch

    from pcn.io import DiskFull, write_json

    metrics = small_tmpfs / "metrics" / "eval.json"
    write_json(metrics, {"top1": 1.0})
    with pytest.raises(OSError), open(small_tmpfs / "filler", "wb") as f:
        while True:
            f.write(b"\0" * (1 << 16))
    (small_tmpfs / "filler").write_bytes(b"\0" * ((1 << 21) - (64 << 10)))  # 64 KiB left, less the metrics
    with pytest.raises(DiskFull, match=rf"^{metrics}: no space left on device \(it needs more than"):
        write_json(metrics, {"top1": 2.0, "rows": ["x" * 100] * 1000})
    assert metrics.read_text() == '{\n  "top1": 1.0\n}\n'
    with pytest.raises(DiskFull, match="model.pth: no space left on device"):
        with atomic_path(small_tmpfs / "model.pth") as tmp:
            torch.save({"w": torch.zeros(1 << 16)}, tmp)
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler", "metrics"]
    assert os.listdir(metrics.parent) == ["eval.json"]
