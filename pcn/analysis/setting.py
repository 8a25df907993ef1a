"""What each comparison of the grid ran at: run length, batch, resolution and the number of
positions its attention pools over (tokens = (img_size / patch stride)^2).

The paper attaches conditions to some directions (BatchNorm is better only with large
enough batches), so every comparison states these next to its verdict.  The recipe is the
one metrics/ablations.json recorded (``recipes``); a comparison that has not run yet shows
the one its params set.  The patch stride is the grid PatchConvNet's ``stem_stride`` option
(params); a ResNet's is the reduction of its last feature map (timm's ``feature_info``).
"""

from __future__ import annotations

from pcn.analysis.stats import RECIPE_OF_GROUP, recipe


def recipe_of(abl: dict, params, group: str) -> dict:
    """The recipe of a comparison group (ablations | resnet | multiclass | depth_width)."""
    return (abl.get("recipes") or {}).get(group) or recipe(params.experiments.train_for(RECIPE_OF_GROUP[group]))


def patch_stride(params, group: str, name: str | None = None) -> int | None:
    """The patch stride of a comparison's model (``name``: its variant, pool or point), or None."""
    from pcn.config import grid_model

    exp = params.experiments
    model, options = {
        "ablations": (None, exp.variants.get(name or "baseline", {})),
        "resnet": (exp.resnet.get(name or "attention"), {}),
        "multiclass": (exp.multiclass_model, {}),
        "depth_width": (None, {}),
    }[group]
    full, merged = grid_model(params, model, options)
    if not full:
        return None
    if full.startswith("patchconvnet"):
        return merged.get("stem_stride")
    return output_stride(full, merged)


def output_stride(model: str, options: dict | None = None) -> int | None:
    """The stride of a timm model's last feature map (a ResNet's: 8, 16 or 32), from its
    ``feature_info`` with the run's constructor options; None for a model that does not declare one."""
    import timm

    import pcn.models  # noqa: F401  (registers the models)

    try:
        info = timm.create_model(model, pretrained=False, **(options or {})).feature_info
    except Exception:  # noqa: BLE001 - a name timm does not know: the report says "not recorded"
        return None
    return info[-1]["reduction"] if info else None


def tokens_text(img_size: int | None, stride: int | None) -> str:
    """'16 tokens (4x4, stride 16)'."""
    if not img_size or not stride:
        return "tokens not recorded (no patch stride in the params)"
    side = img_size // stride
    return f"{side * side} tokens ({side}x{side}, stride {stride})"


def setting_text(rec: dict | None, stride: int | None) -> str:
    """'16 epochs at 64 px, batch 32, 16 tokens (4x4, stride 16)'."""
    if not rec:
        return "recipe not recorded"
    length = f"{rec['max_steps']} steps" if rec.get("max_steps") else f"{rec['epochs']} epochs"
    batch = f"batch {rec['batch_size']}" if rec.get("batch_size") else "batch not recorded"
    return f"{length} at {rec['img_size']} px, {batch}, {tokens_text(rec.get('img_size'), stride)}"
