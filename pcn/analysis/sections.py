"""This run's own results, section by section: classification, the grid's comparisons,
complexity, dense transfer, attention maps; the paper-scale recipe, the figures and the
machines that produced the metrics."""

from __future__ import annotations

import json
from pathlib import Path

from pcn.analysis.comparison import direction_text, released_files, released_row
from pcn.analysis.document import Section, Table
from pcn.analysis.paths import RunPaths
from pcn.analysis.setting import patch_stride, recipe_of, setting_text
from pcn.analysis.sourced import NONE, Metrics, RunIndex
from pcn.config.names import transfer_stage
from pcn.io import read_json

# The paper's two-row comparisons outside the ablation table: (section, this row, reference row).
PAPER_PAIRS = {
    ("resnet", "attention"): ("resnet50", "attention_top1", "avg_top1"),
    ("multiclass", "finetuned"): ("multiclass", "finetuned_top1", "scratch_top1"),
}
# The grid's comparisons in metrics/ablations.json: (group, reference row, caption).
GRID_GROUPS = (
    ("ablations", "baseline", "Ablations against the baseline"),
    ("resnet", "avg", "ResNet: attention pooling against average pooling"),
    ("multiclass", "scratch", "Multi-class tokens: fine-tuned against scratch"),
)
GRID_COLUMNS = [
    "variant",
    "seeds",
    "mean top-1",
    "std",
    "diff vs {ref}",
    "95% CI",
    "90% CI",
    "margin (±)",
    "mdd",
    "test",
    "verdict",
    "paper direction",
    "run kind (length, batch, resolution, tokens)",
]
# How to read the grid's tables (pcn.analysis.stats): under each table.
GRID_READING = (
    "*95% CI*: better or worse where it excludes 0. *90% CI* and *margin*: equivalent where the 90% "
    "interval lies within ±margin top-1 points (two one-sided tests at 5%, experiments.equivalence_margin). "
    "*mdd*: the smallest difference these seeds detect with 80% power at the 5% level. Neither better, worse "
    "nor equivalent is *inconclusive*; fewer than 3 seeds, or no seed-to-seed variance, is *not resolved*. "
    "*test*: paired t on the per-seed differences (the same seeds on both sides) or Welch's t."
)


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
    return [
        classification_section(paper, metrics, runs),
        grid_section(paper, params, metrics),
        complexity_section(metrics),
        transfer_section(params, metrics, runs),
        attention_section(metrics),
    ]


def classification_section(paper: dict, metrics: Metrics, runs: RunIndex) -> Section:
    g, f = metrics.get, metrics.file
    rows = []
    for rel, key, what in (
        (f("pretrain"), "top1", "pretrain, final val top-1 (%)"),
        (f("finetune"), "top1", "fine-tune, final val top-1 (%)"),
        (f("eval"), "top1", "evaluate: val top-1 (%)"),
        (f("eval"), "top5", "evaluate: val top-5 (%)"),
        (f("eval"), "v2_top1", "evaluate: ImageNet-V2 top-1 (%)"),
        (f("pixel_baseline"), "top1", "raw-pixel linear baseline: val top-1 (%)"),
    ):
        v = g(rel, key)
        if v is not None:
            rows.append([what, v, rel, runs.run_id(rel)])
    sec = Section("Classification")
    if rows:
        sec.tables.append(Table(["quantity", "value", "metrics file", "MLflow run"], rows))
        ev, px = g(f("eval"), "top1"), g(f("pixel_baseline"), "top1")
        if ev is not None and px is not None:
            gap = "above" if ev.value > px.value else "NOT above"
            sec.paragraphs.append(
                f"The fine-tuned model is {gap} the raw-pixel baseline on this data "
                f"(the task needs more than colour statistics when it is above)."
            )
    else:
        sec.paragraphs.append("No classification metrics yet (pretrain / finetune / evaluate not run).")
    released = []
    for rel in released_files(metrics):
        row = released_row(paper, metrics.load(rel))
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
    return sec


def grid_section(paper: dict, params, metrics: Metrics) -> Section:
    """The ablations, the ResNet pair, multi-class tokens and depth x width; every row says
    what it ran at (the paper's directions hold under conditions: batch, resolution)."""
    g = metrics.get
    summary = metrics.file("ablations")
    abl = metrics.load(summary)
    sec = Section("Ablations and comparisons" + (" (smoke runs)" if abl and not abl.get("evidence") else ""))
    if not abl:
        sec.paragraphs.append(f"{summary} not found (the summarize stage has not run).")
        return sec
    sec.paragraphs.append(str(abl.get("note", "")))
    kind = f"{len(abl.get('seeds', []))} seeds" if abl.get("evidence") else "smoke run"
    directions = {k: direction_text(v) for k, v in (paper.get("ablations") or {}).items()}
    for group, ref, caption in GRID_GROUPS:
        rec = recipe_of(abl, params, group)
        rows = []
        for name, r in (abl.get(group) or {}).items():
            base = f"{group}.{name}"
            vs = r.get(f"vs_{ref}")
            row = [name, g(summary, f"{base}.n", "d"), g(summary, f"{base}.mean"), g(summary, f"{base}.std") or NONE]
            if vs is None:
                row += ["(reference)", NONE, NONE, NONE, NONE, NONE, NONE]
            else:
                key = f"{base}.vs_{ref}"
                row += [
                    g(summary, f"{key}.diff", "+.2f"),
                    _fmt_ci(vs.get("ci95")),
                    _fmt_ci(vs.get("ci90")),
                    g(summary, f"{key}.margin", "g") or NONE,
                    g(summary, f"{key}.mdd") or NONE,
                    g(summary, f"{key}.test") or NONE,
                    g(summary, f"{key}.verdict"),
                ]
            row.append(directions.get(name, NONE) if group == "ablations" else _pair_direction(paper, group, name))
            row.append(f"{kind}, {setting_text(rec, patch_stride(params, group, name))}")
            rows.append(row)
        if rows:
            columns = [c.format(ref=ref) for c in GRID_COLUMNS]
            sec.tables.append(Table(columns, rows, caption))
    if sec.tables:
        sec.notes.append(GRID_READING)
    grid = abl.get("depth_width") or []
    rows = [
        [
            g(summary, f"depth_width[{i}].width", "d"),
            g(summary, f"depth_width[{i}].depth", "d"),
            g(summary, f"depth_width[{i}].top1"),
            g(summary, f"depth_width[{i}].params_m", ".3f"),
            g(summary, f"depth_width[{i}].gmacs", ".3f"),
            g(summary, f"depth_width[{i}].throughput", ".0f") or NONE,
            g(summary, f"depth_width[{i}].peak_mem_mb", ".0f") or NONE,
        ]
        for i in range(len(grid))
    ]
    if rows:
        setting = setting_text(recipe_of(abl, params, "depth_width"), patch_stride(params, "depth_width"))
        drop_path = params.experiments.train_for("depth_width").drop_path
        sec.tables.append(
            Table(
                ["width", "depth", "top-1", "params (M)", "GMACs", "throughput (im/s)", "peak mem (MB)"],
                rows,
                f"Depth x width grid (one seed per point, {setting}; drop path {drop_path:g} at every point). "
                "The paper adapts stochastic depth to the model size (facebookresearch/deit#185) and no source here "
                "gives its rates (paper/recipe.yaml: unverified), so the large points (width 768-1024, depth 120) "
                f"are likely under-regularised at {drop_path:g}",
            )
        )
    return sec


def _stage_section(metrics: Metrics, stage: str, title: str, missing: str = "") -> tuple[str, dict, Section]:
    """A section on one stage's metrics file: its path, its contents (empty when it is not
    there, which the section then says) and the section."""
    rel = metrics.file(stage)
    data = metrics.load(rel)
    sec = Section(title)
    if not data:
        sec.paragraphs.append(f"{rel} not found{missing}.")
    return rel, data, sec


def complexity_section(metrics: Metrics) -> Section:
    g = metrics.get
    rel, cx, sec = _stage_section(metrics, "complexity", "Complexity")
    if not cx:
        return sec
    rows = [
        [
            r.get("model"),
            g(rel, f"rows[{i}].img_size", "d"),
            g(rel, f"rows[{i}].params_m", ".2f"),
            g(rel, f"rows[{i}].gmacs", ".2f"),
            g(rel, f"rows[{i}].throughput", ".1f") or NONE,
            g(rel, f"rows[{i}].peak_mem_mb", ".0f") or NONE,
        ]
        for i, r in enumerate(cx.get("rows", []))
    ]
    sec.tables.append(
        Table(
            ["model", "img size", "params (M)", "GMACs", "throughput (im/s)", "peak mem (MB)"],
            rows,
            f"Measured on {cx.get('device', '?')}",
        )
    )
    return sec


def transfer_section(params, metrics: Metrics, runs: RunIndex) -> Section:
    sec = Section("Transfer to dense tasks: pretrained vs scratch trunk")
    # mIoU_ms_flip: mmseg's multi-scale + flip test, where segmentation.multiscale_flip_test ran it
    for task, keys in (
        ("segmentation", ("mIoU", "mIoU_ms_flip", "mAcc", "aAcc")),
        ("detection", ("bbox_AP", "segm_AP")),
    ):
        rows = []
        files = [(init, metrics.file(transfer_stage(task, init))) for init in ("pretrained", "scratch")]
        keys = [k for k in keys if any(metrics.get(rel, k) is not None for _, rel in files)]  # columns with a value
        for init, rel in files:
            if metrics.exists(rel):
                rows.append([init, *[metrics.get(rel, k) or NONE for k in keys], runs.run_id(rel)])
        if rows:
            sec.tables.append(Table(["trunk", *keys, "MLflow run"], rows, f"{task} ({params.data.source} data)"))
        else:
            sec.paragraphs.append(f"No {task} metrics ({metrics.file(task)}) at this point.")
    return sec


def attention_section(metrics: Metrics) -> Section:
    g = metrics.get
    title = "Attention maps: localisation of the labelled object"
    rel, att, sec = _stage_section(metrics, "attention", title, " (the attention stage has not run)")
    if not att:
        return sec
    if att.get("localisation_scored") is False:
        sec.paragraphs.append(f"Localisation not scored: {att.get('localisation_not_scored')}.")
    rows = [
        [
            m,
            g(rel, f"{m}.pointing_game", ".1f"),
            g(rel, f"{m}.iou", ".1f"),
            g(rel, f"{m}.model_top1", ".1f") or NONE,
            g(rel, f"{m}.n", "d"),
        ]
        for m, r in att.items()
        if isinstance(r, dict) and isinstance(r.get("pointing_game"), (int, float))  # not the definitions
    ]
    if not rows:
        return sec
    sec.tables.append(
        Table(
            ["map", "pointing game (boxes) %", "IoU with the boxes %", "model top-1 %", "images"],
            rows,
            f"IoU at threshold {att.get('threshold')} x max",
        )
    )
    for k, v in (att.get("definitions") or {}).items():
        sec.notes.append(f"*{k}*: {v}")
    return sec


def recipe_section(paths: RunPaths, params) -> Section:
    """The paper-scale recipe with the source of every value (paper/recipe.yaml)."""
    from pcn.analysis import recipe as R

    sec = Section("Paper-scale recipe")
    try:
        entries = R.load_recipe(paths.at("recipe"))
    except R.RecipeError as exc:
        sec.paragraphs.append(f"No recipe table: {exc}.")
        return sec
    sec.paragraphs.append(
        "What `scales.paper` in params.yaml sets, and where each value comes from "
        "(paper/recipe.yaml; '(no key)': the schema has no key for it, so it is not applied)."
    )
    unconfirmed = R.unverified(entries)
    if unconfirmed:
        sec.paragraphs.append(
            f"**{len(unconfirmed)} values are unverified**: no source here confirms them; the last column says what "
            "would (`pcn dryrun` lists them too): "
            + "; ".join(f"{e.topic} ({R.keys_text(e)})" for e in unconfirmed)
            + "."
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


def machines_section(paths: RunPaths) -> Section:
    """Which machine and libraries produced which metrics (``machine`` in each metrics file)."""
    from pcn.machine import device as machine

    folder = paths.at("metrics")
    by_machine: dict[tuple, list[str]] = {}
    for path in sorted(folder.rglob("*.json")):
        doc = read_json(path)
        m = doc.get("machine") if isinstance(doc, dict) else None
        if isinstance(m, dict):
            key = tuple(m.get(k) for k in MACHINE_KEYS)
            by_machine.setdefault(key, []).append(str(path.relative_to(folder).with_suffix("")))
    rows = [[*("-" if v is None else v for v in key), ", ".join(stages)] for key, stages in by_machine.items()]
    sec = Section("Machines", paragraphs=[machine.__doc__.split("\n\n")[1].replace("\n", " ")])
    if rows:
        sec.tables.append(Table([*MACHINE_KEYS, "metrics"], rows))
    return sec


def figure_section(figures_dir: Path) -> Section:
    sec = Section("Figures")
    index = figures_dir / "index.json"
    if not index.is_file():
        sec.paragraphs.append(f"{index} not found (the figures stage has not run).")
        return sec
    manifest = json.loads(index.read_text())
    for info in manifest.get("figures", {}).values():
        png = next((f for f in info["files"] if f.endswith(".png")), None)
        if png:
            sec.figures.append((f"{info['title']} (from {', '.join(info['sources'])})", f"figures/{png}"))
    for name, why in manifest.get("skipped", {}).items():
        sec.paragraphs.append(f"Skipped *{name}*: {why}.")
    return sec
