"""The stage table: the ONE definition of the DAG.

Both front ends are views of :func:`build_stages`: the Snakefile turns each
:class:`Stage` into a rule (``workflow/rules/*.smk``) and :func:`dvc_yaml` writes
``dvc.yaml`` (``pcn dag`` regenerates it; a test checks the committed file is
current and that both front ends expand to the same stages, commands, deps and
outs).  The table depends on the resolved params: the scale picks whether demo
data is synthesised or real datasets are read, and the experiment grid (variants,
seeds, depth/width points) expands into one stage instance per element, through
Snakemake wildcards and DVC ``matrix``.

About 500 lines: the table is meant to be read in one place, stage after stage.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from pcn.config import Params, ParamsError, StageResources
from pcn.errors import UserError

# The sections every grid run reads (each study adds its own)
EXPERIMENT_PARAMS = (
    "runtime",
    "data.loader",
    "data.num_workers",
    "model",
    "experiments.train",
    "experiments.loader",
    "experiments.model_options",
)

# Snakemake starts the ready job of highest priority first.  The main line is the DAG's longest
# chain (data -> pretrain -> finetune -> evaluate, transfers): its head starts before the grid's
# many short runs, each next link as soon as it can, and the long pretrained transfers before
# the short from-scratch ones.
PRIORITY_CHAIN_HEAD = 100
PRIORITY_CHAIN_NEXT = 90
PRIORITY_LONG_TRANSFER = 50
PRIORITY_ANY_TIME = 0

# Paths more than one stage names (one writes, others read)
BENCHMARK_DIR = "logs/benchmarks"  # one TSV per Snakemake job (its `benchmark:` file)
FFCV_DIR = "data/ffcv"
BASELINE_VARIANT = "baseline"  # the grid's reference run: the multi-class init and the attention maps read it

DVC_HEADER = "# Generated from pcn/stages.py by `pcn dag` -- edit params.yaml or the stage table, not this file.\n"


# --- what each job asks the scheduler for ----------------------------------------------

# The images of each classification split (ImageNet-1k train and val, ImageNet-v2)
IMAGENET_SPLIT_IMAGES = {"train": 1_281_167, "val": 50_000, "v2": 10_000}
IMAGENET_TRAIN_IMAGES = IMAGENET_SPLIT_IMAGES["train"]
# An assumed, cautious conversion rate per writer process (decoding a full-size JPEG, resizing
# it to max_resolution, re-encoding it); not measured on ImageNet: the job's time limit is an
# estimate to check against the first real conversion (launcher.slurm.resources.convert).
CONVERT_IMAGES_PER_WORKER_S = 25
TIME_MARGIN = 2  # a wall-time limit is twice the estimate: a slow file system must not kill the job


@dataclass(frozen=True)
class Resources:
    """What one job of a stage asks SLURM for (memory and GPUs per node)."""

    cpus_per_task: int
    mem_gb: int
    time_min: int
    gpus_per_node: int = 0
    nodes: int = 1
    tasks_per_node: int = 1
    partition: str | None = None

    def overridden(self, own: StageResources | None) -> Resources:
        """These resources with ``launcher.slurm.resources.<stage>``'s set values."""
        if own is None:
            return self
        return replace(self, **{k: v for k, v in own.model_dump().items() if v is not None})

    def describe(self) -> str:
        gpus = f"{self.gpus_per_node} GPU" if self.gpus_per_node else "no GPU"
        return (
            f"{self.nodes} node(s) x {self.tasks_per_node} task(s) x {self.cpus_per_task} CPU, {gpus}, "
            f"{self.mem_gb} GB, {self.time_min} min, partition {self.partition or '(default)'}"
        )


def _light(params: Params, accelerated: bool = False) -> Resources:
    """A summary, a figure, a report, a count: one core, a few GB, minutes."""
    real = params.data.source != "demo"
    return Resources(1, 8 if real else 4, 120 if real else 30, gpus_per_node=_gpu(params, accelerated))


def _gpu(params: Params, accelerated: bool) -> int:
    return int(accelerated and params.runtime.device == "cuda")


def _loader_job(params: Params) -> Resources:
    """A model over a val set (evaluate, attention): a GPU, and a core for each loader worker
    plus the one that feeds the GPU; 2 GB for each of them."""
    cpus = params.data.num_workers + 1
    real = params.data.source != "demo"
    return Resources(cpus, 4 + 2 * cpus, 120 if real else 30, gpus_per_node=_gpu(params, True))


def _convert_job(params: Params) -> Resources:
    """The FFCV conversion: a core for each writer process; time from the image count of
    the splits it converts."""
    workers = max(1, params.data.num_workers)
    if params.data.source == "demo":
        d = params.data.demo
        per_split = {"train": d.n_classes * d.train_per_class, "val": d.n_classes * d.val_per_class}
        per_split["v2"] = per_split["val"]
    else:
        per_split = IMAGENET_SPLIT_IMAGES
    images = sum(per_split[s] for s in ffcv_splits(params))
    minutes = images / (CONVERT_IMAGES_PER_WORKER_S * workers) / 60
    return Resources(workers, 4 + 2 * workers, 10 + math.ceil(TIME_MARGIN * minutes))


def ffcv_splits(params: Params) -> tuple[str, ...]:
    """The classification splits some stage of this scale reads through FFCV, in reading
    order: training reads train and val (its per-epoch evaluation), ``evaluate`` val and
    v2.  The conversion writes only these, so no stage waits on a file no one reads (at
    paper scale ``evaluate.loader: torch`` scores the original JPEGs: v2 is not converted).
    A folder-reading loader still reads a converted split's list of skipped files."""
    training = {params.data.loader, params.experiments.loader or params.data.loader}
    reads = {"train", "val"} if "ffcv" in training else set()
    if (params.evaluate.loader or params.data.loader) == "ffcv":
        reads |= {"val", "v2"}
    return tuple(s for s in IMAGENET_SPLIT_IMAGES if s in reads)


def _ffcv_deps(params: Params) -> tuple[str, ...]:
    """The converted splits' folder, as a dependency of the stages that read it."""
    return (FFCV_DIR,) if ffcv_splits(params) else ()


def _training_job(params: Params) -> Resources:
    """A training-like stage's submitit job: ``launcher.slurm`` (one rank per GPU, or
    ``launcher.tasks`` CPU ranks per node)."""
    s = params.launcher.slurm
    return Resources(
        s.cpus_per_task,
        s.mem_gb,
        s.time_min,
        gpus_per_node=s.gpus_per_node,
        nodes=s.nodes,
        tasks_per_node=s.gpus_per_node or params.launcher.tasks,
    )


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str  # a `pcn <verb>` command; {wildcard} placeholders for matrix stages
    topic: str  # which workflow/rules/<topic>.smk holds its rule
    deps: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()  # cached outputs (files or directories)
    metrics: tuple[str, ...] = ()  # JSON metrics, not cached (git-tracked)
    plots: tuple[str, ...] = ()  # CSV/JSON plots, not cached
    params: tuple[str, ...] = ()  # dotted params.yaml sections the stage reads
    matrix: dict[str, list[Any]] = field(default_factory=dict)
    threads: int = 1
    gpu: bool = False  # training-like: launched through submitit (local or SLURM)
    accelerated: bool = False  # runs models in its own process: on a cluster its job asks for one GPU
    report: dict[str, str] = field(default_factory=dict)  # out -> category in `snakemake --report`
    priority: int = PRIORITY_ANY_TIME  # Snakemake starts higher first: see the PRIORITY_* constants
    resources: Resources = Resources(1, 4, 30)  # its job on a cluster: the table gives each stage its own
    # DVC reruns it at every repro (a stat walk; DVC has no start hook); its outs are uncached
    # and persist, so their content and time change only when the walk's result does
    always_changed: bool = False

    def instances(self) -> list[dict[str, str]]:
        """One wildcard assignment per stage instance ([{}] for a plain stage)."""
        if not self.matrix:
            return [{}]
        keys = list(self.matrix)
        return [dict(zip(keys, map(str, combo))) for combo in itertools.product(*self.matrix.values())]

    def instance_name(self, wc: dict[str, str]) -> str:
        # DVC's own naming of matrix instances: name@v1-v2
        return f"{self.name}@{'-'.join(wc.values())}" if wc else self.name

    def all_paths(self) -> tuple[str, ...]:
        return self.outs + self.metrics + self.plots

    @property
    def benchmark(self) -> str:
        """Where Snakemake's ``benchmark:`` writes the job's wall and CPU time (a pattern with
        the matrix's wildcards; benchmarks/dag_profile.py reads it)."""
        return "/".join([BENCHMARK_DIR, self.name, *(f"{{{k}}}" for k in self.matrix)]) + ".tsv"

    def instance(self, wc: dict[str, str]) -> Stage:
        """This stage with one instance's wildcards filled in (its command, paths and params
        sections); the name stays the stage's."""

        def fmt(texts: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(t.format(**wc) for t in texts)

        return replace(
            self,
            cmd=self.cmd.format(**wc),
            deps=fmt(self.deps),
            outs=fmt(self.outs),
            metrics=fmt(self.metrics),
            plots=fmt(self.plots),
            params=fmt(self.params),
            report={k.format(**wc): v for k, v in self.report.items()},
            matrix={},
        )


CODE = {
    "data": "pcn/data",
    "models": "pcn/models",
    "train": "pcn/train",
    "eval": "pcn/eval",
    "transfer": "pcn/transfer",
    "analysis": "pcn/analysis",
}


# What every stage runs besides its own modules: the schema, the output helpers, tracking.
# Not this table, though the steps read their paths and sections from it: those are the DAG's
# own outs and params, which both front ends compare already; a new stage must not rerun all.
CORE_CODE = ("pcn/config.py", "pcn/io.py", "pcn/machine.py", "pcn/tracking.py", "pcn/steps/common.py")


def _code(*parts: str) -> tuple[str, ...]:
    return tuple(CODE[p] for p in parts)


# What a code folder holds that its stages run: modules, and the report's templates.
CODE_SUFFIXES = (".py", ".j2")


def code_files(folder: str) -> tuple[str, ...]:
    """The code of a folder, as files: Snakemake compares files' times, and a folder's
    time does not change when a file in it is edited."""
    return tuple(sorted(str(p) for p in Path(folder).rglob("*") if p.suffix in CODE_SUFFIXES))


def with_code_files(stage: Stage) -> Stage:
    """``stage`` depending on the code it runs, file by file: its step module (from the verb
    table), the core modules, and every module of the code folders it lists."""
    from pcn.steps import VERBS

    module = VERBS[stage.cmd.split()[1]][0].split(":")[0]
    own = ("/".join(module.split(".")) + ".py",)
    deps: list[str] = []
    for dep in stage.deps:
        deps += code_files(dep) if dep in CODE.values() else [dep]
    extra = tuple(f for f in CORE_CODE + own if f not in deps)
    return replace(stage, deps=tuple(deps) + extra)


def depth_width_points(params: Params) -> list[str]:
    return [f"w{w}-d{d}" for w, d in params.experiments.depth_width]


def checkpoint_path(stage: str) -> str:
    """The model a main-line stage (pretrain, finetune) writes, which later stages read."""
    return f"results/{stage}/model.pth"


def stage_record(name: str, params: Params) -> Stage:
    """The table's record of stage ``name`` for these params: what a step writes and reads."""
    records = {s.name: s for s in _table(params)}
    if name not in records:
        raise UserError(
            f"stage {name!r} is not part of the DAG for these params (stages: {', '.join(records)}); "
            "check params.yaml (data.source, experiments.enabled, <task>.init)"
        )
    return records[name]


def build_stages(params: Params) -> list[Stage]:
    """The DAG: the table, each stage depending on the code it runs."""
    return [with_code_files(s) for s in _table(params)]


def _table(params: Params) -> list[Stage]:
    return _with_own_resources(_stages(params), params)


def _stages(params: Params) -> list[Stage]:
    demo = params.data.source == "demo"
    train_params = ("scale", "seed", "runtime", "data.loader", "data.num_workers", "model")
    exp = params.experiments
    st: list[Stage] = []
    add = st.append

    # --- data ----------------------------------------------------------------------
    if demo:
        add(
            Stage(
                "demo_data",
                "pcn make-demo",
                "data",
                priority=PRIORITY_CHAIN_HEAD,
                deps=_code("data"),
                outs=(params.data.root,),
                params=("seed", "data.root", "data.demo"),
                resources=_light(params),
            )
        )
    image_deps = _image_deps(params)
    # The conversion forks data.num_workers writer processes: it asks for that many cores.
    # It exists only where some stage reads a .beton (ffcv_splits), and only they wait on it.
    ffcv = _ffcv_deps(params)
    if ffcv:
        add(
            Stage(
                "convert",
                "pcn convert",
                "data",
                priority=PRIORITY_CHAIN_HEAD,
                deps=image_deps + _code("data"),
                outs=(FFCV_DIR,),
                metrics=("metrics/convert.json",),
                threads=max(1, params.data.num_workers),
                resources=_convert_job(params),
                params=(
                    "scale",
                    "data.source",
                    "data.root",
                    "data.imagenet",
                    "data.imagenet_v2",
                    "data.ffcv",
                    "data.num_workers",
                    # which splits are converted (ffcv_splits)
                    "data.loader",
                    "experiments.loader",
                    "evaluate.loader",
                ),
            )
        )
    if demo:
        add(
            Stage(
                "pixel_baseline",
                "pcn pixel-baseline",
                "data",
                deps=image_deps + _code("data", "eval"),
                metrics=("metrics/pixel_baseline.json",),
                params=("seed", "data.demo"),
                resources=_light(params),
            )
        )

    # --- the main line: pretrain -> finetune -> evaluate ------------------------------
    add(
        Stage(
            "pretrain",
            "pcn pretrain",
            "train",
            deps=ffcv + _code("data", "models", "train"),
            outs=(checkpoint_path("pretrain"),),
            metrics=("metrics/pretrain.json",),
            plots=("plots/pretrain.csv",),
            params=train_params + ("pretrain",),
            threads=params.runtime.threads,
            gpu=True,
            resources=_training_job(params),
            priority=PRIORITY_CHAIN_HEAD,
        )
    )
    add(
        Stage(
            "finetune",
            "pcn finetune",
            "train",
            deps=ffcv + (checkpoint_path("pretrain"),) + _code("data", "models", "train"),
            outs=(checkpoint_path("finetune"),),
            metrics=("metrics/finetune.json",),
            plots=("plots/finetune.csv",),
            params=train_params + ("finetune",),
            threads=params.runtime.threads,
            gpu=True,
            resources=_training_job(params),
            priority=PRIORITY_CHAIN_NEXT,
        )
    )
    add(
        Stage(
            "evaluate",
            "pcn evaluate",
            "eval",
            deps=ffcv + (checkpoint_path(params.evaluate.checkpoint),) + _code("data", "models", "train", "eval"),
            metrics=("metrics/eval.json",),
            params=("scale", "data.loader", "model", "evaluate", "runtime"),
            accelerated=True,
            resources=_loader_job(params),
        )
    )
    add(
        Stage(
            "complexity",
            "pcn complexity",
            "eval",
            deps=_code("models", "eval"),
            outs=("reports/complexity.md",),
            metrics=("metrics/complexity.json",),
            params=("scale", "complexity", "finetune.img_size", "pretrain.img_size", "runtime"),
            report={"reports/complexity.md": "Tables"},
            accelerated=True,
            resources=_light(params, accelerated=True),
        )
    )

    # --- transfer to dense tasks ------------------------------------------------------
    for task, cfg in (("segmentation", params.segmentation), ("detection", params.detection)):
        for init in cfg.init:
            suffix = "" if init == "pretrained" else f"_{init}"
            deps = image_deps
            if init == "pretrained":
                deps += (cfg.backbone_checkpoint,)
            add(
                Stage(
                    f"{task}{suffix}",
                    f"pcn {task} --init {init}",
                    "transfer",
                    deps=deps + _code("models", "train", "transfer"),
                    outs=(f"results/{task}{suffix}",),
                    metrics=(f"metrics/{task}{suffix}.json",),
                    plots=(f"plots/{task}{suffix}.csv",),
                    # the rank count and the loader workers change the batches each rank draws
                    params=(
                        "scale",
                        "seed",
                        "runtime",
                        "model",
                        task,
                        "launcher",
                        "data.source",
                        "data.root",
                        "data.ade20k" if task == "segmentation" else "data.coco",
                        "data.num_workers",
                    ),
                    threads=params.runtime.threads,
                    gpu=True,
                    resources=_training_job(params),
                    priority=PRIORITY_LONG_TRANSFER if init == "pretrained" else PRIORITY_ANY_TIME,
                )
            )

    # --- the paper's comparisons: one instance per variant x seed -------------------------
    if exp.enabled:
        _add_grid(st, params)
    _add_analysis(st, params, image_deps)
    return st if demo else _with_dataset_listings(st, params)


def _with_dataset_listings(st: list[Stage], params: Params) -> list[Stage]:
    """Real datasets as dependencies: a stage that lists each dataset the DAG reads
    (pcn.manifest), and each reading stage depending on its datasets' listings."""
    from pcn.manifest import LISTER, manifest_path
    from pcn.preflight import datasets_read, reads

    listings = tuple(manifest_path(d) for d in datasets_read(params, (s.name for s in st)))
    lister = Stage(
        LISTER,
        "pcn manifest",
        "data",
        outs=listings,
        params=("data.source", "data.root", "data.imagenet", "data.imagenet_v2", "data.ade20k", "data.coco"),
        priority=PRIORITY_CHAIN_HEAD,
        resources=_light(params),
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
    from pcn.manifest import LISTER  # a stage of real data only

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


def _image_deps(params: Params) -> tuple[str, ...]:
    """The image folders as a dependency: the demo's generated ones (real datasets live
    outside the repository, named in params.yaml)."""
    return (params.data.root,) if params.data.source == "demo" else ()


def _add_grid(st: list[Stage], params: Params) -> None:
    """The experiment grid: ablations, the ResNet pair, multi-class, depth x width, and their summary."""
    st += _grid_runs(params).values()
    st.append(
        Stage(
            "summarize",
            "pcn summarize",
            "experiments",
            deps=_instance_paths(st, "experiments", "metrics") + _code("analysis"),
            metrics=("metrics/ablations.json",),
            plots=(GRID_TOP1_PLOT, DEPTH_WIDTH_PLOT),
            params=("scale", "experiments"),
            resources=_light(params),
        )
    )


def _grid_runs(params: Params) -> dict[str, Stage]:
    """The grid's training stages by name: ablations, the ResNet pair, multi-class, depth x width."""
    exp = params.experiments
    exp_params = ("scale",) + EXPERIMENT_PARAMS
    # the grid's loader (memory, torch) may read the image folders instead of the .beton
    exp_deps = _ffcv_deps(params) + _image_deps(params) + _code("data", "models", "train")
    seeds = list(exp.seeds)
    ablation = Stage(
        "ablation",
        "pcn ablate --variant {variant} --seed {seed}",
        "experiments",
        deps=exp_deps,
        outs=("results/ablations/{variant}-s{seed}/model.pth",),
        metrics=("metrics/ablations/{variant}-s{seed}.json",),
        params=exp_params + ("experiments.train_by_study.ablation", "experiments.variants.{variant}"),
        matrix={"variant": list(exp.variants), "seed": seeds},
        threads=1,
        gpu=True,
        resources=_training_job(params),
    )
    resnet_pool = Stage(
        "resnet_pool",
        "pcn resnet-pool --pool {pool} --seed {seed}",
        "experiments",
        deps=exp_deps,
        outs=("results/resnet/{pool}-s{seed}/model.pth",),
        metrics=("metrics/resnet/{pool}-s{seed}.json",),
        params=exp_params
        + ("experiments.train_by_study.resnet_pool", "experiments.resnet.{pool}", "experiments.resnet_options"),
        matrix={"pool": list(exp.resnet), "seed": seeds},
        threads=1,
        gpu=True,
        resources=_training_job(params),
    )
    multiclass = Stage(
        "multiclass",
        "pcn multiclass --init {init} --seed {seed}",
        "experiments",
        # the baseline's model of the same seed (the seed stays a wildcard)
        deps=exp_deps + (ablation.outs[0].format(variant=BASELINE_VARIANT, seed="{seed}"),),
        outs=("results/multiclass/{init}-s{seed}/model.pth",),
        metrics=("metrics/multiclass/{init}-s{seed}.json",),
        params=exp_params + ("experiments.train_by_study.multiclass", "experiments.multiclass_model"),
        matrix={"init": ["scratch", "finetuned"], "seed": seeds},
        threads=1,
        gpu=True,
        resources=_training_job(params),
    )
    depth_width = Stage(
        "depth_width",
        "pcn depth-width --point {point}",
        "experiments",
        deps=exp_deps + _code("eval"),
        outs=("results/depth_width/{point}/model.pth",),
        metrics=("metrics/depth_width/{point}.json",),
        params=exp_params + ("experiments.train_by_study.depth_width", "experiments.depth_width", "experiments.seeds"),
        matrix={"point": depth_width_points(params)},
        threads=1,
        gpu=True,
        resources=_training_job(params),
    )
    return {s.name: s for s in (ablation, resnet_pool, multiclass, depth_width)}


def avg_pool_variant(params: Params) -> str | None:
    """The ablation variant with average pooling (the CAM model), if the grid has one."""
    return next((n for n, o in params.experiments.variants.items() if o.get("pool") == "avg"), None)


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


def attention_checkpoints(params: Params) -> list[str]:
    """The checkpoints the attention stage reads (its dependencies)."""
    return list(attention_map_checkpoints(params).values())


def _add_analysis(st: list[Stage], params: Params, image_deps: tuple[str, ...]) -> None:
    """Attention maps, figures and the report."""
    add = st.append
    add(
        Stage(
            "attention",
            "pcn attention",
            "report",
            deps=image_deps + tuple(attention_checkpoints(params)) + _code("data", "models", "analysis"),
            outs=("results/attention",),
            metrics=("metrics/attention.json",),
            params=(
                "scale",
                "attention",
                "data.root",  # the val images and their boxes, read from the dataset folder
                "data.imagenet",
                "runtime",
                "model",
                "experiments.model_options",
                "experiments.train.img_size",
                "experiments.train_by_study.ablation",
            ),
            report={"results/attention": "Attention maps"},
            accelerated=True,
            resources=_loader_job(params),
        )
    )
    figures = Stage(
        "figures",
        "pcn figures",
        "report",
        # the attention stage's pictures, the dense tasks' qualitative pictures and the
        # paper's directions are drawn too
        deps=_instance_paths(st, None, "metrics")
        + _instance_paths(st, None, "plots")
        + tuple(o for s in st if s.topic == "transfer" for o in s.outs)
        + ("results/attention", "paper/numbers.yaml")
        + _code("analysis"),
        outs=("reports/figures",),
        params=("scale",),
        report={"reports/figures": "Figures"},
        resources=_light(params),
    )
    add(figures)
    add(
        Stage(
            "report",
            "pcn report",
            "report",
            deps=_instance_paths(st, None, "metrics")
            + figures.outs
            + ("paper/numbers.yaml", "paper/recipe.yaml")
            + _code("analysis"),
            outs=("reports/report.md", "reports/report.html"),
            params=("scale",),
            report={"reports/report.html": "Report"},
            resources=_light(params),
        )
    )


def _instance_paths(stages: list[Stage], topic: str | None, kind: str) -> tuple[str, ...]:
    """Concrete metrics/plots files of every instance of the stages so far (of one topic)."""
    out: list[str] = []
    for s in stages:
        if topic is None or s.topic == topic:
            for wc in s.instances():
                out += [p.format(**wc) for p in getattr(s, kind)]
    return tuple(out)


# --- DVC view -------------------------------------------------------------------------


def _dvc_fmt(text: str, keys) -> str:
    for k in keys:
        text = text.replace("{" + k + "}", "${item." + k + "}")
    return text


_MISSING = object()


def _lookup(raw: dict, dotted: str, missing: Any = None) -> Any:
    """The value at a dotted key of the raw params, or ``missing`` when a part is absent."""
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return missing
        node = node[part]
    return node


def _param_keys(stage: Stage, raw: dict, scale: str) -> list:
    """DVC params entries: every listed section plus the active scale's overrides of it.

    Only the active scale's: an edit of another scale's values changes nothing this run
    reads, so neither front end may call the stage stale for it (Snakemake tracks the
    resolved params too).  ``pcn scale`` rewrites dvc.yaml for the new scale."""
    for section in stage.params:
        for key in {section.format(**wc) for wc in stage.instances()}:
            # DVC reads params.yaml itself, without pcn's defaults: a tracked key must be written there
            if _lookup(raw, key, _MISSING) is _MISSING:
                raise ParamsError(
                    f"params.yaml has no key {key!r}, which stage {stage.name!r} tracks "
                    "(DVC reads the file itself): write it, null for the default"
                )
    keys = list(stage.params)
    overrides = (raw.get("scales") or {}).get(scale) or {}
    for section in stage.params:
        if "{" in section:
            continue  # per-instance keys: an override of the whole section is listed already
        if _lookup(overrides, section) is not None:
            keys.append(f"scales.{scale}.{section}")
    return keys


def dvc_yaml(params: Params, raw: dict) -> str:
    stages: dict[str, Any] = {}
    for s in build_stages(params):
        keys = list(s.matrix)
        entry: dict[str, Any] = {}
        if s.matrix:
            entry["matrix"] = {k: list(v) for k, v in s.matrix.items()}
        entry["cmd"] = _dvc_fmt(s.cmd, keys)
        if s.deps:
            entry["deps"] = [_dvc_fmt(d, keys) for d in s.deps]
        entry["params"] = [_dvc_fmt(k, keys) for k in _param_keys(s, raw, params.scale)]
        if s.outs:
            flags = {"cache": False, "persist": True} if s.always_changed else None
            entry["outs"] = [{_dvc_fmt(o, keys): flags} if flags else _dvc_fmt(o, keys) for o in s.outs]
        if s.always_changed:
            entry["always_changed"] = True
        if s.metrics:
            entry["metrics"] = [{_dvc_fmt(m, keys): {"cache": False}} for m in s.metrics]
        if s.plots:
            entry["plots"] = [{_dvc_fmt(p, keys): {"cache": False, **plot_axes(s, p)}} for p in s.plots]
        stages[s.name] = entry
    doc = {"stages": stages, "plots": dvc_top_plots(params)}
    return DVC_HEADER + yaml.safe_dump(doc, sort_keys=False, width=120)


# The grid's plots (written by `pcn summarize`): each run's top-1 by variant, and the
# depth x width points.
GRID_TOP1_PLOT = "plots/grid_top1.csv"
DEPTH_WIDTH_PLOT = "plots/depth_width.csv"
_PLOT_AXES = {
    "train": {"x": "epoch", "y": "val_top1"},  # plots/<stage>.csv of the training stages
    "transfer": {"x": "step", "y": "loss"},
    GRID_TOP1_PLOT: {"x": "variant", "y": "top1", "template": "runs_by_variant"},  # .dvc/plots/: x is a name
    DEPTH_WIDTH_PLOT: {"x": "depth", "y": "top1", "template": "scatter"},
}


def plot_axes(stage: Stage, path: str) -> dict[str, str]:
    """The x and y columns DVC draws for one of a stage's plots (DVC's default y would be
    the file's last column)."""
    return _PLOT_AXES.get(path) or _PLOT_AXES[stage.topic]


def dvc_top_plots(params: Params) -> list:
    """Plot definitions that combine stages (x/y declared so `dvc plots show` renders them)."""
    return [
        {
            "Training accuracy": {
                "template": "linear",
                "x": "epoch",
                "y": {"plots/pretrain.csv": "val_top1", "plots/finetune.csv": "val_top1"},
            }
        },
        {
            "Training loss": {
                "template": "linear",
                "x": "epoch",
                "y": {"plots/pretrain.csv": "train_loss", "plots/finetune.csv": "train_loss"},
            }
        },
    ]


def expand(stage: Stage) -> list[dict[str, Any]]:
    """Concrete instances of a stage: name, cmd, deps, outs (all paths)."""
    out = []
    for wc in stage.instances():
        one = stage.instance(wc)
        out.append(
            {
                "name": stage.instance_name(wc),
                "cmd": one.cmd,
                "deps": sorted(one.deps),
                "outs": sorted(one.all_paths()),
            }
        )
    return out


# --- the SLURM view -------------------------------------------------------------------------


def plugin_resources(stage: Stage, params: Params) -> dict[str, Any]:
    """The Snakemake SLURM executor plugin's resources of ``stage``'s job (its rule's
    ``resources:``), by the plugin's names; account, qos and constraint as every job gets them."""
    if stage.gpu:
        return {}  # a local rule: it submits its job through submitit and waits on this host
    r, s = stage.resources, params.launcher.slurm
    res: dict[str, Any] = {"runtime": r.time_min, "mem_mb": r.mem_gb * 1024, "cpus_per_task": r.cpus_per_task}
    if r.gpus_per_node:
        res["gpu"] = r.gpus_per_node
    if r.partition:
        res["slurm_partition"] = r.partition
    if s.account:
        res["slurm_account"] = s.account
    for key in ("qos", "constraint"):
        if getattr(s, key):
            res[key] = getattr(s, key)
    return res
