"""GPU check of the paper-scale numbers in one short run: S60 inference, a training step, the FFCV pipeline.

On CUDA: PatchConvNet-S60's inference throughput and peak memory at batch 256, 224 px
(the paper's model-zoo row: paper/numbers.yaml), both in the pipeline's fast path
(channels_last, bf16 autocast) and in plain fp32; the images/s of a training step
(forward, loss, backward, AdamW) under bf16 autocast at --train-batch; and the images/s
of the FFCV GPU pipeline (JPEG decode and crop on the CPU, ToDevice, normalisation on
the GPU) reading a small .beton written on the fly in a temporary folder with the paper
scale's FFCV settings.  Every run also records the device, the torch version and the
1-thread sgemm GFLOP/s of this machine (a 1024x1024 fp32 matmul), measured in the same
run, so that numbers from two machines can be compared.

    python benchmarks/gpu_check.py                                  # CUDA: the paper's sizes
    python benchmarks/gpu_check.py --train-batch 256 --out check.json
    python benchmarks/gpu_check.py --tiny --out /tmp/check.json     # CPU smoke run: demo model, tiny sizes
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
import yaml

import pcn.models  # noqa: F401  (registers the patchconvnet_* models)
from pcn.config import resolve
from pcn.eval.complexity import measure_throughput, prepare_fast
from pcn.io import write_json
from pcn.machine.speed import sgemm_gflops

ROOT = Path(__file__).resolve().parents[1]
# (full, --tiny) defaults of the sizes
SIZES = {
    "model": ("patchconvnet_s60", "patchconvnet_demo"),
    "img_size": (224, 32),
    "batch": (256, 8),
    "train_batch": (128, 8),
    "iters": (20, 2),
    "warmup": (3, 1),
    "ffcv_images": (4096, 48),
    "ffcv_workers": (min(16, os.cpu_count() or 1), 1),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results_gpu_check.json"), help="the JSON written")
    p.add_argument("--tiny", action="store_true", help="small model, batches and iterations (a CPU smoke run)")
    p.add_argument("--model", help="timm name (default: patchconvnet_s60; --tiny: patchconvnet_demo)")
    p.add_argument("--img-size", type=int, help="resolution (default 224; --tiny: 32)")
    p.add_argument("--batch", type=int, help="inference batch (default 256, as the paper; --tiny: 8)")
    p.add_argument("--train-batch", type=int, help="training-step batch (default 128; --tiny: 8)")
    p.add_argument("--iters", type=int, help="timed iterations (default 20; --tiny: 2)")
    p.add_argument("--warmup", type=int, help="untimed iterations first (default 3; --tiny: 1)")
    p.add_argument("--ffcv-images", type=int, help="images in the temporary .beton (default 4096; --tiny: 48)")
    p.add_argument("--ffcv-workers", type=int, help="FFCV decoding threads (default: the CPUs, up to 16; --tiny: 1)")
    args = p.parse_args(argv)
    for key, values in SIZES.items():
        if getattr(args, key) is None:
            setattr(args, key, values[args.tiny])
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device):
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def inference(args, device: torch.device, fast: bool) -> dict:
    model = timm.create_model(args.model)
    m = measure_throughput(model, args.img_size, args.batch, device, fast=fast, warmup=args.warmup, iters=args.iters)
    del model
    return {
        "batch_size": args.batch,
        "img_size": args.img_size,
        "iters": args.iters,
        "precision": "bf16-autocast" if fast and device.type == "cuda" else "fp32",
        "channels_last": fast,
        "throughput_img_s": m["throughput"],
        "peak_mem_mb": m["peak_mem_mb"],
        "mem_method": m["mem_method"],
    }


def train_step(args, device: torch.device) -> dict:
    """Forward, loss, backward and AdamW on random images: the pipeline's fast path
    (channels_last; bf16 autocast on CUDA, fp32 on the CPU as the training engine does)."""
    from timm.optim import create_optimizer_v2

    model = timm.create_model(args.model).train()
    forward = prepare_fast(model, device)
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    x = torch.randn(args.train_batch, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, model.num_classes, (args.train_batch,), device=device)

    def step():
        loss = torch.nn.functional.cross_entropy(forward(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.iters):
        step()
    _sync(device)
    dt = time.perf_counter() - t0
    peak = _peak_mb(device)
    return {
        "batch_size": args.train_batch,
        "img_size": args.img_size,
        "iters": args.iters,
        "precision": "bf16-autocast" if device.type == "cuda" else "fp32",
        "optimizer": "adamw",
        "throughput_img_s": args.train_batch * args.iters / dt,
        "peak_mem_mb": peak,
    }


def _write_images(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> None:
    """``n`` JPEGs in two class folders: noise, so that decoding costs what a photo does."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        d = folder / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(d / f"{i:06d}.JPEG", quality=90)


def ffcv_pipeline(args, device: torch.device) -> dict:
    """Images/s of the training pipeline of the FFCV loader: a first epoch (numba compiles
    the pipeline), then two timed ones.  The .beton uses the paper scale's FFCV settings."""
    from pcn.data.ffcv_io import convert_imagefolder
    from pcn.data.loaders import build_loader

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    settings = resolve({**raw, "scale": "paper"}).data.ffcv
    batch = min(args.train_batch, args.ffcv_images)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        # ImageNet's typical photo in the full run; small images in the smoke run
        _write_images(tmp / "images", args.ffcv_images, (64, 48) if args.tiny else (500, 375))
        beton = tmp / "train.beton"
        convert_imagefolder(
            tmp / "images",
            beton,
            max_resolution=settings.max_resolution,
            jpeg_quality=settings.jpeg_quality,
            compress_probability=settings.compress_probability,
            write_mode=settings.write_mode,
            max_bad_fraction=0.0,
            num_workers=args.ffcv_workers,
            progress=False,
        )
        written = time.perf_counter() - t0
        loader = build_loader(
            beton=beton,
            folder=None,
            kind="ffcv",
            train=True,
            img_size=args.img_size,
            batch_size=batch,
            aug=None,
            num_workers=args.ffcv_workers,
            seed=0,
            device=str(device),
            drop_last=True,
        )
        times = []
        for epoch in range(3):
            loader.set_epoch(epoch)
            t0, n = time.perf_counter(), 0
            for images, _ in loader:
                n += len(images)
            _sync(device)
            times.append((time.perf_counter() - t0, n))
        if images.device.type != device.type or images.dtype != torch.float32:
            raise RuntimeError(
                f"the FFCV pipeline ended in {images.dtype} on {images.device}, expected float32 on {device}"
            )
        del loader
    seconds, n = sum(t for t, _ in times[1:]), sum(k for _, k in times[1:])
    return {
        "images": args.ffcv_images,
        "batch_size": batch,
        "img_size": args.img_size,
        "num_workers": args.ffcv_workers,
        "write_mode": settings.write_mode,
        "prepare_s": written,
        "first_epoch_s": times[0][0],
        "timed_epochs": len(times) - 1,
        "throughput_img_s": n / seconds,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def paper_row(model: str) -> dict | None:
    numbers = yaml.safe_load((ROOT / "paper" / "numbers.yaml").read_text())
    row = next((r for r in numbers["model_zoo"] if r["model"] == model), None)
    return None if row is None else {k: row.get(k) for k in ("throughput", "peak_mem_mb", "source")}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.tiny:
        sys.exit("gpu_check: no CUDA device here; pass --tiny for the CPU smoke run")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_flush_denormal(True)  # LayerScale's small values: denormals make the CPU crawl
    t0 = time.perf_counter()
    result = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpu": _cpu_name(),
        "threads": torch.get_num_threads(),
        "tiny": args.tiny,
        "model": args.model,
        "sgemm_1thread_gflops": sgemm_gflops(),
        "paper": paper_row(args.model),
    }
    result["inference"] = inference(args, device, fast=True)
    result["inference_fp32"] = inference(args, device, fast=False)
    result["train"] = train_step(args, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        import ffcv  # noqa: F401
    except ImportError:  # a GPU box without FFCV's build still gives the model's numbers
        result["ffcv"] = {"skipped": "ffcv is not installed", "throughput_img_s": None}
    else:
        result["ffcv"] = ffcv_pipeline(args, device)
    result["seconds"] = time.perf_counter() - t0
    write_json(args.out, result)
    inf, tr, ff = result["inference"], result["train"], result["ffcv"]
    print(
        f"{result['device_name']}: {args.model} at {args.img_size} px: inference {inf['throughput_img_s']:,.0f} im/s "
        f"(batch {args.batch}, {inf['precision']}, peak {inf['peak_mem_mb'] or 0:,.0f} MB), training "
        f"{tr['throughput_img_s']:,.0f} im/s (batch {args.train_batch}), "
        f"FFCV {'skipped' if ff['throughput_img_s'] is None else format(ff['throughput_img_s'], ',.0f') + ' im/s'}; "
        f"sgemm {result['sgemm_1thread_gflops']:.1f} GFLOP/s on 1 thread -> {args.out}"
    )
    return result


if __name__ == "__main__":
    main()
