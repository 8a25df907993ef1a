"""The paper's S60 pretraining step on one GPU: 200 optimizer steps of the paper scale's parts.

Everything but the data is the pipeline's own: the paper scale's ``pretrain`` config
(params.yaml ``scales.paper``: LAMB at lr 3e-3 per 2048 images, Mixup 0.8 / CutMix 1.0
with label smoothing 0.1, stochastic depth 0.1, S60's own LayerScale init), its per-GPU
batch (the global 2048 over the paper's 2 nodes x 8 GPUs: 128), the parts built by
:func:`pcn.train.parts.build_parts` and the training loop :class:`pcn.train.loop.Loop`
(bf16 autocast, channels_last, its resume-state saves).  The batches are random images
made on the GPU, so the numbers are the model step's alone, not the loader's.

Records the step time (median and mean after the warm-up steps), images/s, the peak
memory and the loss of the first and last steps (finite, or the run is refused), with
the device, torch's version and this machine's 1-thread sgemm GFLOP/s from the same run.

    python benchmarks/gpu_paper_steps.py --out steps.json                 # CUDA: 200 steps
    python benchmarks/gpu_paper_steps.py --compile --out steps.json       # the same under torch.compile
    python benchmarks/gpu_paper_steps.py --tiny --out /tmp/steps.json     # CPU smoke run: demo model
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch

import pcn.models  # noqa: F401  (registers the patchconvnet_* models)
from pcn.config import batch_per_rank, load_params
from pcn.io import write_json
from pcn.machine.speed import sgemm_gflops
from pcn.train import distributed as D
from pcn.train.loop import Loop, LoopState, autocast
from pcn.train.parts import build_parts

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 1000  # ImageNet-1k's head: the paper's model, not a smaller one


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results_gpu_paper_steps.json"))
    p.add_argument("--steps", type=int, default=200, help="optimizer steps, warm-up included")
    p.add_argument("--warmup", type=int, default=20, help="first steps left out of the timing")
    p.add_argument("--compile", action="store_true", help="torch.compile the model first")
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: the demo model at 32 px, batch 8")
    return p.parse_args(argv)


def paper_pretrain():
    params = load_params(ROOT / "params.yaml", scale="paper")
    cfg = params.pretrain
    ranks = params.launcher.ranks  # the paper scale launches on SLURM
    return params, cfg, ranks


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.tiny:
        sys.exit("gpu_paper_steps: no CUDA device here; pass --tiny for the CPU smoke run")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    torch.set_flush_denormal(True)
    params, cfg, ranks = paper_pretrain()
    per_gpu = 8 if args.tiny else batch_per_rank(cfg.batch_size, ranks, "pretrain", mixup=cfg.aug.mixes)
    img = 32 if args.tiny else cfg.img_size
    name = "patchconvnet_demo" if args.tiny else params.model.name
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=NUM_CLASSES, drop_path_rate=cfg.drop_path)
    model.to(device=device, memory_format=torch.channels_last)
    # The per-rank view of the paper's run: the lr follows the global batch, as on the cluster.
    parts = build_parts(cfg, model, steps_per_epoch=args.steps, num_classes=NUM_CLASSES)
    forward = torch.compile(model) if args.compile else model
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def batches(epoch: int, start: int):
        g = torch.Generator(device=device).manual_seed(epoch)
        for _ in range(start, args.steps):
            pixels = torch.randint(0, 256, (per_gpu, 3, img, img), generator=g, device=device, dtype=torch.uint8)
            labels = torch.randint(0, NUM_CLASSES, (per_gpu,), generator=g, device=device)
            yield (pixels.float().div_(255) - mean) / std, labels

    def loss(batch) -> torch.Tensor:
        images, labels = batch
        images = images.contiguous(memory_format=torch.channels_last)
        images, targets = parts.mixup(images, labels) if parts.mixup is not None else (images, labels)
        with autocast(device):
            return parts.loss(forward(images), targets)

    times: list[float] = []
    clock = {"t": None}

    def on_step(state: LoopState) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        if clock["t"] is not None:
            times.append(now - clock["t"])
        clock["t"] = now
        if state.global_step == args.warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_paper_steps_") as tmp:
        loop = Loop(
            model=model,
            optimizer=parts.optimizer,
            scheduler=parts.scheduler,
            batches=batches,
            loss=loss,
            steps_per_epoch=args.steps,
            path=Path(tmp) / "last.pth",
            fingerprint="gpu_paper_steps",
            seed=0,
            name="gpu_paper_steps",
            epochs=1,
            checkpoint_every=10**9,
            clip_grad=cfg.clip_grad,
            images_per_step=per_gpu,
            on_step=on_step,
            env=D.DistEnv(),
            device=device,
        )
        state = LoopState()
        loop.run(state)
    wall = time.perf_counter() - t0
    timed = times[args.warmup :] or times
    losses = state.losses
    if not all(math.isfinite(v) for v in losses):
        raise SystemExit(f"gpu_paper_steps: a non-finite loss in {losses}")
    step_s = statistics.median(timed)
    result = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "timm": timm.__version__,
        "sgemm_1thread_gflops": sgemm_gflops(),
        "model": name,
        "img_size": img,
        "batch_per_gpu": per_gpu,
        "global_batch": cfg.batch_size,
        "optimizer": cfg.optimizer,
        "lr_scaled": parts.lr,
        "mixup": cfg.aug.mixup,
        "cutmix": cfg.aug.cutmix,
        "label_smoothing": cfg.aug.label_smoothing,
        "drop_path": cfg.drop_path,
        "precision": "bf16-autocast" if device.type == "cuda" else "fp32",
        "channels_last": True,
        "compiled": args.compile,
        "steps": args.steps,
        "timed_steps": len(timed),
        "step_s_median": step_s,
        "step_s_mean": statistics.fmean(timed),
        "images_per_s": per_gpu / step_s,
        "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "wall_s": wall,
    }
    write_json(args.out, result)
    print(
        f"{result['device_name']}: {name} {img} px, {per_gpu} images/GPU, {cfg.optimizer} + mixup/cutmix, "
        f"{'compiled' if args.compile else 'eager'}: {step_s * 1e3:.1f} ms/step, {result['images_per_s']:,.0f} im/s, "
        f"peak {result['peak_mem_mb'] or 0:,.0f} MB, loss {losses[0]:.3f} -> {losses[-1]:.3f} -> {args.out}"
    )
    return result


if __name__ == "__main__":
    main()
