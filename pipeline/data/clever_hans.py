"""Clever Hans data: chosen classes carry a planted shortcut in training; test images stamped with each.

Images are gray (N x H x W uint8, made RGB with equal channels) or RGB (N x 3 x H x W uint8)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.data.shortcuts import Shortcut, shortcut_alpha, stamp
from pipeline.data.sources import gray_to_rgb


def as_rgb(images: np.ndarray) -> np.ndarray:
    """A new N x 3 x H x W uint8 array: gray N x H x W images with equal channels, RGB ones copied."""
    if images.ndim == 3:
        return gray_to_rgb(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be N x H x W (gray) or N x 3 x H x W (RGB); got {images.shape}")
    return images.copy()


def plant_shortcuts(
    source_images: np.ndarray, labels: np.ndarray, shortcuts: Sequence[Shortcut], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Stamp ``fraction`` of each shortcut class's images; keep which were stamped (``stamped`` [N, K])."""
    images = as_rgb(source_images)
    n, shape = len(images), images.shape[2:]
    stamped = np.zeros((n, len(shortcuts)), dtype=bool)
    for k, shortcut in enumerate(shortcuts):
        members = np.flatnonzero(labels == shortcut.label)
        count = int(round(shortcut.fraction * len(members)))
        chosen = np.sort(rng.choice(members, size=count, replace=False)) if count else members[:0]
        alpha = shortcut_alpha(shortcut, shape)
        images[chosen] = stamp(images[chosen], alpha, shortcut.color)
        stamped[chosen, k] = True
    return {"images": images, "labels": labels, "stamped": stamped}
