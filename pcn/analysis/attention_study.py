"""The attention stage's study: each method's maps on the labelled val images, their
localisation scores against the boxes, and the figures (pcn.analysis.attention holds the
maps and scores themselves)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcn.analysis import attention as A
from pcn.analysis import figures as F
from pcn.config.names import BASELINE_VARIANT, avg_pool_variant
from pcn.errors import DatasetError

# Every method the stage scores, in the order the figures show them; the last two are the
# references every map is compared with.
METHOD_TITLES = {
    "patchconvnet_finetuned": "PatchConvNet fine-tuned (main line)",
    "patchconvnet": "PatchConvNet (class token)",
    "patchconvnet_multiclass": "PatchConvNet multi-class (label's token)",
    "gradcam": "Grad-CAM (avg-pool model)",
    "cam": "CAM (avg-pool model)",
    "centre": "centre prior",
    "uniform": "uniform map (floor)",
}
REFERENCES = ("centre", "uniform")
FIGURES = ("attention_single", "attention_multiclass", "localisation")


@dataclass
class Inputs:
    """What the study reads: the val split, its boxes' folder, the train split's class list."""

    val: Path
    boxes_dir: Path  # the ImageNet folder holding LOC_val_solution.csv (or the VOC XML)
    wnids: list[str]


def method_models(params, checkpoints: dict[str, str]) -> dict[str, tuple[str, str, dict]]:
    """method -> (checkpoint, timm model name, constructor options) of the maps drawn, for the
    methods of ``checkpoints`` (the stage's ``--weights METHOD=MODEL``)."""
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
    return {method: (path, *models[method]) for method, path in checkpoints.items()}


def _model(name: str, options: dict, checkpoint: str, num_classes: int):
    import timm

    import pcn.models  # noqa: F401  (registers the models with timm)
    from pcn.models.checkpoint import load_checkpoint

    model = timm.create_model(name, num_classes=num_classes, **options)
    load_checkpoint(model, checkpoint, strict=True)
    return model.eval()


def _maps(ckpts: dict, items, x, x_finetuned, size: int, k: int) -> tuple[dict, dict, dict, np.ndarray | None]:
    """(logits, raw maps, maps at ``size``, every class's multi-class maps) of each method."""
    labels = np.array([it.label for it in items])
    logits, raw, maps = {}, {}, {}
    # The fine-tuned model sees the images at its own resolution; every map is
    # scored at the grid's (its patch grid upsampled to the same regions).
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
        import torch

        path, name, opts = ckpts["cam"]
        avg_model = _model(name, opts, path, k)
        with torch.no_grad():
            logits["gradcam"] = logits["cam"] = avg_model(x).numpy()
        maps.update(A.class_activation_maps(avg_model, x, labels))
    return logits, raw, maps, multi_all


def attention_study(params, inputs: Inputs, checkpoints: dict[str, str], out: Path) -> dict:
    """Draw and score every method's maps into the folder ``out``; the stage's metrics."""
    cfg = params.attention
    boxes = A.box_source(inputs.boxes_dir)
    if boxes is None and cfg.require_boxes:
        raise DatasetError(f"{A.no_boxes_message(inputs.boxes_dir)}, and attention.require_boxes is true")
    items = A.read_val_boxes(inputs.val, boxes, inputs.wnids, cfg.n_images)
    class_names = A.synset_names(inputs.boxes_dir / "LOC_synset_mapping.txt", inputs.wnids)
    size = params.experiments.train_for("ablation").img_size  # the grid baseline's training size
    images, x, regions = A.load_images(items, size)
    labels = np.array([it.label for it in items])
    ckpts = method_models(params, checkpoints)
    x_finetuned = A.load_images(items, params.finetune.img_size)[1]
    logits, raw, maps, multi_all = _maps(ckpts, items, x, x_finetuned, size, len(inputs.wnids))
    # without boxes the maps are still drawn; only their localisation is not scored
    table = A.localisation_table(maps, regions, cfg.threshold) if boxes else {m: {"n": len(items)} for m in maps}
    for method, lg in logits.items():
        table[method]["model_top1"] = A.top1(lg, labels)
    for method, (path, name, _) in ckpts.items():
        for m in (method, "gradcam") if method == "cam" else (method,):
            table[m].update(checkpoint=path, model=name)

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
    shown = {m: maps[m] for m in METHOD_TITLES if m in maps and m not in REFERENCES}
    two_lines = {m: t.replace(" (", "\n(") for m, t in METHOD_TITLES.items()}
    captions = [class_names[it.label] for it in items]
    F.save(F.attention_figure(images, shown, two_lines, captions, n=cfg.n_figure), out, "attention_single")
    if multi_all is not None:
        figure = F.multiclass_figure(
            images, multi_all, class_names, logits["patchconvnet_multiclass"], labels, n=cfg.n_figure
        )
        F.save(figure, out, "attention_multiclass")
    if boxes:
        F.save(F.localisation_figure(table, METHOD_TITLES), out, "localisation")
    not_scored = {"localisation_not_scored": f"{A.no_boxes_message(inputs.boxes_dir)}: maps drawn, not scored"}
    return {
        **table,
        "threshold": cfg.threshold,
        "n_images": len(items),
        "img_size": size,
        "ground_truth": str(boxes) if boxes else None,
        "localisation_scored": boxes is not None,
        **({} if boxes else not_scored),
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


def method_rows(metrics: dict) -> dict[str, dict]:
    """method -> its row of the study's metrics (scores, model top-1, checkpoint)."""
    return {m: row for m, row in metrics.items() if m in METHOD_TITLES}
