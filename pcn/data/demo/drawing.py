"""Drawing the demo's shapes: one shape's coverage map, cluttered backgrounds, and
compositing a shape onto an image (the pieces the sample and scene renderers use).

Every function draws from the ``numpy.random.Generator`` it is given, in a fixed
order, so the same generator state gives the same pixels.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from pcn.data.demo.shapes import class_names

# ---------------------------------------------------------------------------
# Shapes: inside tests in a unit object frame (extent within the unit disc)
# ---------------------------------------------------------------------------


def _regular(n: int, r: float = 1.0, phase: float = math.pi / 2) -> np.ndarray:
    a = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _star(n: int = 5, r_out: float = 1.0, r_in: float = 0.42) -> np.ndarray:
    a = math.pi / 2 + math.pi * np.arange(2 * n) / n
    r = np.where(np.arange(2 * n) % 2 == 0, r_out, r_in)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([[-0.69, -0.69], [0.69, -0.69], [0.69, 0.69], [-0.69, 0.69]]),
    "triangle": _regular(3, 1.0),
    "star": _star(),
    "diamond": np.array([[0.0, -1.0], [0.58, 0.0], [0.0, 1.0], [-0.58, 0.0]]),
    "hexagon": _regular(6, 0.98, 0.0),
    "arrow": np.array(
        [
            [-0.95, -0.24],
            [0.15, -0.24],
            [0.15, -0.62],
            [0.95, 0.0],
            [0.15, 0.62],
            [0.15, 0.24],
            [-0.95, 0.24],
        ]
    ),
    "chevron": np.array([[-0.6, -0.78], [0.92, 0.0], [-0.6, 0.78], [-0.1, 0.0]]),
}


_FILL = 0.94  # the unit disc's radius in half-sides of the object square (keeps a margin)


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of the non-polygonal shapes on object-frame coordinates."""
    r2 = u * u + v * v
    if shape == "circle":
        return r2 <= 0.92**2
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.56**2)
    if shape == "cross":
        a, b = np.abs(u), np.abs(v)
        return ((a <= 0.3) & (b <= 0.95)) | ((b <= 0.3) & (a <= 0.95))
    if shape == "crescent":
        return (r2 <= 1.0) & ((u - 0.48) * (u - 0.48) + v * v >= 0.82**2)
    if shape == "heart":
        x = u * np.float32(1 / 0.74)
        y = np.float32(0.12) - v * np.float32(1 / 0.74)  # implicit heart, centred, point towards +v
        x2 = x * x
        q = x2 + y * y - 1
        return q * q * q - x2 * y * y * y <= 0
    raise KeyError(f"unknown shape {shape!r}")


def render_object(
    rng: np.random.Generator,
    class_id: int,
    size: int,
    *,
    n_classes: int,
    rotation: float | None = None,
    aspect: float | None = None,
    supersample: int = 4,
) -> np.ndarray:
    """Coverage map (float32 in [0, 1], ``size`` x ``size``) of one shape.

    The shape (class ``class_id`` of :func:`class_names`) is centred in the
    square with its extent within the inscribed circle, rotated by
    ``rotation`` radians and stretched by ``aspect`` along one axis (both
    random when ``None``). The exact binary mask is ``coverage >= 0.5``.
    """
    shape = class_names(n_classes)[class_id]
    if rotation is None:
        rotation = float(rng.uniform(0, 2 * math.pi))
    if aspect is None:
        aspect = float(rng.uniform(0.88, 1.0))
    s = supersample
    half = size / 2.0  # centre of the square
    radius = _FILL * half  # the unit disc of the object frame, in pixels
    c, sn = math.cos(rotation), math.sin(rotation)
    if shape in _POLYGONS:
        # object frame (u, v) -> image frame: x = c*a*u - sn*v, y = sn*a*u + c*v
        pu, pv = _POLYGONS[shape][:, 0] * aspect, _POLYGONS[shape][:, 1]
        px = ((c * pu - sn * pv) * radius + half) * s
        py = ((sn * pu + c * pv) * radius + half) * s
        canvas = Image.new("L", (size * s, size * s), 0)
        # PIL fills pixels whose centres are inside; shift by half a sample
        ImageDraw.Draw(canvas).polygon([(float(x) - 0.5, float(y) - 0.5) for x, y in zip(px, py)], fill=1)
        inside = np.asarray(canvas, dtype=np.float32)
    else:
        t = ((np.arange(size * s, dtype=np.float32) + 0.5) / s - half) / radius  # sample positions
        u = np.float32(c / aspect) * t[None, :] + np.float32(sn / aspect) * t[:, None]
        v = np.float32(-sn) * t[None, :] + np.float32(c) * t[:, None]
        inside = _inside(shape, u, v)
    return inside.reshape(size, s, size, s).mean(axis=(1, 3), dtype=np.float32)


def mask_to_box(mask: np.ndarray) -> list[int]:
    """[x, y, w, h] (pixels) of the tight bounding box of a boolean mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return [0, 0, 0, 0]
    return [
        int(cols[0]),
        int(rows[0]),
        int(cols[-1] - cols[0] + 1),
        int(rows[-1] - rows[0] + 1),
    ]


# ---------------------------------------------------------------------------
# Backgrounds and compositing
# ---------------------------------------------------------------------------


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def render_background(rng: np.random.Generator, size: int, strokes: tuple[int, int]) -> np.ndarray:
    """Cluttered background (float32 H x W x 3, 0..255).

    A colour gradient, low-frequency colour noise, pixel noise and thin random
    strokes (polylines and arcs; ``strokes`` is their count range per 64 px of side).
    None of it forms a filled shape.
    """
    h = w = size
    c1, c2 = _random_colour(rng), _random_colour(rng)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    proj = xx * math.cos(theta) + yy * math.sin(theta)
    t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
    img = c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]
    g = int(rng.integers(3, 7))
    low = rng.normal(0, 20, (g, g, 3)).astype(np.float32)
    low_img = np.stack(
        [np.asarray(Image.fromarray(low[..., k], mode="F").resize((w, h), Image.BICUBIC)) for k in range(3)],
        -1,
    )
    img = img + low_img
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    n = round(int(rng.integers(strokes[0], strokes[1] + 1)) * size / 64) if strokes[1] > 0 else 0
    max_w = max(1, round(size / 40))
    for _ in range(n):
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        width = int(rng.integers(1, max_w + 1))
        if rng.random() < 0.6:
            k = int(rng.integers(2, 5))
            start = rng.uniform(0, size, 2)
            pts = [tuple(start)]
            for _ in range(k - 1):
                step = rng.normal(0, size / 3, 2)
                pts.append(tuple(np.array(pts[-1]) + step))
            draw.line([(float(a), float(b)) for a, b in pts], fill=col, width=width)
        else:
            cx, cy = rng.uniform(0, size, 2)
            r = rng.uniform(size / 10, size / 2)
            a0 = float(rng.uniform(0, 360))
            span = float(rng.uniform(40, 200))  # never a closed circle
            draw.arc([cx - r, cy - r, cx + r, cy + r], a0, a0 + span, fill=col, width=width)
    out = np.asarray(pil, dtype=np.float32)
    out = out + rng.normal(0, 5, out.shape).astype(np.float32)
    return out


def _object_colour(rng: np.random.Generator, under: np.ndarray, min_dist: float = 140.0) -> np.ndarray:
    """A random colour far enough from ``under`` (mean background colour under the object)."""
    best, best_d = None, -1.0
    for _ in range(24):
        col = _random_colour(rng)
        d = float(np.linalg.norm(col - under))
        if d >= min_dist:
            return col
        if d > best_d:
            best, best_d = col, d
    return best  # type: ignore[return-value]


def paint(rng: np.random.Generator, img: np.ndarray, cov: np.ndarray, top: int, left: int) -> np.ndarray:
    """Composite a shape (coverage ``cov`` at ``top, left``) onto ``img`` in place.

    Returns the placed boolean mask (image-sized). Shading and noise vary the
    object's colour slightly; the colour contrasts with the background under it.
    """
    s = cov.shape[0]
    h, w = img.shape[:2]
    # clip the object square to the canvas (placement keeps the mask inside)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + s, h), min(left + s, w)
    c = cov[y0 - top : y1 - top, x0 - left : x1 - left]
    region = img[y0:y1, x0:x1]
    m = c >= 0.5
    under = region[m].mean(axis=0) if m.any() else region.reshape(-1, 3).mean(axis=0)
    col = _object_colour(rng, under)
    th = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0 : c.shape[0], 0 : c.shape[1]].astype(np.float32)
    shade = ((xx * math.cos(th) + yy * math.sin(th)) / max(s, 1) - 0.5) * rng.uniform(0, 40)
    fill = col[None, None, :] + shade[..., None] + rng.normal(0, 4, (*c.shape, 3)).astype(np.float32)
    a = c[..., None]
    region[...] = region * (1 - a) + fill * a
    full = np.zeros((h, w), dtype=bool)
    full[y0:y1, x0:x1] = m
    return full


def random_placement(rng: np.random.Generator, cov: np.ndarray, canvas: int) -> tuple[int, int]:
    """Random top-left of the object square so that its mask lies inside the canvas."""
    m = cov >= 0.5
    x, y, w, h = mask_to_box(m)
    top = int(rng.integers(-y, canvas - (y + h) + 1))
    left = int(rng.integers(-x, canvas - (x + w) + 1))
    return top, left
