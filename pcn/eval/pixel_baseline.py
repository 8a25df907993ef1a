"""A linear classifier on average-pooled raw pixels: the floor the demo task must beat.

If this scores close to the network, the demo data is too easy (colour or position
gives the class away) and the pipeline's accuracy numbers would mean little.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from pcn.data.folders import FolderIndex, open_rgb, scan_folder


def pooled_pixels(index: FolderIndex, grid: int) -> tuple[np.ndarray, np.ndarray]:
    feats = np.empty((len(index.samples), grid * grid * 3), np.float32)
    for i, (rel, _) in enumerate(index.samples):
        small = open_rgb(index.root / rel).resize((grid, grid), Image.BOX)  # BOX = average pooling
        feats[i] = np.asarray(small, np.float32).reshape(-1) / 255.0
    return feats, np.asarray([label for _, label in index.samples], np.int64)


def fit_pixel_baseline(train_dir, val_dir, seed: int = 0, grid: int = 8, epochs: int = 300) -> dict:
    """Train on ``train_dir`` and score on ``val_dir`` (image folders; val must list the
    train split's classes)."""
    torch.manual_seed(seed)
    train = scan_folder(train_dir)
    val = scan_folder(val_dir, train_classes=train.class_names)
    xtr, ytr = pooled_pixels(train, grid)
    xva, yva = pooled_pixels(val, grid)
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    xtr_t, xva_t = torch.from_numpy((xtr - mean) / std), torch.from_numpy((xva - mean) / std)
    ytr_t, yva_t = torch.from_numpy(ytr), torch.from_numpy(yva)
    n_classes = train.num_classes
    linear = torch.nn.Linear(xtr.shape[1], n_classes)
    opt = torch.optim.Adam(linear.parameters(), lr=0.01, weight_decay=1e-4)
    for _ in range(epochs):  # full-batch: the problem is tiny
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(xtr_t), ytr_t)
        loss.backward()
        opt.step()
    with torch.no_grad():
        train_top1 = (linear(xtr_t).argmax(1) == ytr_t).float().mean().item() * 100
        val_top1 = (linear(xva_t).argmax(1) == yva_t).float().mean().item() * 100
    return {
        "top1": round(val_top1, 2),
        "train_top1": round(train_top1, 2),
        "chance": round(100 / n_classes, 2),
        "grid": grid,
        "features": int(xtr.shape[1]),
        "n_train": len(ytr),
        "n_val": len(yva),
    }
