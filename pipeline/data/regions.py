"""Geometry of image regions (bool H x W masks): convex hulls and bounding boxes."""
from __future__ import annotations

import numpy as np


def convex_hull(mask: np.ndarray) -> np.ndarray:
    """bool [H, W]: the pixels whose centres lie in the convex hull of ``mask``'s pixels, each pixel taken as its
    unit square (so a single pixel or a one-pixel line is its own hull), and the pixels of ``mask`` themselves."""
    from scipy.spatial import Delaunay

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    corners = np.argwhere(mask)[:, None, :] + np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])[None]
    centres = np.argwhere(np.ones(mask.shape, dtype=bool))
    inside = Delaunay(corners.reshape(-1, 2)).find_simplex(centres) >= 0
    return inside.reshape(mask.shape) | mask


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right), inclusive, of a bool [H, W] mask's pixels; None when it has none."""
    rows, cols = np.nonzero(np.asarray(mask))
    if len(rows) == 0:
        return None
    return int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())
