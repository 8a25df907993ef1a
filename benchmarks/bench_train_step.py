"""CPU cost of one training step (forward, backward, AdamW) of a small model, per implementation choice.

The study grid is ~37 short CPU runs, so its length is the step time.  This times the
step with the implementation the pipeline uses (channels_last memory format,
squeeze-excitation as matmuls on the pooled vector, fused AdamW) against the plain
ones (NCHW, SE as 1x1 convolutions on a 1x1 map, AdamW's per-tensor loop), one
change at a time, interleaved so that machine noise hits all alike.

    python benchmarks/bench_train_step.py                           # 32 px, 8x8 patches
    python benchmarks/bench_train_step.py --img-size 64 --stem-stride 16 --out step.json   # the study grid
    python benchmarks/bench_train_step.py --model resnet_demo_attnpool   # the study's ResNet pair
"""

import argparse
import json
import platform
import statistics
import time

import timm
import torch
from timm.optim import create_optimizer_v2

import pcn.models  # noqa: F401  (registers the patchconvnet_* models)
from pcn.models.patchconvnet import SqueezeExcite


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="patchconvnet_demo")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--stem-stride", type=int, default=None, help="patch size (the model's own when unset)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="the grid runs 1 thread per run")
    p.add_argument("--steps", type=int, default=40, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=7, help="rounds; the median round is reported")
    p.add_argument("--out", default="", help="write the results as JSON here")
    return p.parse_args(argv)


def se_as_convolutions(self, x: torch.Tensor) -> torch.Tensor:
    """The released module chain: 1x1 convolutions on the (B, C, 1, 1) pooled map."""
    s = self.conv_expand(self.act(self.conv_reduce(x.mean((2, 3), keepdim=True))))
    return x * s.sigmoid()


CL, NCHW = torch.channels_last, torch.contiguous_format
VARIANTS = {  # name: (memory format, SE forward, AdamW options)
    "pipeline (channels_last, SE matmul, fused AdamW)": (CL, SqueezeExcite.forward, {"fused": True}),
    "NCHW memory format": (NCHW, SqueezeExcite.forward, {"fused": True}),
    "SE as 1x1 convolutions": (CL, se_as_convolutions, {"fused": True}),
    "AdamW loop": (CL, SqueezeExcite.forward, {"foreach": False}),
    "none of them": (NCHW, se_as_convolutions, {"foreach": False}),
}


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    y = torch.randint(0, 10, (args.batch_size,))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    setups = {}
    for name, (memory_format, se_forward, opt_kw) in VARIANTS.items():
        torch.manual_seed(0)
        options = {} if args.stem_stride is None else {"stem_stride": args.stem_stride}
        model = timm.create_model(args.model, num_classes=10, **options).to(memory_format=memory_format)
        opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, **opt_kw)
        setups[name] = (x.contiguous(memory_format=memory_format), se_forward, model, opt)
    original = SqueezeExcite.forward
    times = {name: [] for name in setups}
    try:
        for _ in range(args.rounds):
            for name, (xm, se_forward, model, opt) in setups.items():
                SqueezeExcite.forward = se_forward
                for i in range(args.steps + 3):  # 3 untimed steps after switching
                    if i == 3:
                        t0 = time.perf_counter()
                    loss = loss_fn(model(xm), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    finally:
        SqueezeExcite.forward = original
    base = statistics.median(times["none of them"])
    result = {
        "model": args.model,
        "img_size": args.img_size,
        "stem_stride": args.stem_stride,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "step_ms": {name: round(statistics.median(t), 2) for name, t in times.items()},
    }
    print(
        f"{args.model} {args.img_size}px (stem stride {args.stem_stride or 'default'}) batch {args.batch_size}, "
        f"{args.threads} thread(s), median of {args.rounds} rounds"
    )
    for name, ms in result["step_ms"].items():
        print(f"  {name:36s} {ms:7.2f} ms/step  ({base / ms:.2f}x)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
