"""The DVC view of the stage table: ``dvc.yaml`` (``pcn dag`` writes it) and each stage's
concrete instances, as both front ends name them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from pcn.config import Params, ParamsError
from pcn.dag import frontend
from pcn.dag.preflight import check_datasets
from pcn.dag.stage import Stage
from pcn.dag.stages import DEPTH_WIDTH_PLOT, GRID_TOP1_PLOT, build_stages
from pcn.errors import UserError

DVC_HEADER = "# Generated from pcn/dag/stages.py by `pcn dag` -- edit params.yaml or the stage table, not this file.\n"


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


# --- a step under a bare `dvc repro` -----------------------------------------------------------


def expected_dvc_yaml(params_path: str | Path) -> str:
    """dvc.yaml as the stage table writes it for ``params_path`` (what `pcn dag` writes)."""
    from pcn.config import load_params, raw_params

    return dvc_yaml(load_params(params_path), raw_params(params_path))


def _first_difference(wanted: dict, written: dict) -> str:
    """The first stage whose dvc.yaml entry differs, and its differing fields."""
    for name in [*wanted, *(n for n in written if n not in wanted)]:
        a, b = wanted.get(name) or {}, written.get(name) or {}
        if a != b:
            fields = [k for k in [*a, *(k for k in b if k not in a)] if a.get(k) != b.get(k)]
            return f"stage {name!r} ({', '.join(fields) if a and b else 'added' if b else 'missing'})"
    return "its header or plots"


def refuse_stale_dvc_yaml(params_path: str, params: Params) -> None:
    """Under DVC, refuse to run when dvc.yaml is not what the stage table writes for
    params.yaml: a stale matrix (`dvc exp run -S` on the seeds, a variant or the scale), or a
    hand edit (a stage's cmd pointed at other weights would run and write a wrong number).
    The first differing stage and field are named."""
    dvc_file = Path(params_path).parent / "dvc.yaml"
    expected = expected_dvc_yaml(params_path)
    text = dvc_file.read_text() if dvc_file.is_file() else ""
    if text == expected:
        return
    written = ((yaml.safe_load(text) or {}).get("stages") or {}) if text else {}
    where = _first_difference(yaml.safe_load(expected)["stages"], written)
    raise UserError(
        f"{dvc_file} is stale for {params_path}: {where} differs from the stage table; it is generated "
        "(edit params.yaml, not dvc.yaml): run `pcn dag` (or `pcn run`), then repeat the command"
    )


def check_under_dvc(params_path: str, params: Params) -> None:
    """What a front end checks before its first stage, for a step that `dvc repro` runs (DVC has
    no start hook): dvc.yaml is current for the params, and every dataset of the DAG is there."""
    refuse_stale_dvc_yaml(params_path, params)
    check_datasets(params, (s.name for s in build_stages(params)))


@contextlib.contextmanager
def dvc_stage_guard(params_path: str) -> Iterator[None]:
    """Around a step that a bare `dvc repro` runs (``DVC_STAGE`` set; DVC has no start hook):
    refuse a stale dvc.yaml and a missing dataset (a few stat calls, so in seconds), then hold
    the front-end lock while the step runs.  Under `pcn run` or Snakemake the front end above
    holds it and this only checks.  Elsewhere (a step run by hand) it does nothing."""
    stage = os.environ.get("DVC_STAGE")
    if not stage:
        yield
        return
    from pcn.config import load_params

    check_under_dvc(params_path, load_params(params_path))
    held = frontend.acquire(f"dvc repro (stage {stage})")
    try:
        yield
    finally:
        if held:
            frontend.release()
