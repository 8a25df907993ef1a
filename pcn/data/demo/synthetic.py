"""Deterministic synthetic demo data, written in the official dataset layouts.

No public dataset can be downloaded where the demo runs, so the pipeline draws
its own data from a seed. One generator of coloured shapes on cluttered
backgrounds, with exact masks, feeds the four datasets the paper uses, each
written exactly as its publisher ships it (docs/datasets.md) and holding
nothing the real one does not ship, so the readers that serve the demo are the
readers that serve the paper. The layouts themselves are written by
:mod:`pcn.data.demo.layouts`; the shapes are drawn by :mod:`pcn.data.demo.drawing`, the
classification sets by :mod:`pcn.data.demo.classification` and the scenes by
:mod:`pcn.data.demo.scenes`, from a :class:`~pcn.data.demo.spec.DemoSpec` whose
sizes come from the params schema (``seed`` and ``data.demo``).

``imagenet/`` (classification)::

    train/<wnid>/<wnid>_<n>.JPEG
    val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG
    LOC_val_solution.csv         one box per val image: wnid x_min y_min x_max y_max
    LOC_synset_mapping.txt       "<wnid> <shape name>" per line

  Each class is one shape; its wnid (:func:`pcn.data.demo.shapes.wnids`, ``n9`` + 7
  made-up digits) sorts like the shape names, so the class index (the rank of
  the sorted wnids) is the position in :func:`pcn.data.demo.shapes.class_names`.
  Each image holds exactly one labelled shape (drawn in a square of 55-95 % of
  the image side) on a cluttered background (colour gradient, low-frequency
  colour noise, pixel noise and thin random strokes; the clutter is never a
  filled shape). The val boxes are the object masks' extents in pixels,
  ``x_max``/``y_max`` being the last covered column/row.
  Val images are numbered 1..N with the classes interleaved.

``imagenetv2-matched-frequency/<class index>/<sha1>.jpeg``: ``val_per_class``
  new images per class from a seed stream of their own (a second test set).

``ADEChallengeData2016/`` (semantic segmentation)::

    images/{training,validation}/ADE_{train,val}_<8 digits>.jpg
    annotations/{training,validation}/ADE_{train,val}_<8 digits>.png
    objectInfo150.txt            Idx Ratio Train Val Name, one row per id 1..K+1

  Label maps are uint8 PNGs of the image size: 0 = other (ignored; this
  generator leaves it unused), 1 = background, 2..K+1 = the K shape classes
  (class index + 2).

``coco/`` (instance detection and segmentation)::

    {train2017,val2017}/<12 digits>.jpg
    annotations/instances_{train,val}2017.json

  Category ids are COCO-style, not contiguous
  (:data:`pcn.data.demo.scenes.DEMO_CATEGORY_IDS`, indexed by class index);
  image ids are sparse, as COCO's. Masks are the *visible* parts of objects
  (later objects occlude earlier ones); boxes and areas are those of the
  visible masks. Most segmentations are polygons (list of lists); objects whose
  visible part has a hole, is too thin for a polygon, or is drawn for RLE (about
  one in six) carry an uncompressed RLE (``counts`` a list of ints, as COCO
  stores crowd regions), so both code paths are exercised (``COCO.annToMask``
  handles both).

The ADE20k and COCO splits hold the same rendered scenes (scene ``i`` is
``ADE_<split>_<i+1>`` and the ``i``-th COCO image). ``demo_summary.json``
beside the four folders records the counts and the content hash.

Determinism: every image is drawn from its own ``numpy.random.Generator``
seeded by ``(seed, stream, index)``, so results do not depend on order or
parallelism, and the same seed gives byte-identical files (given the same
numpy/Pillow/libjpeg versions). ``generate`` writes into a temporary sibling
folder and renames it into place only when complete.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pcn.data.demo import layouts
from pcn.data.demo.classification import write_classification
from pcn.data.demo.scenes import write_scenes
from pcn.data.demo.shapes import class_names, wnids
from pcn.data.demo.spec import DemoSpec
from pcn.io import atomic_path

__all__ = ["SUMMARY_FILE", "DemoSpec", "content_hash", "generate"]

SUMMARY_FILE = "demo_summary.json"  # written at the root, excluded from the hash


def content_hash(root: Path) -> str:
    """sha256 over (relative path, file sha256) of all files under ``root`` in sorted order.

    The summary file at the root is left out (it records the hash).
    """
    return layouts.content_hash(root, exclude=(SUMMARY_FILE,))


def _generate_into(root: Path, spec: DemoSpec, progress: bool, workers: int, min_pool_items: int) -> dict[str, Any]:
    from tqdm.auto import tqdm

    k = spec.n_classes
    total = (spec.train_per_class + 2 * spec.val_per_class) * k + spec.n_scenes_train + spec.n_scenes_val
    bar = tqdm(total=total, desc="demo data", unit="img", disable=not progress, leave=False)

    # Every item is seeded on its own, so the pool's scheduling cannot change
    # any file; results come back in submission order.
    pool = None
    if workers > 1 and total >= min_pool_items:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))

    def run(fn, items):
        results = map(fn, items) if pool is None else pool.map(fn, items, chunksize=32)
        for res in results:
            yield res
            bar.update(1)

    try:
        classification = write_classification(root, spec, run)
        scenes = write_scenes(root, spec, run)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return {"spec": spec.to_dict(), "classes": class_names(k), "wnids": wnids(k), **classification, **scenes}


def generate(
    out_dir: Path | str,
    spec: DemoSpec,
    progress: bool = True,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write the four demo datasets under ``out_dir`` and return a summary.

    The data is written into a temporary sibling folder that replaces
    ``out_dir`` only when complete (:func:`pcn.io.atomic_path`); a run that
    fails or is killed leaves ``out_dir`` as it was.

    The summary (also written to ``out_dir/demo_summary.json``, beside the
    dataset folders) holds counts per split, the class names and wnids, the
    spec and ``content_hash`` (= ``hash``): sha256 over the written files (see
    :func:`content_hash`). The returned dict additionally has ``seconds`` (not
    written, to keep the files deterministic).

    ``workers`` processes render in parallel (default: 2, or 1 on a single
    CPU, and in-process for small jobs of < 400 images). The files do not
    depend on it. Workers are spawned, so a calling script needs the usual
    ``if __name__ == "__main__":`` guard.
    """
    t0 = time.perf_counter()
    with atomic_path(out_dir, directory=True) as tmp:
        auto = workers is None
        n_workers = min(2, os.cpu_count() or 1) if auto else max(1, int(workers))
        summary = _generate_into(tmp, spec, progress, n_workers, 400 if auto else 0)
        summary["content_hash"] = summary["hash"] = content_hash(tmp)
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, separators=(",", ":")) + "\n", encoding="utf-8")
    return {**summary, "seconds": round(time.perf_counter() - t0, 2)}
