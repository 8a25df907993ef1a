# Helpers that turn the stage table (pcn/dag/stages.py) and params.yaml into rules.
import json
import os
import re
from pathlib import Path

from pcn.config import ParamsError, raw_params, resolve
from pcn.dag.stage_resources import plugin_resources
from pcn.dag.stages import build_stages

try:
    PARAMS = resolve({k: v for k, v in config.items() if not k.startswith("pcn_")})
except ParamsError as exc:
    raise WorkflowError(str(exc))
if {k: v for k, v in config.items() if not k.startswith("pcn_")} != raw_params():
    # The stages read params.yaml themselves; an override they cannot see would
    # make the workflow and its jobs disagree.
    raise WorkflowError(
        "--config may only set pcn_* keys; edit params.yaml (or `pcn scale ...`) instead"
    )
STAGES = build_stages(PARAMS)

# `--config pcn_launcher=slurm` (the slurm profile sets it) sends the training-like
# stages through submitit to SLURM; the stages read PCN_LAUNCHER from their environment.
if config.get("pcn_launcher"):
    shell.prefix(f"export PCN_LAUNCHER={config['pcn_launcher']}; ")


wildcard_constraints:
    **{
        k: "|".join(map(re.escape, map(str, v)))
        for s in STAGES
        for k, v in s.matrix.items()
    },


def command(stage):
    """The stage's command for one job.  A params function, not the shell string:
    Snakemake evaluates a rule's shell when the job runs, after this loop has moved on.
    """

    def cmd(wildcards):
        return stage.cmd.format(**wildcards)

    return cmd


def rule_outputs(stage):
    """Cached outputs; folders as directory(), figures and tables marked for --report."""
    outs = []
    for o in stage.outs:
        is_dir = not os.path.splitext(o)[1]
        out = directory(o) if is_dir else o
        if o in stage.report:
            extra = {"patterns": ["{name}.png"]} if is_dir else {}
            out = report(out, category=stage.report[o], **extra)
        outs.append(out)
    return outs


def log_path(stage):
    parts = [stage.name, *(f"{{{k}}}" for k in stage.matrix)]
    return f"logs/{os.path.join(*parts)}.log"


def param_values(stage):
    """The resolved values a stage reads: Snakemake reruns a job when they change."""

    def values(wildcards):
        keys = [k.format(**wildcards) for k in stage.params]
        return json.dumps({k: _plain(PARAMS.section(k)) for k in keys}, sort_keys=True)

    return values


def _plain(value):
    return value.model_dump() if hasattr(value, "model_dump") else value


def slurm_resources(stage):
    """The executor plugin's resources of a stage's job (pcn.dag.stage_resources.plugin_resources)."""
    return plugin_resources(stage, PARAMS)


def all_outputs():
    out = []
    for s in STAGES:
        for wc in s.instances():
            out += [p.format(**wc) for p in s.all_paths()]
    return out
