"""The paper's numbers against this run's: one row per paper number the pipeline can produce.

A row's status follows the paper's printed precision and the tolerances of
paper/numbers.yaml (pcn.analysis.document lists the statuses).  Like with like: every
accuracy row of paper/numbers.yaml states its ``resolution`` (and ``pretraining``); a
reproduced top-1 is put beside it only when the evaluation ran at that resolution
(``img_size`` in metrics/eval.json, in a released checkpoint's evaluation, or the grid's
recipe).  Every transfer row states its ``pretraining`` and ``test`` protocol (null where its
source does not); a transfer number is put beside it only when both are this run's.
Released checkpoints evaluated by this pipeline (``metrics/released/*.json``) are
shown on their model-zoo rows.  Params and GMACs depend on the architecture only, so they
are compared at every scale.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from pcn.analysis.document import DIFFERS, INCONCLUSIVE, NOT_COMPARABLE, NOT_RUN, REPRODUCED, WITHIN, Table
from pcn.analysis.setting import patch_stride, recipe_of, setting_text
from pcn.analysis.sourced import NONE, Metrics, RunIndex, Sourced
from pcn.errors import UserError

RELEASED = "released"  # the folder of released checkpoints' evaluations, in the metrics folder


def half_unit(paper: float) -> float:
    """Half a unit of the last digit the paper prints (82.1 -> 0.05, 4.0 -> 0.05, 1322 -> 0.5)."""
    if isinstance(paper, int):
        return 0.5
    exp = Decimal(repr(float(paper))).as_tuple().exponent
    return 0.5 * 10.0 ** min(int(exp), 0)


def tolerance_of(tol: dict, paper: float) -> float:
    return float(tol["abs"]) if "abs" in tol else float(tol["rel"]) * abs(paper)


def describe_tolerance(tol: dict) -> str:
    return f"±{tol['abs']}" if "abs" in tol else f"±{100 * float(tol['rel']):g}%"


def compare(paper: float, value: float | None, tol: dict) -> str:
    if value is None:
        return NOT_RUN
    diff = abs(float(value) - float(paper))
    if diff <= half_unit(paper) + 1e-9:
        return REPRODUCED
    if diff <= tolerance_of(tol, paper) + 1e-9:
        return WITHIN
    return DIFFERS


def load_paper(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _complexity_row(metrics: Metrics, model: str, img_size: int = 224) -> int | None:
    doc = metrics.load(metrics.file("complexity"))
    for i, r in enumerate((doc or {}).get("rows", [])):
        if r.get("model") == model and r.get("img_size") == img_size:
            return i
    return None


# The protocol words of paper/numbers.yaml.  This pipeline pretrains on ImageNet-1k.
PRETRAINING = {"imagenet1k": "ImageNet-1k", "imagenet21k": "ImageNet-21k"}
RUN_PRETRAINING = "imagenet1k"
TEST_PROTOCOLS = ("single-scale", "multi-scale+flip")


def protocol_field(entry: dict, key: str, allowed, where: str) -> str | None:
    """A row's ``pretraining`` or ``test``: one of ``allowed``, or None where its source does not state it."""
    value = entry.get(key)
    if value is not None and value not in allowed:
        raise UserError(
            f"paper/numbers.yaml: {where}.{key} = {value!r}: expected {', '.join(allowed)} or null (not stated)"
        )
    return value


def pretraining_mismatch(pretraining: str | None) -> str | None:
    """Why a paper row's pretraining is not this pipeline's (ImageNet-1k), or None."""
    if pretraining == RUN_PRETRAINING:
        return None
    if pretraining is None:
        return "the paper's row does not state its pretraining data (ImageNet-1k or -21k)"
    return f"the paper's row is pretrained on {PRETRAINING[pretraining]}, this pipeline pretrains on ImageNet-1k"


def top1_title(entry: dict) -> str:
    """'ImageNet top-1 (%), 224 px' (with the pretraining data when it is not ImageNet-1k)."""
    pre = ", ImageNet-21k pretraining" if entry.get("pretraining") == "imagenet21k" else ""
    return f"ImageNet top-1 (%), {entry['resolution']} px{pre}" if entry.get("resolution") else "ImageNet top-1 (%)"


def _zoo_top1(entry: dict, where: str, params, metrics: Metrics, imagenet: bool, not_imagenet: str) -> tuple:
    """The comparison row of a model-zoo top-1: compared only at the row's resolution and pretraining."""
    model, res = entry["model"], entry.get("resolution")
    row = (top1_title(entry), model, entry["top1"], entry["source"])
    ev_file = metrics.file("eval")
    ev = metrics.load(ev_file) or {}
    other = pretraining_mismatch(protocol_field(entry, "pretraining", PRETRAINING, where))
    if other:
        return (*row, None, "top1", f"{other} (released checkpoints are compared below)", False, NOT_COMPARABLE)
    if not imagenet or params.model.name != model or not ev:
        why = (
            not_imagenet
            if not imagenet
            else f"the pipeline's model is {params.model.name}"
            if params.model.name != model
            else f"{ev_file} not found (the evaluate stage has not run)"
        )
        return (*row, None, "top1", why, False)
    if ev.get("img_size") != res:
        return (
            *row,
            None,
            "top1",
            f"evaluated at {ev.get('img_size')} px ({ev_file} img_size), the paper's row at {res} px: not compared",
            False,
            NOT_COMPARABLE,
        )
    return (*row, metrics.get(ev_file, "top1"), "top1", f"{res} px, crop {ev.get('crop_ratio')}")


def released_files(metrics: Metrics) -> list[str]:
    """The evaluations of released checkpoints (``pcn evaluate --checkpoint``), as cited."""
    folder = metrics.paths.at("metrics", RELEASED)
    return [metrics.file(f"{RELEASED}/{f.stem}") for f in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def released_row(paper: dict, doc: Any) -> dict | None:
    """The paper row of a released checkpoint's evaluation: the row naming its file, else the
    ImageNet-1k row of its model at its resolution."""
    if not isinstance(doc, dict):
        return None
    rows = [e for e in paper.get("model_zoo", []) if "top1" in e]
    rows += [e for e in (paper.get("multiclass") or {}).values() if isinstance(e, dict) and "model" in e]
    name = Path(str(doc.get("checkpoint") or "")).name
    for e in rows:
        if name and e.get("checkpoint") == name:
            return e
    return next(
        (
            e
            for e in rows
            if e.get("model") == doc.get("model")
            and e.get("resolution") == doc.get("img_size")
            and e.get("pretraining", "imagenet1k") == "imagenet1k"
        ),
        None,
    )


def _released_top1(entry: dict, rel: str, metrics: Metrics) -> tuple:
    """The comparison row of a released checkpoint's evaluation on its paper row."""
    doc = metrics.load(rel)
    size, res = doc.get("img_size"), entry.get("resolution")
    how = (
        f"released {Path(str(doc.get('checkpoint'))).name}, evaluated at {size} px, crop {doc.get('crop_ratio')}, "
        f"{doc.get('n_images')} images"
    )
    row = (
        f"released checkpoint top-1 (%), {size} px",
        doc.get("model", entry["model"]),
        entry.get("top1", entry.get("value")),
        entry["source"],
        metrics.get(rel, "top1"),
        "top1",
    )
    if size != res:
        return (*row, f"{how}; the paper's row is at {res} px: not compared", False, NOT_COMPARABLE)
    return (*row, how)


def _grid_mismatch(abl: dict, group: str, entry: dict) -> str | None:
    """Why a grid comparison (resnet, multiclass) is not like with like, or None."""
    size = ((abl.get("recipes") or {}).get(group) or {}).get("img_size")
    if size != entry.get("resolution"):
        return (
            f"the grid evaluates at {size} px (ablations.json recipes.{group}), the paper's row at "
            f"{entry.get('resolution')} px: not compared"
        )
    return None


# The transfer rows of paper/numbers.yaml: the stage (its metrics file) and, per test protocol,
# the key that holds this run's number (a protocol the run did not score has no key in its file).
TRANSFER_ROWS = (
    (
        "ade20k_upernet_miou",
        "segmentation",
        {"single-scale": "mIoU", "multi-scale+flip": "mIoU_ms_flip"},
        "ADE20k mIoU (UperNet)",
        "miou",
    ),
    (
        "coco_maskrcnn_box_ap",
        "detection",
        {"single-scale": "bbox_AP"},
        "COCO box AP (Mask R-CNN)",
        "box_ap",
    ),
    (
        "coco_maskrcnn_mask_ap",
        "detection",
        {"single-scale": "segm_AP"},
        "COCO mask AP (Mask R-CNN)",
        "mask_ap",
    ),
)


def _transfer_row(
    entry: dict, where: str, rel: str, keys: dict, title: str, tol_key: str, params, metrics: Metrics, imagenet: bool
) -> tuple:
    """The comparison row of a transfer number: beside this run's only for the same model,
    pretraining data and test protocol; otherwise *not comparable*, with this run's number in the note."""
    model = entry["model"]
    pre = protocol_field(entry, "pretraining", PRETRAINING, where)
    test = protocol_field(entry, "test", TEST_PROTOCOLS, where)
    full = title + (f", {test}" if test else "") + (f", {PRETRAINING[pre]} pretraining" if pre == "imagenet21k" else "")
    paper_value = entry.get("value")
    row = (full, model, NONE if paper_value is None else paper_value, entry["source"])
    if not imagenet:
        return (*row, None, tol_key, f"this run transfers to synthetic {params.data.source} scenes", False)
    if params.model.name != model:
        return (*row, None, tol_key, f"the pipeline's model is {params.model.name}", False)
    scored = {t: k for t, k in keys.items() if metrics.get(rel, k) is not None}
    if not scored:
        return (*row, None, tol_key, f"{rel} not found (the stage has not run)", False)
    if test is None:
        test_why = "the paper's row does not state its test protocol (single- or multi-scale)"
    elif test not in scored:
        test_why = f"the paper's row is {test}, this run scored {', '.join(scored)} only"
    else:
        test_why = None
    value_why = None if paper_value is not None else "no paper value in the sources"
    why = "; ".join(filter(None, (pretraining_mismatch(pre), test_why, value_why)))  # every reason
    if why:
        here = "; ".join(f"{t} {metrics.get(rel, k, '.1f')}" for t, k in scored.items())
        return (*row, None, tol_key, f"{why}: not compared (measured here: {here})", False, NOT_COMPARABLE)
    return (*row, metrics.get(rel, keys[test]), tol_key, f"{test}, {PRETRAINING[pre]} pretraining")


def direction_text(entry: dict) -> str:
    """The paper's direction of an ablation, with the condition the paper attaches to it."""
    cond = entry.get("condition")
    return f"{entry['direction']} ({cond})" if cond else str(entry["direction"])


COMPARISON_COLUMNS = [
    "quantity",
    "model",
    "paper",
    "paper source",
    "reproduced",
    "tolerance",
    "status",
    "MLflow run",
    "note",
]
QUANTITY_TITLES = {
    "top1": "ImageNet top-1 (%)",
    "params_m": "params (M)",
    "gmacs": "GMACs (224 px)",
    "throughput": "throughput (im/s)",
    "peak_mem_mb": "peak memory (MB)",
}


class _Rows:
    """The comparison's rows as they are added: each compared with its tolerance, with the
    MLflow run of the metrics file it came from."""

    def __init__(self, tols: dict, runs: RunIndex):
        self.tols, self.runs, self.rows = tols, runs, []

    def add(
        self,
        quantity,
        model,
        paper_value,
        source,
        value: Sourced | None,
        tol_key,
        note="",
        comparable=True,
        why_not=NOT_RUN,
    ) -> None:
        tol = self.tols.get(tol_key, {"abs": 0})
        status = compare(paper_value, value.value if value is not None else None, tol) if comparable else why_not
        shown = value if (value is not None and comparable) else NONE
        run = self.runs.run_id(value.file) if value is not None and comparable else NONE
        self.rows.append([quantity, model, paper_value, source, shown, describe_tolerance(tol), status, run, note])


def comparison_table(paper: dict, params, metrics: Metrics, runs: RunIndex) -> Table:
    """One row per paper number this pipeline can produce."""
    rows = _Rows(paper.get("tolerances", {}), runs)
    imagenet = params.data.source == "real"
    not_imagenet = f"ImageNet accuracy: this run trains on {params.data.source} data ({params.scale} scale)"
    _zoo_rows(rows, paper, params, metrics, imagenet, not_imagenet)
    _grid_rows(rows, paper, params, metrics, imagenet, not_imagenet)
    for key, stage, keys, title, tol_key in TRANSFER_ROWS:
        rel = metrics.file(stage)
        for i, e in enumerate(paper.get(key) or []):
            rows.add(*_transfer_row(e, f"{key}[{i}]", rel, keys, title, tol_key, params, metrics, imagenet))
    _ablation_rows(rows, paper, params, metrics, imagenet)
    return Table(COMPARISON_COLUMNS, rows.rows, "Every number of the paper this pipeline can produce.", status_column=6)


def _zoo_rows(rows: _Rows, paper: dict, params, metrics: Metrics, imagenet: bool, not_imagenet: str) -> None:
    """The model zoo's rows: top-1 (this run's and released checkpoints'), params, GMACs, speed."""
    cx = metrics.file("complexity")
    device = (metrics.load(cx) or {}).get("device", "")
    for at, entry in enumerate(paper.get("model_zoo", [])):
        model, src = entry["model"], entry["source"]
        i = _complexity_row(metrics, model)
        for q in ("top1", "params_m", "gmacs", "throughput", "peak_mem_mb"):
            if q not in entry:
                continue
            if q == "top1":
                rows.add(*_zoo_top1(entry, f"model_zoo[{at}]", params, metrics, imagenet, not_imagenet))
                for rel in released_files(metrics):
                    if released_row(paper, metrics.load(rel)) is entry:
                        rows.add(*_released_top1(entry, rel, metrics))
                continue
            value = metrics.get(cx, f"rows[{i}].{q}", ".1f" if q != "gmacs" else ".2f") if i is not None else None
            row = (QUANTITY_TITLES[q], model, entry[q], src, value, q)
            if value is None:
                missing = f"{model} at 224 px is not in complexity.models at this scale" if i is None else None
                rows.add(*row, missing or "not measured")
            elif q in ("throughput", "peak_mem_mb") and not str(device).startswith("cuda"):
                rows.add(
                    *row,
                    f"the paper's is a GPU number; measured here on {device or 'an unknown device'}: "
                    f"{value} (see the complexity table)",
                    comparable=False,
                )
            else:
                rows.add(*row, "from the architecture (any scale)" if q in ("params_m", "gmacs") else f"on {device}")


def _grid_row(rows: _Rows, quantity, model, entry, value, ok, mismatch, not_imagenet: str) -> None:
    """One grid number beside the paper's: not run off ImageNet, not comparable when its run
    differs from the paper's setting (``mismatch`` says how)."""
    note = mismatch or ("" if ok else not_imagenet)
    why_not = NOT_COMPARABLE if mismatch else NOT_RUN
    rows.add(quantity, model, entry["value"], entry["source"], value, "top1", note, ok and not mismatch, why_not)


def _grid_rows(rows: _Rows, paper: dict, params, metrics: Metrics, imagenet: bool, not_imagenet: str) -> None:
    """The multi-class tokens' and the ResNet pair's rows, from the grid's summary."""
    exp = params.experiments
    summary = metrics.file("ablations")
    abl = metrics.load(summary) or {}
    multi = paper.get("multiclass", {})
    for init in ("scratch", "finetuned"):
        e = multi.get(f"{init}_top1")
        if not e:
            continue
        ok = imagenet and exp.multiclass_model == "patchconvnet_s60_multi"
        value = metrics.get(summary, f"multiclass.{init}.mean") if ok else None
        mismatch = _grid_mismatch(abl, "multiclass", e) if ok and value is not None else None
        _grid_row(
            rows, f"multi-class top-1 (%), {init}", "patchconvnet_s60_multi", e, value, ok, mismatch, not_imagenet
        )
        for rel in released_files(metrics):
            if released_row(paper, metrics.load(rel)) is e:
                rows.add(*_released_top1(e, rel, metrics))

    res = paper.get("resnet50", {})
    for pool, model in (("avg", "resnet50"), ("attention", "resnet50_attnpool")):
        e = res.get(f"{pool}_top1")
        if not e:
            continue
        ok = imagenet and exp.resnet.get(pool) == model
        value = metrics.get(summary, f"resnet.{pool}.mean") if ok else None
        mismatch = _grid_mismatch(abl, "resnet", e) if ok and value is not None else None
        _grid_row(rows, f"ResNet-50 top-1 (%), {pool} pooling", model, e, value, ok, mismatch, not_imagenet)
        if "gmacs" in e:
            i = _complexity_row(metrics, model)
            value = metrics.get(metrics.file("complexity"), f"rows[{i}].gmacs") if i is not None else None
            rows.add(
                "GMACs (224 px)",
                model,
                e["gmacs"],
                e["source"],
                value,
                "gmacs",
                "from the architecture (any scale)"
                if value is not None
                else f"{model} at 224 px is not in complexity.models at this scale",
            )


def _ablation_rows(rows: _Rows, paper: dict, params, metrics: Metrics, imagenet: bool) -> None:
    """Each ablation's direction: the grid's verdict against the paper's."""
    summary = metrics.file("ablations")
    abl = metrics.load(summary) or {}
    grid = recipe_of(abl, params, "ablations")
    for variant, e in (paper.get("ablations") or {}).items():
        # what the grid ran at, beside the paper's condition where it states one
        cond = "; ".join(
            filter(
                None,
                (
                    e.get("condition") and f"the paper's condition: {e['condition']}",
                    f"this run's grid: {setting_text(grid, patch_stride(params, 'ablations', variant))}",
                ),
            )
        )
        row = (abl.get("ablations") or {}).get(variant)
        diff = metrics.get(summary, f"ablations.{variant}.vs_baseline.verdict")
        head = [f"ablation direction: {variant}", params.model.name, direction_text(e), e["source"]]
        if not imagenet or row is None or diff is None:
            why = (
                "ImageNet ablation: the measured direction on this run's data is in the ablation table below"
                if not imagenet
                else f"variant {variant} not in experiments.variants"
            )
            rows.rows.append([*head, NONE, "direction", NOT_RUN, NONE, "; ".join(filter(None, (why, cond)))])
            continue
        status, why = direction_status(e["direction"], row, "vs_baseline")
        rows.rows.append(
            [*head, diff, "direction", status, rows.runs.run_id(diff.file), "; ".join(filter(None, (why, cond)))]
        )


# The grid's verdict (pcn.analysis.stats) that reproduces each direction of the paper: a
# "similar" needs an equivalence within experiments.equivalence_margin, not merely no difference.
VERDICT_OF_DIRECTION = {"better": "better", "worse": "worse", "similar": "equivalent"}


def direction_status(direction: str, row: dict, key: str) -> tuple[str, str]:
    """The status of a paper direction against the grid's difference ``row[key]`` (a row of
    metrics/ablations.json), and what the note says about it: reproduced when the verdict is the
    direction's; inconclusive (with the difference these seeds could detect) or not run (the
    verdict's reason: too few seeds, no variance) when the seeds decide nothing; else differs."""
    vs = row.get(key) or {}
    verdict = str(vs.get("verdict"))
    if verdict == VERDICT_OF_DIRECTION.get(direction):
        return REPRODUCED, ""
    if verdict.startswith("not resolved"):
        return NOT_RUN, f"the grid's difference is {verdict}"
    if verdict == "inconclusive":
        mdd, margin = vs.get("mdd"), vs.get("margin")
        detect = f"{row.get('n')} seeds can detect differences of {mdd:.1f} points or more" if mdd is not None else ""
        within = f"equivalence needs the 90% interval within ±{margin:g}" if margin is not None else ""
        return INCONCLUSIVE, "; ".join(filter(None, (detect, within)))
    return DIFFERS, ""
