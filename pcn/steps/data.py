"""Data stages: demo synthesis, FFCV conversion, the raw-pixel baseline."""

from __future__ import annotations

from pathlib import Path

from pcn.cli import UserError
from pcn.io import atomic_path
from pcn.steps.common import data_paths, setup_torch, stage

DEMO_ROOT = Path("data/demo")
FFCV_DIR = Path("data/ffcv")


def make_demo(args) -> int:
    from pcn.data.synthetic import DemoSpec, generate

    with stage(args, "demo_data", ("seed", "data.demo")) as st:
        d = st.params.data.demo
        spec = DemoSpec(seed=st.params.seed, **d.model_dump())
        summary = generate(DEMO_ROOT, spec)
        st.run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        st.run.set_tags({"data_hash": summary.get("hash", "")})
    return 0


def convert(args) -> int:
    from pcn.data.ffcv_io import convert_imagefolder

    with stage(args, "convert", ("data.source", "data.ffcv", "data.num_workers")) as st:
        p, f = st.params, st.params.data.ffcv
        paths = data_paths(p)
        splits = [("train", paths["train"], "imagefolder"), ("val", paths["val"], "imagefolder")]
        if "v2" in paths:
            splits.append(("v2", paths["v2"], "imagenet_v2"))
        for _, src, _ in splits:
            if not src.is_dir():
                raise UserError(f"{src}: dataset folder not found (expected an ImageFolder with one sub-folder per class)")
        metrics = {}
        with atomic_path(FFCV_DIR, directory=True) as out:
            for split, src, layout in splits:
                m = convert_imagefolder(
                    src, out / f"{split}.beton", max_resolution=f.max_resolution, jpeg_quality=f.jpeg_quality,
                    compress_probability=f.compress_probability, write_mode=f.write_mode,
                    max_bad_fraction=f.max_bad_fraction, num_workers=p.data.num_workers, layout=layout)
                metrics[split] = m
        flat = {f"{split}_{k}": v for split, m in metrics.items() for k, v in m.items() if not isinstance(v, (list, dict))}
        st.run.set_tags({f"data_hash_{s}": m.get("source_hash", "") for s, m in metrics.items()})
        st.finish({**flat, "splits": metrics}, "metrics/convert.json")
    return 0


def pixel_baseline(args) -> int:
    """How far a linear model on average-pooled raw pixels gets: the task must need more."""
    from pcn.eval.pixel_baseline import fit_pixel_baseline

    with stage(args, "pixel_baseline", ("seed", "data.demo")) as st:
        setup_torch(st.params.runtime.threads)
        paths = data_paths(st.params)
        metrics = fit_pixel_baseline(paths["train"], paths["val"], seed=st.params.seed)
        st.finish(metrics, "metrics/pixel_baseline.json")
    return 0
