"""What every dense-transfer run writes besides its task's own files: the loss curve and
the part of the metrics both tasks share."""

from __future__ import annotations

import csv
import io
import math
import shutil
import time
from pathlib import Path

from pcn.io import write_text
from pcn.transfer.job import TransferJob
from pcn.transfer.loop import LoopResult


def run_summary(job: TransferJob, out_dir: Path, weights, loop: LoopResult, eval_s: float, t_start: float) -> dict:
    """The part of a transfer stage's metrics that both tasks share: files, init, timing."""
    return {
        "checkpoint_file": str(out_dir / "model.pth"),
        "figure": str(out_dir / "qualitative.png"),
        "init": job.init,
        "backbone": job.model,
        "backbone_weights": weights.summary() if weights else None,
        "iters": job.cfg("iters"),
        "resumed_from": loop.resumed_from,
        "final_loss": float(sum(loop.losses[-10:]) / len(loop.losses[-10:])) if loop.losses else None,
        "train_seconds": round(loop.seconds, 1),
        "eval_seconds": round(eval_s, 1),
        "seconds": round(time.perf_counter() - t_start, 1),
    }


def loss_csv(losses: list[float]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "loss"])
    for i, v in enumerate(losses, start=1):
        w.writerow([i, f"{v:.6g}" if math.isfinite(v) else "nan"])
    return buf.getvalue()


def finish_outputs(job: TransferJob, losses: list[float]) -> None:
    """The loss curve (atomically) and removal of the resume state once outputs are in place."""
    write_text(job.plots_path, loss_csv(losses))
    shutil.rmtree(job.work_dir, ignore_errors=True)


def title_panel(ax, title: str) -> None:
    """A qualitative figure's panel: a picture with a title and no ticks."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def save_figure(fig, path: Path) -> None:
    """Write a qualitative figure (tight, 80 dpi) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
