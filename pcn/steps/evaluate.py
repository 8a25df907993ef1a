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
        model.to(device)
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
        # The paper's 224 plus this run's own training resolutions.
        resolutions = sorted(set(c.resolutions) | {p.pretrain.img_size, p.finetune.img_size})
        device = str(_device(p))
        rows = complexity_table(c.models, resolutions, batch_size=c.batch_size, device=device, warmup=1, iters=c.iters)
        out = Path("reports/complexity.md")
        with atomic_path(out) as tmp:
            write_markdown(rows, tmp)
        st.finish({"device": device, "rows": rows}, "metrics/complexity.json", artifacts=(out,))
        print(out.read_text())
    return 0
