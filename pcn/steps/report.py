"""Analysis stages: attention maps and their localisation scores, the figures, the report."""

from __future__ import annotations

from pathlib import Path

from pcn.data.splits import data_paths
from pcn.io import atomic_path
from pcn.machine.device import setup_torch
from pcn.steps.common import outputs, stage


def attention(args) -> int:
    from pcn.analysis.attention_study import FIGURES, METHOD_TITLES, Inputs, attention_study, method_rows
    from pcn.data.folders import class_folders

    with stage(args, "attention", **outputs(args)) as st:
        setup_torch(st.params.runtime.threads)
        paths = data_paths(st.params)
        inputs = Inputs(paths["val"], paths["loc"].parent, class_folders(paths["train"]))  # label order of every model
        checkpoints = dict(w.split("=", 1) for w in args.weights)
        attention_dir = Path(st.out)
        with atomic_path(attention_dir, directory=True) as out:
            metrics = attention_study(st.params, inputs, checkpoints, out)
        table = method_rows(metrics)
        st.run.log_metrics(
            {f"{m}.{k2}": v for m, row in table.items() for k2, v in row.items() if isinstance(v, (int, float))}
        )
        figures = (attention_dir / f"{n}.png" for n in FIGURES)
        st.finish(metrics, artifacts=tuple(f for f in figures if f.is_file()))
        for m, row in table.items():
            if "pointing_game" in row:
                print(
                    f"{METHOD_TITLES.get(m, m):44s} pointing {row['pointing_game']:5.1f}%  "
                    f"IoU {row['iou']:5.1f}%  (n={row['n']})"
                )
    return 0


def figures(args) -> int:
    from pcn.analysis.figures import build_figures, paper_directions
    from pcn.analysis.paths import RunPaths

    with stage(args, "figures", outs=(args.out,)) as st:
        figures_dir = Path(st.out)
        with atomic_path(figures_dir, directory=True) as out:
            manifest = build_figures(RunPaths.from_args(args), out, paper_directions(args.paper))
        for name, info in manifest["figures"].items():
            print(f"figure {name}: {', '.join(info['files'])}")
        for name, why in manifest["skipped"].items():
            print(f"skipped {name}: {why}")
        st.run.log_metrics({"figures": len(manifest["figures"]), "skipped": len(manifest["skipped"])})
        for info in manifest["figures"].values():
            for f in info["files"]:
                if f.endswith(".png"):
                    st.run.log_artifact(figures_dir / f, "figures")
        st.run.log_artifact(figures_dir / "index.json", "figures")
    return 0


def report(args) -> int:
    from pcn.analysis.paths import RunPaths
    from pcn.analysis.report import build_report, write_report

    with stage(args, "report", outs=tuple(args.out)) as st:
        doc = build_report(RunPaths.from_args(args), st.params)
        md, html = write_report(doc, *map(Path, st.outs))
        counts = doc.status_counts()
        st.run.log_metrics({f"rows_{k.replace(' ', '_')}": v for k, v in counts.items()})
        st.run.log_artifact(md)
        st.run.log_artifact(html)
        print(f"wrote {md} and {html}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0
