"""Colored MNIST: the class is the colormap; the exact counterfactual is the same digit recolored."""
from __future__ import annotations

import numpy as np



def colormap_colors(colormaps: list[str], classes: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """N x 3 float32 RGB: the color of colormap ``colormaps[classes[i]]`` at position ``positions[i]``."""
    import matplotlib

    colors = np.empty((len(classes), 3), dtype=np.float32)
    for k, name in enumerate(colormaps):
        chosen = classes == k
        colors[chosen] = matplotlib.colormaps[name](positions[chosen])[:, :3]
    return colors


def paint(gray: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """N x H x W uint8 intensities times one N x 3 color each -> N x 3 x H x W uint8 images."""
    intensity = gray.astype(np.float32)[:, None]  # N x 1 x H x W, 0..255
    return np.clip(np.rint(intensity * colors[:, :, None, None]), 0, 255).astype(np.uint8)


def colorize(gray: np.ndarray, digits: np.ndarray, colormaps: list[str], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Color each digit by ``cmap(s)`` of a random colormap (its class) at a random ``s`` in [0, 1).

    The gray intensities are kept (``gray``), so the exact counterfactual of an image is known: the same
    digit painted with another class's colormap at the same position (:func:`exact_counterfactuals`)."""
    n = len(gray)
    labels = rng.integers(0, len(colormaps), size=n)
    positions = rng.random(n).astype(np.float32)
    colors = colormap_colors(colormaps, labels, positions)
    return {"images": paint(gray, colors), "labels": labels.astype(np.int64), "digits": digits, "positions": positions,
            "colors": colors, "gray": gray}


def exact_counterfactuals(gray: np.ndarray, positions: np.ndarray, targets: np.ndarray, colormaps: list[str]) -> np.ndarray:
    """The exact counterfactual of colored MNIST images into ``targets``: each digit's own intensities,
    painted with the target class's colormap at the image's own colormap position (uint8 NCHW)."""
    return paint(gray, colormap_colors(colormaps, targets, positions))
