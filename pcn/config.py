"""params.yaml: the schema, the scale switch and loading.

params.yaml holds the demo-scale values at the top level and, under ``scales``, the
overrides that turn them into the ``study`` or ``paper`` scale.  ``scale:`` picks
one; :func:`load_params` deep-merges that scale's overrides onto the base and
validates the result, so every stage (and both workflow front ends) sees the same
resolved values.  A bad value raises :class:`ParamsError` with one line naming the
key, the value and what was expected.

One source for every value: params.yaml is the source of every key it writes; the
schema below gives each key its type and range, and a default of its own only for the
keys params.yaml leaves out.  Where the schema also has a default for a key that
params.yaml writes (so that a partial section validates, e.g. in tests), it is the
params.yaml value; tests/test_config.py fails if the two differ.  ``pcn params
--scale NAME`` prints the one resolved recipe of a scale.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pcn.data.shapes import SHAPES

SCALES = ("demo", "study", "paper")
DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ValueError):
    """A params.yaml problem, phrased as one line for the user."""


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` merged into ``base``, dict by dict; neither is changed."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class Section(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


# --- compute --------------------------------------------------------------------


class StageResources(Section):
    """One stage's job, where it differs from what the stage table gives it (unset: the table's)."""

    partition: str | None = None
    nodes: int | None = Field(None, ge=1)
    gpus_per_node: int | None = Field(None, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: int | None = Field(None, ge=1)
    time_min: int | None = Field(None, ge=1)


class PartitionLimits(Section):
    """What one partition grants a job (unset: no limit); `pcn dryrun` refuses a job that asks more.
    A cluster that answers (sinfo, scontrol) gives its own limits; these stand in where none does."""

    max_time_min: int | None = Field(None, ge=1)
    max_nodes: int | None = Field(None, ge=1)
    cpus_per_node: int | None = Field(None, ge=1)
    mem_gb_per_node: int | None = Field(None, ge=1)
    gpus_per_node: int | None = Field(None, ge=0)


class SlurmConfig(Section):
    """Resources of the training jobs on a SLURM cluster (passed to submitit); partition,
    account, qos and constraint reach every job, the executor plugin's too."""

    partition: str | None = None
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_task: int = Field(2, ge=1)
    mem_gb: int = Field(8, ge=1)
    time_min: int = Field(60, ge=1)
    constraint: str | None = None
    account: str | None = None
    qos: str | None = None
    max_requeues: int = Field(3, ge=0)
    # stage name (as in dvc.yaml, without @instance) -> its job's resources where they differ
    resources: dict[str, StageResources] = Field(default_factory=dict)
    # partition name ("default": jobs that name none) -> its limits, where no cluster answers
    limits: dict[str, PartitionLimits] = Field(default_factory=dict)

    def for_stage(self, stage: str) -> SlurmConfig:
        """These settings with stage ``stage``'s overrides applied (a training stage's job)."""
        own = self.resources.get(stage)
        if own is None:
            return self
        return self.model_copy(update={k: v for k, v in own.model_dump().items() if v is not None})


class LauncherConfig(Section):
    """How training-like stages run: in this process tree, or as a SLURM job."""

    kind: Literal["local", "slurm"] = "local"
    tasks: int = Field(1, ge=1, description="processes (DDP ranks) for the local launcher")
    slurm: SlurmConfig = SlurmConfig()

    @property
    def ranks(self) -> int:
        """The DDP ranks of one training-like job: ``tasks`` locally; on SLURM
        :meth:`tasks_per_node` on each of its nodes."""
        if self.kind == "slurm":
            return self.slurm.nodes * self.tasks_per_node(self.slurm)
        return self.tasks

    def tasks_per_node(self, slurm: SlurmConfig) -> int:
        """A SLURM job's ranks per node under ``slurm`` (this launcher's, or a stage's
        override of it): one per GPU, or ``tasks`` on CPU nodes."""
        return slurm.gpus_per_node or self.tasks


def batch_per_rank(batch_size: int, ranks: int, name: str, mixup: bool = False) -> int:
    """The images each rank takes per step: the global ``batch_size`` split over ``ranks``.

    Refused, naming the stage ``name``, where it does not split, or where it leaves an odd
    count with mixup or cutmix on (``mixup``): timm's ``Mixup`` pairs each image with its
    mirror within the rank's batch and fails at the first step otherwise.
    """
    if batch_size % ranks:
        raise ValueError(f"{name}: batch_size = {batch_size} does not split over {ranks} ranks")
    per_rank = batch_size // ranks
    if mixup and per_rank % 2:
        raise ValueError(
            f"{name}: batch_size = {batch_size} over {ranks} ranks is {per_rank} per rank; "
            "mixup and cutmix need an even batch per rank"
        )
    return per_rank


class RuntimeConfig(Section):
    threads: int = Field(1, ge=1, description="torch intra-op threads per stage process on CPU")
    device: Literal["auto", "cpu", "cuda"] = "auto"


class TrackingConfig(Section):
    uri: str | None = Field(
        None, description="MLflow tracking URI; MLFLOW_TRACKING_URI wins; default sqlite:///mlflow.db"
    )
    experiment: str = "patchconvnet"


# --- data -------------------------------------------------------------------------


class DemoDataConfig(Section):
    n_classes: int = Field(10, ge=2, le=len(SHAPES), description="shape classes (the generator draws that many)")
    train_per_class: int = Field(1000, ge=1)
    val_per_class: int = Field(50, ge=1)
    image_size: int = Field(64, ge=32)
    scene_size: int = Field(128, ge=64)
    n_scenes_train: int = Field(600, ge=1)
    n_scenes_val: int = Field(100, ge=1)
    jpeg_quality: int = Field(90, ge=50, le=100)


class FfcvConfig(Section):
    max_resolution: int = Field(256, ge=16)
    jpeg_quality: int = Field(90, ge=50, le=100)
    compress_probability: float = Field(0.5, ge=0.0, le=1.0)
    write_mode: Literal["raw", "jpg", "proportion", "smart"] = "proportion"
    max_bad_fraction: float = Field(
        0.001, ge=0.0, le=1.0, description="fail the conversion above this share of unreadable images"
    )


# The folder names of the official releases: ``data.root`` holds them side by side.
DATASET_DIRS = {
    "imagenet": "imagenet",  # train/<wnid>/*.JPEG, val/<wnid>/*.JPEG, LOC_val_solution.csv
    "imagenet_v2": "imagenetv2-matched-frequency",  # <0..999>/*
    "ade20k": "ADEChallengeData2016",  # images/ and annotations/ {training,validation}/
    "coco": "coco",  # {train,val}2017/*.jpg, annotations/instances_{train,val}2017.json
}


class DataConfig(Section):
    """Where the four datasets live, in their official layouts (docs/datasets.md)."""

    source: Literal["demo", "real"] = Field(
        "demo", description="demo: the demo_data stage writes the datasets under `root`; real: they are already there"
    )
    root: str = Field("data/demo", description="the folder holding the datasets' official folders (DATASET_DIRS)")
    # Per-dataset folders, for a cluster where they do not sit side by side; null = <root>/<official name>.
    imagenet: str | None = None
    imagenet_v2: str | None = None
    ade20k: str | None = None
    coco: str | None = None
    demo: DemoDataConfig = DemoDataConfig()
    loader: Literal["ffcv", "torch", "memory"] = "ffcv"
    num_workers: int = Field(1, ge=0)
    ffcv: FfcvConfig = FfcvConfig()

    def path(self, dataset: str) -> Path:
        """The folder of one dataset (a ``DATASET_DIRS`` key)."""
        explicit = getattr(self, dataset)
        return Path(explicit) if explicit else Path(self.root) / DATASET_DIRS[dataset]


# --- models and training ---------------------------------------------------------

# Every model the demo's complexity stage measures: the demo model and the paper's table.
DEMO_COMPLEXITY_MODELS = (
    "patchconvnet_demo",
    "patchconvnet_s60",
    "patchconvnet_s120",
    "patchconvnet_b60",
    "patchconvnet_b120",
    "patchconvnet_l60",
    "patchconvnet_l120",
    "patchconvnet_s60_multi",
    "resnet50",
    "resnet50_attnpool",
    "deit_small_patch16_224",
    "swin_tiny_patch4_window7_224",
    "convnext_tiny",
)


class ModelConfig(Section):
    name: str = "patchconvnet_demo"
    options: dict[str, Any] = Field(default_factory=dict, description="extra constructor arguments")


class AugConfig(Section):
    """The DeiT-style augmentation the paper trains with."""

    hflip: float = Field(0.5, ge=0.0, le=1.0)
    scale_min: float = Field(0.08, gt=0.0, le=1.0, description="random-resized-crop minimum area")
    auto_augment: str | None = Field(None, description="timm RandAugment string, e.g. rand-m9-mstd0.5-inc1")
    three_augment: bool = False
    color_jitter: float = Field(0.0, ge=0.0)
    mixup: float = Field(0.0, ge=0.0)
    cutmix: float = Field(0.0, ge=0.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    repeated_aug: int = Field(1, ge=1, description="repeats per sample under DDP (DeiT uses 3)")
    random_erasing: float = Field(0.0, ge=0.0, le=1.0, description="probability of erasing one random box (pixel mode)")

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed (mixup or cutmix): soft targets, pairs within a rank's batch."""
        return self.mixup > 0 or self.cutmix > 0


class TrainConfig(Section):
    img_size: int = Field(64, ge=16)
    epochs: int = Field(14, ge=1)
    batch_size: int = Field(64, ge=1, description="global batch over all ranks")
    lr: float = Field(1e-3, gt=0.0, description="peak learning rate at batch_size (scaled by lr_base_batch)")
    lr_base_batch: int | None = Field(None, description="if set, lr is scaled by batch_size / lr_base_batch")
    optimizer: Literal["adamw", "lamb"] = Field("adamw", description="timm optimizer name")
    loss: Literal["ce", "bce"] = Field(
        "ce", description="ce: (soft-target) cross-entropy; bce: binary cross-entropy on the (mixed) targets"
    )
    eval_crop_ratio: float | None = Field(
        None, gt=0.0, le=1.0, description="centre-crop ratio of this run's evaluations; null = evaluate.crop_ratio"
    )
    min_lr: float = Field(1e-5, ge=0.0)
    warmup_epochs: float = Field(0.5, ge=0.0)
    schedule_step: Literal["step", "epoch"] = Field(
        "step",
        description="step: the lr follows warm-up and cosine at every optimizer step; epoch: once per epoch, "
        "as DeiT's main.py steps it (lr_scheduler.step(epoch) after each epoch)",
    )
    weight_decay: float = Field(0.05, ge=0.0)
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)
    layerscale_init: float | None = Field(None, gt=0.0)
    clip_grad: float | None = Field(None, gt=0.0)
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)
    aug: AugConfig = AugConfig()
    eval_every: int = Field(1, ge=1, description="evaluate every N epochs (and always at the end)")
    checkpoint_every_steps: int = Field(200, ge=1)
    max_steps: int | None = Field(
        None, ge=1, description="stop after this many optimizer steps (tests, demo smoke runs)"
    )
    eval_max_batches: int | None = Field(
        None,
        ge=1,
        description="smoke runs only (the rehearsal): stop each evaluation during training after N "
        "batches; val is class-sorted, so this is not a sample of it",
    )

    def warmup_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the linear warm-up: ``warmup_epochs`` of them, leaving at least
        one step of the cosine."""
        total = self.epochs * steps_per_epoch
        return min(round(self.warmup_epochs * steps_per_epoch), max(total - 1, 0))


class EvaluateConfig(Section):
    checkpoint: Literal["pretrain", "finetune"] = Field(
        "finetune", description="which main-line model the evaluate stage scores (results/<checkpoint>/model.pth)"
    )
    loader: Literal["ffcv", "torch", "memory"] | None = Field(None, description="null = data.loader")
    img_size: int = Field(80, ge=16)
    batch_size: int = Field(128, ge=1)
    crop_ratio: float = Field(0.875, gt=0.0, le=1.0)


class ComplexityConfig(Section):
    models: list[str] = Field(default_factory=lambda: list(DEMO_COMPLEXITY_MODELS))
    timed: list[str] | None = Field(
        default_factory=lambda: ["patchconvnet_demo", "patchconvnet_s60", "resnet50"],
        description="models whose throughput/memory are measured; null = all",
    )
    resolutions: list[int] = Field(default_factory=lambda: [224])
    batch_size: int = Field(8, ge=1)
    iters: int = Field(2, ge=1)


class DenseTaskConfig(Section):
    """What both dense-transfer stages share: which runs, and which checkpoint they start from."""

    init: list[Literal["pretrained", "scratch"]] = Field(default_factory=lambda: ["pretrained", "scratch"])
    backbone: Literal["pretrain", "finetune"] = Field(
        "finetune", description="the DAG's classification checkpoint a pretrained run starts from"
    )
    features: Literal["last", "blocks"] = Field(
        "last",
        description="the trunk maps of the 4-level pyramid: last: the last block's output at every level "
        "(the paper's); blocks: four evenly spaced blocks (XCiT's taps)",
    )


class SegmentationConfig(DenseTaskConfig):
    img_size: int = Field(128, ge=32)
    iters: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(6e-4, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    decoder_channels: int = Field(64, ge=8)
    n_classes: int | None = Field(
        None,
        ge=1,
        description="label ids 1..N of the ADE20k layout (150 for ADE20k); null: the demo's shapes + background",
    )
    loss: Literal["ce", "weighted_ce_dice"] = Field(
        "weighted_ce_dice",
        description="ce: UperNet's cross-entropy; weighted_ce_dice: class-weighted CE + Dice (short demo runs)",
    )
    aux_loss_weight: float = Field(
        0.0,
        ge=0.0,
        description="weight of the auxiliary FCN head's loss (mmseg's UperNet: 0.4 on the stride-16 level, "
        "training only); 0: no auxiliary head",
    )
    multiscale_flip_test: bool = Field(
        False,
        description="also score mmseg's multi-scale + flip test (ratios 0.5-1.75, each flipped) as mIoU_ms_flip; "
        "the single-scale mIoU is always scored",
    )


class DetectionConfig(DenseTaskConfig):
    img_size: int = Field(128, ge=32)
    iters: int = Field(400, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    fpn_channels: int = Field(64, ge=8)
    min_sizes: list[int] = Field(default_factory=lambda: [112, 128, 144])
    test_size: int = Field(128, ge=32, description="shorter side of the test images (COCO protocol: 800)")
    max_size: int = Field(213, ge=32, description="cap on the longer side, train and test (COCO protocol: 1333)")
    score_thresh: float = Field(0.05, ge=0.0, lt=1.0, description="lowest class score a test detection keeps")


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
                    raise ValueError(f"experiments.train_by_study.{where}: {_describe(exc.errors()[0])}") from None
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


class Params(Section):
    scale: Literal["demo", "study", "paper"] = "demo"
    seed: int = 0
    runtime: RuntimeConfig = RuntimeConfig()
    launcher: LauncherConfig = LauncherConfig()
    tracking: TrackingConfig = TrackingConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    # The demo recipes (TrainConfig's own defaults are the demo pretrain's where the three agree).
    pretrain: TrainConfig = TrainConfig(layerscale_init=0.1, aug=AugConfig(scale_min=0.35))
    finetune: TrainConfig = TrainConfig(img_size=80, epochs=5, warmup_epochs=0.2, aug=AugConfig(scale_min=0.35))
    evaluate: EvaluateConfig = EvaluateConfig()
    complexity: ComplexityConfig = ComplexityConfig()
    segmentation: SegmentationConfig = SegmentationConfig()
    detection: DetectionConfig = DetectionConfig()
    experiments: ExperimentsConfig = ExperimentsConfig()
    attention: AttentionConfig = AttentionConfig()
    # Overrides per scale, merged onto the values above when `scale` selects them.
    scales: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @property
    def segmentation_classes(self) -> int:
        """Label ids 1..N of the ADE20k-layout data: ``segmentation.n_classes``, or for the
        demo data its shapes plus the background (the demo writes id 1 = background)."""
        if self.segmentation.n_classes is not None:
            return self.segmentation.n_classes
        if self.data.source == "demo":
            return self.data.demo.n_classes + 1
        raise ValueError("segmentation.n_classes must be set for real data (150 for ADE20k)")

    @model_validator(mode="after")
    def _ffcv_augment(self) -> Params:
        """A RandAugment string the FFCV loader cannot batch is refused now, not an hour into a job."""
        from pcn.data.randaugment_policy import check_policy

        runs = [("pretrain", self.pretrain, self.data.loader), ("finetune", self.finetune, self.data.loader)]
        grid_loader = self.experiments.loader or self.data.loader
        for study in GRID_STUDIES:
            changes = (self.experiments.train_by_study.get(study) or {}).get("aug") or {}
            key = f"experiments.train_by_study.{study}" if "auto_augment" in changes else "experiments.train"
            runs.append((key, self.experiments.train_for(study), grid_loader))
        for key, train, loader in runs:
            if loader == "ffcv":
                check_policy(train.aug.auto_augment, f"{key}.aug.auto_augment")
        return self

    def section(self, dotted: str) -> Any:
        """The resolved value at a dotted key, e.g. ``pretrain`` or ``data.demo``."""
        node: Any = self
        for part in dotted.split("."):
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        return node


def _describe(error: dict) -> str:
    loc = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function-"))
    value = error.get("input")
    msg = error["msg"]
    if error["type"] == "extra_forbidden":
        return f"unknown key '{loc}' (not in the schema; check the spelling)"
    if error["type"] == "missing":
        return f"missing key '{loc}'"
    if error["type"] == "value_error":  # our validators' messages name their keys themselves
        return msg.removeprefix("Value error, ")
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    return f"{loc} = {shown}: {msg[0].lower() + msg[1:]}" if loc else msg


def resolve(raw: dict, source: str = "params.yaml") -> Params:
    """Merge the selected scale's overrides onto the base and validate."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    scale = raw.get("scale", "demo")
    if scale not in SCALES:
        raise ParamsError(f"{source}: scale = {scale!r}: expected one of {', '.join(SCALES)}")
    scales = raw.get("scales") or {}
    for name in scales:
        if name not in SCALES or name == "demo":
            raise ParamsError(f"{source}: scales.{name}: expected only 'study' or 'paper' overrides")
    # Validate every scale's overrides, not just the active one, so a typo in the
    # paper overrides is caught on this laptop and not after queueing on the cluster.
    # The scale in force first: a bad top-level value is then reported under its name.
    resolved = None
    for name in [scale] + [s for s in scales if s != scale]:
        merged = deep_merge({k: v for k, v in raw.items() if k != "scales"}, scales.get(name) or {})
        merged["scale"] = name
        merged["scales"] = scales
        try:
            params = Params.model_validate(merged)
        except ValidationError as exc:
            where = f"scale {name}" if name == scale else f"scale {scale} in force; the value under scales.{name}"
            raise ParamsError(f"{source} ({where}): {_describe(exc.errors()[0])}") from None
        resolved = resolved or params
    return resolved


def load_params(path: str | Path = DEFAULT_PARAMS, scale: str | None = None) -> Params:
    """The resolved params of ``path`` at its own ``scale:``, or at ``scale`` when given
    (the file is not changed)."""
    from pcn.io import read_yaml

    raw = read_yaml(path, ParamsError, hint=" (run from the repository root, or pass --params)") or {}
    if scale is not None and isinstance(raw, dict):
        raw = {**raw, "scale": scale}
    return resolve(raw, str(path))


def recipe(params: Params) -> dict:
    """One scale's resolved values as one plain mapping, the scales folded in: every key
    with the value the stages read, and ``experiments.train_by_study`` written out as each
    comparison's whole training recipe (``train`` with its changes).  It is itself a valid
    params.yaml that resolves to the same values."""
    out = params.model_dump(mode="json", exclude={"scales"})
    exp = params.experiments
    out["experiments"]["train_by_study"] = {
        study: {
            **exp.train_for(study).model_dump(mode="json"),
            **{run: exp.train_for(study, run).model_dump(mode="json") for run in RUN_RECIPES.get(study, ())},
        }
        for study in GRID_STUDIES
    }
    return out


def raw_params(path: str | Path = DEFAULT_PARAMS) -> dict:
    return yaml.safe_load(Path(path).read_text()) or {}


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


def depth_width_options(width: int, depth: int) -> dict:
    """Constructor options of one depth x width point: its shape, and the LayerScale init of
    the released model nearest to it (the rule: pcn/models/family.py, stated in params.yaml).
    A ``layerscale_init`` set in the grid's recipe still wins: the engine applies it last."""
    from pcn.models.family import layerscale_init_for

    return {"embed_dim": width, "depth": depth, "layerscale_init": layerscale_init_for(width, depth)}


def has_layerscale(model: str) -> bool:
    """Whether ``model`` takes ``layerscale_init``: PatchConvNets and the attention-pooling
    ResNets do (so the pair's attention head gets the grid's init, as the PatchConvNet's
    aggregation does); plain ResNets have no LayerScale."""
    return model.startswith("patchconvnet") or model.endswith("_attnpool")
