"""CPU cost of one training step (forward, backward, AdamW) of a small model, per implementation choice.

The study grid is ~37 short CPU runs, so its length is the step time.  This times the
step with the implementation the pipeline uses (channels_last memory format,
squeeze-excitation as matmuls on the pooled vector, fused AdamW) against the plain
ones (NCHW, SE as 1x1 convolutions on a 1x1 map, AdamW's per-tensor loop), one
change at a time, interleaved so that machine noise hits all alike.

Speed across machines: each variant's step is also given in GFLOP/s (the matmul and
convolution FLOPs of forward and backward, counted once by FlopCounterMode; the
optimizer's and the elementwise work are not counted; the backward comes to about twice
the forward) and as a ratio to this process's 1-thread sgemm GFLOP/s (a 1024x1024 fp32
matmul, timed between the rounds, median).  Milliseconds hold for one machine; the ratio
is the figure to compare across machines (at --threads 1).  Both are given twice: by
wall-clock time, and by the process's CPU time, which holds better on a machine whose
cores other work shares (the short matmuls are often timed between two slices of the
other work, the long rounds never are).

    python benchmarks/bench_train_step.py                           # 32 px, 8x8 patches
    python benchmarks/bench_train_step.py --img-size 64 --stem-stride 16 --out step.json   # the study grid
    python benchmarks/bench_train_step.py --model resnet_demo_attnpool   # the study's ResNet pair
    python benchmarks/bench_train_step.py --out benchmarks/results_train_step.json --key NAME   # add an entry
"""

import argparse
import json
import platform
import statistics
import time

import timm
import torch
from timm.optim import create_optimizer_v2
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

import pcn.models  # noqa: F401  (registers the patchconvnet_* models)
from pcn.machine.speed import sgemm_gflops, sgemm_seconds
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
    p.add_argument("--sgemm-reps", type=int, default=3, help="timed 1024^3 matmuls before each round")
    p.add_argument("--out", default="", help="write the results as JSON here")
    p.add_argument("--key", default="", help="with --out: add the results under this key of the JSON file")
    return p.parse_args(argv)


def conv_backward_flop(grad_out_shape, x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of a convolution's backward: each gradient asked for (input, weight) costs what the
    forward costs.  FlopCounterMode's own formula counts the weight gradient of a grouped
    convolution as if it were dense: a depthwise 3x3 convolution's, channels times too much."""
    transposed, output_mask = args[4], args[7]
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


CONV_BACKWARD = {torch.ops.aten.convolution_backward: conv_backward_flop}


def count_step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[int, int]:
    """FLOPs of the forward (with the loss) and of the backward of one training step: the
    matmuls and convolutions that FlopCounterMode sees, attention on PyTorch's math kernel
    (as pcn.eval.complexity counts it), the backward of grouped convolutions with
    ``conv_backward_flop``.  The gradients are cleared afterwards."""
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as fwd:
            loss = loss_fn(model(x), y)
        with FlopCounterMode(display=False, custom_mapping=CONV_BACKWARD) as bwd:
            loss.backward()
    model.zero_grad(set_to_none=True)
    return fwd.get_total_flops(), bwd.get_total_flops()


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
    setups, flops = {}, {}
    original = SqueezeExcite.forward
    try:
        for name, (memory_format, se_forward, opt_kw) in VARIANTS.items():
            torch.manual_seed(0)
            options = {} if args.stem_stride is None else {"stem_stride": args.stem_stride}
            model = timm.create_model(args.model, num_classes=10, **options).to(memory_format=memory_format)
            opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, **opt_kw)
            setups[name] = (x.contiguous(memory_format=memory_format), se_forward, model, opt)
            SqueezeExcite.forward = se_forward
            flops[name] = count_step_flops(model, setups[name][0], y, loss_fn)
    finally:
        SqueezeExcite.forward = original
    times = {name: [] for name in setups}  # (wall, CPU) ms per step, one entry per round
    sgemm = []
    try:
        for _ in range(args.rounds):
            sgemm += sgemm_seconds(reps=args.sgemm_reps)
            for name, (xm, se_forward, model, opt) in setups.items():
                SqueezeExcite.forward = se_forward
                for i in range(args.steps + 3):  # 3 untimed steps after switching
                    if i == 3:
                        t0, c0 = time.perf_counter(), time.process_time()
                    loss = loss_fn(model(xm), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                times[name].append((wall / args.steps * 1e3, cpu / args.steps * 1e3))
    finally:
        SqueezeExcite.forward = original
    ref = flops["pipeline (channels_last, SE matmul, fused AdamW)"]
    # index 0: wall-clock time, 1: CPU time
    sgemm_rate = [sgemm_gflops(sgemm, cpu=bool(k)) for k in (0, 1)]
    step_ms = [{name: statistics.median(r[k] for r in t) for name, t in times.items()} for k in (0, 1)]
    step_gflops = [{name: sum(flops[name]) / ms[name] / 1e6 for name in ms} for ms in step_ms]
    base = step_ms[0]["none of them"]
    result = {
        "model": args.model,
        "img_size": args.img_size,
        "stem_stride": args.stem_stride,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "step_ms": {name: round(ms, 2) for name, ms in step_ms[0].items()},
        "forward_gflop": round(ref[0] / 1e9, 4),
        "backward_gflop": round(ref[1] / 1e9, 4),
        "step_gflop": {name: round(sum(f) / 1e9, 4) for name, f in flops.items()},
        "sgemm_1thread_gflops": round(sgemm_rate[0], 2),
        "sgemm_samples": len(sgemm),
        "step_gflops": {name: round(g, 2) for name, g in step_gflops[0].items()},
        "step_vs_sgemm": {name: round(g / sgemm_rate[0], 4) for name, g in step_gflops[0].items()},
        "cpu_time": {
            "sgemm_1thread_gflops": round(sgemm_rate[1], 2),
            "step_ms": {name: round(ms, 2) for name, ms in step_ms[1].items()},
            "step_gflops": {name: round(g, 2) for name, g in step_gflops[1].items()},
            "step_vs_sgemm": {name: round(g / sgemm_rate[1], 4) for name, g in step_gflops[1].items()},
        },
    }
    print(
        f"{args.model} {args.img_size}px (stem stride {args.stem_stride or 'default'}) batch {args.batch_size}, "
        f"{args.threads} thread(s), median of {args.rounds} rounds"
    )
    print(
        f"  step: {ref[0] / 1e9:.3f} GFLOP forward + {ref[1] / 1e9:.3f} GFLOP backward "
        f"(backward/forward {ref[1] / ref[0]:.2f}); 1-thread sgemm {sgemm_rate[0]:.1f} GFLOP/s, "
        f"{sgemm_rate[1]:.1f} per CPU second (median of {len(sgemm)})"
    )
    print(f"  {'':50s} {'ms/step':>8s} {'speed-up':>9s} {'GFLOP/s':>8s} {'x sgemm':>8s} {'CPU ms':>7s} {'x sgemm':>8s}")
    for name, ms in step_ms[0].items():
        ratio, cpu_ratio = step_gflops[0][name] / sgemm_rate[0], step_gflops[1][name] / sgemm_rate[1]
        print(
            f"  {name:50s} {ms:8.2f} {base / ms:8.2f}x {step_gflops[0][name]:8.2f} {ratio:8.3f} "
            f"{step_ms[1][name]:7.2f} {cpu_ratio:8.3f}"
        )
    if args.out:
        doc = result
        if args.key:
            try:
                with open(args.out) as f:
                    doc = json.load(f)
            except FileNotFoundError:
                doc = {}
            doc[args.key] = result
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    return result


if __name__ == "__main__":
    main()
