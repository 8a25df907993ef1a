"""Images/s of the batched RandAugment + random erasing on a uint8 batch, on one device.

    python benchmarks/bench_batch_augment.py --device cuda --batch 128 --img-size 224 --out FILE
    python benchmarks/bench_batch_augment.py --device cpu --batch 64 --kernels torch opencv --per-op --out FILE

What the FFCV loader runs after decode, crop and flip (pcn.data.augment.batch's
BatchAugment, the paper's rand-m9-mstd0.5-inc1 and random erasing 0.25), timed on a
random uint8 batch already on the device (NHWC memory, as FFCV's), after warm-up
batches, with each kernel asked for (``auto``: OpenCV's on the CPU, torch's on a GPU).
It imports torch, OpenCV, timm's constants, pcn.data.augment.batch,
pcn.machine.speed and pcn.io only (no ffcv, pydantic or mlflow), so it runs on a GPU
machine with a bare PyTorch install plus those wheels. The machine's 1-thread sgemm
figure (pcn.machine.speed) is recorded beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--policy", default="rand-m9-mstd0.5-inc1")
    ap.add_argument("--erasing", type=float, default=0.25)
    ap.add_argument("--batches", type=int, default=20, help="timed batches (after 3 warm-up ones)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--kernels", nargs="+", default=["auto"], help="auto, torch, opencv (the CPU's): one row each")
    ap.add_argument("--per-op", action="store_true", help="also time each op alone at magnitude 9")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    import cv2
    import torch
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from pcn.data.augment.batch import INCREASING_OPS, BatchAugment, apply_op, randaugment_hparams
    from pcn.machine.speed import sgemm_gflops

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)  # as in an FFCV loader's process (pcn.data.loaders)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.img_size, args.img_size, 3)
    # NHWC memory seen as NCHW: the strides of FFCV's batches
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen).to(device).permute(0, 3, 1, 2)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(fn, repeats: int) -> tuple[float, float]:
        """(wall, CPU) seconds per image of ``fn`` on the batch, after warm-up calls."""
        for step in range(2):
            fn(step)
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        for step in range(repeats):
            fn(1000 + step)
        sync()
        n = repeats * args.batch
        return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n

    hparams = randaugment_hparams(args.img_size, IMAGENET_DEFAULT_MEAN)
    nine = torch.full((args.batch,), 9.0)

    def one_op(name: str, kernels: str):
        return lambda _: apply_op(images, name, nine, hparams, kernels)

    rows = []
    for kernels in args.kernels:
        augment = BatchAugment(
            args.img_size, args.policy, args.erasing, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, device, kernels
        )
        wall, cpu = timed(lambda key, a=augment: a(images, key), args.batches)
        row = {"kernels": kernels, "images_per_s": round(1 / wall, 1), "cpu_s_per_image": round(cpu, 6)}
        if args.per_op:  # each op alone on the whole batch, magnitude 9 (CPU ms per image)
            row["op_cpu_ms_per_image"] = {
                name: round(1e3 * timed(one_op(name, kernels), 3)[1], 3) for name in INCREASING_OPS
            }
        rows.append(row)
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "policy": args.policy,
        "erasing": args.erasing,
        "batch": args.batch,
        "img_size": args.img_size,
        "threads": args.threads,
        "rows": rows,
        "sgemm_1thread_gflops": round(sgemm_gflops(), 1),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        from pcn.io import write_json

        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
