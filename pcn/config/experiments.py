"""The experiment grid: its comparisons, their recipes, and how a grid model is built."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from pcn.config.base import Section, deep_merge, describe_error
from pcn.config.training import AugConfig, TrainConfig

# The comparisons of the experiments grid, named as their stages (and MLflow `pcn.study` tags).
GRID_STUDIES = ("ablation", "resnet_pool", "multiclass", "depth_width")
# Runs of a comparison with a recipe of their own: under train_by_study.<study>, a key naming
# the run holds changes for that run alone, on top of the comparison's (the multi-class model
# fine-tuned from the single-token one trains as a fine-tuning, the one from scratch does not).
RUN_RECIPES: dict[str, tuple[str, ...]] = {"multiclass": ("finetuned",)}


class ExperimentsConfig(Section):
    """The paper's comparisons; each variant x seed is one stage instance."""

    enabled: bool = Field(True, description="false: the main line only (pretrain, finetune, evaluate, transfer)")
    seeds: list[int] = Field(default_factory=lambda: [0])
    equivalence_margin: float = Field(
        3.0,
        gt=0.0,
        description="top-1 points: two variants are called equivalent when the 90% interval of their "
        "difference lies within ±this margin (two one-sided tests at 5%, pcn/analysis/stats.py)",
    )
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {
            "baseline": {},
            "avgpool": {"pool": "avg"},
            "linear_stem": {"stem": "linear"},
            "batchnorm": {"norm": "batch"},
            "no_se": {"se": False},
            "two_agg_blocks": {"agg_blocks": 2},
            "multi_head_agg": {"agg_heads": 4},
        },
        description="the ablations: each variant's constructor options of the same PatchConvNet class",
    )
    resnet: dict[str, str] = Field(default_factory=lambda: {"avg": "resnet_demo", "attention": "resnet_demo_attnpool"})
    resnet_options: dict[str, Any] = Field(
        default_factory=dict,
        description="constructor options of both ResNets of the pair, e.g. {output_stride: 8}: the stride of "
        "the last feature map sets how many positions attention pooling chooses among",
    )
    multiclass_model: str = "patchconvnet_demo_multi"
    depth_width: list[list[int]] = Field(
        default_factory=lambda: [[64, 4], [64, 8], [96, 4], [96, 8]], description="[width, depth] pairs"
    )
    model_options: dict[str, Any] = Field(
        default_factory=lambda: {"stem_stride": 16},
        description="constructor options of every PatchConvNet the grid trains (variants, multi-class pair, "
        "depth x width points), under each run's own options",
    )
    # the demo grid's smoke runs: 30 steps each
    train: TrainConfig = TrainConfig(
        epochs=1, max_steps=30, warmup_epochs=0.3, layerscale_init=0.1, aug=AugConfig(scale_min=0.35)
    )
    train_by_study: dict[Literal[GRID_STUDIES], dict[str, Any]] = Field(
        default_factory=lambda: {study: {} for study in GRID_STUDIES},
        description="per comparison, changes to `train` (a partial train section): e.g. the ResNet pair's "
        "image size, or longer runs for the ablations",
    )
    loader: Literal["ffcv", "torch", "memory"] | None = Field(
        "memory", description="loader of the grid runs; null = data.loader"
    )

    @model_validator(mode="after")
    def _baseline(self) -> ExperimentsConfig:
        if "baseline" not in self.variants:
            raise ValueError("experiments.variants must contain 'baseline' (the reference of every comparison)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"experiments.seeds has duplicates: {self.seeds}")
        for study in self.train_by_study:
            for run in (None, *RUN_RECIPES.get(study, ())):
                where = f"{study}.{run}" if run else study
                try:
                    self.train_for(study, run)
                except ValidationError as exc:
                    raise ValueError(f"experiments.train_by_study.{where}: {describe_error(exc.errors()[0])}") from None
        return self

    def train_for(self, study: str, run: str | None = None) -> TrainConfig:
        """The recipe of one comparison (a ``GRID_STUDIES`` name): ``train`` with its changes;
        for a ``run`` of ``RUN_RECIPES``, with that run's own changes on top."""
        changes = dict(self.train_by_study.get(study) or {})
        own = {name: changes.pop(name) for name in RUN_RECIPES.get(study, ()) if name in changes}
        merged = deep_merge(self.train.model_dump(), changes)
        if run in own:
            merged = deep_merge(merged, own[run] or {})
        return TrainConfig.model_validate(merged)


class AttentionConfig(Section):
    n_images: int = Field(200, ge=1, description="validation images scored for localisation")
    n_figure: int = Field(8, ge=1, description="images drawn in the attention figure")
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="map threshold (fraction of max) for IoU")
    require_boxes: bool = Field(
        False, description="fail without ImageNet's val boxes (else the maps are drawn, localisation not scored)"
    )


# --- the experiment grid's models -------------------------------------------------------


def grid_model(p, model: str | None, options: dict) -> tuple[str, dict]:
    """(timm name, constructor options) of a grid model; ``model=None`` is the pipeline's
    model.  The one place the layers of options meet: ``model.options`` (the pipeline's
    model only), ``experiments.model_options`` (every PatchConvNet of the grid) or
    ``experiments.resnet_options`` (the ResNet pair), then the run's own (a variant's, a
    depth x width point's).  Training, complexity and the
    attention maps all build grid models through it."""
    name = model or p.model.name
    merged = dict(p.model.options) if model is None else {}
    if name.startswith("patchconvnet"):
        merged.update(p.experiments.model_options)
    elif name in p.experiments.resnet.values():
        merged.update(p.experiments.resnet_options)
    return name, {**merged, **options}


def has_layerscale(model: str) -> bool:
    """Whether ``model`` takes ``layerscale_init``: PatchConvNets and the attention-pooling
    ResNets do (so the pair's attention head gets the grid's init, as the PatchConvNet's
    aggregation does); plain ResNets have no LayerScale."""
    return model.startswith("patchconvnet") or model.endswith("_attnpool")
