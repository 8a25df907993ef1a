"""What fusing a comparison's seeds into one batched model would buy the study grid.

The study trains each comparison's seeds as separate one-thread runs.  Fusing them, the
seeds' weights stacked (``torch.func.stack_module_state``) and one forward and backward
``vmap``-ed over the stack, pays the per-operator overhead once for all seeds and hands
the kernels larger tensors.  This times, on one thread and interleaved so that machine
noise hits both alike:

* separate: S models, S AdamW optimizers, one step each in turn (what the grid does now);
* fused:    one vmapped step over the S stacked models, one fused AdamW on the stack;
* ceiling:  one model stepping on all S batches at once (S x B images): what fusing could
            at best reach, the same work with every operator's overhead paid once.

Measured here (docs/measurements.md): the ceiling is about 1.3x, and vmap falls well short
of it: under vmap the trunk loses its channels-last layout (vmap cannot query memory
formats), and F.linear on the trunk's permuted (B, H, W, C) view batches into many small
matmuls.

It also checks that the fused step computes the same losses as the separate ones (same
weights, same batches), so that the speed is for the same work.  The ratio is the figure
that carries to another machine; the milliseconds hold for this one, and the run records
the 1-thread sgemm GFLOP/s beside them.

    python benchmarks/bench_fused_seeds.py                       # the study's ablation step
    python benchmarks/bench_fused_seeds.py --seeds 3 --out benchmarks/results_fused_seeds.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import timm
import torch
from torch.func import functional_call, stack_module_state, vmap

import pcn.models  # noqa: F401  (registers the patchconvnet_* models)
from pcn.machine.speed import sgemm_gflops, sgemm_seconds


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="patchconvnet_demo")
    p.add_argument("--options", default='{"stem_stride": 16}', help="constructor options, JSON")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32, help="per seed")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default="")
    return p.parse_args(argv)


def build(args, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    options = json.loads(args.options)
    return timm.create_model(args.model, num_classes=10, **options).to(memory_format=torch.channels_last)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    S, B = args.seeds, args.batch_size
    models = [build(args, s) for s in range(S)]
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(S, B, 3, args.img_size, args.img_size, generator=g)
    ys = torch.randint(0, 10, (S, B), generator=g)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    # fused: the stack is a copy of the same initial weights
    base = copy.deepcopy(models[0]).to("meta")
    params, buffers = stack_module_state([copy.deepcopy(m) for m in models])
    params = {k: v.detach().requires_grad_() for k, v in params.items()}

    def one(p, b, x, y):
        return loss_fn(functional_call(base, (p, b), (x,)), y)  # vmap cannot query memory formats

    fused_loss = vmap(one, in_dims=(0, 0, 0, 0))
    separate_opts = [torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.05, fused=True) for m in models]
    fused_opt = torch.optim.AdamW(params.values(), lr=1e-3, weight_decay=0.05, fused=True)

    with torch.no_grad():
        sep = torch.stack(
            [loss_fn(m(xs[i].contiguous(memory_format=torch.channels_last)), ys[i]) for i, m in enumerate(models)]
        )
        fus = fused_loss(params, buffers, xs, ys)
    max_diff = (sep - fus).abs().max().item()

    def step_separate():
        for i, (m, opt) in enumerate(zip(models, separate_opts, strict=True)):
            loss = loss_fn(m(xs[i].contiguous(memory_format=torch.channels_last)), ys[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def step_fused():
        loss = fused_loss(params, buffers, xs, ys).sum()  # each seed's gradient is its own loss's
        fused_opt.zero_grad(set_to_none=True)
        loss.backward()
        fused_opt.step()

    wide = copy.deepcopy(models[0])
    wide_opt = torch.optim.AdamW(wide.parameters(), lr=1e-3, weight_decay=0.05, fused=True)
    x_all = xs.flatten(0, 1).contiguous(memory_format=torch.channels_last)
    y_all = ys.flatten()

    def step_ceiling():
        loss = loss_fn(wide(x_all), y_all)
        wide_opt.zero_grad(set_to_none=True)
        loss.backward()
        wide_opt.step()

    runs = {"separate": step_separate, "fused": step_fused, "ceiling": step_ceiling}
    times = {k: [] for k in runs}
    sgemm = []
    for _ in range(args.rounds):
        sgemm += sgemm_seconds(reps=3)
        for name, fn in runs.items():
            for _ in range(3):
                fn()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    ms = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "model": args.model,
        "options": json.loads(args.options),
        "img_size": args.img_size,
        "batch_per_seed": B,
        "seeds": S,
        "threads": 1,
        "torch": torch.__version__,
        "ms_per_step_of_all_seeds": {k: round(v, 2) for k, v in ms.items()},
        "speedup_fused": round(ms["separate"] / ms["fused"], 3),
        "speedup_ceiling": round(ms["separate"] / ms["ceiling"], 3),
        "max_loss_difference_at_init": max_diff,
        "sgemm_1thread_gflops": round(sgemm_gflops(sgemm), 1),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
    }
    print(
        f"{args.model} {result['options']} at {args.img_size} px, {S} seeds x batch {B}, 1 thread: "
        f"separate {ms['separate']:.1f} ms, fused {ms['fused']:.1f} ms, one model on all batches "
        f"{ms['ceiling']:.1f} ms per step of all seeds -> fused {result['speedup_fused']:.2f}x, "
        f"ceiling {result['speedup_ceiling']:.2f}x (losses agree to {max_diff:.1e}; "
        f"sgemm {result['sgemm_1thread_gflops']} GFLOP/s)"
    )
    if args.out:
        out = Path(args.out)
        old = json.loads(out.read_text()) if out.is_file() else {}
        old[f"{args.model}-{json.dumps(result['options'], sort_keys=True)}-{args.img_size}px"] = result
        out.write_text(json.dumps(old, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
