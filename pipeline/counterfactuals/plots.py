"""Pictures and plot data of GAN counterfactuals: galleries, interpolation strips, confusion, style space.

Figures come back as matplotlib figures and plot data as data frames; the caller saves them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.counterfactuals.translation import translate
from pipeline.data.tensors import to_float
from pipeline.models.inference import predict_probabilities
from pipeline.plotting import confusion_heatmap, image_grid, plt


@torch.no_grad()
def gallery(translator: nn.Module, classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor,
            class_styles: torch.Tensor, class_names: list[str], title: str):
    """Rows: test images; columns: the original, then its counterfactual into each class (reference-guided),
    titled with the classifier's probability of that class."""
    n, n_classes = len(images), len(class_names)
    rows = torch.arange(n, device=images.device).repeat_interleave(n_classes)
    targets = torch.arange(n_classes, device=images.device).repeat(n)
    fakes = translate(translator, images[rows], class_styles[targets], 4096)
    p_fake = predict_probabilities(classifier, fakes).gather(1, targets[:, None]).squeeze(1).view(n, n_classes)
    p_real = predict_probabilities(classifier, images).gather(1, labels[:, None]).squeeze(1)
    grid = torch.cat([images[:, None], fakes.view(n, n_classes, *images.shape[1:])], 1).flatten(0, 1).cpu().numpy()
    titles = []
    for r, label in enumerate(labels.tolist()):
        titles.append(f"{class_names[label]}: p={p_real[r]:.2f}")
        titles += [f"→{class_names[c]}: p={p_fake[r, c]:.2f}" for c in range(n_classes)]
    return image_grid(grid, titles, ncols=n_classes + 1, suptitle=title)


@torch.no_grad()
def interpolation(classifier: nn.Module, real: torch.Tensor, counterfactual: torch.Tensor, source: torch.Tensor,
                  target: torch.Tensor, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-space blends (1 - a) x + a x_cf for a in linspace(0, 1, steps), with the classifier's
    source and target probabilities at each step.

    Returns (blends n x steps x C x H x W, alphas [steps], p_source n x steps, p_target n x steps).
    """
    n = len(real)
    alphas = torch.linspace(0, 1, steps, device=real.device)
    x, x_cf = to_float(real)[:, None], to_float(counterfactual)[:, None]
    blends = (1 - alphas.view(1, -1, 1, 1, 1)) * x + alphas.view(1, -1, 1, 1, 1) * x_cf  # n x steps x C x H x W
    probabilities = predict_probabilities(classifier, blends.flatten(0, 1)).view(n, steps, -1)
    p_source = probabilities.gather(2, source.view(n, 1, 1).expand(n, steps, 1)).squeeze(2).cpu().numpy()
    p_target = probabilities.gather(2, target.view(n, 1, 1).expand(n, steps, 1)).squeeze(2).cpu().numpy()
    return blends.cpu().numpy(), alphas.cpu().numpy(), p_source, p_target


def interpolation_figure(blends: np.ndarray, p_source: np.ndarray, p_target: np.ndarray, title: str):
    """One strip per image: the blends of :func:`interpolation`, titled p(source)|p(target)."""
    n, steps = blends.shape[:2]
    titles = [f"{ps:.2f}|{pt:.2f}" for ps, pt in zip(p_source.flat, p_target.flat)]
    return image_grid(blends.reshape(n * steps, *blends.shape[2:]), titles, ncols=steps, cell=1.0,
                      suptitle=title + "  (titles: p(source)|p(target))")


def confusion_figure(confusion: np.ndarray, class_names: list[str], title: str):
    """Target-vs-predicted heat map of counterfactuals (rows: the target class)."""
    fig = confusion_heatmap(confusion, class_names, title)
    fig.axes[0].set_ylabel("target")
    return fig


def pca_2d(values: torch.Tensor) -> np.ndarray:
    """The first two principal components of the rows of ``values`` (N x 2 numpy)."""
    centred = values.float() - values.float().mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ v[:2].T).cpu().numpy()


def style_space_figure(points: np.ndarray, labels: np.ndarray, class_names: list[str], colors: np.ndarray | None, title: str):
    panels = 2 if colors is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.6), squeeze=False)
    ax = axes[0, 0]
    cmap = plt.get_cmap("tab10")
    for c, name in enumerate(class_names):
        chosen = labels == c
        ax.scatter(points[chosen, 0], points[chosen, 1], s=5, color=cmap(c % 10), label=name, alpha=0.7)
    ax.legend(fontsize=7, markerscale=2)
    ax.set_title("colored by class", fontsize=9)
    if colors is not None:
        axes[0, 1].scatter(points[:, 0], points[:, 1], s=5, c=np.clip(colors, 0, 1))
        axes[0, 1].set_title("colored by each image's RGB color", fontsize=9)
    for a in axes.flat:
        a.set_xlabel("PC 1")
        a.set_ylabel("PC 2")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def style_space_frame(points: np.ndarray, labels: np.ndarray, class_names: list[str],
                      colors: np.ndarray | None) -> pd.DataFrame:
    """The style-space plot data: two principal components and the class per image (and its colour, if known)."""
    frame = pd.DataFrame({"pc1": points[:, 0], "pc2": points[:, 1], "class": [class_names[c] for c in labels]})
    if colors is not None:
        frame["color"] = ["#%02x%02x%02x" % tuple(int(round(255 * v)) for v in rgb) for rgb in colors]
    return frame
