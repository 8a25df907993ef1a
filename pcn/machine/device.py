"""The machine a run computes on: the one device choice and CPU set-up every entry point
uses (:func:`torch_device`, :func:`setup_torch`), and what it ran on, recorded with its metrics.

"Reproducible" here means: on the same machine with the same software, a seed gives the
same numbers bit for bit; on another CPU, or with another torch / oneDNN / MKL, the
floating-point reductions differ and a run is equal within its seed-to-seed noise (the
study's intervals), not bit for bit.  So every stage's metrics name the machine and the
libraries they came from, and the report lists them.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from functools import lru_cache

from pcn.errors import UserError


@lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict[str, str | int | None]:
    """CPU model, logical cores, Python; and torch with its oneDNN, MKL and GPU when this
    process has imported torch (a stage that never did ran no model)."""
    out: dict[str, str | int | None] = {
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        config = torch.__config__.show()
        onednn = re.search(r"MKL-DNN v([\w.]+)", config)
        mkl = re.search(r"Math Kernel Library Version ([\w.-]+)", config)
        out.update(
            torch=str(torch.__version__),  # a plain str: unpickling a TorchVersion imports torch
            onednn=onednn.group(1) if onednn else None,
            mkl=mkl.group(1) if mkl else None,
            gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        )
    return out


def setup_torch(threads: int) -> None:
    """CPU threads, with denormal floats flushed to zero: LayerScale's 1e-6 init makes
    them common and a CPU step 20x slower.  Flush BEFORE setting the thread count: the
    other order kept about half of the slowdown."""
    import torch

    torch.set_flush_denormal(True)
    torch.set_num_threads(threads)


def torch_device(requested: str, local_rank: int = 0):
    """The device this process (DDP rank ``local_rank`` on its node) computes on, for
    ``runtime.device``: ``cuda`` is this rank's GPU (made current) and an error without
    one; ``auto`` is the GPU when one is visible, else the CPU, which it says once."""
    import torch

    if requested != "cpu" and torch.cuda.is_available():
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if requested == "cuda":
        raise UserError("runtime.device is 'cuda' but no CUDA device is visible (set it to auto or cpu)")
    if requested == "auto":
        _say_cpu()
    return torch.device("cpu")


@lru_cache(maxsize=1)
def _say_cpu() -> None:
    print("runtime.device is 'auto' and no CUDA device is visible: running on the CPU", flush=True)
