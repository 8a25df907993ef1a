"""Seeds -> means, standard deviations, intervals of differences, and verdicts.

Each difference mean(a) - mean(b) gets one verdict:

* ``better`` / ``worse``: its 95% interval excludes 0 (a two-sided test at 5%);
* ``equivalent``: otherwise, when its 90% interval lies inside ±margin
  (``experiments.equivalence_margin``, top-1 points): the two one-sided tests (TOST) at 5%
  each reject "the difference is at most -margin" and "at least +margin";
* ``inconclusive``: neither: the seeds can tell neither a difference nor an equivalence.
  Its ``mdd`` says how large a difference they would have detected;
* ``not resolved (...)``: fewer than ``MIN_SEEDS_FOR_VERDICT`` (3) seeds on either side
  (a smoke run, never evidence), or no seed-to-seed variance on either side (every seed of
  both gave the same number: an interval of width zero would call any non-zero difference
  better or worse).  The words in brackets say which.

A difference that is real but inside the margin is called better or worse (the first rule
wins); its interval shows that it lies within ±margin.

Zero variance on one side only (every seed of one variant gave the same top-1, e.g. a
collapsed run stuck at chance) is resolved: Welch's standard error then comes from the
other side alone, sqrt(s_a^2 / n_a), and its Welch-Satterthwaite degrees of freedom
reduce to n_a - 1, the one-sample t interval around the constant side; paired, the
per-seed differences vary exactly as the other side does, which gives the same interval.

Paired or not.  A seed fixes a grid run's data order and augmentation draws (pcn.data.order:
the same seed visits the same images in the same order in every variant; the RNGs are
seeded with it before the model is built, though the init itself differs with the
architecture).  Every comparison of ``metrics/ablations.json`` runs the same seeds on both
sides, so it is a paired design: a lucky data order lifts both sides of a pair.  Such
differences are read with a paired t interval on the per-seed differences (``test``:
"paired t", n - 1 degrees of freedom); Welch's t (``test``: "welch") is for unpaired
samples (other seeds, or unequal counts).  Welch treats the two sides as independent: with
positively correlated pairs it is too wide, with negatively correlated ones too narrow,
while the paired interval is right either way; it costs degrees of freedom (2 instead of
up to 4 with 3 seeds: t_0.975 = 4.30 instead of 2.78), so it is wider when the pairs do
not correlate.  On the study's one table of paired seeds (docs/measurements.md, 2026-12-07)
the paired interval was 2.9x tighter than Welch's.  Where the per-seed differences do not
vary at all (each seed's pair differs by exactly the same amount) the paired interval
would have width zero; Welch's, from the two sides' own spreads, is used instead and the
row says "welch".

``mdd``: the smallest true difference these seeds would detect with 80% power in the
two-sided 5% test, given the measured spread: (t_{1-alpha/2, df} + t_{1-beta, df}) * SE
with alpha = 0.05, beta = 0.2, and the test's SE and df (Welch: SE = sqrt(s_a^2/n_a +
s_b^2/n_b), Welch-Satterthwaite df; paired: SE = s_d / sqrt(n), df = n - 1).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import mean, stdev

from pcn.config.names import BASELINE_VARIANT, GRID_FOLDERS, grid_run_name, point_name

MIN_SEEDS_FOR_VERDICT = 3  # README: fewer than 3 seeds is a smoke run
ALPHA = 0.05  # the two-sided level of better / worse, and of each one-sided test of TOST
POWER = 0.80  # of the mdd: 1 - beta
BETTER, WORSE, EQUIVALENT, INCONCLUSIVE, NOT_RESOLVED = "better", "worse", "equivalent", "inconclusive", "not resolved"
WELCH, PAIRED = "welch", "paired t"


def describe(values: list[float]) -> dict:
    return {
        "n": len(values),
        "values": values,
        "mean": mean(values) if values else None,
        "std": stdev(values) if len(values) > 1 else None,
    }


def standard_error(a: list[float], b: list[float], paired: bool) -> tuple[float, float, str] | None:
    """(SE, degrees of freedom, test) of mean(a) - mean(b); None where neither side varies.

    Paired (``a[i]`` and ``b[i]`` ran the same seed): the per-seed differences' SE and n - 1;
    where those differences do not vary, Welch's.  Welch: sqrt(s_a^2/n_a + s_b^2/n_b) with the
    Welch-Satterthwaite df; with one side constant that is the other side's SE and n - 1."""
    va, vb = stdev(a) ** 2, stdev(b) ** 2
    if va == vb == 0:
        return None
    if paired:
        if len(a) != len(b):
            raise ValueError(f"a paired difference needs one value per seed on both sides ({len(a)} vs {len(b)})")
        sd = stdev([x - y for x, y in zip(a, b, strict=True)])
        if sd > 0:
            return sd / math.sqrt(len(a)), len(a) - 1, PAIRED
    qa, qb = va / len(a), vb / len(b)
    df = (qa + qb) ** 2 / (qa**2 / (len(a) - 1) + qb**2 / (len(b) - 1))
    return math.sqrt(qa + qb), df, WELCH


def interval(diff: float, se: float, df: float, level: float) -> list[float]:
    """The two-sided ``level`` t interval around ``diff``."""
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, df)) * se
    return [diff - half, diff + half]


def min_detectable(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """mdd = (t_{1-alpha/2, df} + t_{power, df}) * SE: the true difference the two-sided test at
    ``alpha`` detects with probability ``power`` (the usual normal-approximation power formula
    with t quantiles for the estimated spread)."""
    from scipy.stats import t

    return float(t.ppf(1 - alpha / 2, df) + t.ppf(power, df)) * se


def verdict_of(ci95: list[float], ci90: list[float], margin: float) -> str:
    """better / worse where the 95% interval excludes 0; equivalent where the 90% interval lies
    strictly inside ±margin (TOST at 5%); inconclusive otherwise."""
    if ci95[0] > 0:
        return BETTER
    if ci95[1] < 0:
        return WORSE
    if -margin < ci90[0] and ci90[1] < margin:
        return EQUIVALENT
    return INCONCLUSIVE


def difference(a: list[float], b: list[float], margin: float, paired: bool = False) -> dict:
    """mean(a) - mean(b): its 95% and 90% intervals, verdict, equivalence margin, mdd and test.
    ``paired``: ``a[i]`` and ``b[i]`` come from the same seed (see the module's docstring)."""
    diff = mean(a) - mean(b)
    # not resolved: no interval, no mdd and no test (null), the margin all the same
    row = {"diff": diff, "ci95": None, "ci90": None, "verdict": None, "margin": margin, "mdd": None, "test": None}
    n = min(len(a), len(b))
    if n < MIN_SEEDS_FOR_VERDICT:
        seeds = f"{n} seed{'' if n == 1 else 's'}"
        return {**row, "verdict": f"{NOT_RESOLVED} ({seeds}; {MIN_SEEDS_FOR_VERDICT} needed)"}
    spread = standard_error(a, b, paired)
    if spread is None:
        return {**row, "verdict": f"{NOT_RESOLVED} (no seed-to-seed variance on either side)"}
    se, df, test = spread
    ci95, ci90 = interval(diff, se, df, 0.95), interval(diff, se, df, 0.90)
    verdict = verdict_of(ci95, ci90, margin)
    return {**row, "ci95": ci95, "ci90": ci90, "verdict": verdict, "mdd": min_detectable(se, df), "test": test}


def _top1(path: Path) -> float:
    return float(json.loads(path.read_text())["top1"])


def _group(metrics_dir: Path, study: str, names, seeds) -> dict[str, list[float]]:
    folder = metrics_dir / GRID_FOLDERS[study]
    return {n: [_top1(folder / f"{grid_run_name(n, s)}.json") for s in seeds] for n in names}


def compare(groups: dict[str, list[float]], reference: str, margin: float, paired: bool) -> dict:
    """Each group's seeds described, and every group but ``reference`` against it; ``paired``:
    every group holds one value per seed of the same seeds, in the same order."""
    out = {}
    for name, values in groups.items():
        row = describe(values)
        if name != reference:
            row["vs_" + reference] = difference(values, groups[reference], margin, paired)
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
    # Every run of a comparison ran each of experiments.seeds (_group): the same seeds on both
    # sides of every difference, a paired design (the module's docstring).
    margin = exp.equivalence_margin
    ablations = compare(_group(metrics_dir, "ablation", exp.variants, seeds), BASELINE_VARIANT, margin, True)
    resnet = compare(_group(metrics_dir, "resnet_pool", exp.resnet, seeds), "avg", margin, True)
    multi = compare(_group(metrics_dir, "multiclass", ["scratch", "finetuned"], seeds), "scratch", margin, True)
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
        "evidence": len(seeds) >= MIN_SEEDS_FOR_VERDICT,
        "note": (
            f"{len(seeds)} seeds per comparison, paired by seed: each difference comes with its 95% interval "
            f"(better / worse where it excludes 0), its 90% interval (equivalent where it lies within "
            f"±{margin:g} top-1 points, experiments.equivalence_margin) and the smallest difference these "
            "seeds detect with 80% power (mdd); inconclusive where neither holds"
            if len(seeds) >= MIN_SEEDS_FOR_VERDICT
            else f"smoke run: {len(seeds)} seed(s), {MIN_SEEDS_FOR_VERDICT} needed for a verdict; "
            "run the study scale for evidence"
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
