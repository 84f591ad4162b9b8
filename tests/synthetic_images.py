"""A generated image folder (``<root>/train/<class>/*.png``, ``<root>/test/<class>/*.png``): RGB pictures of
three shapes (a filled disk, a plus, a ring) in random colors, sizes and places on a noisy background, the
stand-in for a user's own images in the tests of the ``image_folder`` source."""
from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("disk", "plus", "ring")


def shape_mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.indices((size, size))
    radius = rng.uniform(0.18, 0.3) * size
    centre = rng.uniform(radius + 2, size - radius - 2, size=2)
    distance = np.hypot(rows - centre[0], cols - centre[1])
    if kind == "disk":
        return distance <= radius
    if kind == "ring":
        return (distance <= radius) & (distance >= 0.6 * radius)
    arm = max(2.0, radius / 3)
    near = (np.abs(rows - centre[0]) <= radius) & (np.abs(cols - centre[1]) <= radius)
    return near & ((np.abs(rows - centre[0]) <= arm / 2) | (np.abs(cols - centre[1]) <= arm / 2))


def picture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """H x W x 3 uint8: a shape in a random light color on dark noise."""
    image = rng.integers(0, 60, size=(size, size, 3)).astype(np.float32)
    color = rng.uniform(120, 255, size=3)
    image[shape_mask(kind, size, rng)] = color
    return image.astype(np.uint8)


def write_image_folder(root: Path, n_train: int, n_test: int, size: int = 64, seed: int = 0) -> Path:
    """``n_train`` / ``n_test`` PNGs per class and split under ``root``; returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("test", n_test)):
        for kind in CLASSES:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(picture(kind, size, rng)).save(folder / f"{i:04d}.png")
    return root
