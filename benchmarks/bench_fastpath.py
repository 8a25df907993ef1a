"""Fast path vs plain eager fp32, on the same model in one run: inference and a training step.

Fast path = ``pcn.eval.complexity.prepare_fast``: channels_last, bfloat16 autocast on CUDA,
``torch.compile`` with ``--compile``. Both modes start from the same weights.

    python benchmarks/bench_fastpath.py                      # CPU defaults: patchconvnet_s60, batch 8
    python benchmarks/bench_fastpath.py --device cuda --batch-size 128 --iters 20 --out fast.json
"""

import argparse
import copy
import json
import platform
import time

import timm
import torch
import torch.nn.functional as F

import pcn.models  # noqa: F401  (registers the patchconvnet_* models)
from pcn.eval.complexity import measure_throughput, prepare_fast


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="patchconvnet_s60", help="timm model name")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--iters", type=int, default=3, help="timed iterations per measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations before each measurement")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--compile", action="store_true", help="torch.compile in the fast path")
    p.add_argument("--out", default="", help="write the results as JSON here")
    return p.parse_args(argv)


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step_time(model, forward, device, img_size, batch_size, warmup, iters) -> float:
    """Seconds per training step (forward, cross-entropy, backward, AdamW step)."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    num_classes = max(1, getattr(model, "num_classes", 1000))
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(x).float(), y)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / iters


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_flush_denormal(True)  # before set_num_threads: LayerScale 1e-6 makes denormals
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = timm.create_model(args.model, pretrained=False)

    results = []
    for mode in ("eager_fp32", "fast"):
        fast = mode == "fast"
        model = copy.deepcopy(base)
        inf = measure_throughput(
            model,
            args.img_size,
            args.batch_size,
            device,
            fast=fast,
            warmup=args.warmup,
            iters=args.iters,
            compile=args.compile,
        )
        model = copy.deepcopy(base).to(device)
        forward = prepare_fast(model, device, compile=args.compile) if fast else model
        step_s = train_step_time(model, forward, device, args.img_size, args.batch_size, args.warmup, args.iters)
        results.append(
            dict(
                mode=mode,
                infer_img_per_s=inf["throughput"],
                infer_peak_mem_mb=inf["peak_mem_mb"],
                mem_method=inf["mem_method"],
                train_step_s=step_s,
                train_img_per_s=args.batch_size / step_s,
            )
        )
        del model, forward

    eager, fast = results
    report = dict(
        model=args.model,
        img_size=args.img_size,
        batch_size=args.batch_size,
        device=str(device),
        iters=args.iters,
        warmup=args.warmup,
        compile=args.compile,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        timm=timm.__version__,
        machine=platform.processor() or platform.machine(),
        fast_path=(
            "channels_last"
            + (" + bf16 autocast" if device.type == "cuda" else "")
            + (" + torch.compile" if args.compile else "")
        ),
        results=results,
        speedup_infer=fast["infer_img_per_s"] / eager["infer_img_per_s"],
        speedup_train=fast["train_img_per_s"] / eager["train_img_per_s"],
    )

    print(
        f"{args.model} @ {args.img_size}px, batch {args.batch_size}, {device}, "
        f"{args.iters} iters; fast path = {report['fast_path']}"
    )
    print(f"{'mode':<12}{'infer im/s':>12}{'peak MB':>10}{'train im/s':>12}{'step s':>9}")
    for r in results:
        mem = "-" if r["infer_peak_mem_mb"] is None else f"{r['infer_peak_mem_mb']:.0f}"
        print(
            f"{r['mode']:<12}{r['infer_img_per_s']:>12.2f}{mem:>10}{r['train_img_per_s']:>12.2f}"
            f"{r['train_step_s']:>9.3f}"
        )
    print(
        f"speedup: inference x{report['speedup_infer']:.2f}, training x{report['speedup_train']:.2f}"
        f" (peak memory: {eager['mem_method']})"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
