"""`pcn`: one command, one subcommand per stage verb (plus a few tools).

Every DAG stage is `pcn <verb>` run from the repository root: it reads params.yaml,
does its work, writes its outputs atomically and its metrics to metrics/<stage>.json,
and logs an MLflow run under the pipeline's parent run.  Errors a user can fix
(bad params, missing or malformed data) end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# Idle OpenMP threads sleep instead of spinning: with two stages sharing the cores, spinning
# threads made torch 10-20x slower here.  Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pcn import __version__  # noqa: E402
from pcn.config import SCALES, ParamsError  # noqa: E402
from pcn.dag.verbs import VERBS, is_stage_verb  # noqa: E402
from pcn.errors import DatasetError, UserError  # noqa: E402

log = logging.getLogger("pcn")


# Exceptions whose message is already one clear line for the user.
def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ParamsError, UserError, DatasetError, FileNotFoundError]
    # these two modules import torch / submitit: looked up only when an error is being reported
    for mod, name in (("pcn.models.checkpoint", "CheckpointError"), ("pcn.train.launch", "TrainJobFailed")):
        try:
            errors.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pcn", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", action="version", version=f"pcn {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, (target, help_text) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        p.set_defaults(target=target)
        _verb_arguments(verb, p)
    return parser


# The paths each stage verb opens, as the stage table writes them on its command (pcn.dag.stages):
# flag -> (help, how many values, required).  The table's command always names them.
_PATHS: dict[str, dict[str, tuple[str, str | None, bool]]] = {
    "front-end": {"out": ("the check's mark, which every stage depends on", None, True)},
    "make-demo": {"out": ("folder of the demo datasets", None, True)},
    "manifest": {"out": ("the dataset listings to refresh (data/manifests/<dataset>.tsv)", "+", True)},
    "convert": {"out": ("folder of the .beton files", None, True), "metrics": ("metrics JSON", None, True)},
    "pixel-baseline": {"metrics": ("metrics JSON", None, True)},
    "evaluate": {
        "ffcv": ("folder of the converted splits (<split>.beton)", None, False),
        "weights": ("the DAG's model to score (the DAG stage)", None, False),
        "metrics": ("metrics JSON (the DAG stage)", None, False),
    },
    "complexity": {"out": ("Markdown table", None, True), "metrics": ("metrics JSON", None, True)},
    "summarize": {
        "metrics": ("folder of the grid runs' metrics (<study>/<run>.json)", None, True),
        "out": ("the summary's metrics JSON", None, True),
        "plots": ("the grid's top-1 and depth x width plot CSVs", "+", True),
    },
    "attention": {
        "weights": ("METHOD=MODEL for each map scored (patchconvnet_finetuned, patchconvnet, ...)", "+", True),
        "out": ("folder of the maps and their figures", None, True),
        "metrics": ("metrics JSON", None, True),
    },
    "figures": {
        "metrics": ("folder of the metrics files", None, True),
        "plots": ("folder of the training curves", None, True),
        "results": ("folder of the stages' results (attention maps, dense-task pictures)", None, True),
        "paper": ("the paper's numbers (paper/numbers.yaml)", None, True),
        "out": ("folder of the figures", None, True),
    },
    "report": {
        "metrics": ("folder of the metrics files", None, True),
        "figures": ("folder of the figures", None, True),
        "paper": ("the paper's numbers (paper/numbers.yaml)", None, True),
        "recipe": ("the paper's recipe (paper/recipe.yaml)", None, True),
        "out": ("the report's Markdown and HTML files", 2, True),
    },
}
# Training-like verbs: the converted splits they read and what they write
_TRAINING_PATHS = {
    "ffcv": ("folder of the converted splits (<split>.beton)", None, False),
    "out": ("the trained model (model.pth) or the run's folder", None, True),
    "metrics": ("metrics JSON", None, True),
    "plots": ("training-curve CSV", None, False),
}
for _verb in ("pretrain", "finetune", "ablate", "resnet-pool", "multiclass", "depth-width"):
    _PATHS[_verb] = _TRAINING_PATHS
_PATHS["finetune"] = {**_TRAINING_PATHS, "weights": ("the pretrained model it starts from", None, True)}
_PATHS["multiclass"] = {
    **_TRAINING_PATHS,
    "baseline": ("the single-token baseline of the same seed (the fine-tuned init's source)", None, True),
}
# a dense transfer always writes its loss curve: --plots is required there
_PATHS["segmentation"] = _PATHS["detection"] = {
    **{k: _TRAINING_PATHS[k] for k in ("out", "metrics")},
    "plots": (_TRAINING_PATHS["plots"][0], None, True),
}


def _positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (argparse names the flag in its one-line error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _port(text: str) -> int:
    """An argparse type: a TCP port a server can be asked to listen on (1-65535)."""
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {value}")
    return value


def _path_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    for flag, (help_text, nargs, required) in _PATHS.get(verb, {}).items():
        p.add_argument(f"--{flag}", nargs=nargs, required=required, metavar="PATH", help=help_text)


def _verb_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    _path_arguments(verb, p)
    if verb in (
        "pretrain",
        "finetune",
        "segmentation",
        "detection",
        "ablate",
        "resnet-pool",
        "multiclass",
        "depth-width",
    ):
        p.add_argument("--launcher", choices=["local", "slurm"], help="override launcher.kind (also: PCN_LAUNCHER)")
    if verb in ("segmentation", "detection"):
        p.add_argument("--init", choices=["pretrained", "scratch"], required=True)
        p.add_argument(
            "--checkpoint", help="backbone weights of --init pretrained: the DAG's model or a released checkpoint file"
        )
    if verb == "evaluate":
        p.add_argument(
            "--checkpoint",
            help="a released checkpoint ({'model': state_dict}) to score on ImageNet val "
            "and v2 under the paper's protocol, into metrics/released/<model>-<px>-<sha>.json, "
            "one file per checkpoint (without it: the DAG stage, --weights MODEL -> --metrics JSON)",
        )
        p.add_argument(
            "--model",
            help="its timm name (default: the registered PatchConvNet whose keys and shapes the checkpoint has)",
        )

        def crop_ratio(text: str) -> float:  # an argparse type: refused here, not in a loader worker
            try:
                value = float(text)
            except ValueError:
                value = float("nan")
            if not 0 < value <= 1:
                raise argparse.ArgumentTypeError(f"expected a ratio in (0, 1], got {text!r}")
            return value

        p.add_argument("--img-size", type=_positive_int, help="resolution (default: the model's, 224 for the releases)")
        p.add_argument(
            "--crop-ratio",
            type=crop_ratio,
            help="centre-crop ratio in (0, 1] (default: the paper's, 0.875 at every size)",
        )
    if verb == "ablate":
        p.add_argument("--variant", required=True)
    if verb in ("ablate", "resnet-pool", "multiclass"):
        p.add_argument("--seed", type=int, required=True)
    if verb == "resnet-pool":
        p.add_argument("--pool", required=True)
    if verb == "multiclass":
        p.add_argument("--init", choices=["scratch", "finetuned"], required=True)
    if verb == "depth-width":
        p.add_argument("--point", required=True, help="w<width>-d<depth>")
    if verb == "dag":
        p.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml differs from the stage table")
    if verb == "params":
        p.add_argument(
            "--scale",
            choices=list(SCALES),
            help="resolve at this scale instead of the one params.yaml selects (the file is not changed)",
        )
        p.add_argument("key", nargs="?", help="print only this dotted key, e.g. experiments.train_by_study.ablation")
        p.epilog = (
            "Prints one scale's resolved recipe as YAML: params.yaml's values with that scale's overrides "
            "merged on, and each comparison's whole training recipe under experiments.train_by_study."
        )
    if verb == "scale":
        p.add_argument("scale", choices=["demo", "study", "paper"])
    if verb == "run":
        p.add_argument("--engine", choices=["snakemake", "dvc"], default="snakemake")
        p.add_argument("--cores", type=_positive_int, default=2, help="cores the engine may use (>= 1)")
        p.epilog = "Unknown options are passed to the engine, e.g. `pcn run --profile slurm all`."
    if verb == "rehearse":
        p.add_argument(
            "--data-root",
            help="a folder holding the datasets in their official layouts "
            "(default: write miniature copies into the workspace)",
        )
        p.add_argument("--work", default="rehearsal", help="workspace folder (default: rehearsal/)")
        p.add_argument(
            "--engine",
            choices=["auto", "slurm", "local"],
            default="auto",
            help="auto: through the slurm profile when a SLURM cluster answers, else locally",
        )
        p.add_argument(
            "--boxes",
            choices=["csv", "voc", "none"],
            default="csv",
            help="the miniature ImageNet's val boxes: Kaggle's LOC_val_solution.csv (default), image-net.org's "
            "per-image VOC XML, or none (the attention maps then go unscored)",
        )
        p.add_argument(
            "--quick",
            action="store_true",
            help="the short form (CI): the main line and the pretrained transfers, no experiment grid",
        )
        p.add_argument(
            "--data-pass",
            type=int,
            default=20_000,
            metavar="N",
            help="after the DAG, stream N augmented samples through each training loader, no model, "
            "to catch rare per-image failures (default 20000; 0: skip)",
        )
    if verb == "track":
        p.add_argument("action", choices=["sync"], help="sync: rebuild MLflow's missing stage runs from the files")
    if verb == "ui":
        p.add_argument("--port", type=_port, default=5000, help="port of the UI (1-65535)")
        p.add_argument("--no-wait", action="store_true", help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.verb != "run":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    module, func = args.target.split(":")
    try:
        fn = getattr(__import__(module, fromlist=[func]), func)
        if not is_stage_verb(args.verb):
            return int(fn(args) or 0)
        # the DAG's checks before a step that `dvc repro` started (the DAG layer, not each step)
        from pcn.dag.dvc_view import dvc_stage_guard

        with dvc_stage_guard(args.params):
            return int(fn(args) or 0)
    except _user_errors() as exc:
        msg = str(exc).strip().splitlines()
        print(f"pcn {args.verb}: error: {msg[0] if msg else exc.__class__.__name__}", file=sys.stderr)
        for line in msg[1:]:
            print(f"  {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pcn {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
