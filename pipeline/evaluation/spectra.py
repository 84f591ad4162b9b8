"""Do a GAN's counterfactuals differ from real images in their spectrum? Log spectra, their radial
averages, a cross-validated detector, its real-vs-real control, and the pictures of both.

What is compared. The generator returns ``sigmoid(logit(clamp(x, PIXEL_EPS, 1 - PIXEL_EPS)) + change)``
and ``counterfactuals@D`` stores it as uint8, so a pixel the generator leaves alone comes back clamped:
black becomes 3/255, never 0. Real images hold exact zeros (the background; whole channels of some
colored-MNIST classes); lifting them to the floor moves the zero-frequency term and, in a partly black
image, the whole log-spectrum, so a detector fed raw real images finds the floor with no GAN involved
(raw real vs. other real images through the floor: 0.88 accuracy on colored MNIST, 0.66 on Clever
Hans). Both sides therefore pass through :func:`to_generator_range`, what the generator does to a
pixel it does not change; what is left to tell them apart is what the generator changed.

Features. Per image and colour channel, the log-magnitude spectrum ``log(|F| + epsilon)`` averaged
over rings of equal distance from zero frequency (azimuthal average): a few dozen numbers per image.
Periodic upsampling patterns put energy on a few rings, so this stays sensitive to them (more than a
2-D average-pooled spectrum, measured on planted patterns) while the detector fits in seconds on two
CPU cores at full data, where the full 3 x 28 x 28 spectrum needs minutes.

Detector. scikit-learn's ``StandardScaler`` + ``LogisticRegression``, scored by accuracy over
``StratifiedGroupKFold`` folds whose groups are test-image indices: a real image and the
counterfactuals made from it never fall on both sides of a split.

Control. The same detector on two disjoint halves of the real test images, both through the range
map. Nothing tells them apart, so ``control_accuracy`` must sit at chance (0.5); the gap between
``spectral_detector_accuracy`` and it is what the generator adds. The floor effect (raw real images
vs. other real images through the map) goes to ``details.json`` to show what a comparison without
the map measures.

Verdict. ``frequency_artifacts_detected`` is true when the detector's accuracy is above
``artifact_threshold`` and above ``control_accuracy + control_margin``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import numpy as np
import pandas as pd
import torch
from annotated_types import Ge, Gt

from pipeline.data.tensors import as_float, batch_slices, to_uint8
from pipeline.models.gan import PIXEL_EPS

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

CHANNELS = ("red", "green", "blue")
FEATURE_BATCH = 4096


@dataclass(frozen=True)
class DetectorSettings:
    """How spectra are taken and the detector is fitted and scored."""

    epsilon: Annotated[float, Gt(0)] = 1e-3  # log(|F| + epsilon)
    C: Annotated[float, Gt(0)] = 0.1  # inverse L2 strength of the logistic regression
    folds: Annotated[int, Ge(2)] = 5  # cross-validation folds, grouped by test-image index
    seed: int = 0           # shuffles the groups into folds


def to_generator_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW images as the generator returns and ``counterfactuals@D`` stores a pixel it leaves unchanged.

    The generator clamps its input to ``[PIXEL_EPS, 1 - PIXEL_EPS]`` before adding its change in logit
    space, and its output is rounded to uint8: black comes back as 3/255, white as 252/255.
    """
    x = as_float(images)
    return to_uint8(x.clamp(PIXEL_EPS, 1 - PIXEL_EPS))


def log_spectra(images: torch.Tensor, epsilon: float) -> torch.Tensor:
    """uint8 or float NCHW -> float32 N x C x H x W log-magnitude spectra, low frequencies centred."""
    x = as_float(images)
    magnitude = torch.fft.fft2(x, dim=(-2, -1)).abs()
    return torch.fft.fftshift(torch.log(magnitude + epsilon), dim=(-2, -1))


def rings(height: int, width: int) -> tuple[torch.Tensor, np.ndarray]:
    """Ring number of every (shifted) frequency, flattened, and the integer radius of each ring.

    The radius is the rounded distance from the centre; radii that no frequency rounds to are skipped.
    """
    yy, xx = torch.meshgrid(torch.arange(height) - height // 2, torch.arange(width) - width // 2, indexing="ij")
    radius = torch.sqrt(yy.float() ** 2 + xx.float() ** 2).round().long().flatten()
    radii, ring = torch.unique(radius, return_inverse=True)
    return ring, radii.numpy()


def radial_average(spectra: torch.Tensor) -> torch.Tensor:
    """... x H x W centred spectra -> ... x R: the mean over each ring of equal radius."""
    ring, radii = rings(*spectra.shape[-2:])
    ring = ring.to(spectra.device)
    flat = spectra.float().flatten(-2)
    sums = torch.zeros(*flat.shape[:-1], len(radii), device=spectra.device).index_add_(-1, ring, flat)
    return sums / torch.bincount(ring).float()


def spectral_features(images: torch.Tensor, epsilon: float) -> np.ndarray:
    """NCHW images -> N x (C * R) float64: each channel's radially averaged log spectrum, in batches."""
    parts = [radial_average(log_spectra(images[part], epsilon)).flatten(1).double().cpu()
             for part in batch_slices(len(images), FEATURE_BATCH)]
    return torch.cat(parts).numpy()


def detector(C: float) -> Pipeline:
    """Standardise each feature, then an L2-regularised logistic regression."""
    from sklearn.linear_model import LogisticRegression   # scikit-learn is imported where used: every stage
    from sklearn.pipeline import Pipeline                 # imports this module's options, few fit a detector
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()), ("logistic", LogisticRegression(C=C, max_iter=1000))])


def grouped_folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, test rows) per fold; every group lies wholly on one side, classes are balanced per fold."""
    n_groups = len(np.unique(groups))
    if n_groups < folds:
        raise ValueError(f"{n_groups} image indices cannot fill {folds} folds; use fewer folds or more images")
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, groups))


def separability(first: torch.Tensor, second: torch.Tensor, first_groups: np.ndarray, second_groups: np.ndarray,
                 settings: DetectorSettings) -> dict:
    """How well the detector tells ``first`` (label 0) from ``second`` (label 1) by spectrum, cross-validated.

    ``*_groups`` are the test-image indices the rows come from. Returns the mean held-out accuracy, the
    accuracy per fold, the row counts and the detector's weights on the standardised features (mean
    over folds; positive: more of that feature in ``second``).
    """
    features = np.concatenate([spectral_features(first, settings.epsilon), spectral_features(second, settings.epsilon)])
    labels = np.r_[np.zeros(len(first), dtype=np.int64), np.ones(len(second), dtype=np.int64)]
    groups = np.r_[first_groups, second_groups]
    folds = grouped_folds(labels, groups, settings.folds, settings.seed)
    from sklearn.model_selection import cross_validate

    scores = cross_validate(detector(settings.C), features, labels, cv=folds, scoring="accuracy", return_estimator=True)
    weights = np.mean([fitted[-1].coef_[0] for fitted in scores["estimator"]], axis=0)
    return {"accuracy": float(scores["test_score"].mean()), "fold_accuracies": scores["test_score"].tolist(),
            "n_first": len(first), "n_second": len(second), "weights": weights}


def balanced_rows(n_real: int, n_generated: int, max_images: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sorted rows of real and of generated images, as many of each: ``min(n_real, n_generated, max_images)``."""
    n = min(n_real, n_generated, max_images)
    return np.sort(rng.choice(n_real, n, replace=False)), np.sort(rng.choice(n_generated, n, replace=False))


def disjoint_halves(n_images: int, max_images: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint sorted sets of image indices, as many in each: ``min(n_images // 2, max_images)``."""
    order = rng.permutation(n_images)
    n = min(n_images // 2, max_images)
    return np.sort(order[:n]), np.sort(order[n:2 * n])


def artifacts_detected(accuracy: float, control_accuracy: float, threshold: float, margin: float) -> bool:
    """The detector beats both the fixed threshold and the real-vs-real control by ``margin``."""
    return bool(accuracy > threshold and accuracy > control_accuracy + margin)


def compare_with_real(real: torch.Tensor, generated: torch.Tensor, generated_index: np.ndarray, max_images: int,
                      settings: DetectorSettings, rng: np.random.Generator) -> dict:
    """Three :func:`separability` results: ``detector`` (real vs. generated, both through the range map),
    ``control`` (two disjoint halves of ``real``, both through the map) and ``floor_effect`` (the same
    halves, only the second through the map); and the images the detector compared.

    ``real``: uint8 test images; ``generated``: uint8 images made from ``real[generated_index]``.
    """
    real_rows, generated_rows = balanced_rows(len(real), len(generated), max_images, rng)
    real_compared = to_generator_range(real[torch.from_numpy(real_rows).to(real.device)])
    generated_compared = to_generator_range(generated[torch.from_numpy(generated_rows).to(generated.device)])
    found = separability(real_compared, generated_compared, real_rows, generated_index[generated_rows], settings)
    first, second = disjoint_halves(len(real), max_images, rng)
    first_images = real[torch.from_numpy(first).to(real.device)]
    second_mapped = to_generator_range(real[torch.from_numpy(second).to(real.device)])
    control = separability(to_generator_range(first_images), second_mapped, first, second, settings)
    floor = separability(first_images, second_mapped, first, second, settings)
    return {"detector": found, "control": control, "floor_effect": floor,
            "real": real_compared, "generated": generated_compared}


def radial_table(mean_real: torch.Tensor, mean_generated: torch.Tensor) -> pd.DataFrame:
    """One row per radius: the mean (over channels) ring average of each mean log spectrum."""
    _, radii = rings(*mean_real.shape[-2:])
    return pd.DataFrame({"radius": radii, "real": radial_average(mean_real).mean(0).cpu().numpy(),
                         "generated": radial_average(mean_generated).mean(0).cpu().numpy()})


def spectra_figure(real: np.ndarray, generated: np.ndarray, dataset: str):
    """Rows: mean log spectrum of real, of generated, and generated - real; columns: colour channels."""
    import matplotlib.pyplot as plt

    difference = generated - real
    fig, axes = plt.subplots(3, 3, figsize=(7.5, 7.5))
    low, high = min(real.min(), generated.min()), max(real.max(), generated.max())
    limit = max(np.abs(difference).max(), 1e-6)
    for c, name in enumerate(CHANNELS):
        for r, (title, image, kwargs) in enumerate((
                ("real", real[c], {"cmap": "magma", "vmin": low, "vmax": high}),
                ("generated", generated[c], {"cmap": "magma", "vmin": low, "vmax": high}),
                ("generated - real", difference[c], {"cmap": "RdBu_r", "vmin": -limit, "vmax": limit}))):
            shown = axes[r, c].imshow(image, interpolation="nearest", **kwargs)
            axes[r, c].set_title(f"{title}, {name}", fontsize=8)
            axes[r, c].axis("off")
            if c == 2:
                fig.colorbar(shown, ax=axes[r, c], fraction=0.046)
    fig.suptitle(f"{dataset}: mean log|FFT| on the generator's pixel range (centre = low frequencies)", fontsize=9)
    fig.tight_layout()
    return fig


def weights_figure(weights: np.ndarray, radii: np.ndarray, accuracy: float, control: float, dataset: str):
    """Detector weight per ring radius, one line per colour channel (positive: more in generated)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    for c, name in enumerate(CHANNELS[:len(weights)]):
        ax.plot(radii, weights[c], color=name, marker=".", label=name)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("radius (frequency ring)")
    ax.set_ylabel("weight (standardised)")
    ax.legend(fontsize=7)
    ax.set_title(f"{dataset}: spectral detector, accuracy {accuracy:.3f} (real-vs-real control {control:.3f})",
                 fontsize=8)
    fig.tight_layout()
    return fig


def details_of(result: dict, difference: torch.Tensor, artifact_threshold: float, control_margin: float,
               generated_key: str) -> dict:
    """Everything behind the three headline figures, for ``details.json``; ``difference``: mean spectra, generated - real."""
    def summary(part: dict, first: str, second: str) -> dict:
        return {"accuracy": part["accuracy"], "fold_accuracies": part["fold_accuracies"],
                first: part["n_first"], second: part["n_second"]}

    return {
        "compared": f"real test images vs. {generated_key}, both clamped to the generator's pixel range "
                    f"[{PIXEL_EPS}, {1 - PIXEL_EPS}] and stored as uint8",
        "features": "log(|FFT| + epsilon) averaged over rings of equal radius, per colour channel",
        "n_features": int(len(result["detector"]["weights"])),
        "detector": summary(result["detector"], "n_real", "n_generated"),
        "control": summary(result["control"], "n_first_half", "n_second_half"),
        "floor_effect": {**summary(result["floor_effect"], "n_raw", "n_through_range_map"),
                         "what": "raw real images vs. other real images through the range map: what a comparison "
                                 "without the map measures before any GAN is involved"},
        "artifact_threshold": artifact_threshold,
        "control_margin": control_margin,
        "mean_abs_spectrum_difference": difference.abs().mean().item(),
        "spectrum_difference_per_channel": {name: difference[c].abs().mean().item() for c, name in enumerate(CHANNELS)},
    }
