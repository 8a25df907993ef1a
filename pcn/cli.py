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
from pcn.errors import DatasetError, UserError  # noqa: E402
from pcn.steps import VERBS  # noqa: E402

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


def _verb_arguments(verb: str, p: argparse.ArgumentParser) -> None:
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
        p.add_argument("--checkpoint", help="backbone weights: a released checkpoint file instead of the DAG's")
    if verb == "evaluate":
        p.add_argument(
            "--checkpoint",
            help="a released checkpoint ({'model': state_dict}) to score on ImageNet val "
            "and v2 under the paper's protocol, into metrics/released/<model>-<px>-<sha>.json, "
            "one file per checkpoint (without it: "
            "the DAG stage, results/finetune/model.pth -> metrics/eval.json)",
        )
        p.add_argument(
            "--model",
            help="its timm name (default: the registered PatchConvNet whose keys and shapes the checkpoint has)",
        )
        p.add_argument("--img-size", type=int, help="resolution (default: the model's, 224 for the releases)")
        p.add_argument("--crop-ratio", type=float, help="centre-crop ratio (default: the paper's, 0.875 at every size)")
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
        p.add_argument("--cores", type=int, default=2)
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
        p.add_argument("--port", type=int, default=5000)
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
