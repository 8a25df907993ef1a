"""Evaluation stages: accuracy of the fine-tuned model, and complexity of the family."""

from __future__ import annotations

from pathlib import Path

from pcn.io import atomic_path
from pcn.steps.common import data_paths, setup_torch, stage
from pcn.steps.train import num_classes


def _device(params):
    import torch

    want = params.runtime.device
    return torch.device("cuda" if want in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def evaluate(args) -> int:
    import timm
    import torch

    import pcn  # noqa: F401  (registers the models)
    from pcn.data.loaders import build_loader
    from pcn.models.checkpoint import load_checkpoint
    from pcn.train.engine import evaluate as eval_loop

    with stage(args, "evaluate", ("data.loader", "model", "evaluate", "runtime")) as st:
        p, e = st.params, st.params.evaluate
        setup_torch(p.runtime.threads)
        device = _device(p)
        checkpoint = args.checkpoint or "results/finetune/model.pth"
        model = timm.create_model(p.model.name, num_classes=num_classes(p), **p.model.options)
        load_checkpoint(model, checkpoint, strict=True)
        model.to(device=device, memory_format=torch.channels_last)  # as in training's evaluations
        paths = data_paths(p)
        metrics = {"checkpoint": checkpoint, "img_size": e.img_size, "crop_ratio": e.crop_ratio}
        for split in ("val", "v2"):
            if split not in paths:
                continue
            loader = build_loader(beton=paths[f"{split}_beton"], folder=paths[split], kind=p.data.loader, train=False,
                                  img_size=e.img_size, batch_size=e.batch_size, aug=None, crop_ratio=e.crop_ratio,
                                  num_workers=p.data.num_workers, seed=p.seed, device=str(device))
            m = eval_loop(model, loader, device)
            prefix = "" if split == "val" else "v2_"
            metrics.update({f"{prefix}top1": round(m["top1"], 3), f"{prefix}top5": round(m["top5"], 3),
                            f"{prefix}loss": round(m["loss"], 5), f"{prefix}n_images": m["n"]})
        st.finish(metrics, "metrics/eval.json")
        print(f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  on {metrics['n_images']} val images")
    return 0


def complexity(args) -> int:
    from pcn.eval.complexity import complexity_table, write_markdown

    with stage(args, "complexity", ("complexity", "finetune.img_size", "pretrain.img_size", "runtime")) as st:
        p, c = st.params, st.params.complexity
        setup_torch(p.runtime.threads)
        device = str(_device(p))
        # Every model at the configured resolutions; the pipeline's own model also at the
        # resolutions it is trained at.  Params and GMACs are counted on shapes alone;
        # throughput and memory only for the timed models (large sizes take minutes per
        # batch on a CPU).
        plan = [(m, r) for m in c.models for r in c.resolutions]
        plan += [(p.model.name, r) for r in (p.pretrain.img_size, p.finetune.img_size) if (p.model.name, r) not in plan]
        rows = []
        for model, res in plan:
            timed = c.timed is None or model in c.timed
            try:
                rows += complexity_table([model], [res], batch_size=c.batch_size, device=device, warmup=1,
                                         iters=c.iters, measure=timed)
            except Exception as exc:  # noqa: BLE001 - one model that cannot run at a size must not hide the others
                rows.append({"model": model, "img_size": res, "params_m": None, "gmacs": None, "throughput": None,
                             "peak_mem_mb": None, "mem_method": None, "device": device, "batch_size": None,
                             "error": f"{exc.__class__.__name__}: {exc}"[:300]})
                print(f"complexity: {model} at {res} px failed: {rows[-1]['error']}")
        out = Path("reports/complexity.md")
        with atomic_path(out) as tmp:
            write_markdown(rows, tmp)
        st.finish({"device": device, "rows": rows}, "metrics/complexity.json", artifacts=(out,))
        print(out.read_text())
    return 0
