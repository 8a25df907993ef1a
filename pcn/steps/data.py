"""Data stages: demo synthesis, FFCV conversion, the raw-pixel baseline."""

from __future__ import annotations

from pathlib import Path

from pcn.config import DATASET_DIRS, load_params
from pcn.data.splits import SPLIT_LAYOUTS, data_paths, ffcv_splits
from pcn.io import FolderOwner, atomic_path, check_output_folder
from pcn.machine.device import setup_torch
from pcn.steps.common import outputs, stage

# What the conversion writes in its folder: the .beton files, their sidecars (and the marker).
FFCV_OUTPUT = FolderOwner("convert", ("*.beton", "*.beton.json"))


def make_demo(args) -> int:
    from pcn.data.demo.synthetic import SUMMARY_FILE, DemoSpec, generate

    # The generator does not mark its folder (a marker would change the content hash its
    # summary records): the demo's folder is known by its four dataset folders and its
    # summary, which a real dataset root laid out alike does not hold.
    owner = FolderOwner("make-demo", (*DATASET_DIRS.values(), SUMMARY_FILE), SUMMARY_FILE)
    check_output_folder(args.out, owner)  # before the MLflow run and the minutes of drawing
    with stage(args, "demo_data", **outputs(args)) as st:
        d = st.params.data.demo
        spec = DemoSpec(seed=st.params.seed, **d.model_dump())
        summary = generate(Path(st.out), spec)  # the four datasets' folders, side by side
        st.run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        st.run.set_tags({"data_hash": summary.get("content_hash", "")})
    return 0


def manifest(args) -> int:
    """The dataset_manifest stage: refresh each dataset listing its command names.  No
    MLflow run and no front-end lock: it writes only the listings, atomically, and only the
    changed ones (DVC runs it at every repro)."""
    from pcn.config import load_params
    from pcn.dag.manifest import refresh_listings

    print(refresh_listings(load_params(args.params), args.out))
    return 0


def convert(args) -> int:
    """Convert the classification splits the scale reads through FFCV (train, val,
    ImageNetV2: ``ffcv_splits``) to .beton files, after checking them: a missing split or
    a class list that differs from train's is refused before anything is written."""
    from pcn.data.ffcv_io import convert_imagefolder
    from pcn.data.folders import scan_folder

    paths = data_paths(load_params(args.params), args.out)
    read = [paths[split] for split in SPLIT_LAYOUTS]  # train's classes are read whichever splits are converted
    check_output_folder(args.out, FFCV_OUTPUT, read)  # before the MLflow run and the conversion
    with stage(args, "convert", **outputs(args)) as st:
        p, f = st.params, st.params.data.ffcv
        splits = [(split, SPLIT_LAYOUTS[split]) for split in ffcv_splits(p)]
        train_classes = scan_folder(paths["train"]).class_names  # every split's class list
        for split, layout in splits:
            if split != "train":
                scan_folder(paths[split], layout, train_classes)
        metrics = {}
        with atomic_path(Path(st.out), directory=True, owner=FFCV_OUTPUT, inputs=read) as out:
            for split, layout in splits:
                metrics[split] = convert_imagefolder(
                    paths[split],
                    out / f"{split}.beton",
                    max_resolution=f.max_resolution,
                    jpeg_quality=f.jpeg_quality,
                    compress_probability=f.compress_probability,
                    write_mode=f.write_mode,
                    max_bad_fraction=f.max_bad_fraction,
                    num_workers=p.data.num_workers,
                    layout=layout,
                    train_classes=train_classes,
                )
        flat = {
            f"{split}_{k}": v for split, m in metrics.items() for k, v in m.items() if not isinstance(v, (list, dict))
        }
        st.run.set_tags({f"data_hash_{s}": m.get("source_hash", "") for s, m in metrics.items()})
        st.finish({**flat, "splits": metrics})
    return 0


def pixel_baseline(args) -> int:
    """How far a linear model on average-pooled raw pixels gets: the task must need more."""
    from pcn.eval.pixel_baseline import fit_pixel_baseline

    with stage(args, "pixel_baseline", **outputs(args)) as st:
        setup_torch(st.params.runtime.threads)
        paths = data_paths(st.params)
        metrics = fit_pixel_baseline(paths["train"], paths["val"], seed=st.params.seed)
        st.finish(metrics)
    return 0
