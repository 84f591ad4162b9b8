"""Pictures and plot data of optimisation counterfactuals: differences beside the original, success curve.

Figures come back as matplotlib figures and plot data as data frames; the caller saves them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.plotting import as_hwc, placeholder_figure, plt


def difference_figure(originals: np.ndarray, changed: list[tuple[str, np.ndarray]], titles: list[str], suptitle: str):
    """Rows of original | (changed | signed difference) per method; differences summed over channels."""
    n = len(originals)
    ncols = 1 + 2 * len(changed)
    fig, axes = plt.subplots(n, ncols, figsize=(1.5 * ncols, 1.5 * n + 0.4), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(as_hwc(originals[i]), interpolation="nearest")
        axes[i, 0].set_title(titles[i], fontsize=6)
        for m, (name, images) in enumerate(changed):
            diff = (images[i].astype(np.float32) - originals[i].astype(np.float32)).sum(0) / 255.0
            limit = max(np.abs(diff).max(), 1e-3)
            axes[i, 1 + 2 * m].imshow(as_hwc(images[i]), interpolation="nearest")
            axes[i, 2 + 2 * m].imshow(diff, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
            if i == 0:
                axes[i, 1 + 2 * m].set_title(f"{name}", fontsize=7)
                axes[i, 2 + 2 * m].set_title(f"{name} - original", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(suptitle, fontsize=8)
    fig.tight_layout()
    return fig


def examples_figure(real: np.ndarray, optimised: np.ndarray, titles: list[str], dataset: str):
    """Original | optimised | difference per image, or a placeholder when no image was selected."""
    if not len(real):
        return placeholder_figure("no test images were selected")
    return difference_figure(real, [("optimised", optimised)], titles,
                             f"{dataset}: original | optimised | difference (red +, blue -); ✗ = not reached")


def optimisation_vs_gan_figure(real: np.ndarray, optimised: np.ndarray, gan: np.ndarray, titles: list[str],
                               dataset: str):
    """The same images and wanted classes: original | optimised | difference | GAN's | difference, or a
    placeholder when the GAN has none of the pairs."""
    if not len(real):
        return placeholder_figure("the GAN has no counterfactual for these (image, wanted class) pairs")
    return difference_figure(real, [("optimised", optimised), ("GAN", gan)], titles,
                             f"{dataset}: the same images and wanted classes, optimisation vs. GAN")


def success_curve(steps: np.ndarray, reached: np.ndarray, max_steps: int) -> pd.DataFrame:
    """Share of images that have reached the margin after each number of gradient steps (0..max_steps).

    An image that never reached it counts at no step, so the curve ends at the share that did.
    """
    curve_steps = np.arange(max_steps + 1)
    if not len(steps):
        return pd.DataFrame({"step": curve_steps, "share_reached": np.zeros(len(curve_steps))})
    done_by = reached[None, :] & (steps[None, :] <= curve_steps[:, None])
    return pd.DataFrame({"step": curve_steps, "share_reached": done_by.mean(1)})
