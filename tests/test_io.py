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
