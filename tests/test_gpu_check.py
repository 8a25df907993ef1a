"""benchmarks/gpu_check.py: its CPU smoke run (--tiny) writes every number the GPU run
reports, with the machine's yardstick beside them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
CPU_ONLY = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_WAIT_POLICY": "PASSIVE"}


def _smoke_run(script: Path, *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(script), *args], env=CPU_ONLY, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_tiny_cpu_run_writes_positive_numbers(tmp_path):
    out = tmp_path / "check.json"
    _smoke_run(SCRIPT, "--tiny", "--train-batch", "4", "--out", str(out))
    doc = json.loads(out.read_text())
    assert {
        "device",
        "device_name",
        "torch",
        "torch_cuda",
        "cpu",
        "threads",
        "tiny",
        "model",
        "sgemm_1thread_gflops",
        "paper",
        "inference",
        "inference_fp32",
        "train",
        "ffcv",
        "seconds",
    } <= set(doc)
    assert (doc["device"], doc["tiny"], doc["model"]) == ("cpu", True, "patchconvnet_demo")
    assert doc["torch"] == torch.__version__
    assert doc["sgemm_1thread_gflops"] > 0 and doc["seconds"] > 0
    for key in ("inference", "inference_fp32"):
        part = doc[key]
        assert (part["batch_size"], part["img_size"], part["precision"]) == (8, 32, "fp32")
        assert part["throughput_img_s"] > 0 and part["peak_mem_mb"] >= 0 and part["mem_method"]
    assert doc["inference"]["channels_last"] and not doc["inference_fp32"]["channels_last"]
    train = doc["train"]
    assert (train["batch_size"], train["precision"]) == (4, "fp32") and train["throughput_img_s"] > 0
    ffcv = doc["ffcv"]
    assert ffcv["images"] == 48 and ffcv["batch_size"] == 4 and ffcv["timed_epochs"] == 2
    assert ffcv["throughput_img_s"] > 0 and ffcv["first_epoch_s"] > 0


def test_full_run_needs_cuda(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)], env=CPU_ONLY, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0 and "--tiny" in proc.stderr and not out.exists()


def test_paper_steps_tiny_run_uses_the_paper_recipe(tmp_path):
    """benchmarks/gpu_paper_steps.py trains with the paper scale's pretrain recipe through the
    pipeline's own loop; its CPU smoke run shows the recipe it took and finite losses."""
    out = tmp_path / "steps.json"
    _smoke_run(SCRIPT.with_name("gpu_paper_steps.py"), "--tiny", "--steps", "6", "--warmup", "2", "--out", str(out))
    doc = json.loads(out.read_text())
    assert (doc["optimizer"], doc["global_batch"], doc["mixup"], doc["cutmix"]) == ("lamb", 2048, 0.8, 1.0)
    assert doc["lr_scaled"] == 0.003 and doc["drop_path"] > 0
    assert doc["steps"] == 6 and doc["timed_steps"] == 3  # 5 gaps between 6 steps, the first 2 left out
    assert doc["images_per_s"] > 0 and doc["step_s_median"] > 0
    assert doc["loss_first"] > 0 and doc["loss_last"] > 0
