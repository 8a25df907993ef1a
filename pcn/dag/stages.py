"""The stage table: the ONE definition of the DAG.

Both front ends are views of :func:`build_stages`: the Snakefile turns each
:class:`~pcn.dag.stage.Stage` into a rule (``workflow/rules/*.smk``) and
:func:`pcn.dag.dvc_view.dvc_yaml` writes ``dvc.yaml`` (``pcn dag`` regenerates it; a test
checks the committed file is current and that both front ends expand to the same stages,
commands, deps and outs).  Each stage's command names the paths its step opens, taken from
the stage's own deps and outs (``pcn figures --metrics metrics --out reports/figures``): a
step reads its paths from its command line, never from this table.  The table depends on
the resolved params: the scale picks whether demo data is synthesised or real datasets are
read, and the experiment grid (variants, seeds, depth/width points) expands into one stage
instance per element, through Snakemake wildcards and DVC ``matrix``.

Meant to be read in one place, stage after stage.
"""

from __future__ import annotations

from dataclasses import replace

from pcn.config import Params, ParamsError
from pcn.config.names import BASELINE_VARIANT, GRID_FOLDERS, avg_pool_variant, grid_run_name, point_name, transfer_stage
from pcn.dag.manifest import LISTER, manifest_path
from pcn.dag.preflight import datasets_read, reads
from pcn.dag.stage import (
    PRIORITY_ANY_TIME,
    PRIORITY_CHAIN_HEAD,
    PRIORITY_CHAIN_NEXT,
    PRIORITY_LONG_TRANSFER,
    Stage,
    stage_sections,
)
from pcn.dag.stage_code import code, with_code_files
from pcn.dag.stage_resources import convert_job, light_job, loader_job, training_job
from pcn.data.splits import FFCV_DIR, ffcv_splits

# The grid's plots (written by `pcn summarize`): each run's top-1 by variant, and the
# depth x width points.
GRID_TOP1_PLOT = "plots/grid_top1.csv"
DEPTH_WIDTH_PLOT = "plots/depth_width.csv"
# The folders the analysis stages read their inputs from (each input is declared file by file)
METRICS_DIR, PLOTS_DIR, RESULTS_DIR = "metrics", "plots", "results"


def checkpoint_path(stage: str) -> str:
    """The model a main-line stage (pretrain, finetune) writes, which later stages read."""
    return f"results/{stage}/model.pth"


def _ffcv_deps(params: Params) -> tuple[str, ...]:
    """The converted splits' folder, as a dependency of the stages that read it."""
    return (FFCV_DIR,) if ffcv_splits(params) else ()


def _ffcv_args(params: Params) -> tuple[tuple[str, str], ...]:
    return tuple(("ffcv", d) for d in _ffcv_deps(params))


def _image_deps(params: Params) -> tuple[str, ...]:
    """The image folders as a dependency: the demo's generated ones (real datasets live
    outside the repository, named in params.yaml)."""
    return (params.data.root,) if params.data.source == "demo" else ()


def _outputs(out: str | tuple[str, ...] = (), metrics: str = "", plots: str = "") -> tuple:
    """The ``--out/--metrics/--plots`` flags of a stage's declared outputs."""
    pairs = [("out", out), ("metrics", metrics), ("plots", plots)]
    return tuple((k, v) for k, v in pairs if v)


def build_stages(params: Params) -> list[Stage]:
    """The DAG: the table, each stage depending on the code it runs."""
    stages = [with_code_files(s) for s in _table(params)]
    for s in stages:
        _check_args(s)
    return stages


def _check_args(stage: Stage) -> None:
    """A command names only declared paths, and every output: the step opens what the DAG says."""
    declared = stage.deps + stage.all_paths()
    named: list[str] = []
    for _, value in stage.args:
        for v in (value,) if isinstance(value, str) else value:
            path = v.split("=", 1)[-1]  # `--weights method=path`
            folder = any(d.startswith(path + "/") for d in declared)  # `--metrics metrics`
            if "/" in path and path not in declared and not folder:  # a word (`--init scratch`) passes
                raise ValueError(f"stage {stage.name}: its command names {path}, which it does not declare")
            named.append(path)
    unnamed = [o for o in stage.all_paths() if not any(o == n or o.startswith(n + "/") for n in named)]
    if unnamed:
        raise ValueError(f"stage {stage.name}: its command does not name its output(s) {', '.join(unnamed)}")


def _table(params: Params) -> list[Stage]:
    return _with_own_resources(_stages(params), params)


def _stages(params: Params) -> list[Stage]:
    st = _data_stages(params) + _main_line(params) + _transfers(params)
    if params.experiments.enabled:
        st += _grid(params)
    st += _analysis(st, params)
    st = st if params.data.source == "demo" else _with_dataset_listings(st, params)
    return _after_the_front_end_check(st, params)


FRONT_END = "front_end"  # the first stage: under a bare `dvc repro`, the front-end lock's check
FRONT_END_MARK = ".pcn/front_end.txt"


def _after_the_front_end_check(st: list[Stage], params: Params) -> list[Stage]:
    """Every stage after the front-end check (pcn.steps.front_end): DVC runs it first at
    every repro, before it would restore any stage from its run cache."""
    check = _stage(
        FRONT_END,
        "front-end",
        "data",
        params=("scale",),
        args=_outputs(FRONT_END_MARK),
        outs=(FRONT_END_MARK,),
        priority=PRIORITY_CHAIN_HEAD,
        resources=light_job(params),
        always_changed=True,
    )
    return [check, *(replace(s, deps=(FRONT_END_MARK, *s.deps)) for s in st)]


def _stage(name: str, verb: str, topic: str, **kw) -> Stage:
    """A stage tracking the params sections it reads (pcn.dag.stage.stage_sections)."""
    return Stage(name, verb, topic, params=kw.pop("params", None) or stage_sections(name), **kw)


# --- data ----------------------------------------------------------------------------------


def _data_stages(params: Params) -> list[Stage]:
    demo = params.data.source == "demo"
    image_deps = _image_deps(params)
    st = []
    if demo:
        root = params.data.root
        st.append(
            _stage(
                "demo_data",
                "make-demo",
                "data",
                args=_outputs(root),
                priority=PRIORITY_CHAIN_HEAD,
                deps=code("data"),
                outs=(root,),
                resources=light_job(params),
            )
        )
    # The conversion forks data.num_workers writer processes: it asks for that many cores.
    # It exists only where some stage reads a .beton (ffcv_splits), and only they wait on it.
    if _ffcv_deps(params):
        st.append(
            _stage(
                "convert",
                "convert",
                "data",
                args=_outputs(FFCV_DIR, "metrics/convert.json"),
                priority=PRIORITY_CHAIN_HEAD,
                deps=image_deps + code("data"),
                outs=(FFCV_DIR,),
                metrics=("metrics/convert.json",),
                threads=max(1, params.data.num_workers),
                resources=convert_job(params),
            )
        )
    if demo:
        st.append(
            _stage(
                "pixel_baseline",
                "pixel-baseline",
                "data",
                args=_outputs(metrics="metrics/pixel_baseline.json"),
                deps=image_deps + code("data", "eval"),
                metrics=("metrics/pixel_baseline.json",),
                resources=light_job(params),
            )
        )
    return st


# --- the main line: pretrain -> finetune -> evaluate ----------------------------------------


def _main_line(params: Params) -> list[Stage]:
    ffcv = _ffcv_deps(params)
    st = []
    for name, init, priority in (
        ("pretrain", None, PRIORITY_CHAIN_HEAD),
        ("finetune", "pretrain", PRIORITY_CHAIN_NEXT),
    ):
        weights = (checkpoint_path(init),) if init else ()
        out, metrics, plots = checkpoint_path(name), f"metrics/{name}.json", f"plots/{name}.csv"
        st.append(
            _stage(
                name,
                name,
                "train",
                args=_ffcv_args(params) + tuple(("weights", w) for w in weights) + _outputs(out, metrics, plots),
                deps=ffcv + weights + code("data", "models", "train"),
                outs=(out,),
                metrics=(metrics,),
                plots=(plots,),
                threads=params.runtime.threads,
                submits_job=True,
                resources=training_job(params),
                priority=priority,
            )
        )
    weights = checkpoint_path(params.evaluate.checkpoint)
    st.append(
        _stage(
            "evaluate",
            "evaluate",
            "eval",
            args=_ffcv_args(params) + (("weights", weights),) + _outputs(metrics="metrics/eval.json"),
            deps=ffcv + (weights,) + code("data", "models", "train", "eval"),
            metrics=("metrics/eval.json",),
            accelerated=True,
            resources=loader_job(params),
        )
    )
    st.append(
        _stage(
            "complexity",
            "complexity",
            "eval",
            args=_outputs("reports/complexity.md", "metrics/complexity.json"),
            deps=code("models", "eval"),
            outs=("reports/complexity.md",),
            metrics=("metrics/complexity.json",),
            report={"reports/complexity.md": "Tables"},
            accelerated=True,
            resources=light_job(params, accelerated=True),
        )
    )
    return st


# --- transfer to dense tasks ----------------------------------------------------------------


def _transfers(params: Params) -> list[Stage]:
    st = []
    for task, cfg in (("segmentation", params.segmentation), ("detection", params.detection)):
        for init in cfg.init:
            name = transfer_stage(task, init)
            backbone = (checkpoint_path(cfg.backbone),) if init == "pretrained" else ()
            out, metrics, plots = f"results/{name}", f"metrics/{name}.json", f"plots/{name}.csv"
            st.append(
                _stage(
                    name,
                    task,
                    "transfer",
                    args=(("init", init), *(("checkpoint", b) for b in backbone), *_outputs(out, metrics, plots)),
                    deps=_image_deps(params) + backbone + code("models", "train", "transfer"),
                    outs=(out,),
                    metrics=(metrics,),
                    plots=(plots,),
                    params=stage_sections(name, task),
                    threads=params.runtime.threads,
                    submits_job=True,
                    resources=training_job(params),
                    priority=PRIORITY_LONG_TRANSFER if init == "pretrained" else PRIORITY_ANY_TIME,
                )
            )
    return st


# --- the paper's comparisons: one instance per variant x seed ------------------------------------


def _grid(params: Params) -> list[Stage]:
    """The experiment grid: ablations, the ResNet pair, multi-class, depth x width, and their summary."""
    runs = list(_grid_runs(params).values())
    summary = _stage(
        "summarize",
        "summarize",
        "experiments",
        args=(("metrics", METRICS_DIR),) + _outputs("metrics/ablations.json", plots=(GRID_TOP1_PLOT, DEPTH_WIDTH_PLOT)),
        deps=_instance_paths(runs, "metrics") + code("analysis"),
        metrics=("metrics/ablations.json",),
        plots=(GRID_TOP1_PLOT, DEPTH_WIDTH_PLOT),
        resources=light_job(params),
    )
    return [*runs, summary]


def _grid_run(params: Params, name: str, verb: str, matrix: dict, **kw) -> Stage:
    """One comparison of the grid: a training run per instance of ``matrix``, its model in
    results/<folder>/ and its metrics in metrics/<folder>/, named by the instance's values."""
    # the grid's loader (memory, torch) may read the image folders instead of the .beton
    deps = _ffcv_deps(params) + _image_deps(params) + code("data", "models", "train") + kw.pop("deps", ())
    run = grid_run_name(*(f"{{{k}}}" for k in matrix))  # {variant}-s{seed}; {point}
    folder = GRID_FOLDERS[name]
    out, metrics = f"results/{folder}/{run}/model.pth", f"metrics/{folder}/{run}.json"
    return _stage(
        name,
        verb,
        "experiments",
        args=tuple((k, f"{{{k}}}") for k in matrix) + kw.pop("args", ()) + _ffcv_args(params) + _outputs(out, metrics),
        deps=deps,
        outs=(out,),
        metrics=(metrics,),
        matrix=matrix,
        threads=1,
        submits_job=True,
        resources=training_job(params),
        **kw,
    )


def _grid_runs(params: Params) -> dict[str, Stage]:
    """The grid's training stages by name: ablations, the ResNet pair, multi-class, depth x width."""
    exp = params.experiments
    seeds = list(exp.seeds)
    ablation = _grid_run(params, "ablation", "ablate", {"variant": list(exp.variants), "seed": seeds})
    # the baseline's model of the same seed (the seed stays a wildcard)
    baseline = ablation.outs[0].format(variant=BASELINE_VARIANT, seed="{seed}")
    stages = (
        ablation,
        _grid_run(params, "resnet_pool", "resnet-pool", {"pool": list(exp.resnet), "seed": seeds}),
        _grid_run(
            params,
            "multiclass",
            "multiclass",
            {"init": ["scratch", "finetuned"], "seed": seeds},
            deps=(baseline,),
            args=(("baseline", baseline),),
        ),
        _grid_run(
            params,
            "depth_width",
            "depth-width",
            {"point": [point_name(w, d) for w, d in exp.depth_width]},
            deps=code("eval"),
        ),
    )
    return {s.name: s for s in stages}


def attention_map_checkpoints(params: Params) -> dict[str, str]:
    """method -> checkpoint of the maps the attention stage scores: the main line's, and with
    the grid the baseline's, the multi-class model's and the average-pooling variant's (CAM),
    each of the first seed."""
    maps = {"patchconvnet_finetuned": checkpoint_path("finetune")}
    exp = params.experiments
    if not exp.enabled:
        return maps
    runs = _grid_runs(params)

    def model(stage: str, **wc) -> str:
        return runs[stage].instance({k: str(v) for k, v in wc.items()}).outs[0]

    s0 = exp.seeds[0]
    maps["patchconvnet"] = model("ablation", variant=BASELINE_VARIANT, seed=s0)
    maps["patchconvnet_multiclass"] = model("multiclass", init="scratch", seed=s0)
    avg = avg_pool_variant(params)
    if avg:
        maps["cam"] = model("ablation", variant=avg, seed=s0)
    return maps


# --- attention maps, figures and the report ----------------------------------------------------


def _analysis(st: list[Stage], params: Params) -> list[Stage]:
    maps = attention_map_checkpoints(params)
    attention = _stage(
        "attention",
        "attention",
        "report",
        args=(("weights", tuple(f"{m}={path}" for m, path in maps.items())),)
        + _outputs("results/attention", "metrics/attention.json"),
        deps=_image_deps(params) + tuple(maps.values()) + code("data", "models", "analysis"),
        outs=("results/attention",),
        metrics=("metrics/attention.json",),
        report={"results/attention": "Attention maps"},
        accelerated=True,
        resources=loader_job(params),
    )
    st = [*st, attention]
    paper, recipe = "paper/numbers.yaml", "paper/recipe.yaml"
    figures = _stage(
        "figures",
        "figures",
        "report",
        args=(("metrics", METRICS_DIR), ("plots", PLOTS_DIR), ("results", RESULTS_DIR), ("paper", paper))
        + _outputs("reports/figures"),
        # the attention stage's pictures, the dense tasks' qualitative pictures and the
        # paper's directions are drawn too
        deps=_instance_paths(st, "metrics")
        + _instance_paths(st, "plots")
        + tuple(o for s in st if s.topic == "transfer" for o in s.outs)
        + ("results/attention", paper)
        + code("analysis"),
        outs=("reports/figures",),
        report={"reports/figures": "Figures"},
        resources=light_job(params),
    )
    report = _stage(
        "report",
        "report",
        "report",
        args=(("metrics", METRICS_DIR), ("figures", figures.outs[0]), ("paper", paper), ("recipe", recipe))
        + _outputs(("reports/report.md", "reports/report.html")),
        deps=_instance_paths(st, "metrics") + figures.outs + (paper, recipe) + code("analysis"),
        outs=("reports/report.md", "reports/report.html"),
        report={"reports/report.html": "Report"},
        resources=light_job(params),
    )
    return [attention, figures, report]


def _instance_paths(stages: list[Stage], kind: str) -> tuple[str, ...]:
    """Concrete metrics/plots files of every instance of ``stages``."""
    out: list[str] = []
    for s in stages:
        for wc in s.instances():
            out += [p.format(**wc) for p in getattr(s, kind)]
    return tuple(out)


# --- real datasets and per-stage resources -------------------------------------------------------


def _with_dataset_listings(st: list[Stage], params: Params) -> list[Stage]:
    """Real datasets as dependencies: a stage that lists each dataset the DAG reads
    (pcn.dag.manifest), and each reading stage depending on its datasets' listings."""
    listings = tuple(manifest_path(d) for d in datasets_read(params, (s.name for s in st)))
    lister = _stage(
        LISTER,
        "manifest",
        "data",
        args=_outputs(listings),
        outs=listings,
        priority=PRIORITY_CHAIN_HEAD,
        resources=light_job(params),
        always_changed=True,
    )
    table = reads(params)
    read = [replace(s, deps=s.deps + tuple(manifest_path(d) for d in table.get(s.name, ()))) for s in st]
    return [lister, *read]


def _every_stage_name(params: Params) -> list[str]:
    """The names of every stage the table can hold, whatever the switches (demo data, the
    grid, both inits): a resources override may name a stage this scale leaves out."""
    both = ["pretrained", "scratch"]
    every = params.model_copy(
        update={
            "data": params.data.model_copy(update={"source": "demo"}),
            "experiments": params.experiments.model_copy(update={"enabled": True}),
            "segmentation": params.segmentation.model_copy(update={"init": both}),
            "detection": params.detection.model_copy(update={"init": both}),
        }
    )
    return [LISTER] + [x.name for x in _stages(every)]


def _with_own_resources(st: list[Stage], params: Params) -> list[Stage]:
    """Each stage's job with ``launcher.slurm``'s partition and ``resources.<stage>`` overrides."""
    s = params.launcher.slurm
    unknown = [name for name in s.resources if name not in {x.name for x in st}]
    if unknown:
        names = _every_stage_name(params)
        for name in unknown:
            if name not in names:
                raise ParamsError(
                    f"params.yaml: launcher.slurm.resources.{name}: no such stage (stages: {', '.join(names)})"
                )
    return [
        replace(x, resources=replace(x.resources, partition=s.partition).overridden(s.resources.get(x.name)))
        for x in st
    ]
