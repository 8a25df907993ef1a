"""Images/s of the FFCV, torchvision and in-memory loaders on the same images (train pipeline).

    python benchmarks/bench_loaders.py --out bench_loaders.json

Makes (or takes, --folder) an ImageFolder of JPEGs, converts it to a .beton, then
times one epoch of each loader per resolution (random-resized-crop + flip), after a
warm-up epoch that absorbs numba compilation and worker start-up; the time to build
each loader (the memory loader decodes every image then) is reported apart. All use
num_workers = os.cpu_count() unless told otherwise (the memory loader has no workers).

``--recipe paper`` times the paper's train recipe instead (RandAugment
rand-m9-mstd0.5-inc1 and random erasing 0.25 after the crop and flip): the torch
loader with timm's PIL RandAugment in its workers, against FFCV with the batched
RandAugment (pcn.data.augment.batch) on the decoded batch. Each row also gives the
CPU seconds per image (this process, its threads and its reaped worker processes):

    python benchmarks/bench_loaders.py --recipe paper --n-images 512 --sizes 224 \
        --batch-size 64 --epochs 1 --out results_paper_loaders.json

The study grid's setting (10,000 images of 64 px cropped to 32, one core):

    python benchmarks/bench_loaders.py --n-images 10000 --height 64 --width 64 \
        --sizes 32 --batch-size 64 --num-workers 1 --max-resolution 64 \
        --loaders ffcv torch memory --out results_grid_loaders.json
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

# As in every pipeline process (pcn/cli.py): idle OpenMP threads sleep rather than spin, so
# the batched augmentation's torch threads cost CPU time only while they work.  Before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402


def make_folder(root: Path, n_images: int, n_classes: int, height: int, width: int, seed: int = 0) -> Path:
    """Deterministic smooth-noise JPEGs (photo-like file sizes), q90."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n_images):
        d = root / f"class_{i % n_classes:03d}"
        d.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, size=(height // 16, width // 16, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        fine = rng.normal(0, 12, size=(height, width, 3))
        arr = np.clip(np.asarray(img, dtype=np.float32) + fine, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(d / f"img_{i:05d}.jpg", quality=90)
    return root


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and its reaped children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_loader(loader, epochs: int) -> tuple[float, int, float, float]:
    """(images/s over ``epochs`` timed epochs, images, seconds of the warm-up epoch,
    CPU seconds of the timed epochs)."""
    t0 = time.perf_counter()
    for _ in loader:  # warm-up: numba compilation, worker start, page cache
        pass
    warmup_s = time.perf_counter() - t0
    n, t0, cpu0 = 0, time.perf_counter(), cpu_seconds()
    for _ in range(epochs):
        for images, _labels in loader:
            n += images.shape[0]
    if images.is_cuda:  # the last batch's kernels belong to the timed work
        import torch

        torch.cuda.synchronize(images.device)
    return n / (time.perf_counter() - t0), n, warmup_s, cpu_seconds() - cpu0


def recipe_aug(recipe: str):
    """The per-image augmentation of ``recipe``: None (crop + flip) or the paper's."""
    if recipe == "plain":
        return None
    from pcn.config import AugConfig

    # the paper pretrain's per-image recipe (params.yaml scales.paper); mixup is the engine's
    return AugConfig(scale_min=0.08, hflip=0.5, auto_augment="rand-m9-mstd0.5-inc1", random_erasing=0.25)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--folder",
        type=Path,
        help="existing ImageFolder (default: generate one in a temp dir)",
    )
    ap.add_argument("--n-images", type=int, default=2000)
    ap.add_argument("--n-classes", type=int, default=10)
    ap.add_argument("--height", type=int, default=320)
    ap.add_argument("--width", type=int, default=400)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 176])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per loader and size")
    ap.add_argument("--num-workers", type=int, default=os.cpu_count())
    ap.add_argument("--write-mode", default="raw", choices=["raw", "jpg", "proportion", "smart"])
    ap.add_argument("--max-resolution", type=int, default=400)
    ap.add_argument("--jpeg-quality", type=int, default=90)
    ap.add_argument("--compress-probability", type=float, default=0.5)
    ap.add_argument(
        "--no-os-cache",
        action="store_true",
        help="FFCV process cache + quasi-random order",
    )
    ap.add_argument("--batches-ahead", type=int, default=3)
    ap.add_argument("--loaders", nargs="+", default=["ffcv", "torch"], choices=["ffcv", "torch", "memory"])
    ap.add_argument(
        "--recipe",
        default="plain",
        choices=["plain", "paper"],
        help="plain: crop + flip; paper: + RandAugment and random erasing",
    )
    ap.add_argument(
        "--device", default="cpu", help="where the batch goes (cuda: FFCV's batched RandAugment runs there)"
    )
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)

    import torch

    from pcn.data.ffcv_io import convert_imagefolder
    from pcn.data.loaders import build_loader
    from pcn.machine.speed import sgemm_gflops

    torch.set_num_threads(max(1, args.num_workers))
    with tempfile.TemporaryDirectory(prefix="bench_loaders_") as tmp:
        tmp = Path(tmp)
        folder = args.folder
        if folder is None:
            t0 = time.perf_counter()
            folder = make_folder(tmp / "images", args.n_images, args.n_classes, args.height, args.width)
            print(f"made {args.n_images} JPEGs of {args.height}x{args.width} in {time.perf_counter() - t0:.1f} s")
        beton = tmp / "train.beton"
        conv = convert_imagefolder(
            folder,
            beton,
            max_resolution=args.max_resolution,
            jpeg_quality=args.jpeg_quality,
            compress_probability=args.compress_probability,
            write_mode=args.write_mode,
            max_bad_fraction=0.0,
            num_workers=args.num_workers,
            progress=False,
        )
        print(
            f"converted {conv['n_images']} images in {conv['seconds']:.1f} s ({conv['images_per_s']} img/s), "
            f".beton {beton.stat().st_size / 2**20:.0f} MiB"
        )
        rows = []
        for size in args.sizes:
            for kind in args.loaders:
                t0 = time.perf_counter()
                loader = build_loader(
                    beton=beton,
                    folder=folder,
                    kind=kind,
                    train=True,
                    img_size=size,
                    batch_size=args.batch_size,
                    aug=recipe_aug(args.recipe),
                    num_workers=args.num_workers,
                    seed=0,
                    os_cache=not args.no_os_cache,
                    batches_ahead=args.batches_ahead,
                    device=args.device,
                )
                build_s = time.perf_counter() - t0
                rate, n, warmup_s, cpu_s = time_loader(loader, args.epochs)
                rows.append(
                    {
                        "loader": kind,
                        "recipe": args.recipe,
                        "img_size": size,
                        "workers": args.num_workers,
                        "images_per_s": round(rate, 1),
                        "cpu_s_per_image": round(cpu_s / n, 5),
                        "images": n,
                        "build_s": round(build_s, 2),
                        "first_epoch_s": round(warmup_s, 2),
                    }
                )
                print(
                    f"  {kind:6s} {size:4d} px: {rate:8.1f} img/s, {cpu_s / n * 1e3:.2f} CPU-ms/img "
                    f"(built in {build_s:.1f} s, first epoch {warmup_s:.1f} s)"
                )
                del loader

    by = {(r["loader"], r["img_size"]): r["images_per_s"] for r in rows}
    print(f"\n{'size':>6} {'ffcv img/s':>12} {'torch img/s':>12} {'ratio':>7}")
    ratios, cpu_ratios = {}, {}
    per_cpu = {(r["loader"], r["img_size"]): r["cpu_s_per_image"] for r in rows}
    for size in args.sizes:
        f, t = per_cpu.get(("ffcv", size)), per_cpu.get(("torch", size))
        cpu_ratios[str(size)] = round(t / f, 2) if f and t else None
        f, t = by.get(("ffcv", size)), by.get(("torch", size))
        ratio = f / t if f and t else None
        ratios[str(size)] = round(ratio, 2) if ratio else None
        print(f"{size:>6} {f or float('nan'):>12.1f} {t or float('nan'):>12.1f} {ratio or float('nan'):>7.2f}")
    result = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "sgemm_1thread_gflops_cpu_time": round(sgemm_gflops(cpu=True), 1),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
        "conversion": {k: v for k, v in conv.items() if k != "skipped_files"},
        "results": rows,
        "ffcv_over_torch": ratios,
        "ffcv_over_torch_per_cpu_s": cpu_ratios,
    }
    print(f"images per CPU-second, ffcv over torch: {cpu_ratios}")
    if args.out:
        from pcn.io import write_json

        write_json(args.out, result)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
