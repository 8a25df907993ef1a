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

from pcn.config.base import DEFAULT_PARAMS, SCALES, ParamsError, Section, deep_merge, describe_error
from pcn.config.compute import (
    LauncherConfig,
    PartitionLimits,
    RuntimeConfig,
    SlurmConfig,
    StageResources,
    TrackingConfig,
    batch_per_rank,
)
from pcn.config.data import DATASET_DIRS, DataConfig, DemoDataConfig, FfcvConfig
from pcn.config.experiments import (
    GRID_STUDIES,
    RUN_RECIPES,
    AttentionConfig,
    ExperimentsConfig,
    grid_model,
    has_layerscale,
)
from pcn.config.params import Params, load_params, raw_params, recipe, resolve, section_values
from pcn.config.training import (
    DEMO_COMPLEXITY_MODELS,
    AugConfig,
    ComplexityConfig,
    DenseTaskConfig,
    DetectionConfig,
    EvaluateConfig,
    ModelConfig,
    SegmentationConfig,
    TrainConfig,
)

__all__ = [
    "AttentionConfig",
    "AugConfig",
    "ComplexityConfig",
    "DATASET_DIRS",
    "DEFAULT_PARAMS",
    "DEMO_COMPLEXITY_MODELS",
    "DataConfig",
    "DemoDataConfig",
    "DenseTaskConfig",
    "DetectionConfig",
    "EvaluateConfig",
    "ExperimentsConfig",
    "FfcvConfig",
    "GRID_STUDIES",
    "LauncherConfig",
    "ModelConfig",
    "Params",
    "ParamsError",
    "PartitionLimits",
    "RUN_RECIPES",
    "RuntimeConfig",
    "SCALES",
    "Section",
    "SegmentationConfig",
    "SlurmConfig",
    "StageResources",
    "TrackingConfig",
    "TrainConfig",
    "batch_per_rank",
    "deep_merge",
    "describe_error",
    "grid_model",
    "has_layerscale",
    "load_params",
    "raw_params",
    "recipe",
    "resolve",
    "section_values",
]
