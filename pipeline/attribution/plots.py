"""Pictures of the ``attribute`` stage: method grids, IG baselines, Grad-CAM views, curves and bars."""
from __future__ import annotations

import numpy as np

from pipeline.plotting import as_hwc, placeholder_figure, plt


def heat(attribution: np.ndarray) -> np.ndarray:
    """|channel sum| of one C x H x W attribution, scaled to [0, 1] (a grayscale heat map)."""
    value = np.abs(attribution.astype(np.float32).sum(axis=0))
    return value / max(float(value.max()), 1e-12)


def color_view(attribution: np.ndarray) -> np.ndarray:
    """|attribution| per RGB channel, scaled by the image's largest value: H x W x 3, colour preserved."""
    value = np.abs(attribution.astype(np.float32))
    return np.transpose(value / max(float(value.max()), 1e-12), (1, 2, 0))


def _grid(n_rows: int, n_cols: int, cell: float = 1.25):
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols, cell * n_rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def method_grids(images: np.ndarray, maps: dict[str, np.ndarray], titles: list[str], dataset: str):
    """Two figures (rows: images, columns: input + methods): grayscale heat maps and colour-preserving views."""
    figures = []
    for kind, render in (("heat map |sum over channels|", heat), ("|attribution| per RGB channel", color_view)):
        fig, axes = _grid(len(images), len(maps) + 1)
        for r, image in enumerate(images):
            axes[r, 0].imshow(as_hwc(image), interpolation="nearest")
            axes[r, 0].set_ylabel(titles[r], fontsize=6)
            for c, (name, values) in enumerate(maps.items(), start=1):
                shown = render(values[r])
                axes[r, c].imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
                if r == 0:
                    axes[r, c].set_title(name, fontsize=7)
        axes[0, 0].set_title("input", fontsize=7)
        fig.suptitle(f"{dataset}: attributions for the predicted class — {kind}", fontsize=9)
        fig.tight_layout()
        figures.append(fig)
    return figures


def ig_baselines_figure(images: np.ndarray, maps: dict[str, np.ndarray], cfg, noise, dataset: str):
    """Each IG baseline beside the attribution it gives (``noise``: the ``ig_noise`` baseline image)."""
    import torch

    from pipeline.attribution.methods import blurred

    if not maps:
        return placeholder_figure("no integrated-gradients method in attribution.methods")
    x = torch.from_numpy(images).float() / 255.0
    baselines = {"ig_zero": torch.zeros_like(x),
                 "ig_noise": noise.cpu().float().expand_as(x),
                 "ig_blur": blurred(x, cfg.blur_kernel_size, cfg.blur_sigma)}
    fig, axes = _grid(len(images), 1 + 2 * len(maps))
    for r, image in enumerate(images):
        axes[r, 0].imshow(as_hwc(image), interpolation="nearest")
        for i, (name, values) in enumerate(maps.items()):
            axes[r, 1 + 2 * i].imshow(as_hwc(baselines[name][r].numpy()), interpolation="nearest")
            axes[r, 2 + 2 * i].imshow(heat(values[r]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if r == 0:
                axes[r, 1 + 2 * i].set_title(f"{name}\nbaseline", fontsize=7)
                axes[r, 2 + 2 * i].set_title(f"{name}\nattribution", fontsize=7)
    axes[0, 0].set_title("input", fontsize=7)
    fig.suptitle(f"{dataset}: integrated gradients with three baselines", fontsize=9)
    fig.tight_layout()
    return fig


def segmentation_figure(thresholds, iou, best: int, images, cams, truth, dataset: str):
    """IoU of the thresholded Grad-CAM map with the digit, and example segments at the best threshold."""
    n = len(images)
    fig = plt.figure(figsize=(3.2 + 1.3 * max(n, 1), 4.2))
    grid = fig.add_gridspec(3, 1 + max(n, 1), width_ratios=[2.6] + [1] * max(n, 1))
    ax = fig.add_subplot(grid[:, 0])
    ax.plot(thresholds, iou, marker="o", markersize=3)
    ax.axvline(thresholds[best], color="gray", linestyle=":")
    ax.set_xlabel("threshold (fraction of the map's maximum)")
    ax.set_ylabel("mean IoU with the digit's pixels")
    ax.set_title(f"best IoU {iou[best]:.3f} at {thresholds[best]:.2f}", fontsize=8)
    for i in range(n):
        cam = cams[i] / max(float(cams[i].max()), 1e-12)
        for row, (shown, label) in enumerate(((as_hwc(images[i]), "input"), (cam, "Grad-CAM"),
                                              (np.stack([cam >= thresholds[best], truth[i], np.zeros_like(truth[i])], -1).astype(float),
                                               "segment (red)\ndigit (green)"))):
            cell = fig.add_subplot(grid[row, 1 + i])
            cell.imshow(shown, cmap="gray" if np.ndim(shown) == 2 else None, interpolation="nearest")
            cell.set_xticks([])
            cell.set_yticks([])
            if i == 0:
                cell.set_ylabel(label, fontsize=6)
    fig.suptitle(f"{dataset}: Grad-CAM as a segmentation of the digit", fontsize=9)
    fig.tight_layout()
    return fig


def counterfactual_figure(images, normal, against, targets, dataset: str):
    fig, axes = _grid(len(images), 3)
    for r, image in enumerate(images):
        axes[r, 0].imshow(as_hwc(image), interpolation="nearest")
        axes[r, 0].set_ylabel(f"class {targets[r]}", fontsize=6)
        for c, values in ((1, normal[r]), (2, against[r])):
            axes[r, c].imshow(as_hwc(image).mean(axis=2), cmap="gray", interpolation="nearest")
            axes[r, c].imshow(values / max(float(values.max()), 1e-12), cmap="jet", alpha=0.5, vmin=0, vmax=1,
                              interpolation="bilinear")
    for c, title in enumerate(("input", "Grad-CAM\n(for the class)", "counterfactual\n(against it)")):
        axes[0, c].set_title(title, fontsize=7)
    fig.suptitle(f"{dataset}: Grad-CAM and counterfactual Grad-CAM", fontsize=9)
    fig.tight_layout()
    return fig


def contrastive_figure(images, for_predicted, for_true, predicted_names, true_names, method: str, dataset: str):
    fig, axes = _grid(len(images), 4)
    for r, image in enumerate(images):
        axes[r, 0].imshow(as_hwc(image), interpolation="nearest")
        axes[r, 0].set_ylabel(f"true {true_names[r]}\npred {predicted_names[r]}", fontsize=6)
        difference = for_predicted[r] - for_true[r]
        for c, values in ((1, for_predicted[r]), (2, for_true[r]), (3, difference)):
            limit = max(float(np.abs(values).max()), 1e-12)
            axes[r, c].imshow(values, cmap="bwr", vmin=-limit, vmax=limit, interpolation="nearest")
    for c, title in enumerate(("input", "for predicted", "for true", "predicted − true")):
        axes[0, c].set_title(title, fontsize=7)
    fig.suptitle(f"{dataset}: contrastive {method} on mistakes (red: for, blue: against)", fontsize=9)
    fig.tight_layout()
    return fig


def deletion_figure(fractions, curves: dict[str, np.ndarray], details: dict, dataset: str):
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        auc = details["methods"].get(name, {}).get("deletion_auc", details.get("random_order_deletion_auc"))
        ax.plot(fractions, curve, label=f"{name} ({auc:.3f})", linestyle=":" if name == "random order" else "-")
    ax.set_xlabel("fraction of pixels removed (most relevant first)")
    ax.set_ylabel("probability of the explained class")
    ax.set_title(f"{dataset}: deletion curves (area in brackets; lower = more faithful)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def localization_figure(details: dict, methods: list[str], dataset: str):
    """Relevance mass and pointing game per method, against the ground-truth region's area (a random map's score)."""
    shortcut = "localization" in details
    panels = [("relevance_mass", "pointing_game")]
    if shortcut:
        panels.append(("relevance_mass_flipped", "pointing_game_flipped"))
    else:
        panels = [("relevance_mass_digit", "pointing_game_digit")]
    area = details["localization"]["mask_area_fraction"] if shortcut else details["digit_area_fraction"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 0.35 * len(methods) + 1.5), squeeze=False)
    y = np.arange(len(methods))
    for ax, (mass, point) in zip(axes[0], panels):
        values = [[details["methods"][m].get(key) or 0.0 for m in methods] for key in (mass, point)]
        ax.barh(y - 0.2, values[0], height=0.4, label="relevance mass")
        ax.barh(y + 0.2, values[1], height=0.4, label="pointing game")
        ax.axvline(area, color="gray", linestyle=":", label=f"region area ({area:.3f})")
        ax.set_yticks(y, methods, fontsize=7)
        ax.set_xlim(0, 1)
        region = "shortcut" if shortcut else "digit"
        ax.set_title(f"{region}: " + ("other classes stamped, assigned to it" if "flipped" in mass else
                                      "images of its class" if shortcut else "all sampled images"), fontsize=8)
        ax.invert_yaxis()
        ax.legend(fontsize=6, loc="lower right")
    fig.suptitle(f"{dataset}: how much attribution falls in the ground-truth region", fontsize=9)
    fig.tight_layout()
    return fig
