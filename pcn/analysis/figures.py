"""Every figure of the report, drawn from the metrics files (never from typed numbers).

Each figure function takes plain data (rows read from metrics JSON/CSV files) and
returns a matplotlib Figure; :func:`build_figures` reads the files of one pipeline
run, draws what their presence allows and writes PNG + PDF pairs.  A figure whose
inputs are missing at this scale is skipped with a note in the manifest
(``index.json``), never an error.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pcn.analysis.paths import RunPaths
from pcn.config.names import transfer_stage
from pcn.io import read_json

MANIFEST = "index.json"
DPI = 130


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "figure.dpi": DPI, "savefig.bbox": "tight"})
    return plt


def save(fig, out_dir: str | Path, name: str) -> list[str]:
    """``name``.png and ``name``.pdf in ``out_dir`` (no timestamps in the files: reruns are byte-stable)."""
    plt = _plt()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / f"{name}.png", dpi=DPI, metadata={"Software": None})
    fig.savefig(out_dir / f"{name}.pdf", metadata={"CreationDate": None, "ModDate": None})
    plt.close(fig)
    return [f"{name}.png", f"{name}.pdf"]


# --- attention (drawn by the attention stage) ----------------------------------------------


def class_colours(k: int) -> np.ndarray:
    """K distinct RGB colours in [0, 1] (tab10, then tab20)."""
    plt = _plt()
    cmap = plt.get_cmap("tab10" if k <= 10 else "tab20")
    return np.array([cmap(i % cmap.N)[:3] for i in range(k)])


def _normalise(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float32)
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def attention_figure(
    images: np.ndarray, maps: dict[str, np.ndarray], titles: dict[str, str], captions: Sequence[str] = (), n: int = 8
):
    """One row per image: the image, then each map as a heat overlay (the paper's Fig. 1 style)."""
    plt = _plt()
    n = min(n, len(images))
    cols = 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.6 * n), squeeze=False)
    for r in range(n):
        axes[r, 0].imshow(images[r])
        if r < len(captions):
            axes[r, 0].set_ylabel(captions[r], fontsize=7)
        for c, m in enumerate(maps.values(), start=1):
            axes[r, c].imshow(images[r])
            axes[r, c].imshow(_normalise(m[r]), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("image")
    for c, name in enumerate(maps, start=1):
        axes[0, c].set_title(titles.get(name, name), fontsize=8)
    fig.tight_layout(pad=0.3)
    return fig


def multiclass_figure(
    images: np.ndarray,
    maps: np.ndarray,
    class_names: Sequence[str],
    logits: np.ndarray,
    labels: Sequence[int],
    n: int = 8,
    top: int = 3,
):
    """Multi-class tokens: the image, all K maps in one picture (each pixel takes the colour of
    the class whose map is largest there, brightness = that map), then the maps of the ``top``
    highest-scoring classes, each in its class colour."""
    plt = _plt()
    n = min(n, len(images))
    k = maps.shape[1]
    colours = class_colours(k)
    cols = 2 + top
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.6 * n + 0.4), squeeze=False)
    for r in range(n):
        m = np.stack([_normalise(maps[r, j]) for j in range(k)])  # K x H x W, each in [0, 1]
        winner = m.argmax(0)
        strength = m.max(0)
        composite = colours[winner] * strength[..., None]
        img = images[r].astype(np.float32) / 255.0
        axes[r, 0].imshow(images[r])
        axes[r, 0].set_ylabel(f"label: {class_names[labels[r]]}", fontsize=7)
        axes[r, 1].imshow(0.35 * img + 0.65 * composite)
        order = np.argsort(-logits[r])[:top]
        for j, cls in enumerate(order):
            tint = np.ones((*m.shape[1:], 3)) * colours[cls] * m[cls][..., None]
            axes[r, 2 + j].imshow(0.35 * img + 0.65 * tint)
            axes[r, 2 + j].set_title(class_names[cls], fontsize=7, color=colours[cls])
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("image")
    axes[0, 1].set_title("all class maps", fontsize=8)
    handles = [plt.Line2D([], [], marker="s", ls="", color=colours[j], label=class_names[j]) for j in range(k)]
    fig.legend(handles=handles, loc="lower center", ncol=min(k, 5), fontsize=7, frameon=False)
    fig.tight_layout(pad=0.3, rect=(0, 0.05 if n > 2 else 0.12, 1, 1))
    return fig


def localisation_figure(table: dict[str, dict[str, Any]], titles: dict[str, str] | None = None):
    """Pointing game and IoU per method, as grouped bars."""
    plt = _plt()
    titles = titles or {}
    methods = [m for m, v in table.items() if isinstance(v, dict) and "pointing_game" in v]
    keys = [("pointing_game", "pointing game (boxes)"), ("iou", "IoU with the boxes")]
    x = np.arange(len(methods))
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(1.2 * len(methods) + 2, 3.2))
    for i, (key, label) in enumerate(keys):
        vals = [table[m].get(key, np.nan) for m in methods]
        ax.bar(x + (i - (len(keys) - 1) / 2) * width, vals, width, label=label)
    ax.set_xticks(x, [titles.get(m, m) for m in methods], rotation=20, ha="right")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    n = max((table[m].get("n", 0) for m in methods), default=0)
    ax.set_title(f"Localisation of the labelled object ({n} val images)")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


# --- from metrics files --------------------------------------------------------------------


def read_csv(path: str | Path) -> list[dict[str, float]]:
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k: float(v) if v not in ("", None) else np.nan for k, v in row.items()})
    return rows


def training_curves(curves: dict[str, list[dict[str, float]]]):
    """Train loss and val top-1 per epoch, one line per stage (pretrain, finetune)."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3))
    offset = 0.0
    for name, rows in curves.items():
        ep = np.array([r.get("epoch", np.nan) for r in rows]) + offset
        a.plot(ep, [r.get("train_loss", np.nan) for r in rows], marker="o", ms=3, label=name)
        b.plot(ep, [r.get("val_top1", np.nan) for r in rows], marker="o", ms=3, label=name)
        if len(ep):
            offset = float(np.nanmax(ep))
    a.set(xlabel="epoch (cumulative)", ylabel="train loss", title="Training loss")
    b.set(xlabel="epoch (cumulative)", ylabel="val top-1 (%)", title="Validation top-1")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def ablation_chart(summary: dict[str, Any], directions: dict[str, str] | None = None):
    """Mean top-1 per variant with error bars (std over seeds; none for a single seed), the
    baseline as a reference line; each variant labelled with the paper's direction."""
    plt = _plt()
    directions = directions or {}
    rows = summary["ablations"]
    names = list(rows)
    means = [rows[n]["mean"] for n in names]
    stds = [rows[n]["std"] or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(1.0 * len(names) + 2.5, 3.4))
    colours = ["tab:gray" if n == "baseline" else "tab:blue" for n in names]
    ax.bar(range(len(names)), means, yerr=stds, capsize=4, color=colours)
    for i, n in enumerate(names):
        for v in rows[n].get("values", []):
            ax.plot(i, v, "k.", ms=4)
    base = rows.get("baseline", {}).get("mean")
    if base is not None:
        ax.axhline(base, color="tab:gray", ls="--", lw=1)
    labels = [f"{n}\n(paper: {directions[n]})" if n in directions else n for n in names]
    ax.set_xticks(range(len(names)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("val top-1 (%)")
    seeds = summary.get("seeds", [])
    tag = "" if summary.get("evidence") else " - smoke run, too few seeds for a verdict"
    ax.set_title(f"Ablations, {len(seeds)} seed(s), mean +/- std{tag}", fontsize=9)
    fig.tight_layout()
    return fig


def depth_width_figure(grid: list[dict[str, Any]]):
    """Top-1 against params, GMACs, throughput and peak memory over the depth x width grid."""
    plt = _plt()
    axes_keys = [
        ("params_m", "params (M)"),
        ("gmacs", "GMACs"),
        ("throughput", "throughput (im/s)"),
        ("peak_mem_mb", "peak memory (MB)"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3))
    widths = sorted({g["width"] for g in grid})
    for ax, (key, label) in zip(axes, axes_keys):
        for w in widths:
            pts = sorted((g for g in grid if g["width"] == w and g.get(key) is not None), key=lambda g: g["depth"])
            if not pts:
                continue
            ax.plot([g[key] for g in pts], [g["top1"] for g in pts], marker="o", label=f"width {w}")
            for g in pts:
                ax.annotate(
                    f"d{g['depth']}", (g[key], g["top1"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
        ax.set(xlabel=label, ylabel="val top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(frameon=False, fontsize=7)
    size = grid[0].get("img_size") if grid else None
    fig.suptitle(f"Depth x width grid (measured at {size} px)" if size else "Depth x width grid", fontsize=10)
    fig.tight_layout()
    return fig


def complexity_figure(rows: list[dict[str, Any]], device: str = "", img_size: int = 224):
    """Params against GMACs of every model in the complexity table at one resolution
    (the architecture alone: comparable with the paper at any scale)."""
    plt = _plt()
    pts = [r for r in rows if r.get("img_size") == img_size and r.get("params_m") is not None]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for r in pts:
        pcn = str(r["model"]).startswith("patchconvnet")
        ax.scatter(r["gmacs"], r["params_m"], color="tab:red" if pcn else "tab:blue", s=25)
        ax.annotate(r["model"], (r["gmacs"], r["params_m"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel=f"GMACs at {img_size} px", ylabel="params (M)", title="Model complexity (PatchConvNet in red)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def transfer_figure(results: dict[str, dict[str, dict[str, Any]]]):
    """Pretrained vs scratch trunks on the dense tasks: {task: {init: metrics}}."""
    plt = _plt()
    panels = [
        (task, key)
        for task, key in (("segmentation", "mIoU"), ("detection", "bbox_AP"), ("detection", "segm_AP"))
        if task in results
    ]
    panels = [(t, k) for t, k in panels if any(k in m for m in results[t].values())]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3), squeeze=False)
    for ax, (task, key) in zip(axes[0], panels):
        inits = [i for i in ("pretrained", "scratch") if i in results[task] and key in results[task][i]]
        vals = [results[task][i][key] for i in inits]
        ax.bar(inits, vals, color=["tab:green", "tab:gray"][: len(inits)])
        for i, v in enumerate(vals):
            ax.annotate(f"{v:.1f}", (i, v), ha="center", xytext=(0, 2), textcoords="offset points", fontsize=8)
        ax.set(title=f"{task}: {key}", ylabel=key)
    fig.tight_layout()
    return fig


def compose_images(paths: Sequence[Path], titles: Sequence[str]):
    """Figures written by other stages, side by side."""
    plt = _plt()
    from PIL import Image

    fig, axes = plt.subplots(1, len(paths), figsize=(5 * len(paths), 4), squeeze=False)
    for ax, p, t in zip(axes[0], paths, titles):
        ax.imshow(np.asarray(Image.open(p).convert("RGB")))
        ax.set_title(t, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


# --- the figures stage ---------------------------------------------------------------------


def _load(path: Path) -> Any:
    return read_json(path)


INITS = ("pretrained", "scratch")  # a dense task's trunks: the DAG's and a random one


def _per_init(paths: RunPaths, task: str) -> dict[str, dict]:
    out = {}
    for init in INITS:
        p = paths.root / paths.metric(transfer_stage(task, init))
        if p.is_file():
            out[init] = _load(p)
    return out


def paper_directions(path: str | Path) -> dict[str, str]:
    """ablation -> the paper's direction for it (paper/numbers.yaml), as the ablation chart labels it."""
    import yaml

    p = Path(path)
    if not p.is_file():
        return {}
    doc = yaml.safe_load(p.read_text()) or {}
    # the chart's label: the direction, and the paper's condition on it in a few words
    return {
        k: ", ".join(filter(None, (v.get("direction"), v.get("when"))))
        for k, v in (doc.get("ablations") or {}).items()
        if isinstance(v, dict)
    }


def build_figures(paths: RunPaths, out_dir: str | Path, directions: dict[str, str] | None = None) -> dict[str, Any]:
    """Draw every figure whose inputs exist in the run at ``paths`` into ``out_dir``.

    Returns the manifest written to ``out_dir/index.json``:
    ``{"figures": {name: {"files": [...], "sources": [...], "title": str}}, "skipped": {name: reason}}``.
    """
    root, out_dir = paths.root, Path(out_dir)
    figures: dict[str, Any] = {}
    skipped: dict[str, str] = {}

    def attempt(name: str, title: str, sources: list[Path], draw: Callable[[], Any]) -> None:
        missing = [_rel(s, root) for s in sources if not s.exists()]
        if missing:
            skipped[name] = f"missing {', '.join(missing)} (not produced at this scale or not run yet)"
            return
        try:
            fig = draw()
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            skipped[name] = f"inputs present but incomplete ({exc.__class__.__name__}: {exc})"
            return
        files = fig if isinstance(fig, list) else save(fig, out_dir, name)
        figures[name] = {"title": title, "files": files, "sources": [_rel(s, root) for s in sources]}

    plots = [paths.at("plots", f"{s}.csv") for s in ("pretrain", "finetune")]
    attempt(
        "training_curves",
        "Training curves (pretrain, then fine-tune)",
        [p for p in plots if p.exists()] or plots,
        lambda: training_curves({p.stem: read_csv(p) for p in plots if p.exists()}),
    )
    abl = root / paths.metric("ablations")
    attempt("ablations", "Ablations against the baseline", [abl], lambda: ablation_chart(_load(abl), directions))
    attempt(
        "depth_width",
        "Accuracy against cost over the depth x width grid",
        [abl],
        lambda: depth_width_figure(_load(abl)["depth_width"]),
    )
    cx = root / paths.metric("complexity")
    attempt(
        "complexity",
        "Params and GMACs of the model zoo and its peers (224 px)",
        [cx],
        lambda: complexity_figure(_load(cx)["rows"], _load(cx).get("device", "")),
    )

    att_dir = paths.at("results", "attention")
    for name, title in (
        ("attention_single", "Attention map of the single class token"),
        ("attention_multiclass", "Per-class attention maps of the multi-class model"),
        ("localisation", "Localisation scores of the maps"),
    ):
        src = att_dir / f"{name}.png"
        attempt(name, title, [src], lambda name=name: _copy_pair(att_dir, out_dir, name))

    transfer = {t: _per_init(paths, t) for t in ("segmentation", "detection")}
    transfer = {t: v for t, v in transfer.items() if v}
    srcs = [
        root / paths.metric(transfer_stage(t, init))
        for t in transfer
        for init in INITS
        if (root / paths.metric(transfer_stage(t, init))).exists()
    ] or [root / paths.metric("segmentation")]
    attempt("transfer", "Dense-task transfer: pretrained vs scratch trunk", srcs, lambda: transfer_figure(transfer))
    for task in ("segmentation", "detection"):
        pngs = []
        for init in INITS:
            d = paths.at("results", transfer_stage(task, init))
            found = sorted(d.glob("*.png")) if d.is_dir() else []
            if found:
                pngs.append((found[0], f"{init} trunk"))
        srcs = [p for p, _ in pngs] or [paths.at("results", task)]
        attempt(
            f"{task}_examples",
            f"{task.capitalize()} examples",
            srcs,
            lambda pngs=pngs: compose_images([p for p, _ in pngs], [t for _, t in pngs]),
        )

    manifest = {"figures": figures, "skipped": skipped}
    (out_dir).mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _copy_pair(src_dir: Path, out_dir: Path, name: str) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for ext in ("png", "pdf"):
        src = src_dir / f"{name}.{ext}"
        if src.exists():
            shutil.copyfile(src, out_dir / src.name)
            files.append(src.name)
    return files
