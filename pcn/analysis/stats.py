"""Seeds -> means, standard deviations, intervals of differences, and verdicts.

A difference is called better or worse only when its 95% interval (Welch's t)
excludes zero; with fewer than two seeds on either side nothing is called at all:
those rows are smoke runs, never evidence.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean, stdev

from pcn.config.names import BASELINE_VARIANT, GRID_FOLDERS, grid_run_name, point_name

MIN_SEEDS_FOR_VERDICT = 2


def describe(values: list[float]) -> dict:
    return {
        "n": len(values),
        "values": values,
        "mean": mean(values) if values else None,
        "std": stdev(values) if len(values) > 1 else None,
    }


def difference(a: list[float], b: list[float], level: float = 0.95) -> dict:
    """mean(a) - mean(b) with a Welch t interval (unequal variances) and a verdict in words."""
    diff = mean(a) - mean(b)
    if min(len(a), len(b)) < MIN_SEEDS_FOR_VERDICT:
        return {"diff": diff, "ci95": None, "verdict": "not resolved (single seed: smoke run)"}
    if stdev(a) == stdev(b) == 0:
        lo = hi = diff  # identical seeds on both sides: scipy's interval would be nan
    else:
        from scipy.stats import ttest_ind

        ci = ttest_ind(a, b, equal_var=False).confidence_interval(confidence_level=level)
        lo, hi = float(ci.low), float(ci.high)
    verdict = "better" if lo > 0 else "worse" if hi < 0 else "within noise"
    return {"diff": diff, "ci95": [lo, hi], "verdict": verdict}


def _top1(path: Path) -> float:
    return float(json.loads(path.read_text())["top1"])


def _group(metrics_dir: Path, study: str, names, seeds) -> dict[str, list[float]]:
    folder = metrics_dir / GRID_FOLDERS[study]
    return {n: [_top1(folder / f"{grid_run_name(n, s)}.json") for s in seeds] for n in names}


def compare(groups: dict[str, list[float]], reference: str) -> dict:
    out = {}
    for name, values in groups.items():
        row = describe(values)
        if name != reference:
            row["vs_" + reference] = difference(values, groups[reference])
        out[name] = row
    return out


# The groups of metrics/ablations.json and the comparison (GRID_STUDIES name) each holds.
RECIPE_OF_GROUP = {
    "ablations": "ablation",
    "resnet": "resnet_pool",
    "multiclass": "multiclass",
    "depth_width": "depth_width",
}


def recipe(cfg) -> dict:
    return {
        "epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "img_size": cfg.img_size,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
    }


def summarize_experiments(params, metrics_dir: Path) -> dict:
    exp = params.experiments
    seeds = exp.seeds
    ablations = compare(_group(metrics_dir, "ablation", exp.variants, seeds), BASELINE_VARIANT)
    resnet = compare(_group(metrics_dir, "resnet_pool", exp.resnet, seeds), "avg")
    multi = compare(_group(metrics_dir, "multiclass", ["scratch", "finetuned"], seeds), "scratch")
    grid = []
    for w, d in exp.depth_width:
        point = metrics_dir / GRID_FOLDERS["depth_width"] / f"{grid_run_name(point_name(w, d))}.json"
        m = json.loads(point.read_text())
        grid.append(
            {
                k: m.get(k)
                for k in ("width", "depth", "top1", "params_m", "gmacs", "throughput", "peak_mem_mb", "img_size")
            }
        )
    return {
        "scale": params.scale,
        "seeds": seeds,
        # each comparison's recipe (experiments.train with its train_by_study changes), for the report
        "recipes": {group: recipe(exp.train_for(study)) for group, study in RECIPE_OF_GROUP.items()},
        "evidence": len(seeds) >= 3,
        "note": (
            "at least 3 seeds per comparison: differences come with 95% intervals"
            if len(seeds) >= 3
            else "smoke run: too few seeds for verdicts; run the study scale for evidence"
        ),
        "baseline_std": ablations["baseline"]["std"],
        "ablations": ablations,
        "resnet": resnet,
        "multiclass": multi,
        "depth_width": grid,
    }


def grid_plot_rows(summary: dict) -> tuple[list[dict], list[dict]]:
    """The grid's two plots from a summary: every run's top-1 by comparison and variant
    (one row per seed), and the depth x width points."""
    runs = []
    for group in ("ablations", "resnet", "multiclass"):
        for variant, row in summary[group].items():
            for seed, top1 in zip(summary["seeds"], row["values"], strict=True):
                runs.append({"variant": f"{group}/{variant}", "seed": seed, "top1": top1})
    grid = [{k: p[k] for k in ("width", "depth", "top1", "params_m", "gmacs")} for p in summary["depth_width"]]
    return runs, grid
