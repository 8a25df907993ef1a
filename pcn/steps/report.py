"""Analysis stages: attention maps and their localisation scores, the figures, the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pcn.errors import DatasetError
from pcn.io import atomic_path
from pcn.machine import setup_torch
from pcn.stages import BASELINE_VARIANT, attention_map_checkpoints, avg_pool_variant
from pcn.steps.common import data_paths, stage

METHOD_TITLES = {
    "patchconvnet": "PatchConvNet (class token)",
    "patchconvnet_finetuned": "PatchConvNet fine-tuned (main line)",
    "patchconvnet_multiclass": "PatchConvNet multi-class (label's token)",
    "gradcam": "Grad-CAM (avg-pool model)",
    "cam": "CAM (avg-pool model)",
    "centre": "centre prior",
    "uniform": "uniform map (floor)",
}


def _checkpoints(params) -> dict[str, tuple[str, str, dict]]:
    """method -> (checkpoint, timm model name, constructor options) of the maps the stage draws."""
    from pcn.config import grid_model

    exp = params.experiments
    # The grid's baseline is trained like the CAM model (a like-for-like pair); the
    # main line's fine-tuned model is the trained one (at the demo scale the grid's
    # runs are smoke runs at chance, the fine-tuned model is not).  Without the grid
    # (experiments.enabled: false) only the main line's map is drawn.
    models = {"patchconvnet_finetuned": (params.model.name, params.model.options)}
    if exp.enabled:
        models["patchconvnet"] = grid_model(params, None, exp.variants[BASELINE_VARIANT])
        models["patchconvnet_multiclass"] = grid_model(params, exp.multiclass_model, {})
        avg = avg_pool_variant(params)
        if avg:
            models["cam"] = grid_model(params, None, exp.variants[avg])
    return {method: (path, *models[method]) for method, path in attention_map_checkpoints(params).items()}


def _model(name: str, options: dict, checkpoint: str, num_classes: int):
    import timm

    import pcn.models  # noqa: F401  (registers the models with timm)
    from pcn.models.checkpoint import load_checkpoint

    model = timm.create_model(name, num_classes=num_classes, **options)
    load_checkpoint(model, checkpoint, strict=True)
    return model.eval()


def attention(args) -> int:
    from pcn.analysis import attention as A
    from pcn.analysis import figures as F
    from pcn.data.folders import class_folders

    with stage(args, "attention") as st:
        p, cfg = st.params, st.params.attention
        attention_dir = Path(st.out)
        setup_torch(p.runtime.threads)
        paths = data_paths(p)
        wnids = class_folders(paths["train"])  # label order of every model
        boxes = A.box_source(paths["loc"].parent)
        if boxes is None and cfg.require_boxes:
            raise DatasetError(f"{A.no_boxes_message(paths['loc'].parent)}, and attention.require_boxes is true")
        items = A.read_val_boxes(paths["val"], boxes, wnids, cfg.n_images)
        class_names = A.synset_names(paths["loc"].with_name("LOC_synset_mapping.txt"), wnids)
        size = p.experiments.train_for("ablation").img_size  # the grid baseline's training size
        images, x, regions = A.load_images(items, size)
        labels = np.array([it.label for it in items])
        k = len(wnids)
        ckpts = _checkpoints(p)

        logits, raw, maps = {}, {}, {}
        # The fine-tuned model sees the images at its own resolution; every map is
        # scored at the grid's (its patch grid upsampled to the same regions).
        x_finetuned = A.load_images(items, p.finetune.img_size)[1]
        for method, inputs in (("patchconvnet", x), ("patchconvnet_finetuned", x_finetuned)):
            if method not in ckpts:
                continue
            path, name, opts = ckpts[method]
            logits[method], raw[method] = A.attention_maps(_model(name, opts, path, k), inputs)
            maps[method] = A.upsample(raw[method], size)
        multi_all = None
        if "patchconvnet_multiclass" in ckpts:
            path, name, opts = ckpts["patchconvnet_multiclass"]
            logits["patchconvnet_multiclass"], raw["multiclass_all"] = A.attention_maps(_model(name, opts, path, k), x)
            multi_all = A.upsample(raw["multiclass_all"], size)
            maps["patchconvnet_multiclass"] = A.label_maps(multi_all, labels)
        if "cam" in ckpts:
            path, name, opts = ckpts["cam"]
            avg_model = _model(name, opts, path, k)
            import torch

            with torch.no_grad():
                logits["gradcam"] = logits["cam"] = avg_model(x).numpy()
            maps.update(A.class_activation_maps(avg_model, x, labels))
        # without boxes the maps are still drawn; only their localisation is not scored
        table = A.localisation_table(maps, regions, cfg.threshold) if boxes else {m: {"n": len(items)} for m in maps}
        for method, lg in logits.items():
            table[method]["model_top1"] = A.top1(lg, labels)
        for method, (path, name, _) in ckpts.items():
            for m in (method, "gradcam") if method == "cam" else (method,):
                table[m].update(checkpoint=path, model=name)

        captions = [class_names[it.label] for it in items]
        with atomic_path(attention_dir, directory=True) as out:
            np.savez_compressed(
                out / "maps.npz",
                images=images,
                regions=regions,
                labels=labels,
                files=np.array([str(it.path) for it in items]),
                class_names=np.array(class_names),
                **{f"map_{m}": v.astype(np.float16) for m, v in maps.items()},
                **({} if multi_all is None else {"multiclass_all": multi_all.astype(np.float16)}),
                **{f"raw_{m}": v for m, v in raw.items()},
                **{f"logits_{m}": v for m, v in logits.items()},
            )
            shown = {
                m: maps[m]
                for m in ("patchconvnet_finetuned", "patchconvnet", "patchconvnet_multiclass", "gradcam", "cam")
                if m in maps
            }
            two_lines = {m: t.replace(" (", "\n(") for m, t in METHOD_TITLES.items()}
            F.save(F.attention_figure(images, shown, two_lines, captions, n=cfg.n_figure), out, "attention_single")
            if multi_all is not None:
                F.save(
                    F.multiclass_figure(
                        images, multi_all, class_names, logits["patchconvnet_multiclass"], labels, n=cfg.n_figure
                    ),
                    out,
                    "attention_multiclass",
                )
            if boxes:
                F.save(F.localisation_figure(table, METHOD_TITLES), out, "localisation")
        metrics = {
            **table,
            "threshold": cfg.threshold,
            "n_images": len(items),
            "img_size": size,
            "ground_truth": str(boxes) if boxes else None,
            "localisation_scored": boxes is not None,
            **(
                {}
                if boxes
                else {"localisation_not_scored": f"{A.no_boxes_message(paths['loc'].parent)}: maps drawn, not scored"}
            ),
            "definitions": {
                "pointing_game": "% of images whose map maximum lies in the union of the labelled class's "
                "boxes (ties: share of the tied maxima inside; so a uniform map scores "
                "the boxes' area fraction)",
                "iou": f"% mean IoU of (map >= {cfg.threshold} x max) with the union of the boxes",
                "model_top1": "top-1 of the map's model on these images",
                "cam": "pytorch_grad_cam.HiResCAM on the last trunk block (= CAM for avg-pool + linear)",
                "gradcam": "pytorch_grad_cam.GradCAM on the last trunk block, labelled class",
                "centre": "Gaussian on the image centre, sigma = side / 4",
                "uniform": "constant map: the chance floor",
            },
        }
        st.run.log_metrics(
            {f"{m}.{k2}": v for m, row in table.items() for k2, v in row.items() if isinstance(v, (int, float))}
        )
        st.finish(
            metrics,
            artifacts=tuple(
                attention_dir / f"{n}.png"
                for n in ("attention_single", "attention_multiclass", "localisation")
                if (attention_dir / f"{n}.png").is_file()
            ),
        )
        for m, row in table.items():
            if "pointing_game" not in row:
                continue
            print(
                f"{METHOD_TITLES.get(m, m):44s} pointing {row['pointing_game']:5.1f}%  "
                f"IoU {row['iou']:5.1f}%  (n={row['n']})"
            )
    return 0


def _paper_directions(path: str | Path = "paper/numbers.yaml") -> dict[str, str]:
    import yaml

    p = Path(path)
    if not p.is_file():
        return {}
    doc = yaml.safe_load(p.read_text()) or {}
    # the chart's label: the direction, and the paper's condition on it in a few words
    return {
        k: ", ".join(filter(None, (v.get("direction"), v.get("when"))))
        for k, v in (doc.get("ablations") or {}).items()
        if isinstance(v, dict)
    }


def figures(args) -> int:
    from pcn.analysis.figures import build_figures

    with stage(args, "figures") as st:
        figures_dir = Path(st.out)
        with atomic_path(figures_dir, directory=True) as out:
            manifest = build_figures(Path("."), out, _paper_directions())
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
    from pcn.analysis.report import build_report, write_report

    with stage(args, "report") as st:
        doc = build_report(Path("."), st.params)
        md, html = write_report(doc, Path(st.outs[0]).parent)
        if {str(md), str(html)} != set(st.outs):  # the library names its files: say so before the DAG does
            raise RuntimeError(f"report: wrote {md} and {html}, the stage table declares {', '.join(st.outs)}")
        counts = doc.status_counts()
        st.run.log_metrics({f"rows_{k.replace(' ', '_')}": v for k, v in counts.items()})
        st.run.log_artifact(md)
        st.run.log_artifact(html)
        print(f"wrote {md} and {html}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0
