"""Model complexity: parameters, GMACs, throughput and peak memory (a pure library).

How GMACs are counted
---------------------
``count_gmacs`` runs one image through the model in eval mode under
``torch.utils.flop_counter.FlopCounterMode`` and reports FLOPs / 2 / 1e9, i.e. billions
of multiply-accumulates (the paper's "FLOPs" are MACs). Counted: convolutions (depthwise
included), linear layers and matrix products (mm/addmm/bmm), attention matmuls.
Not counted: normalisation, activations, pooling, elementwise ops (LayerScale, SE gate,
residual adds), like fvcore's matmul/conv-only counting. Scaled dot-product attention is
forced onto PyTorch's math kernel while counting, so that its two matmuls are seen as
bmm on every device (the fused CPU kernel has no FLOP formula).

Throughput and memory
---------------------
``measure_throughput`` times ``iters`` forward passes (inference mode) after ``warmup``.
Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during the timed passes
(``mem_method='cuda_max_memory_allocated'``); on CPU the peak resident set size of the
process above its level before the passes, sampled every 2 ms from /proc
(``mem_method='cpu_peak_rss_delta'``, after glibc's free heap is trimmed), a best-effort
figure.
"""

import ctypes
import gc
import os
import threading
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "count_params",
    "count_gmacs",
    "prepare_fast",
    "measure_throughput",
    "complexity_table",
    "write_markdown",
]


# What a measurement adds to a row of the table (None where it was not measured)
MEASURED = ("throughput", "peak_mem_mb", "mem_method")


def count_params(model: nn.Module) -> int:
    """Number of parameters (all, trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def _in_chans(model: nn.Module) -> int:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    return int(size[0]) if size else int(getattr(model, "in_chans", 3))


def count_gmacs(model: nn.Module, img_size: int | Sequence[int] = 224) -> float:
    """Multiply-accumulates (in billions) of one forward pass of one image; see module docstring.
    Works on a model built on the 'meta' device (``with torch.device('meta'): create_model(...)``),
    which needs neither weights nor compute."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    ref = next(model.parameters())
    x = torch.zeros(1, _in_chans(model), h, w, device=ref.device, dtype=ref.dtype)
    was_training = model.training
    model.eval()
    # grad mode stays on: FlopCounterMode's module tracker registers backward hooks, which
    # fail on parameters used under no_grad; one image costs little memory
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


def prepare_fast(model: nn.Module, device: str | torch.device, compile: bool = False) -> Callable:
    """The fast path: the model on ``device`` in channels_last memory format; on CUDA the
    call runs under bfloat16 autocast (TF32 matmuls allowed); optionally ``torch.compile``.
    Returns a callable ``f(images) -> outputs`` (grad mode is left to the caller, so the same
    callable serves inference and training). On CPU, autocast is not used: bf16 is only
    faster on CPUs with bf16 matrix units."""
    device = torch.device(device)
    model = model.to(device=device, memory_format=torch.channels_last)
    run = torch.compile(model) if compile else model
    use_amp = device.type == "cuda"
    if use_amp:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def fast_forward(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            return run(x)

    fast_forward.model = model
    return fast_forward


# Often enough to catch a forward pass's activations (a pass takes milliseconds or more),
# rarely enough that the sampling thread does not slow the timed passes
RSS_SAMPLE_INTERVAL_S = 0.002
FALLBACK_PAGE_BYTES = 4096  # where os.sysconf is missing
MIB = 2**20


def _release_free_heap() -> None:
    """Give freed heap memory back to the kernel (glibc's ``malloc_trim``), where there is one.

    A free chunk in the middle of the heap stays resident; a pass that allocates into it adds
    no resident memory, and the RSS delta would miss it (seen in CI after other tests had
    left such a hole). Trimming first makes every page a pass touches a new resident page.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class _RssSampler:
    """Peak resident set size of this process, sampled in a thread (Linux /proc)."""

    def __init__(self, interval: float = RSS_SAMPLE_INTERVAL_S):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else FALLBACK_PAGE_BYTES
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self.page
        except (OSError, ValueError, IndexError):
            return None

    def _run(self):
        while not self._stop.is_set():
            r = self.rss() or 0
            self.peak = max(self.peak, r)
            time.sleep(self.interval)

    def __enter__(self):
        self.start = self.rss()
        self.peak = self.start or 0
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def delta_mb(self) -> float | None:
        return None if self.start is None else max(0, self.peak - self.start) / MIB


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_throughput(
    model: nn.Module,
    img_size: int = 224,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    fast: bool = False,
    warmup: int = 3,
    iters: int = 10,
    compile: bool = False,
) -> dict[str, object]:
    """Inference throughput (images/s) and peak memory of ``model`` at one batch size.

    ``fast=False``: eager fp32 (NCHW). ``fast=True``: ``prepare_fast`` (channels_last, bf16
    autocast on CUDA, ``torch.compile`` if ``compile``). The model is moved to ``device``.
    Returns dict(throughput, peak_mem_mb, mem_method, batch_size, device, fast, seconds).
    """
    device = torch.device(device)
    model = model.eval()
    if fast:
        fn = prepare_fast(model, device, compile=compile)
    else:
        fn = model.to(device)
    x = torch.randn(batch_size, _in_chans(model), img_size, img_size, device=device)
    for _ in range(warmup):
        fn(x)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            fn(x)
        _sync(device)
        dt = time.perf_counter() - t0
        # the model and the input batch are part of the footprint, as in the model zoo's figures
        peak, method = torch.cuda.max_memory_allocated(device) / MIB, "cuda_max_memory_allocated"
        del base
    else:
        gc.collect()
        _release_free_heap()
        with _RssSampler() as sampler:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn(x)
            dt = time.perf_counter() - t0
        peak, method = sampler.delta_mb, "cpu_peak_rss_delta"
    return dict(
        throughput=batch_size * iters / dt,
        peak_mem_mb=peak,
        mem_method=method,
        batch_size=batch_size,
        device=str(device),
        fast=fast,
        seconds=dt,
    )


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def complexity_table(
    model_names: list[str],
    resolutions: list[int],
    batch_size: int = 256,
    device: str = "cpu",
    fast: bool = False,
    warmup: int = 3,
    iters: int = 10,
    measure: bool = True,
) -> list[dict[str, object]]:
    """One row per model x resolution: model, img_size, params_m, gmacs, throughput,
    peak_mem_mb, mem_method, device, batch_size, fast. Models come from timm's registry
    (``pcn.models`` registers the PatchConvNet ones) with ``pretrained=False``. The batch is
    ``batch_size`` or the largest power-of-two fraction of it that fits (halved on OOM).
    ``measure=False`` skips timing (throughput and memory None)."""
    import timm  # timm is the model registry

    import pcn.models  # noqa: F401  (registers the models)

    rows = []
    for name in model_names:
        for res in resolutions:
            kwargs = {}
            if any(k in name for k in ("swin", "deit", "vit")):
                kwargs["img_size"] = res  # fixed-size transformers are built for the resolution
            with torch.device("meta"):  # shapes only: counting needs no weights and no time
                shape_model = timm.create_model(name, pretrained=False, **kwargs)
            row = dict(
                model=name,
                img_size=res,
                params_m=count_params(shape_model) / 1e6,
                gmacs=count_gmacs(shape_model, res),
                **dict.fromkeys(MEASURED),
                device=str(device),
                batch_size=None,
                fast=fast,
            )
            del shape_model
            model = timm.create_model(name, pretrained=False, **kwargs) if measure else None
            bs = batch_size
            while measure and bs >= 1:
                try:
                    m = measure_throughput(model, res, bs, device, fast=fast, warmup=warmup, iters=iters)
                    row.update({k: m[k] for k in MEASURED}, batch_size=bs)
                    break
                except (RuntimeError, torch.OutOfMemoryError) as e:
                    if not _is_oom(e):
                        raise
                    bs //= 2
                    gc.collect()
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
            rows.append(row)
            del model
            gc.collect()
    return rows


def write_markdown(rows: list[dict[str, object]], path: str | os.PathLike) -> None:
    """The rows of ``complexity_table`` as a Markdown table."""

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    lines = [
        "| model | img size | params (M) | GMACs | throughput (im/s) | peak mem (MB) | device | batch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['img_size']} | {fmt(r['params_m'], '.1f')} | {fmt(r['gmacs'], '.2f')} | "
            f"{fmt(r['throughput'], '.1f')} | {fmt(r['peak_mem_mb'], '.0f')} | {r['device']} | "
            f"{fmt(r['batch_size'], 'd')} |"
        )
    methods = sorted({r["mem_method"] for r in rows if r.get("mem_method")})
    lines.append("")
    lines.append(
        "GMACs: multiply-accumulates of one image (convs, linears, attention matmuls; "
        "torch FlopCounterMode / 2)." + (f" Peak memory: {', '.join(methods)}." if methods else "")
    )
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
