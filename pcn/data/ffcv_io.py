"""ImageFolder -> FFCV .beton conversion and its sidecar metadata.

Over 400 lines because the sidecar's checks and the conversion's worker protocol
describe one file format: split, they would each need the other's details.  The
folders it reads are listed and decoded by :mod:`pcn.data.folders`.

``convert_imagefolder`` is a pure library function (the CLI verb and the DAG stage
wrap it). It

1. scans the folder (:func:`pcn.data.folders.scan_folder`) and, given the train
   split's classes (``train_classes``), refuses a split whose class folders differ,
   in one line naming the missing and extra ones, before anything is written;
2. decodes every image once to verify it, skipping unreadable, corrupt or empty
   files with a warning naming each, and fails if their share exceeds
   ``max_bad_fraction``;
3. writes the .beton under a temporary name in the target directory
   (:func:`pcn.io.atomic_path`), then the sidecar ``<dst>.json`` (class names in
   label order, count, source hash, layout, resolution, a fingerprint of the
   .beton), then renames the .beton onto ``dst``. A conversion killed at any point
   leaves no partial file at ``dst`` (the next one removes its temporary file); a
   sidecar that does not describe the .beton beside it is refused by
   ``check_metadata``.

FFCV's writer only sees the RGB array :func:`pcn.data.folders.load_rgb` decodes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import multiprocessing.util
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

from pcn.data.folders import FolderIndex, Layout, class_list_difference, layout_classes, load_rgb, scan_folder
from pcn.data.worker_watch import WorkerDied, watch_workers
from pcn.errors import DatasetError
from pcn.io import atomic_path, write_json

log = logging.getLogger(__name__)

METADATA_VERSION = 1
_FINGERPRINT_CHUNK = 4 << 20  # bytes hashed at each end of a large .beton
_FINGERPRINT_BLOCK = 64 << 10
_FINGERPRINT_WHOLE = 64 << 20


def source_hash(index: FolderIndex) -> str:
    """sha256 over (relative path, label, size, mtime) of every image: cheap, and it
    changes when a file is added, removed, relabelled or rewritten."""
    h = hashlib.sha256()
    h.update(f"{index.layout}\n".encode())
    for rel, label in index.samples:
        st = os.stat(index.root / rel)
        h.update(f"{rel}\t{label}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _check_image(path: str) -> str | None:
    """None if the file decodes, else the reason."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        from PIL import Image

        with Image.open(path) as img:
            img.load()
            if img.width < 1 or img.height < 1:
                return "image has no pixels"
        return None
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip this file"
        return f"{type(exc).__name__}: {exc}"


def _die_with_parent(_=None) -> None:
    """In a forked worker: ask the kernel for SIGKILL when the parent dies (PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass  # not Linux: the workers end when their queue closes, as before


def workers_die_with_parent() -> None:
    """Every worker multiprocessing forks from now on (ffcv's writers, the verify pool) dies
    with this process: a SIGKILLed conversion leaves no worker behind, and none holds the
    shared-memory resource tracker open."""
    multiprocessing.util.register_after_fork(_die_with_parent, _die_with_parent)


def verify_images(
    index: FolderIndex, *, num_workers: int = 1, progress: bool = True
) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """Decode every image; return (good samples, [(bad relative path, reason)])."""
    from tqdm import tqdm

    paths = [str(index.root / rel) for rel, _ in index.samples]
    bar = tqdm(
        total=len(paths),
        desc="verify",
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
    )
    if num_workers > 1:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(num_workers) as pool:
            reasons = []
            for reason in pool.imap(_check_image, paths, chunksize=64):
                reasons.append(reason)
                bar.update(1)
    else:
        reasons = []
        for p in paths:
            reasons.append(_check_image(p))
            bar.update(1)
    bar.close()
    good = [s for s, r in zip(index.samples, reasons) if r is None]
    bad = [(s[0], r) for s, r in zip(index.samples, reasons) if r is not None]
    return good, bad


# --- writing ---------------------------------------------------------------------------


class _ImageDataset:
    """What ffcv's DatasetWriter workers index: (uint8 RGB HWC, label).

    A file that stops decoding between verification and writing must not hang
    ffcv's writer (its progress loop waits forever for a worker that raised), so
    the failure is recorded in a shared counter, a 1x1 placeholder is written, and
    the conversion fails afterwards.
    """

    def __init__(self, root: Path, samples: Sequence[tuple[str, int]], failures):
        self.root = root
        self.samples = list(samples)
        self.failures = failures

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        rel, label = self.samples[i]
        try:
            return load_rgb(self.root / rel), label
        except Exception as exc:  # noqa: BLE001
            log.error("failed to decode %s while writing: %s", self.root / rel, exc)
            with self.failures.get_lock():
                self.failures.value += 1
            return np.zeros((1, 1, 3), dtype=np.uint8), label


def _content_seeded(field):
    """Make ffcv's ``write_mode='proportion'`` repeatable.

    ffcv picks JPEG or raw for each image with the global numpy RNG of whichever
    writer worker gets it, unseeded, so two conversions of one folder store
    different pixels and every training run downstream differs.  Seed that RNG from
    the image's own pixels just before the draw (also on ffcv's retry on a fresh
    page): the same image always gets the same choice, and the proportion holds.
    The field keeps its class, which ffcv records in the .beton header.
    """
    encode = field.encode

    def seeded_encode(destination, image, malloc):
        digest = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=4).digest()
        np.random.seed(int.from_bytes(digest, "little"))
        return encode(destination, image, malloc)

    field.encode = seeded_encode
    return field


@contextmanager
def _writer_progress(progress: bool) -> Iterator[None]:
    """Give ffcv's own writer bar a name and an images/s rate (or silence it)."""
    import ffcv.writer
    from tqdm import tqdm

    original, bars = ffcv.writer.tqdm, []  # an ffcv internal, patched: ffcv is pinned (pyproject.toml)

    def bar(*args, **kwargs):
        bars.append(tqdm(*args, desc="write", unit="img", disable=not progress, dynamic_ncols=True, **kwargs))
        return bars[-1]

    ffcv.writer.tqdm = bar
    try:
        yield
    finally:
        ffcv.writer.tqdm = original
        for b in bars:  # a failed write leaves its bar open: an error would follow on its line
            b.close()


@contextmanager
def _queues_abandoned_on_failure() -> Iterator[None]:
    """A writer that dies leaves ffcv's work queue full of chunks no one will read: its feeder
    thread blocks on the pipe for ever, and Python joins that thread at exit, so the process
    never ended after its error line (10,000 images: more chunks than a pipe holds).  When
    the write fails, the queues ffcv made here are abandoned instead (cancel_join_thread)."""
    import ffcv.writer

    original, made = ffcv.writer.Queue, []  # an ffcv internal, patched: ffcv is pinned (pyproject.toml)

    def queue(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    ffcv.writer.Queue = queue
    try:
        yield
    except BaseException:
        for q in made:
            q.cancel_join_thread()
        raise
    finally:
        ffcv.writer.Queue = original


def _free_shared_metadata(writer) -> None:
    """The shared memory ffcv's writer frees only when it completes (else a leak warning at exit)."""
    shared = getattr(writer, "metadata_sm", None)
    if shared is not None:
        with suppress(OSError):
            shared.close()
            shared.unlink()


def beton_fingerprint(path: str | Path) -> str:
    """sha256 identifying one written .beton, cheap to compute: the whole file up to
    64 MiB, else its size, first and last 4 MiB (header, field table, per-sample
    metadata, allocation table) and 256 blocks of 64 KiB spread over the data."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fp:
        if size <= _FINGERPRINT_WHOLE:
            for block in iter(lambda: fp.read(1 << 20), b""):
                h.update(block)
            return h.hexdigest()
        h.update(fp.read(_FINGERPRINT_CHUNK))
        for offset in np.linspace(_FINGERPRINT_CHUNK, size - _FINGERPRINT_CHUNK - _FINGERPRINT_BLOCK, 256):
            fp.seek(int(offset))
            h.update(fp.read(_FINGERPRINT_BLOCK))
        fp.seek(size - _FINGERPRINT_CHUNK)
        h.update(fp.read())
    return h.hexdigest()


def beton_num_samples(path: str | Path) -> int:
    from ffcv.types import HeaderType

    with open(path, "rb") as fp:
        raw = fp.read(HeaderType.itemsize)
    if len(raw) < HeaderType.itemsize:
        raise DatasetError(f"{path}: too short to be an FFCV .beton file")
    return int(np.frombuffer(raw, dtype=HeaderType)[0]["num_samples"])


def metadata_path(beton_path: str | Path) -> Path:
    p = Path(beton_path)
    return p.with_name(p.name + ".json")


def convert_imagefolder(
    src_dir: str | Path,
    dst_path: str | Path,
    *,
    max_resolution: int,
    jpeg_quality: int,
    compress_probability: float,
    write_mode: str,
    max_bad_fraction: float,
    num_workers: int,
    layout: Layout = "imagefolder",
    train_classes: Sequence[str] | None = None,
    progress: bool = True,
) -> dict:
    """Convert an image folder into an FFCV .beton (+ sidecar); return metrics.

    ``train_classes``: the train split's class names; a folder listing other classes
    is refused before anything is written.  Metrics: n_images (written), n_skipped,
    skipped_files (relative paths), seconds, images_per_s, n_classes, source_hash.
    """
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    t0 = time.perf_counter()
    dst = Path(dst_path)
    if not dst.parent.is_dir():
        raise DatasetError(f"{dst.parent}: output directory does not exist")
    num_workers = max(1, int(num_workers))
    workers_die_with_parent()
    index = scan_folder(src_dir, layout, train_classes)
    digest = source_hash(index)

    good, bad = verify_images(index, num_workers=num_workers, progress=progress)
    for rel, reason in bad:  # one log line each (a warnings.warn beside it printed each twice)
        log.warning("skipping unreadable image %s: %s", index.root / rel, reason)
    total = len(index.samples)
    fraction = len(bad) / total
    if fraction > max_bad_fraction:
        raise DatasetError(
            f"{index.root}: {len(bad)} of {total} images are unreadable ({fraction:.2%}), "
            f"above data.ffcv.max_bad_fraction = {max_bad_fraction:g}"
        )
    if not good:
        raise DatasetError(f"{index.root}: none of its {total} images can be decoded")

    failures = multiprocessing.get_context("fork").Value("i", 0)
    fields = {
        "image": _content_seeded(
            RGBImageField(
                write_mode=write_mode,
                max_resolution=max_resolution,
                jpeg_quality=jpeg_quality,
                compress_probability=compress_probability,
            )
        ),
        "label": IntField(),
    }
    # The .beton is written under a temporary name (which the next conversion removes if
    # this one is killed) and renamed onto dst last, after its sidecar: a kill in between
    # leaves the old .beton (if any) beside a sidecar whose fingerprint does not match it,
    # which the loader refuses, and never a partial .beton at dst.
    with atomic_path(dst) as tmp:
        writer = DatasetWriter(str(tmp), fields, num_workers=num_workers)
        try:
            with _writer_progress(progress), _queues_abandoned_on_failure(), watch_workers(str(dst)):
                writer.from_indexed_dataset(_ImageDataset(index.root, good, failures), chunksize=64)
        except WorkerDied:
            _free_shared_metadata(writer)
            raise
        if failures.value:
            raise DatasetError(
                f"{index.root}: {failures.value} images passed verification but failed to decode while "
                "writing (files changing during the conversion?)"
            )
        written = beton_num_samples(tmp)
        if written != len(good):
            raise DatasetError(f"{tmp}: wrote {written} samples, expected {len(good)}")
        jpeg = jpeg_fraction(tmp)
        meta = {
            "version": METADATA_VERSION,
            "num_samples": len(good),
            "num_classes": index.num_classes,
            "class_names": index.class_names,
            "layout": layout,
            "source": str(index.root),
            "source_hash": digest,
            "n_skipped": len(bad),
            "skipped_files": [rel for rel, _ in bad],
            "max_resolution": max_resolution,
            "write_mode": write_mode,
            "jpeg_quality": jpeg_quality,
            "compress_probability": compress_probability,
            "beton_fingerprint": beton_fingerprint(tmp),
        }
        write_json(metadata_path(dst), meta)

    seconds = time.perf_counter() - t0
    return {
        "n_images": len(good),
        "n_skipped": len(bad),
        "skipped_files": [rel for rel, _ in bad],
        "seconds": round(seconds, 3),
        "images_per_s": round(len(good) / seconds, 1) if seconds > 0 else None,
        "n_classes": index.num_classes,
        "source_hash": digest,
        "jpeg_fraction": round(jpeg, 4),
    }


def jpeg_fraction(path: str | Path) -> float:
    """Share of a .beton's images stored as JPEG, re-encoded at ``jpeg_quality`` (the rest
    are raw pixels): ``compress_probability`` in expectation under write_mode 'proportion'."""
    from ffcv.reader import Reader

    modes = Reader(str(path)).metadata["f0"]["mode"]  # f0: the image field; ffcv: jpg 0, raw 1
    return float((modes == 0).mean()) if len(modes) else 0.0


# --- reading the sidecar --------------------------------------------------------------------


def read_metadata(beton_path: str | Path) -> dict:
    """The sidecar of a .beton (raises DatasetError if it is missing or unreadable)."""
    side = metadata_path(beton_path)
    if not side.is_file():
        raise DatasetError(
            f"{side}: metadata sidecar missing (convert the dataset with `pcn convert`, which writes it "
            "beside the .beton)"
        )
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{side}: unreadable metadata sidecar ({exc})") from None
    for key in ("num_samples", "class_names", "beton_fingerprint"):
        if key not in meta:
            raise DatasetError(f"{side}: metadata sidecar lacks '{key}' (re-run the conversion)")
    return meta


def check_metadata(beton_path: str | Path, expected_classes: Sequence[str] | None = None) -> dict:
    """Refuse a .beton whose sidecar does not describe it, or whose classes differ
    from ``expected_classes`` (the train split's, mapped to the .beton's layout);
    return the metadata."""
    beton = Path(beton_path)
    if not beton.is_file():
        raise DatasetError(f"{beton}: no such .beton file (run the conversion first)")
    meta = read_metadata(beton)
    n = beton_num_samples(beton)
    if n != meta["num_samples"]:
        raise DatasetError(
            f"{beton}: holds {n} samples but its sidecar says {meta['num_samples']} "
            "(stale sidecar; re-run the conversion)"
        )
    if beton_fingerprint(beton) != meta["beton_fingerprint"]:
        raise DatasetError(f"{beton}: does not match its sidecar's fingerprint (stale sidecar; re-run the conversion)")
    if expected_classes is not None:
        want = layout_classes(meta.get("layout", "imagefolder"), expected_classes)
        diff = class_list_difference(meta["class_names"], want)
        if diff:
            raise DatasetError(f"{beton}: class list differs from train: {diff}")
    return meta
