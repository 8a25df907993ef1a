"""The whole params.yaml: its sections, the scale switch, loading and the resolved recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from pcn.config.base import DEFAULT_PARAMS, SCALES, ParamsError, Section, deep_merge, describe_error
from pcn.config.compute import LauncherConfig, RuntimeConfig, TrackingConfig
from pcn.config.data import DataConfig
from pcn.config.experiments import GRID_STUDIES, RUN_RECIPES, AttentionConfig, ExperimentsConfig
from pcn.config.names import check_name
from pcn.config.training import (
    AugConfig,
    ComplexityConfig,
    DetectionConfig,
    EvaluateConfig,
    ModelConfig,
    SegmentationConfig,
    TrainConfig,
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
    def _safe_names(self) -> Params:
        """Names that become stage instances, files, runs and shell words: a safe alphabet;
        seeds and grid points: numbers a name can carry (no sign)."""
        exp = self.experiments
        for key, names in (("experiments.variants", exp.variants), ("experiments.resnet", exp.resnet)):
            for name in names:
                check_name(key, name)
        if any(s < 0 for s in exp.seeds):
            raise ValueError(f"experiments.seeds = {exp.seeds}: expected seeds >= 0 (they name files and runs)")
        if any(len(p) != 2 or min(p) < 1 for p in exp.depth_width):
            raise ValueError(f"experiments.depth_width = {exp.depth_width}: expected [width, depth] pairs >= 1")
        return self

    @model_validator(mode="after")
    def _ffcv_augment(self) -> Params:
        """A RandAugment string the FFCV loader cannot batch is refused now, not an hour into a job."""
        from pcn.data.augment.randaugment_policy import check_policy

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
            raise ParamsError(f"{source} ({where}): {describe_error(exc.errors()[0])}") from None
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
    from pcn.io import read_yaml

    return read_yaml(path, ParamsError) or {}


def section_values(params: Params, sections: tuple[str, ...]) -> dict[str, Any]:
    """The values of dotted ``sections`` as plain data: what a stage's MLflow run logs."""
    out = {}
    for key in sections:
        value = params.section(key)
        out[key] = value.model_dump() if hasattr(value, "model_dump") else value
    return out
