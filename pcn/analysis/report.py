"""The paper-vs-reproduced report (Markdown and one self-contained HTML file).

Every number the report shows as *reproduced* or *measured* is a :class:`Sourced`
value: read from a metrics file at a JSON key, never typed.  :func:`sourced_values`
lists them all as (value, file, key), which is how tests check the report against
its sources.  Paper values come from ``paper/numbers.yaml`` with their table of origin.

Status of a comparison row:

* ``reproduced``: equal to the paper's value at the paper's precision (within half
  a unit of its last printed digit);
* ``within tolerance``: further off, but within the row's tolerance (``tolerances``
  in paper/numbers.yaml, with the reason for each);
* ``differs``: outside the tolerance;
* ``not run at this scale``: this run cannot produce the number (ImageNet accuracy on
  synthetic demo data, a model not in ``complexity.models``, GPU throughput on a CPU);
* ``not comparable``: this run measured it under another protocol than the paper's row
  (another evaluation resolution, or ImageNet-21k pretraining); the note says which.

Like with like: every accuracy row of paper/numbers.yaml states its ``resolution`` (and
``pretraining``); a reproduced top-1 is put beside it only when the evaluation ran at that
resolution (``img_size`` in metrics/eval.json, in a released checkpoint's evaluation, or
the grid's recipe).  Released checkpoints evaluated by this pipeline
(``metrics/released/*.json``) are shown on their model-zoo rows.  The paper-scale recipe
(paper/recipe.yaml, with the source of each value) is rendered by pcn.analysis.recipe.

Params and GMACs depend on the architecture only, so they are compared at every
scale.  The MLflow run that produced each metrics file is looked up in the tracking
store (the stage's latest finished run, by its ``pcn.stage`` tag) unless the file
names it itself (``mlflow_run_id``).
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

REPRODUCED = "reproduced"
WITHIN = "within tolerance"
DIFFERS = "differs"
NOT_RUN = "not run at this scale"
NOT_COMPARABLE = "not comparable"
STATUSES = (REPRODUCED, WITHIN, DIFFERS, NOT_RUN, NOT_COMPARABLE)
NONE = "—"

# --- values with their source -----------------------------------------------------------------

_KEY = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def lookup(obj: Any, key: str) -> Any:
    """``obj`` at a key path such as ``rows[3].params_m`` or ``ablations.avgpool.vs_baseline.diff``."""
    for name, index in _KEY.findall(key):
        obj = obj[int(index)] if index else obj[name]
    return obj


@dataclass(frozen=True)
class Sourced:
    """A number (or word) taken from a metrics file: the file, the key, and how it is printed."""

    value: Any
    file: str
    key: str
    fmt: str = ".2f"

    def __str__(self) -> str:
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            return str(self.value)
        return format(self.value, self.fmt)


class Metrics:
    """The metrics files of one run directory, read once; ``get`` returns Sourced values."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._cache: dict[str, Any] = {}

    def load(self, rel: str) -> Any | None:
        if rel not in self._cache:
            p = self.root / rel
            try:
                self._cache[rel] = json.loads(p.read_text()) if p.is_file() else None
            except json.JSONDecodeError:
                self._cache[rel] = None
        return self._cache[rel]

    def exists(self, rel: str) -> bool:
        return self.load(rel) is not None

    def get(self, rel: str, key: str, fmt: str = ".2f") -> Sourced | None:
        doc = self.load(rel)
        if doc is None:
            return None
        try:
            value = lookup(doc, key)
        except (KeyError, IndexError, TypeError):
            return None
        return None if value is None else Sourced(value, rel, key, fmt)


# --- the document ------------------------------------------------------------------------------


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    status_column: int | None = None


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (title, path relative to reports/)
    notes: list[str] = field(default_factory=list)  # paragraphs after the tables


@dataclass
class Report:
    title: str
    sections: list[Section]
    comparison: Table
    figures_dir: Path

    def status_counts(self) -> dict[str, int]:
        col = self.comparison.status_column
        counts = {s: 0 for s in STATUSES}
        for row in self.comparison.rows:
            counts[str(row[col])] += 1
        return counts


def sourced_values(report: Report) -> list[tuple[Any, str, str]]:
    """(value, metrics file, json key) of every reproduced or measured value in the report."""
    out = []
    for section in report.sections:
        for table in section.tables:
            for row in table.rows:
                for cell in row:
                    if isinstance(cell, Sourced):
                        out.append((cell.value, cell.file, cell.key))
    return out


# --- comparison with the paper -------------------------------------------------------------------


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


class RunIndex:
    """The MLflow run behind each metrics file (failure-safe: unknown -> '—')."""

    def __init__(self, params, metrics: Metrics):
        self.params = params
        self.metrics = metrics
        self._client = None
        self._exp_id: str | None = None
        self._cache: dict[str, str] = {}
        self._failed = False

    def _connect(self) -> bool:
        if self._failed:
            return False
        if self._client is None:
            try:
                from pcn.tracking import tracking_uri

                uri = tracking_uri(self.params.tracking.uri)
                if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
                    self._failed = True  # no store yet: do not create an empty one
                    return False
                import mlflow

                self._client = mlflow.MlflowClient(uri)
                exp = self._client.get_experiment_by_name(self.params.tracking.experiment)
                self._exp_id = exp.experiment_id if exp else None
            except Exception:  # noqa: BLE001 - the report is written without run ids then
                self._failed = True
                return False
        return self._exp_id is not None

    @staticmethod
    def stage_of(rel: str) -> tuple[str, dict[str, str]]:
        """The stage (and instance tags) that writes a metrics file."""
        p = Path(rel)
        named = {
            "ablations.json": "summarize",
            "eval.json": "evaluate",
            "pixel_baseline.json": "pixel_baseline",
            "convert.json": "convert",
        }
        if p.parent.name in ("ablations", "resnet", "multiclass", "depth_width"):
            stage = {"ablations": "ablation", "resnet": "resnet_pool"}.get(p.parent.name, p.parent.name)
            m = re.fullmatch(r"(.+)-s(\d+)", p.stem)
            tags = {"pcn.variant": m.group(1), "pcn.seed": m.group(2)} if m else {"pcn.variant": p.stem}
            return stage, tags
        return named.get(p.name, p.stem), {}

    def run_id(self, rel: str) -> str:
        if rel in self._cache:
            return self._cache[rel]
        doc = self.metrics.load(rel)
        rid = doc.get("mlflow_run_id") if isinstance(doc, dict) else None
        if not rid and self._connect():
            stage, tags = self.stage_of(rel)
            filt = [f"tags.`pcn.stage` = '{stage}'", "attributes.status = 'FINISHED'"]
            filt += [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
            try:
                runs = self._client.search_runs(
                    [self._exp_id], " and ".join(filt), order_by=["attributes.start_time DESC"], max_results=1
                )
                rid = runs[0].info.run_id if runs else None
            except Exception:  # noqa: BLE001
                rid = None
        self._cache[rel] = rid or NONE
        return self._cache[rel]


def load_paper(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _complexity_row(metrics: Metrics, model: str, img_size: int = 224) -> int | None:
    doc = metrics.load("metrics/complexity.json")
    for i, r in enumerate((doc or {}).get("rows", [])):
        if r.get("model") == model and r.get("img_size") == img_size:
            return i
    return None


RELEASED_DIR = "metrics/released"


def top1_title(entry: dict) -> str:
    """'ImageNet top-1 (%), 224 px' (with the pretraining data when it is not ImageNet-1k)."""
    pre = ", ImageNet-21k pretraining" if entry.get("pretraining") == "imagenet21k" else ""
    return f"ImageNet top-1 (%), {entry['resolution']} px{pre}" if entry.get("resolution") else "ImageNet top-1 (%)"


def _zoo_top1(entry: dict, params, metrics: Metrics, imagenet: bool, not_imagenet: str) -> tuple:
    """The comparison row of a model-zoo top-1: compared only at the row's resolution and pretraining."""
    model, res = entry["model"], entry.get("resolution")
    row = (top1_title(entry), model, entry["top1"], entry["source"])
    ev = metrics.load("metrics/eval.json") or {}
    if entry.get("pretraining") == "imagenet21k":
        return (
            *row,
            None,
            "top1",
            "the paper's row is pretrained on ImageNet-21k, this pipeline pretrains on "
            "ImageNet-1k (released checkpoints are compared below)",
            False,
            NOT_COMPARABLE,
        )
    if not imagenet or params.model.name != model or not ev:
        why = (
            not_imagenet
            if not imagenet
            else f"the pipeline's model is {params.model.name}"
            if params.model.name != model
            else "metrics/eval.json not found (the evaluate stage has not run)"
        )
        return (*row, None, "top1", why, False)
    if ev.get("img_size") != res:
        return (
            *row,
            None,
            "top1",
            f"evaluated at {ev.get('img_size')} px (metrics/eval.json img_size), the "
            f"paper's row at {res} px: not compared",
            False,
            NOT_COMPARABLE,
        )
    return (*row, metrics.get("metrics/eval.json", "top1"), "top1", f"{res} px, crop {ev.get('crop_ratio')}")


def _released_files(metrics: Metrics) -> list[str]:
    folder = metrics.root / RELEASED_DIR
    return [f"{RELEASED_DIR}/{f.name}" for f in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def _released_row(paper: dict, doc: Any) -> dict | None:
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


def comparison_table(paper: dict, params, metrics: Metrics, runs: RunIndex) -> Table:
    """One row per paper number this pipeline can produce."""
    tols = paper.get("tolerances", {})
    imagenet = params.data.source == "real"
    scale = params.scale
    rows: list[list[Any]] = []
    device = (metrics.load("metrics/complexity.json") or {}).get("device", "")

    def add(
        quantity, model, paper_value, source, value: Sourced | None, tol_key, note="", comparable=True, why_not=NOT_RUN
    ):
        tol = tols.get(tol_key, {"abs": 0})
        status = compare(paper_value, value.value if value is not None else None, tol) if comparable else why_not
        shown = value if (value is not None and comparable) else NONE
        run = runs.run_id(value.file) if value is not None and comparable else NONE
        rows.append([quantity, model, paper_value, source, shown, describe_tolerance(tol), status, run, note])

    not_imagenet = f"ImageNet accuracy: this run trains on {params.data.source} data ({scale} scale)"
    for entry in paper.get("model_zoo", []):
        model, src = entry["model"], entry["source"]
        i = _complexity_row(metrics, model)
        for q in ("top1", "params_m", "gmacs", "throughput", "peak_mem_mb"):
            if q not in entry:
                continue
            if q == "top1":
                add(*_zoo_top1(entry, params, metrics, imagenet, not_imagenet))
                for rel in _released_files(metrics):
                    if _released_row(paper, metrics.load(rel)) is entry:
                        add(*_released_top1(entry, rel, metrics))
                continue
            value = (
                metrics.get("metrics/complexity.json", f"rows[{i}].{q}", ".1f" if q != "gmacs" else ".2f")
                if i is not None
                else None
            )
            if value is None:
                add(
                    QUANTITY_TITLES[q],
                    model,
                    entry[q],
                    src,
                    None,
                    q,
                    f"{model} at 224 px is not in complexity.models at this scale" if i is None else "not measured",
                )
            elif q in ("throughput", "peak_mem_mb") and not str(device).startswith("cuda"):
                add(
                    QUANTITY_TITLES[q],
                    model,
                    entry[q],
                    src,
                    value,
                    q,
                    f"the paper's is a GPU number; measured here on {device or 'an unknown device'}: "
                    f"{value} (see the complexity table)",
                    comparable=False,
                )
            else:
                add(
                    QUANTITY_TITLES[q],
                    model,
                    entry[q],
                    src,
                    value,
                    q,
                    "from the architecture (any scale)" if q in ("params_m", "gmacs") else f"on {device}",
                )

    exp = params.experiments
    abl = metrics.load("metrics/ablations.json") or {}
    multi = paper.get("multiclass", {})
    for init in ("scratch", "finetuned"):
        e = multi.get(f"{init}_top1")
        if not e:
            continue
        ok = imagenet and exp.multiclass_model == "patchconvnet_s60_multi"
        value = metrics.get("metrics/ablations.json", f"multiclass.{init}.mean") if ok else None
        mismatch = _grid_mismatch(abl, "multiclass", e) if ok and value is not None else None
        add(
            f"multi-class top-1 (%), {init}",
            "patchconvnet_s60_multi",
            e["value"],
            e["source"],
            value,
            "top1",
            mismatch or ("" if ok else not_imagenet),
            ok and not mismatch,
            NOT_COMPARABLE if mismatch else NOT_RUN,
        )
        for rel in _released_files(metrics):
            if _released_row(paper, metrics.load(rel)) is e:
                add(*_released_top1(e, rel, metrics))

    res = paper.get("resnet50", {})
    for pool, model in (("avg", "resnet50"), ("attention", "resnet50_attnpool")):
        e = res.get(f"{pool}_top1")
        if not e:
            continue
        ok = imagenet and exp.resnet.get(pool) == model
        value = metrics.get("metrics/ablations.json", f"resnet.{pool}.mean") if ok else None
        mismatch = _grid_mismatch(abl, "resnet", e) if ok and value is not None else None
        add(
            f"ResNet-50 top-1 (%), {pool} pooling",
            model,
            e["value"],
            e["source"],
            value,
            "top1",
            mismatch or ("" if ok else not_imagenet),
            ok and not mismatch,
            NOT_COMPARABLE if mismatch else NOT_RUN,
        )
        if "gmacs" in e:
            i = _complexity_row(metrics, model)
            value = metrics.get("metrics/complexity.json", f"rows[{i}].gmacs") if i is not None else None
            add(
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

    for key, rel, mkey, title, tol_key, _dataset in (
        ("ade20k_upernet_miou", "metrics/segmentation.json", "mIoU", "ADE20k mIoU (UperNet)", "miou", "ade20k"),
        ("coco_maskrcnn_box_ap", "metrics/detection.json", "bbox_AP", "COCO box AP (Mask R-CNN)", "box_ap", "coco"),
    ):
        for e in paper.get(key, []):
            ok = imagenet and params.model.name == e["model"]
            value = metrics.get(rel, mkey) if ok else None
            note = (
                ""
                if ok
                else (
                    f"this run transfers to synthetic {params.data.source} scenes"
                    if not imagenet
                    else f"the pipeline's model is {params.model.name}"
                )
            )
            add(title, e["model"], e["value"], e["source"], value, tol_key, note, ok)

    grid_batch = exp.train_for("ablation").batch_size
    for variant, e in (paper.get("ablations") or {}).items():
        cond = (
            f"the paper's condition: {e['condition']}; this run's grid batch: {grid_batch}"
            if e.get("condition")
            else ""
        )
        row = (abl.get("ablations") or {}).get(variant)
        diff = metrics.get("metrics/ablations.json", f"ablations.{variant}.vs_baseline.verdict")
        if not imagenet or row is None or diff is None:
            why = (
                "ImageNet ablation: the measured direction on this run's data is in the ablation table below"
                if not imagenet
                else f"variant {variant} not in experiments.variants"
            )
            rows.append(
                [
                    f"ablation direction: {variant}",
                    params.model.name,
                    direction_text(e),
                    e["source"],
                    NONE,
                    "direction",
                    NOT_RUN,
                    NONE,
                    "; ".join(filter(None, (why, cond))),
                ]
            )
            continue
        verdict = str(diff.value)
        agree = {"worse": "worse", "similar": "within noise", "better": "better"}.get(e["direction"]) == verdict
        status = REPRODUCED if agree else (NOT_RUN if verdict.startswith("not resolved") else DIFFERS)
        rows.append(
            [
                f"ablation direction: {variant}",
                params.model.name,
                direction_text(e),
                e["source"],
                diff,
                "direction",
                status,
                runs.run_id(diff.file),
                cond,
            ]
        )
    return Table(COMPARISON_COLUMNS, rows, "Every number of the paper this pipeline can produce.", status_column=6)


# --- this run's own results -------------------------------------------------------------------------


# The paper's two-row comparisons outside the ablation table: (section, this row, reference row).
PAPER_PAIRS = {
    ("resnet", "attention"): ("resnet50", "attention_top1", "avg_top1"),
    ("multiclass", "finetuned"): ("multiclass", "finetuned_top1", "scratch_top1"),
}


def _recipe_text(recipe: dict | None) -> str:
    """'16 epochs at 64 px' (or 'N steps'), from a comparison's recipe in ablations.json."""
    if not recipe:
        return "recipe not recorded"
    length = f"{recipe['max_steps']} steps" if recipe.get("max_steps") else f"{recipe['epochs']} epochs"
    return f"{length} at {recipe['img_size']} px"


def _pair_direction(paper: dict, group: str, name: str) -> str:
    """The paper's direction for a ResNet / multi-class row, from its two numbers in paper/numbers.yaml."""
    pair = PAPER_PAIRS.get((group, name))
    if pair is None or pair[0] not in paper:
        return NONE
    sec, row, ref = pair
    d = paper[sec][row]["value"] - paper[sec][ref]["value"]
    return f"{'better' if d > 0 else 'worse' if d < 0 else 'similar'} ({d:+.1f} top-1)"


def _fmt_ci(ci) -> str:
    return f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else NONE


def results_sections(paper: dict, params, metrics: Metrics, runs: RunIndex) -> list[Section]:
    out: list[Section] = []
    g = metrics.get
    smoke = params.scale == "demo"
    label = "smoke run" if smoke else f"{params.scale} scale"

    # classification
    rows = []
    for rel, key, what in (
        ("metrics/pretrain.json", "top1", "pretrain, final val top-1 (%)"),
        ("metrics/finetune.json", "top1", "fine-tune, final val top-1 (%)"),
        ("metrics/eval.json", "top1", "evaluate: val top-1 (%)"),
        ("metrics/eval.json", "top5", "evaluate: val top-5 (%)"),
        ("metrics/eval.json", "v2_top1", "evaluate: ImageNet-V2 top-1 (%)"),
        ("metrics/pixel_baseline.json", "top1", "raw-pixel linear baseline: val top-1 (%)"),
    ):
        v = g(rel, key)
        if v is not None:
            rows.append([what, v, rel, runs.run_id(rel)])
    sec = Section("Classification")
    if rows:
        sec.tables.append(Table(["quantity", "value", "metrics file", "MLflow run"], rows))
        ev, px = g("metrics/eval.json", "top1"), g("metrics/pixel_baseline.json", "top1")
        if ev is not None and px is not None:
            gap = "above" if ev.value > px.value else "NOT above"
            sec.paragraphs.append(
                f"The fine-tuned model is {gap} the raw-pixel baseline on this data "
                f"(the task needs more than colour statistics when it is above)."
            )
    else:
        sec.paragraphs.append("No classification metrics yet (pretrain / finetune / evaluate not run).")
    released = []
    for rel in _released_files(metrics):
        row = _released_row(paper, metrics.load(rel))
        released.append(
            [
                g(rel, "model"),
                g(rel, "checkpoint"),
                g(rel, "img_size", "d"),
                g(rel, "crop_ratio", ".3f"),
                g(rel, "top1"),
                g(rel, "top5"),
                g(rel, "n_images", "d"),
                f"{row.get('top1', row.get('value'))} at {row.get('resolution')} px" if row else NONE,
            ]
        )
    if released:
        sec.tables.append(
            Table(
                ["model", "checkpoint", "img size", "crop", "top-1", "top-5", "images", "paper row"],
                released,
                "Released checkpoints evaluated by this pipeline",
            )
        )
    out.append(sec)

    # ablations, resnet, multiclass
    abl = metrics.load("metrics/ablations.json")
    sec = Section("Ablations and comparisons" + (" (smoke runs)" if abl and not abl.get("evidence") else ""))
    if abl:
        sec.paragraphs.append(str(abl.get("note", "")))
        recipes = abl.get("recipes") or {}
        directions = {k: direction_text(v) for k, v in (paper.get("ablations") or {}).items()}
        for group, ref, caption in (
            ("ablations", "baseline", "Ablations against the baseline"),
            ("resnet", "avg", "ResNet: attention pooling against average pooling"),
            ("multiclass", "scratch", "Multi-class tokens: fine-tuned against scratch"),
        ):
            rows = []
            for name, r in (abl.get(group) or {}).items():
                base = f"{group}.{name}"
                vs = r.get(f"vs_{ref}")
                row = [
                    name,
                    g("metrics/ablations.json", f"{base}.n", "d"),
                    g("metrics/ablations.json", f"{base}.mean"),
                    g("metrics/ablations.json", f"{base}.std") or NONE,
                ]
                if vs is None:
                    row += ["(reference)", NONE, NONE]
                else:
                    row += [
                        g("metrics/ablations.json", f"{base}.vs_{ref}.diff", "+.2f"),
                        _fmt_ci(vs.get("ci95")),
                        g("metrics/ablations.json", f"{base}.vs_{ref}.verdict"),
                    ]
                row.append(directions.get(name, NONE) if group == "ablations" else _pair_direction(paper, group, name))
                row.append(
                    label
                    if not abl.get("evidence")
                    else f"{len(abl.get('seeds', []))} seeds, {_recipe_text(recipes.get(group))}"
                )
                rows.append(row)
            if rows:
                sec.tables.append(
                    Table(
                        [
                            "variant",
                            "seeds",
                            "mean top-1",
                            "std",
                            f"diff vs {ref}",
                            "95% CI",
                            "verdict",
                            "paper direction",
                            "run kind",
                        ],
                        rows,
                        caption,
                    )
                )
        grid = abl.get("depth_width") or []
        rows = [
            [
                g("metrics/ablations.json", f"depth_width[{i}].width", "d"),
                g("metrics/ablations.json", f"depth_width[{i}].depth", "d"),
                g("metrics/ablations.json", f"depth_width[{i}].top1"),
                g("metrics/ablations.json", f"depth_width[{i}].params_m", ".3f"),
                g("metrics/ablations.json", f"depth_width[{i}].gmacs", ".3f"),
                g("metrics/ablations.json", f"depth_width[{i}].throughput", ".0f") or NONE,
                g("metrics/ablations.json", f"depth_width[{i}].peak_mem_mb", ".0f") or NONE,
            ]
            for i in range(len(grid))
        ]
        if rows:
            sec.tables.append(
                Table(
                    ["width", "depth", "top-1", "params (M)", "GMACs", "throughput (im/s)", "peak mem (MB)"],
                    rows,
                    f"Depth x width grid (one seed per point, {_recipe_text(recipes.get('depth_width'))})",
                )
            )
    else:
        sec.paragraphs.append("metrics/ablations.json not found (the summarize stage has not run).")
    out.append(sec)

    # complexity
    cx = metrics.load("metrics/complexity.json")
    sec = Section("Complexity")
    if cx:
        rows = []
        for i, r in enumerate(cx.get("rows", [])):
            rows.append(
                [
                    r.get("model"),
                    g("metrics/complexity.json", f"rows[{i}].img_size", "d"),
                    g("metrics/complexity.json", f"rows[{i}].params_m", ".2f"),
                    g("metrics/complexity.json", f"rows[{i}].gmacs", ".2f"),
                    g("metrics/complexity.json", f"rows[{i}].throughput", ".1f") or NONE,
                    g("metrics/complexity.json", f"rows[{i}].peak_mem_mb", ".0f") or NONE,
                ]
            )
        sec.tables.append(
            Table(
                ["model", "img size", "params (M)", "GMACs", "throughput (im/s)", "peak mem (MB)"],
                rows,
                f"Measured on {cx.get('device', '?')}",
            )
        )
    else:
        sec.paragraphs.append("metrics/complexity.json not found.")
    out.append(sec)

    # transfer
    sec = Section("Transfer to dense tasks: pretrained vs scratch trunk")
    for task, keys in (("segmentation", ("mIoU", "mAcc", "aAcc")), ("detection", ("bbox_AP", "segm_AP"))):
        rows = []
        for init, suffix in (("pretrained", ""), ("scratch", "_scratch")):
            rel = f"metrics/{task}{suffix}.json"
            if metrics.exists(rel):
                rows.append([init, *[g(rel, k) or NONE for k in keys], runs.run_id(rel)])
        if rows:
            sec.tables.append(Table(["trunk", *keys, "MLflow run"], rows, f"{task} ({params.data.source} data)"))
        else:
            sec.paragraphs.append(f"No {task} metrics (metrics/{task}.json) at this point.")
    out.append(sec)

    # attention
    att = metrics.load("metrics/attention.json")
    sec = Section("Attention maps: localisation of the labelled object")
    if att:
        rows = []
        for m, r in att.items():
            if isinstance(r, dict) and "pointing_game" in r:
                rows.append(
                    [
                        m,
                        g("metrics/attention.json", f"{m}.pointing_game", ".1f"),
                        g("metrics/attention.json", f"{m}.iou", ".1f"),
                        g("metrics/attention.json", f"{m}.model_top1", ".1f") or NONE,
                        g("metrics/attention.json", f"{m}.n", "d"),
                    ]
                )
        sec.tables.append(
            Table(
                ["map", "pointing game (boxes) %", "IoU with the boxes %", "model top-1 %", "images"],
                rows,
                f"IoU at threshold {att.get('threshold')} x max",
            )
        )
        for k, v in (att.get("definitions") or {}).items():
            sec.notes.append(f"*{k}*: {v}")
    else:
        sec.paragraphs.append("metrics/attention.json not found (the attention stage has not run).")
    out.append(sec)
    return out


def recipe_section(root: Path, params) -> Section:
    """The paper-scale recipe with the source of every value (paper/recipe.yaml)."""
    from pcn.analysis import recipe as R

    sec = Section("Paper-scale recipe")
    try:
        entries = R.load_recipe(root / R.RECIPE_PATH)
    except R.RecipeError as exc:
        sec.paragraphs.append(f"No recipe table: {exc}.")
        return sec
    sec.paragraphs.append(
        "What `scales.paper` in params.yaml sets, and where each value comes from "
        "(paper/recipe.yaml; '(no key)': the schema has no key for it, so it is not applied)."
    )
    if params.scale == "paper":
        bad = R.disagreements(entries, params)
        sec.paragraphs.append(
            "This run's params agree with every keyed value."
            if not bad
            else f"This run's params differ from the recipe in {len(bad)} value(s): " + "; ".join(bad)
        )
    else:
        sec.paragraphs.append(
            f"This run is at scale **{params.scale}**: its own values are in params.yaml; "
            "the table is the paper scale's."
        )
    sec.tables.append(Table(list(R.COLUMNS), R.table_rows(entries)))
    return sec


MACHINE_KEYS = ("cpu", "cores", "torch", "onednn", "mkl", "gpu", "host")


def machines_section(root: Path) -> Section:
    """Which machine and libraries produced which metrics (``machine`` in each metrics file)."""
    from pcn import machine

    by_machine: dict[tuple, list[str]] = {}
    for path in sorted((root / "metrics").rglob("*.json")):
        try:
            m = json.loads(path.read_text()).get("machine")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(m, dict):
            key = tuple(m.get(k) for k in MACHINE_KEYS)
            by_machine.setdefault(key, []).append(str(path.relative_to(root / "metrics").with_suffix("")))
    rows = [[*("-" if v is None else v for v in key), ", ".join(stages)] for key, stages in by_machine.items()]
    sec = Section("Machines", paragraphs=[machine.__doc__.split("\n\n")[1].replace("\n", " ")])
    if rows:
        sec.tables.append(Table([*MACHINE_KEYS, "metrics"], rows))
    return sec


def figure_section(figures_dir: Path) -> Section:
    sec = Section("Figures")
    index = figures_dir / "index.json"
    if not index.is_file():
        sec.paragraphs.append("reports/figures/index.json not found (the figures stage has not run).")
        return sec
    manifest = json.loads(index.read_text())
    for info in manifest.get("figures", {}).values():
        png = next((f for f in info["files"] if f.endswith(".png")), None)
        if png:
            sec.figures.append((f"{info['title']} (from {', '.join(info['sources'])})", f"figures/{png}"))
    for name, why in manifest.get("skipped", {}).items():
        sec.paragraphs.append(f"Skipped *{name}*: {why}.")
    return sec


def build_report(root: str | Path, params, paper_path: str | Path | None = None) -> Report:
    root = Path(root)
    paper = load_paper(Path(paper_path) if paper_path else root / "paper" / "numbers.yaml")
    metrics = Metrics(root)
    runs = RunIndex(params, metrics)
    comp = comparison_table(paper, params, metrics, runs)
    summary = Section(
        "Summary",
        paragraphs=[
            (
                f"Scale **{params.scale}**, data **{params.data.source}**, model **{params.model.name}**, "
                f"seeds {list(params.experiments.seeds)}; MLflow experiment *{params.tracking.experiment}*."
            ),
            (
                "Paper: Touvron et al., *Augmenting Convolutional networks with attention-based aggregation*, "
                "arXiv:2112.13692 (2021)."
            ),
        ],
    )
    counts = {s: sum(1 for r in comp.rows if r[comp.status_column] == s) for s in STATUSES}
    summary.paragraphs.append("Paper numbers: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + ".")
    if params.data.source == "demo":
        summary.paragraphs.append(
            "This run trains on synthetic demo data: the paper's ImageNet, ADE20k and COCO numbers are "
            "'not run at this scale'; params and GMACs of the paper's models come from their architecture and "
            "are compared at any scale. The demo's own results follow the comparison."
        )
    cmp_section = Section(
        "Paper vs reproduced",
        tables=[comp],
        paragraphs=[
            (
                "Status: reproduced = equal at the paper's precision; within tolerance = inside the tolerance column; "
                "differs = outside it; not run at this scale = this run cannot produce the number; not comparable = "
                "this run measured it at another resolution or from other pretraining data than the paper's row."
            )
        ],
    )
    figures_dir = root / "reports" / "figures"
    sections = [
        summary,
        cmp_section,
        recipe_section(root, params),
        *results_sections(paper, params, metrics, runs),
        figure_section(figures_dir),
        machines_section(root),
    ]
    return Report("PatchConvNet reproduction report", sections, comp, figures_dir)


# --- rendering ----------------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    return str(v)  # paper values as written (4.0 stays 4.0); Sourced values format themselves


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""]
    for sec in report.sections:
        lines += [f"## {sec.title}", ""]
        for p in sec.paragraphs:
            lines += [p, ""]
        for t in sec.tables:
            if t.caption:
                lines += [f"*{t.caption}*", ""]
            lines.append("| " + " | ".join(t.columns) + " |")
            lines.append("|" + "---|" * len(t.columns))
            for row in t.rows:
                lines.append("| " + " | ".join(_md_escape(_cell(c)) for c in row) + " |")
            lines.append("")
        for p in sec.notes:
            lines += [p, ""]
        for title, path in sec.figures:
            lines += [f"![{title}]({path})", "", f"*{title}*", ""]
    return "\n".join(lines).rstrip() + "\n"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
caption{caption-side:top;text-align:left;font-style:italic;padding:.3em 0}
td.status-reproduced{background:#d9f2d9}td.status-within-tolerance{background:#eef7d0}
td.status-differs{background:#f8d4d4}td.status-not-run-at-this-scale{color:#777}td.status-not-comparable{color:#777}
figure{margin:1em 0 2em}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
code{font-size:.9em}
"""


def _inline(text: str) -> str:
    s = html.escape(text)
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"\*(.+?)\*", r"<em>\1</em>", s)


def to_html(report: Report, base: Path) -> str:
    """One file: CSS inline, figures as base64 PNG data URIs, no links to other files."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(report.title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
    ]
    for sec in report.sections:
        anchor = re.sub(r"[^a-z0-9]+", "-", sec.title.lower()).strip("-")
        out.append(f'<section id="{anchor}"><h2>{html.escape(sec.title)}</h2>')
        for p in sec.paragraphs:
            out.append(f"<p>{_inline(p)}</p>")
        for t in sec.tables:
            out.append("<table>")
            if t.caption:
                out.append(f"<caption>{html.escape(t.caption)}</caption>")
            out.append(
                "<thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in t.columns) + "</tr></thead><tbody>"
            )
            for row in t.rows:
                cells = []
                for j, c in enumerate(row):
                    cls = ""
                    if j == t.status_column:
                        cls = f' class="status-{re.sub(r"[^a-z]+", "-", str(c).lower()).strip("-")}"'
                    title = f' title="{html.escape(c.file)}#{html.escape(c.key)}"' if isinstance(c, Sourced) else ""
                    cells.append(f"<td{cls}{title}>{html.escape(_cell(c))}</td>")
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</tbody></table>")
        for p in sec.notes:
            out.append(f"<p>{_inline(p)}</p>")
        for title, path in sec.figures:
            png = base / path
            if not png.is_file():
                continue
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            out.append(
                f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(title)}</figcaption></figure>"
            )
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(report: Report, out_dir: str | Path) -> tuple[Path, Path]:
    from pcn.io import write_text

    out_dir = Path(out_dir)
    md = write_text(out_dir / "report.md", to_markdown(report))
    page = write_text(out_dir / "report.html", to_html(report, report.figures_dir.parent))
    return md, page


def iter_statuses(report: Report) -> Iterator[tuple[str, str, str]]:
    """(quantity, model, status) of every comparison row."""
    t = report.comparison
    for row in t.rows:
        yield str(row[0]), str(row[1]), str(row[t.status_column])
