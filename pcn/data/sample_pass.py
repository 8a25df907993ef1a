"""The data-path pass: many augmented samples through each training loader, no model.

A rehearsal trains a few steps at a small batch, so a failure on one image in 500 (the
paper's RandAugment once raised on 0.18% of draws) slips through and meets the cluster
hours into a job.  This pass streams ``samples`` augmented images through every distinct
training loader of a scale (the main line's and each comparison's recipe, with the
loader kind, resolution and augmentation the stage would use) and fails in one line
naming the loader, the op and the image if any sample raises or comes out non-finite.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pcn.config import GRID_STUDIES, RUN_RECIPES, Params, TrainConfig
from pcn.errors import UserError

PASS_BATCH = 128  # the paper's images per GPU: the batched ops group one batch's draws


@dataclass(frozen=True)
class TrainLoader:
    """One distinct training loader of a scale and the stages that read through it."""

    stages: tuple[str, ...]
    kind: str
    cfg: TrainConfig

    @property
    def name(self) -> str:
        return f"{self.kind} {self.cfg.img_size} px ({', '.join(self.stages)})"


class SampleFailure(UserError):
    """A sample of the pass raised or came out non-finite."""


def training_loaders(params: Params) -> list[TrainLoader]:
    """The scale's training loaders, one per distinct (kind, resolution, augmentation)."""
    runs: list[tuple[str, str, TrainConfig]] = [
        ("pretrain", params.data.loader, params.pretrain),
        ("finetune", params.data.loader, params.finetune),
    ]
    exp = params.experiments
    if exp.enabled:
        kind = exp.loader or params.data.loader
        for study in GRID_STUDIES:
            for run in (None, *RUN_RECIPES.get(study, ())):
                runs.append((f"{study}@{run}" if run else study, kind, exp.train_for(study, run)))
    stages: dict[tuple, list[str]] = {}  # (kind, px, augmentation) -> its stages, first seen first
    first: dict[tuple, tuple[str, TrainConfig]] = {}
    for stage, kind, cfg in runs:
        key = (kind, cfg.img_size, cfg.aug.model_dump_json())
        first.setdefault(key, (kind, cfg))
        stages.setdefault(key, []).append(stage)
    return [TrainLoader(tuple(stages[key]), *first[key]) for key in stages]


def stream(
    loader_spec: TrainLoader,
    params: Params,
    samples: int,
    *,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Stream at least ``samples`` augmented training images through ``loader_spec``'s
    loader, epoch after epoch; returns the count and rate, raises :class:`SampleFailure`."""
    from pcn.data.loaders import build_loader
    from pcn.data.splits import data_paths

    paths = data_paths(params)
    cfg = loader_spec.cfg
    loader = build_loader(
        beton=paths["train_beton"],
        folder=paths["train"],
        kind=loader_spec.kind,
        train=True,
        img_size=cfg.img_size,
        batch_size=PASS_BATCH,
        aug=cfg.aug,
        num_workers=params.data.num_workers,
        seed=params.seed,
        drop_last=False,
        device="cpu",
    )
    n, epoch, t0 = 0, 0, time.perf_counter()
    while n < samples:
        loader.set_epoch(epoch)
        batch = 0  # the batch being read or checked: a failure in either belongs to it
        try:
            for images, _labels in loader:
                finite = torch.isfinite(images.flatten(1)).all(dim=1)
                if not finite.all():
                    raise NonFinite(torch.nonzero(~finite).squeeze(1).tolist())
                n += images.shape[0]
                if progress:
                    progress(images.shape[0])
                if n >= samples:
                    break
                batch += 1
        except Exception as exc:  # one line naming the loader, the op and the image
            where = f"data pass, {loader_spec.name}, epoch {epoch}, batch {batch}"
            raise SampleFailure(f"{where}: {_images(exc, loader, epoch, batch, paths)}{_one_line(exc)}") from exc
        epoch += 1
    seconds = time.perf_counter() - t0
    return {
        "loader": loader_spec.kind,
        "img_size": cfg.img_size,
        "stages": list(loader_spec.stages),
        "samples": n,
        "epochs": epoch,
        "seconds": round(seconds, 1),
        "images_per_s": round(n / seconds, 1),
    }


class NonFinite(Exception):
    """Pixels that came out NaN or infinite, at these batch slots."""

    def __init__(self, slots: list[int]):
        super().__init__("non-finite pixel values after augmentation")
        self.slots = slots


def _images(exc: BaseException, loader, epoch: int, step: int, paths: dict) -> str:
    """'<image>: ' for a batched failure that names its slots (a folder loader's own
    errors name their image already)."""
    slots = getattr(exc, "slots", None)
    if slots is None or not hasattr(loader, "batch_samples"):
        return ""
    from pcn.data.loaders import folder_index

    index = folder_index(paths["train"], layout="imagefolder", beton=paths["train_beton"], expected_classes=None)
    batch = loader.batch_samples(epoch, step)
    names = [str(index.root / index.samples[batch[s]][0]) for s in slots[:3]]
    more = f" and {len(slots) - 3} more" if len(slots) > 3 else ""
    return f"{', '.join(names)}{more}: "


def _one_line(exc: BaseException) -> str:
    """The failure's own line: a DataLoader worker's error carries the worker's traceback,
    whose last line is the error, prefixed by its class's dotted name."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return re.sub(r"^[\w.]+\.\w*(Error|Exception): ", "", last)


def run_pass(params: Params, samples: int) -> dict:
    """The pass over every training loader of ``params``' scale, each with a progress bar."""
    from tqdm.auto import tqdm

    results, t0 = [], time.perf_counter()
    for spec in training_loaders(params):
        with tqdm(total=samples, desc=f"data pass {spec.name}", unit="img", leave=False) as bar:
            results.append(stream(spec, params, samples, progress=bar.update))
    return {"samples_per_loader": samples, "seconds": round(time.perf_counter() - t0, 1), "loaders": results}
