"""Images/s of the batched RandAugment + random erasing on a uint8 batch, on one device.

    python benchmarks/bench_batch_augment.py --device cuda --batch 128 --img-size 224 --out FILE

What the FFCV loader runs after decode, crop and flip (pcn.data.batch_augment's
BatchRecipe, the paper's rand-m9-mstd0.5-inc1 and random erasing 0.25), timed on a
random uint8 batch already on the device, after warm-up batches. It imports torch,
timm's constants, pcn.data.batch_augment, pcn.machine_speed and pcn.io only (no
ffcv, pydantic or mlflow), so
it runs on a GPU machine with a bare PyTorch install. The machine's 1-thread sgemm
figure (pcn.machine_speed) is recorded beside it.
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
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    import torch
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from pcn.data.batch_augment import BatchRecipe
    from pcn.machine_speed import sgemm_gflops

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    recipe = BatchRecipe(args.img_size, args.policy, args.erasing, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, device)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, 3, args.img_size, args.img_size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for step in range(3):
        recipe(images, step)
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(args.batches):
        out = recipe(images, 1000 + step)
    sync()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = args.batches * args.batch
    assert out.shape == shape and out.dtype == torch.float32
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "policy": args.policy,
        "erasing": args.erasing,
        "batch": args.batch,
        "img_size": args.img_size,
        "threads": args.threads,
        "images_per_s": round(n / wall, 1),
        "cpu_s_per_image": round(cpu / n, 6),
        "sgemm_1thread_gflops": round(sgemm_gflops(), 1),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        from pcn.io import write_json

        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
