"""Clever Hans MNIST: chosen classes carry a planted shortcut in training; test images stamped with each."""
from __future__ import annotations

import numpy as np

from typing import Sequence

from pipeline.data.shortcuts import Shortcut, shortcut_alpha, stamp
from pipeline.data.sources import gray_to_rgb


def plant_shortcuts(
    gray: np.ndarray, labels: np.ndarray, shortcuts: Sequence[Shortcut], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Stamp ``fraction`` of each shortcut class's images; keep which were stamped and the pixel mask."""
    images = gray_to_rgb(gray)
    n = len(images)
    stamped = np.zeros((n, len(shortcuts)), dtype=bool)
    masks = np.zeros((n,) + gray.shape[1:], dtype=bool)
    for k, shortcut in enumerate(shortcuts):
        members = np.flatnonzero(labels == shortcut.label)
        count = int(round(shortcut.fraction * len(members)))
        chosen = np.sort(rng.choice(members, size=count, replace=False)) if count else members[:0]
        alpha = shortcut_alpha(shortcut, gray.shape[1:])
        images[chosen] = stamp(images[chosen], alpha, shortcut.color)
        stamped[chosen, k] = True
        masks[chosen] |= alpha > 0
    return {"images": images, "labels": labels, "digits": labels.copy(), "stamped": stamped, "masks": masks}


def shortcut_test_sets(gray: np.ndarray, shortcuts: Sequence[Shortcut]) -> dict[str, np.ndarray]:
    """Every test image stamped with each planted shortcut, for measuring reliance."""
    clean = gray_to_rgb(gray)
    alphas = np.stack([shortcut_alpha(s, gray.shape[1:]) for s in shortcuts])
    stamped = np.stack([stamp(clean, alpha, s.color) for alpha, s in zip(alphas, shortcuts)])
    return {
        "clean_images": clean,
        "shortcut_images": stamped,
        "shortcut_alpha": alphas,
        "shortcut_labels": np.array([s.label for s in shortcuts], dtype=np.int64),
    }
