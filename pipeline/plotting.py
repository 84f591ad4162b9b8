"""Figures shared by stages: image grids, heat maps, curves. Always the non-interactive backend."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def as_hwc(image: np.ndarray) -> np.ndarray:
    """CHW (uint8 or float in [0, 1]) -> HWC float in [0, 1] for imshow."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    return np.clip(np.transpose(image, (1, 2, 0)), 0.0, 1.0)


def placeholder_figure(text: str):
    """A small figure that only says why there is nothing to draw."""
    fig, ax = plt.subplots(figsize=(4, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=9)
    return fig


def image_grid(images: np.ndarray, titles: list[str] | None = None, ncols: int = 8, cell: float = 1.3, suptitle: str = ""):
    """A grid of CHW images with optional titles; returns the figure."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * nrows + 0.3), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(as_hwc(images[i]), interpolation="nearest")
            if titles:
                ax.set_title(titles[i], fontsize=7)
    fig.tight_layout()
    if suptitle:  # above the figure (saved with bbox_inches="tight"), so it never covers the first row's titles
        fig.suptitle(suptitle, fontsize=9, y=1.0, va="bottom")
    return fig


def confusion_heatmap(matrix: np.ndarray, class_names: list[str], title: str, normalise: bool = True):
    """Seaborn heat map of a confusion matrix (rows: actual, columns: predicted) with counts."""
    import seaborn as sns

    counts = np.asarray(matrix)
    shown = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalise else counts
    size = 1.0 + 0.55 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    sns.heatmap(shown, annot=counts, fmt="d", cmap="Blues", vmin=0, vmax=1 if normalise else None,
                xticklabels=class_names, yticklabels=class_names, ax=ax, annot_kws={"fontsize": 7}, cbar=True)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
