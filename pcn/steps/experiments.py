"""The paper's comparisons as stages: ablations, ResNet pooling, multi-class tokens,
depth x width; and the summary that turns seeds into intervals and verdicts."""

from __future__ import annotations

from pathlib import Path

from pcn.config import grid_model, has_layerscale
from pcn.config.names import parse_point
from pcn.errors import UserError
from pcn.io import write_csv
from pcn.steps.common import outputs, stage
from pcn.steps.train import num_classes, train_stage


def _train(
    args,
    name: str,
    variant: tuple[str, str],
    *,
    seed: int,
    model: str | None,
    options: dict,
    extra: dict | None = None,
    run: str | None = None,
    **kw,
) -> dict:
    """One run of comparison ``name``: its ``variant`` (the wildcard naming it and its value,
    e.g. ``("pool", "avg")``) at ``seed``, with that comparison's recipe (``run``: the run's
    own, where ``RUN_RECIPES`` gives it one).  The depth x width grid has one seed, not a
    wildcard."""
    key, value = variant
    tags = {"pcn.study": name, "pcn.variant": value}
    wildcards = {key: value} if name == "depth_width" else {key: value, "seed": seed}
    with stage(args, name, tags={**tags, "pcn.seed": str(seed)}, wildcards=wildcards, **outputs(args)) as st:
        p = st.params
        model, options = grid_model(p, model, options)
        cfg = p.experiments.train_for(name, run)
        if not has_layerscale(model):
            cfg = cfg.model_copy(update={"layerscale_init": None})
        info = {k.removeprefix("pcn."): v for k, v in tags.items()}
        return train_stage(
            args,
            st,
            cfg=cfg,
            seed=seed,
            threads=1,
            loader=p.experiments.loader,
            model=model,
            options=options,
            extra={**info, "seed": seed, **(extra or {})},
            **kw,
        )


def _entry(mapping: dict, key: str, where: str):
    """``mapping[key]``, or a one-line error naming the params key ``where`` and what it holds."""
    if key not in mapping:
        raise UserError(f"{where} has no entry {key!r} (known: {', '.join(mapping)})")
    return mapping[key]


def ablate(args) -> int:
    from pcn.config import load_params

    options = _entry(load_params(args.params).experiments.variants, args.variant, "experiments.variants")
    _train(args, "ablation", ("variant", args.variant), seed=args.seed, model=None, options=options)
    return 0


def resnet_pool(args) -> int:
    from pcn.config import load_params

    model = _entry(load_params(args.params).experiments.resnet, args.pool, "experiments.resnet")
    _train(args, "resnet_pool", ("pool", args.pool), seed=args.seed, model=model, options={})
    return 0


def multiclass(args) -> int:
    """One class token per class: from scratch, or initialised from the single-token baseline."""
    from pcn.config import load_params

    p = load_params(args.params)
    init = None
    if args.init == "finetuned":
        # next to the run's model; from the baseline of the same seed (--baseline)
        init = str(Path(args.out).with_name("init.pth"))
        single_to_multiclass(args.baseline, init, num_classes(p))
    _train(
        args,
        "multiclass",
        ("init", args.init),
        seed=args.seed,
        model=p.experiments.multiclass_model,
        options={},
        init=init,
        run=args.init,
    )
    return 0


def single_to_multiclass(src: str, dst: str, k: int) -> None:
    """A single-token checkpoint as the multi-class model's init: the class token is
    copied to every class, and class c's head is row c of the single head."""
    import torch

    from pcn.io import atomic_path
    from pcn.models import unwrap_state_dict

    sd = unwrap_state_dict(torch.load(src, map_location="cpu", weights_only=True), source=src)
    out = {key: v for key, v in sd.items() if not key.startswith("head.")}
    out["cls_token"] = sd["cls_token"].expand(1, k, -1).clone()
    for c in range(k):
        out[f"head.{c}.weight"] = sd["head.weight"][c : c + 1].clone()
        out[f"head.{c}.bias"] = sd["head.bias"][c : c + 1].clone()
    with atomic_path(dst) as tmp:
        torch.save({"model": out}, tmp)


def depth_width(args) -> int:
    width, depth = parse_point(args.point)
    from pcn.config import load_params
    from pcn.models.family import depth_width_options

    p = load_params(args.params)
    options = depth_width_options(width, depth)
    _train(
        args,
        "depth_width",
        ("point", args.point),
        seed=p.experiments.seeds[0],
        model=None,
        options=options,
        extra={"width": width, "depth": depth, **point_complexity(p, options)},
    )
    return 0


def point_complexity(p, options: dict) -> dict:
    """Params, GMACs, throughput and peak memory of one grid point at its training size.

    This runs in the stage's own process (on a cluster: the submitting host), so the
    timing uses ``runtime.device`` only where this host has it, at the complexity
    stage's batch and iterations; elsewhere throughput and memory are left out (None)
    rather than measured on a login node's CPU.  Params and GMACs need no device.
    """
    import timm
    import torch

    import pcn.models  # noqa: F401  (registers the models)
    from pcn.eval.complexity import count_gmacs, count_params, measure_throughput
    from pcn.machine.device import setup_torch, torch_device

    setup_torch(1)
    img = p.experiments.train_for("depth_width").img_size
    name, options = grid_model(p, None, options)
    model = timm.create_model(name, num_classes=num_classes(p), **options)
    out = {
        "params_m": count_params(model) / 1e6,
        "gmacs": count_gmacs(model, img),
        "img_size": img,
        "throughput": None,
        "peak_mem_mb": None,
        "mem_method": None,
    }
    if p.runtime.device == "cuda" and not torch.cuda.is_available():
        return out  # a submitting host without the GPUs the jobs get: not timed (see above)
    device = torch_device(p.runtime.device)
    c = p.complexity
    speed = measure_throughput(model, img, c.batch_size, device, warmup=1, iters=c.iters)
    return {**out, **{k: speed[k] for k in ("throughput", "peak_mem_mb", "mem_method")}}


def summarize(args) -> int:
    from pcn.analysis.stats import grid_plot_rows, summarize_experiments

    with stage(args, "summarize", outs=(args.out,), plots=tuple(args.plots)) as st:
        summary = summarize_experiments(st.params, Path(args.metrics))
        for path, rows in zip(st.plots, grid_plot_rows(summary), strict=True):
            write_csv(path, rows)
        st.finish(summary, st.out, artifacts=st.plots)
    return 0
