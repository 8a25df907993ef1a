"""The names params give to stages, runs and files: a stage instance, a grid run, a
depth x width point, a dense transfer.  The stage table, the steps and the report all name
things through these functions, so a file, a DAG stage and an MLflow run agree."""

from __future__ import annotations

import re
import shlex

from pcn.errors import UserError

# The alphabet of a name that becomes a stage instance, a file, an MLflow run or a word of a
# stage's shell command (a grid variant, a ResNet pool): a letter, then letters, digits and
# underscores.  No '-' (it separates a name from its seed), no '.' (dotted params keys), no
# space or shell syntax.
SAFE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

BASELINE_VARIANT = "baseline"  # the grid's reference run: the multi-class init and the attention maps read it
TRANSFER_TASKS = {"segmentation": "ade20k", "detection": "coco"}  # task -> the dataset it reads


def instance_name(stage: str, wildcards: dict[str, str]) -> str:
    """DVC's own naming of a matrix instance (``ablation@no_se-0``); MLflow names runs so too."""
    return f"{stage}@{'-'.join(wildcards.values())}" if wildcards else stage


def transfer_stage(task: str, init: str) -> str:
    """The dense-transfer stage of ``task`` (segmentation, detection) from ``init``: the
    pretrained trunk's is the task's name, the others carry their init (``detection_scratch``)."""
    return task if init == "pretrained" else f"{task}_{init}"


def point_name(width: int, depth: int) -> str:
    """One point of the depth x width grid, as its stage instance and files are named."""
    return f"w{width}-d{depth}"


def parse_point(name: str) -> tuple[int, int]:
    """(width, depth) of a :func:`point_name`; a one-line error for anything else."""
    m = re.fullmatch(r"w(\d+)-d(\d+)", name)
    if not m:
        raise UserError(f"--point {name!r}: expected w<width>-d<depth>, e.g. w96-d8")
    return int(m.group(1)), int(m.group(2))


# Each grid study's folder under results/ and metrics/, one model and one metrics file per run
GRID_FOLDERS = {
    "ablation": "ablations",
    "resnet_pool": "resnet",
    "multiclass": "multiclass",
    "depth_width": "depth_width",
}


def grid_run_name(name: str, seed: str | int | None = None) -> str:
    """A grid run's file name (no suffix): ``<variant>-s<seed>``, or a depth x width point's."""
    return name if seed is None else f"{name}-s{seed}"


def avg_pool_variant(params) -> str | None:
    """The ablation variant with average pooling (the CAM model), if the grid has one."""
    return next((n for n, o in params.experiments.variants.items() if o.get("pool") == "avg"), None)


def check_name(key: str, name: object) -> None:
    """Refuse a name (a key of ``key``) outside :data:`SAFE_NAME`, in one line."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise ValueError(
            f"{key}: {name!r} is not a safe name: it names stages, files and runs, so it must be a letter "
            "followed by letters, digits or underscores"
        )


def shell_word(word: str) -> str:
    """``word`` quoted for the shell (shlex), its ``{wildcard}`` and DVC ``${item.x}``
    placeholders left as they are: those take only safe names (:func:`check_name`) and
    numbers.  A plain path stays unquoted, so dvc.yaml reads as before."""
    masked = re.sub(r"\$?\{[A-Za-z_][\w.]*\}", "x", word)
    return word if shlex.quote(masked) == masked else shlex.quote(word)
