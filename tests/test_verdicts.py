"""Verdicts of the grid's differences (pcn.analysis.stats): better / worse from the 95%
interval, equivalent from two one-sided tests (the 90% interval within ±margin),
inconclusive, not resolved; the mdd; paired against Welch; the paper directions they
reproduce; and the `pcn summarize` stage end to end.

Every expected number is derived here from the data by hand (means, variances, standard
errors, degrees of freedom); scipy gives only the t distribution's quantiles."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import run_paths, stage_argv
from scipy.stats import t

from pcn.analysis import comparison as C
from pcn.analysis import document as D
from pcn.analysis.stats import difference, min_detectable, standard_error

ROOT = Path(__file__).resolve().parents[1]


# --- two one-sided tests ------------------------------------------------------------------


def test_tost_on_a_welch_example_derived_by_hand():
    """a = 9, 10, 11 (mean 10, s^2 = 1), b = 9, 11, 13 (mean 11, s^2 = 4): diff = -1,
    SE^2 = 1/3 + 4/3 = 5/3, Welch-Satterthwaite df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 50/17.
    TOST for margin m: t_low = (diff + m) / SE must exceed t_{0.95, df} (p_low < 0.05) and
    t_high = (diff - m) / SE lie below -t_{0.95, df}.  m = 5: t_low = 4 / 1.291 = 3.10 > 2.37,
    p = 0.027 and 0.0098: equivalent.  m = 4: t_low = 3 / 1.291 = 2.32 < 2.37 (p = 0.052):
    not equivalent, and with t = -1 / 1.291 = -0.77 not different either: inconclusive."""
    a, b = [9.0, 10.0, 11.0], [9.0, 11.0, 13.0]
    se, df = math.sqrt(5 / 3), 50 / 17
    assert standard_error(a, b, paired=False) == pytest.approx((se, df, "welch"))
    crit = t.ppf(0.95, df)
    for margin, equivalent in ((5.0, True), (4.0, False)):
        t_low, t_high = (-1 + margin) / se, (-1 - margin) / se
        p_tost = max(t.sf(t_low, df), t.cdf(t_high, df))
        assert bool(p_tost < 0.05) is equivalent and bool(t_low > crit and t_high < -crit) is equivalent
        d = difference(a, b, margin)
        assert d["verdict"] == ("equivalent" if equivalent else "inconclusive"), margin
        # the 90% interval is diff ± t_{0.95, df} SE: inside ±margin exactly when TOST rejects both
        assert d["ci90"] == pytest.approx([-1 - crit * se, -1 + crit * se])
        assert d["ci95"] == pytest.approx([-1 - t.ppf(0.975, df) * se, -1 + t.ppf(0.975, df) * se])
        assert d["margin"] == margin and d["test"] == "welch"
    assert t.sf((-1 + 4) / se, df) == pytest.approx(0.052, abs=0.001)  # the p of the comment


def test_tost_on_a_paired_example_derived_by_hand():
    """Per-seed differences of a = 80, 81, 82 and b = 80.1, 80.9, 82.3: -0.1, +0.1, -0.3,
    mean -0.1, s_d = 0.2 (squared deviations 0, 0.04, 0.04 over 2), SE = 0.2 / sqrt(3),
    df = 2, t_{0.95, 2} = 2.920: 90% interval -0.1 ± 0.337 = [-0.437, +0.237].  Within
    ±0.5 (equivalent), not within ±0.4 (and the 95% interval, ±0.497, holds 0: inconclusive)."""
    a, b = [80.0, 81.0, 82.0], [80.1, 80.9, 82.3]
    se = 0.2 / math.sqrt(3)
    assert standard_error(a, b, paired=True) == pytest.approx((se, 2, "paired t"))
    d = difference(a, b, 0.5, paired=True)
    assert d["diff"] == pytest.approx(-0.1)
    assert d["ci90"] == pytest.approx([-0.437, 0.237], abs=1e-3)
    assert d["ci95"] == pytest.approx([-0.1 - 0.497, -0.1 + 0.497], abs=1e-3)
    assert d["verdict"] == "equivalent" and d["test"] == "paired t"
    assert difference(a, b, 0.4, paired=True)["verdict"] == "inconclusive"
    # unpaired, the same numbers spread by the seeds' own variance (s = 1 and 1.101): no equivalence
    assert difference(a, b, 0.5)["verdict"] == "inconclusive"


# --- the five verdicts --------------------------------------------------------------------


@pytest.mark.parametrize("paired", [False, True])
@pytest.mark.parametrize(
    "a, b, verdict",
    [
        ([90.0, 91.5, 92.0], [80.0, 81.0, 82.0], "better"),
        ([50.0, 52.0, 51.0], [80.0, 81.0, 82.0], "worse"),
        ([80.1, 80.9, 82.0], [80.0, 81.0, 82.0], "equivalent"),  # paired: s_d 0.1; Welch: 90% ±1.8
        ([70.0, 81.0, 92.0], [80.0, 81.0, 82.0], "inconclusive"),  # no mean difference, a 10-point spread
        ([80.0, 80.0, 80.0], [81.0, 81.0, 81.0], "not resolved (no seed-to-seed variance on either side)"),
        ([80.0, 81.0], [79.0, 82.0], "not resolved (2 seeds; 3 needed)"),
        ([80.0], [79.0], "not resolved (1 seed; 3 needed)"),
    ],
)
def test_each_verdict(a, b, verdict, paired):
    d = difference(a, b, 3.0, paired=paired)
    assert d["verdict"] == verdict
    assert set(d) == {"diff", "ci95", "ci90", "verdict", "margin", "mdd", "test"} and d["margin"] == 3.0
    resolved = not verdict.startswith("not resolved")
    assert (d["ci95"] is not None) is resolved and (d["ci90"] is not None) is resolved
    assert (d["mdd"] is not None) is resolved and (d["test"] is not None) is resolved


def test_fewer_seeds_on_one_side_count():
    assert difference([80.0, 81.0, 82.0], [79.0, 80.0], 3.0)["verdict"] == "not resolved (2 seeds; 3 needed)"


def test_zero_variance_on_one_side_takes_the_other_sides():
    """a = 12, 13, 14 (s = 1), b = 10, 10, 10: Welch's SE is sqrt(1/3) and its df reduce to
    n_a - 1 = 2, the one-sample interval around the constant side: 3 ± 4.303 x 0.577 =
    [+0.52, +5.48]: better.  Paired, the differences 2, 3, 4 spread as a does: the same.
    mdd = (t_{0.975, 2} + t_{0.80, 2}) SE = (4.303 + 1.061) x 0.577 = 3.10."""
    a, b = [12.0, 13.0, 14.0], [10.0, 10.0, 10.0]
    se = 1 / math.sqrt(3)
    for paired, test in ((False, "welch"), (True, "paired t")):
        assert standard_error(a, b, paired) == pytest.approx((se, 2, test))
        d = difference(a, b, 2.0, paired)
        assert d["ci95"] == pytest.approx([3 - 4.3027 * se, 3 + 4.3027 * se], abs=1e-3)
        assert d["verdict"] == "better" and d["test"] == test
        assert d["mdd"] == pytest.approx(3.0965, abs=1e-3)
    # the other way round: worse
    assert difference(b, a, 2.0)["verdict"] == "worse"


def test_paired_differences_that_do_not_vary_fall_back_to_welch():
    """a = 81, 82, 83 and b = 80, 81, 82 differ by exactly 1 in every seed: a paired
    interval would have width zero.  Welch's, from the sides' own s = 1: SE = sqrt(2/3),
    df = 4, 95% 1 ± 2.776 x 0.816 = [-1.27, +3.27]; 90% 1 ± 1.74: not within ±2."""
    d = difference([81.0, 82.0, 83.0], [80.0, 81.0, 82.0], 2.0, paired=True)
    assert d["test"] == "welch" and d["verdict"] == "inconclusive"
    assert d["ci95"] == pytest.approx([1 - 2.7764 * math.sqrt(2 / 3), 1 + 2.7764 * math.sqrt(2 / 3)], abs=1e-3)


def test_mdd_against_a_hand_computation():
    """The Welch example above: SE = sqrt(5/3) = 1.291, df = 50/17 = 2.94;
    mdd = (t_{0.975, 2.94} + t_{0.80, 2.94}) x 1.291; and for 3 paired seeds whose
    differences spread by s_d = 10: (4.303 + 1.061) x 10 / sqrt(3) = 30.97."""
    se, df = math.sqrt(5 / 3), 50 / 17
    hand = (t.ppf(0.975, df) + t.ppf(0.80, df)) * se
    assert difference([9.0, 10.0, 11.0], [9.0, 11.0, 13.0], 1.0)["mdd"] == pytest.approx(hand)
    assert min_detectable(se, df) == pytest.approx(hand)
    paired = difference([70.0, 81.0, 92.0], [80.0, 81.0, 82.0], 3.0, paired=True)
    assert paired["mdd"] == pytest.approx((4.302653 + 1.060660) * 10 / math.sqrt(3), abs=1e-4)
    assert paired["mdd"] == pytest.approx(30.965, abs=1e-3)


# --- the paper's directions ------------------------------------------------------------


@pytest.mark.parametrize(
    "direction, verdict, status",
    [
        ("similar", "equivalent", D.REPRODUCED),
        ("similar", "inconclusive", D.INCONCLUSIVE),  # no difference found is not "similar"
        ("similar", "better", D.DIFFERS),
        ("better", "better", D.REPRODUCED),
        ("better", "equivalent", D.DIFFERS),
        ("better", "worse", D.DIFFERS),
        ("worse", "worse", D.REPRODUCED),
        ("worse", "inconclusive", D.INCONCLUSIVE),
        ("worse", "not resolved (2 seeds; 3 needed)", D.NOT_RUN),
    ],
)
def test_a_paper_direction_is_reproduced_by_its_own_verdict(direction, verdict, status):
    row = {"n": 3, "vs_baseline": {"verdict": verdict, "mdd": 4.07, "margin": 2.0}}
    got, note = C.direction_status(direction, row, "vs_baseline")
    assert got == status
    if status == D.INCONCLUSIVE:
        assert (
            note == "3 seeds can detect differences of 4.1 points or more; equivalence needs the 90% interval within ±2"
        )
    if status == D.NOT_RUN:
        assert "2 seeds; 3 needed" in note


# --- `pcn summarize` end to end --------------------------------------------------------

BASE = [80.0, 81.0, 82.0]
# top-1 per seed 0, 1, 2 of each grid run: each difference chosen for one verdict
ABLATIONS = {
    "baseline": BASE,
    "batchnorm": [90.0, 91.5, 92.0],  # a clear gain: better
    "linear_stem": [50.0, 52.0, 51.0],  # a clear loss: worse
    "two_agg_blocks": [80.1, 80.9, 82.0],  # a tight zero difference: equivalent
    "multi_head_agg": [70.0, 81.0, 92.0],  # zero mean difference, a 10-point spread: inconclusive
    "avgpool": [79.0, 80.5, 81.5],
    "no_se": [81.0, 81.5, 83.5],
}
RESNET = {"avg": [50.0, 50.0, 50.0], "attention": [52.0, 52.0, 52.0]}  # no variance on either side
MULTICLASS = {"scratch": [60.0, 60.0, 60.0], "finetuned": [70.0, 71.0, 72.0]}  # none on one side: better
REFERENCE = {"ablations": "baseline", "resnet": "avg", "multiclass": "scratch"}
EXPECTED = {
    "ablations": {
        "batchnorm": "better",
        "linear_stem": "worse",
        "two_agg_blocks": "equivalent",
        "multi_head_agg": "inconclusive",
    },
    "resnet": {"attention": "not resolved (no seed-to-seed variance on either side)"},
    "multiclass": {"finetuned": "better"},
}


def _grid_run(work: Path, seeds: list[int]) -> None:
    """The params (the demo's, with ``seeds``) and the grid's metrics files a summarize reads."""
    from pcn.config.names import GRID_FOLDERS, grid_run_name, point_name

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["experiments"]["seeds"] = seeds
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    for study, runs in (("ablation", ABLATIONS), ("resnet_pool", RESNET), ("multiclass", MULTICLASS)):
        folder = work / "metrics" / GRID_FOLDERS[study]
        folder.mkdir(parents=True, exist_ok=True)
        for name, values in runs.items():
            for seed in seeds:
                (folder / f"{grid_run_name(name, seed)}.json").write_text(json.dumps({"top1": values[seed]}))
    folder = work / "metrics" / GRID_FOLDERS["depth_width"]
    folder.mkdir(parents=True, exist_ok=True)
    for w, d in raw["experiments"]["depth_width"]:
        point = {"width": w, "depth": d, "top1": 50.0, "params_m": 0.3, "gmacs": 0.02, "img_size": 64}
        (folder / f"{grid_run_name(point_name(w, d))}.json").write_text(json.dumps(point))


def _differences(summary: dict) -> list[dict]:
    return [r[f"vs_{ref}"] for group, ref in REFERENCE.items() for r in summary[group].values() if f"vs_{ref}" in r]


def _summarize(work: Path, monkeypatch) -> dict:
    """`pcn summarize` with the command of the DAG (dvc.yaml's), in ``work``."""
    from pcn.cli import main

    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    monkeypatch.delenv("PCN_PIPELINE_RUN_ID", raising=False)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    argv = stage_argv("summarize", work / "params.yaml")
    assert main(argv) == 0
    return json.loads((work / argv[argv.index("--out") + 1]).read_text())


def test_summarize_gives_each_verdict_with_margin_and_mdd(tmp_path, monkeypatch):
    from pcn.analysis.sections import grid_section
    from pcn.analysis.sourced import Metrics, RunIndex
    from pcn.config import load_params

    _grid_run(tmp_path, [0, 1, 2])
    summary = _summarize(tmp_path, monkeypatch)
    margin = load_params(tmp_path / "params.yaml").experiments.equivalence_margin
    assert summary["evidence"] is True
    for group, rows in EXPECTED.items():
        for name, verdict in rows.items():
            assert summary[group][name][f"vs_{REFERENCE[group]}"]["verdict"] == verdict, (group, name)
    diffs = _differences(summary)
    assert len(diffs) == 8
    for d in diffs:  # every difference: its intervals, margin, mdd and test
        assert {"diff", "ci95", "ci90", "verdict", "margin", "mdd", "test"} <= set(d) and d["margin"] == margin
        assert (d["mdd"] is None) is d["verdict"].startswith("not resolved")
        # every comparison runs the same seeds on both sides; no test where nothing is resolved
        assert d["test"] == (None if d["mdd"] is None else "paired t")
    # 3 seeds whose differences spread by 10 points (-10, 0, +10) detect about 31 points
    assert summary["ablations"]["multi_head_agg"]["vs_baseline"]["mdd"] == pytest.approx(30.97, abs=0.01)

    # the report: the comparison rows of the paper's directions, and the grid's table
    paper = C.load_paper(ROOT / "paper" / "numbers.yaml")
    params = load_params(tmp_path / "params.yaml")
    metrics = Metrics(run_paths(tmp_path, tmp_path / "params.yaml"))
    rows = C._Rows({}, RunIndex(params, metrics))
    C._ablation_rows(rows, paper, params, metrics, imagenet=True)  # as if the grid ran on ImageNet
    status = {r[0].removeprefix("ablation direction: "): (r[6], r[8]) for r in rows.rows}
    assert status["two_agg_blocks"][0] == D.REPRODUCED  # similar, and equivalent within ±3
    assert status["multi_head_agg"][0] == D.INCONCLUSIVE  # similar, but the seeds cannot tell
    assert status["multi_head_agg"][1].startswith("3 seeds can detect differences of 31.0 points or more")
    assert status["linear_stem"][0] == D.REPRODUCED  # worse, and worse
    assert status["batchnorm"][0] == D.REPRODUCED  # better, and better
    table = next(t for t in grid_section(paper, params, metrics).tables if t.caption.startswith("Ablations"))
    cols = {c: i for i, c in enumerate(table.columns)}
    row = next(r for r in table.rows if r[0] == "multi_head_agg")
    assert str(row[cols["verdict"]]) == "inconclusive" and str(row[cols["margin (±)"]]) == f"{margin:g}"
    assert str(row[cols["mdd"]]) == "30.97" and str(row[cols["test"]]) == "paired t"
    assert row[cols["90% CI"]].startswith("[") and row[cols["95% CI"]].startswith("[")


def test_summarize_with_two_seeds_resolves_nothing(tmp_path, monkeypatch):
    _grid_run(tmp_path, [0, 1])
    summary = _summarize(tmp_path, monkeypatch)
    assert summary["evidence"] is False
    diffs = _differences(summary)
    assert len(diffs) == 8
    for d in diffs:
        assert d["verdict"] == "not resolved (2 seeds; 3 needed)" and d["ci95"] is None and d["mdd"] is None
        assert "margin" in d and "mdd" in d
