"""One stage of the DAG, and the names and params sections its table and its step share.

The table (:mod:`pcn.dag.stages`) builds :class:`Stage` records; a step (``pcn <verb>``) never
reads the table: its paths come from its command line, which the table writes from the
record's own deps and outs.  What both still need lives here: how a stage instance and a
grid point are named, and which params sections each stage reads.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

from pcn.config.names import TRANSFER_TASKS, instance_name, shell_word
from pcn.dag.stage_resources import Resources
from pcn.dag.verbs import VERBS

# Snakemake starts the ready job of highest priority first.  The main line is the DAG's longest
# chain (data -> pretrain -> finetune -> evaluate, transfers): its head starts before the grid's
# many short runs, each next link as soon as it can, and the long pretrained transfers before
# the short from-scratch ones.
PRIORITY_CHAIN_HEAD = 100
PRIORITY_CHAIN_NEXT = 90
PRIORITY_LONG_TRANSFER = 50
PRIORITY_ANY_TIME = 0

BENCHMARK_DIR = "logs/benchmarks"  # one TSV per Snakemake job (its `benchmark:` file)


# --- the params sections each stage reads -----------------------------------------------------

TRAIN_PARAMS = ("scale", "seed", "runtime", "data.loader", "data.num_workers", "model")
# The sections every grid run reads (each study adds its own)
EXPERIMENT_PARAMS = (
    "scale",
    "runtime",
    "data.loader",
    "data.num_workers",
    "model",
    "experiments.train",
    "experiments.loader",
    "experiments.model_options",
)
_SECTIONS: dict[str, tuple[str, ...]] = {
    "demo_data": ("seed", "data.root", "data.demo"),
    "dataset_manifest": ("data.source", "data.root", "data.imagenet", "data.imagenet_v2", "data.ade20k", "data.coco"),
    "convert": (
        "scale",
        "data.source",
        "data.root",
        "data.imagenet",
        "data.imagenet_v2",
        "data.ffcv",
        "data.num_workers",
        # which splits are converted (pcn.data.splits.ffcv_splits)
        "data.loader",
        "experiments.loader",
        "evaluate.loader",
    ),
    "pixel_baseline": ("seed", "data.demo"),
    "pretrain": TRAIN_PARAMS + ("pretrain",),
    "finetune": TRAIN_PARAMS + ("finetune",),
    "evaluate": ("scale", "data.loader", "model", "evaluate", "runtime"),
    "complexity": ("scale", "complexity", "finetune.img_size", "pretrain.img_size", "runtime"),
    "ablation": EXPERIMENT_PARAMS + ("experiments.train_by_study.ablation", "experiments.variants.{variant}"),
    "resnet_pool": EXPERIMENT_PARAMS
    + ("experiments.train_by_study.resnet_pool", "experiments.resnet.{pool}", "experiments.resnet_options"),
    "multiclass": EXPERIMENT_PARAMS + ("experiments.train_by_study.multiclass", "experiments.multiclass_model"),
    "depth_width": EXPERIMENT_PARAMS
    + ("experiments.train_by_study.depth_width", "experiments.depth_width", "experiments.seeds"),
    "summarize": ("scale", "experiments"),
    "attention": (
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
    "figures": ("scale",),
    "report": ("scale",),
}


def stage_sections(stage: str, task: str | None = None) -> tuple[str, ...]:
    """The dotted params sections stage ``stage`` reads (``{wildcard}`` patterns for a grid
    stage): what DVC and Snakemake track and what its MLflow run logs.  A dense transfer
    (``task``): the rank count and the loader workers change the batches each rank draws."""
    if task is not None:
        dataset = f"data.{TRANSFER_TASKS[task]}"
        return (
            "scale",
            "seed",
            "runtime",
            "model",
            task,
            "launcher",
            "data.source",
            "data.root",
            dataset,
            "data.num_workers",
        )
    return _SECTIONS[stage]


# --- the record -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    name: str
    verb: str  # its `pcn <verb>` (pcn.dag.verbs.VERBS names the step module that runs it)
    topic: str  # the part of the DAG: data, train, eval, transfer, experiments or report
    # the command's flags, each a path the stage declares below (or a folder holding some),
    # a {wildcard} or a word; a tuple value is one flag with several values
    args: tuple[tuple[str, str | tuple[str, ...]], ...] = ()
    deps: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()  # cached outputs (files or directories)
    metrics: tuple[str, ...] = ()  # JSON metrics, not cached (git-tracked)
    plots: tuple[str, ...] = ()  # CSV/JSON plots, not cached
    params: tuple[str, ...] = ()  # dotted params.yaml sections the stage reads
    matrix: dict[str, list[Any]] = field(default_factory=dict)
    threads: int = 1
    # it submits its own job through submitit (local or SLURM) and waits for it, so Snakemake
    # keeps it on the submitting host (a localrule) whatever the executor
    submits_job: bool = False
    accelerated: bool = False  # runs models in its own process: on a cluster its job asks for one GPU
    report: dict[str, str] = field(default_factory=dict)  # out -> category in `snakemake --report`
    priority: int = PRIORITY_ANY_TIME  # Snakemake starts higher first: see the PRIORITY_* constants
    resources: Resources = Resources(1, 4, 30)  # its job on a cluster: the table gives each stage its own
    # DVC reruns it at every repro (a stat walk; DVC has no start hook); its outs are uncached
    # and persist, so their content and time change only when the walk's result does
    always_changed: bool = False

    @property
    def cmd(self) -> str:
        """``pcn <verb> --flag value ...``, every path the step opens named on it."""
        words = ["pcn", self.verb]
        for flag, value in self.args:
            words += [f"--{flag}", *((value,) if isinstance(value, str) else value)]
        return " ".join(map(shell_word, words))  # a path with a space or `$(...)` stays one word

    @property
    def step_module(self) -> str:
        """The file of the step module that runs this stage."""
        return VERBS[self.verb][0].split(":")[0].replace(".", "/") + ".py"

    def instances(self) -> list[dict[str, str]]:
        """One wildcard assignment per stage instance ([{}] for a plain stage)."""
        if not self.matrix:
            return [{}]
        keys = list(self.matrix)
        return [dict(zip(keys, map(str, combo))) for combo in itertools.product(*self.matrix.values())]

    def instance_name(self, wc: dict[str, str]) -> str:
        return instance_name(self.name, wc)

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
            args=tuple((k, v.format(**wc) if isinstance(v, str) else fmt(v)) for k, v in self.args),
            deps=fmt(self.deps),
            outs=fmt(self.outs),
            metrics=fmt(self.metrics),
            plots=fmt(self.plots),
            params=fmt(self.params),
            report={k.format(**wc): v for k, v in self.report.items()},
            matrix={},
        )
