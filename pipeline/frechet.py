"""Fréchet distance between Gaussians fitted to feature sets (FID-style, on the classifier's own features)."""
from __future__ import annotations

import warnings

import numpy as np
import torch


def gaussian(features: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64 numpy) of ``features`` [N x D], optionally weighted per row."""
    x = features.double()
    w = torch.full((len(x),), 1.0 / len(x), dtype=x.dtype, device=x.device) if weights is None else weights.double()
    w = w / w.sum()
    mean = (w[:, None] * x).sum(0)
    centred = x - mean
    cov = (w[:, None] * centred).T @ centred
    return mean.cpu().numpy(), cov.cpu().numpy()


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)); exact 0 for identical Gaussians."""
    from scipy import linalg

    mean_a, mean_b = np.atleast_1d(mean_a).astype(np.float64), np.atleast_1d(mean_b).astype(np.float64)
    cov_a, cov_b = np.atleast_2d(cov_a).astype(np.float64), np.atleast_2d(cov_b).astype(np.float64)
    with warnings.catch_warnings():  # rank-deficient covariances (few samples) are expected; handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(covmean).all():  # singular product: nudge both diagonals, as FID implementations do
            offset = np.eye(len(cov_a)) * 1e-6
            covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = np.real(covmean)
    diff = mean_a - mean_b
    return float(max(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean), 0.0))


def feature_frechet_distance(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted (unbiased covariance) to two feature sets (rows = samples)."""
    a = features_a.double().cpu().numpy() if isinstance(features_a, torch.Tensor) else np.asarray(features_a, np.float64)
    b = features_b.double().cpu().numpy() if isinstance(features_b, torch.Tensor) else np.asarray(features_b, np.float64)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def class_matched_frechet(features: torch.Tensor, classes: torch.Tensor, reference: torch.Tensor,
                          reference_classes: torch.Tensor) -> float:
    """Fréchet distance of ``features`` to ``reference`` re-weighted to the same class mix as ``classes``.

    Counterfactuals aimed at class c are compared with real images of class c, in the proportion in
    which they were asked for: a realism score that does not reward a skewed mix of targets.
    """
    if len(features) < 2:
        return float("nan")
    n_classes = int(max(classes.max().item(), reference_classes.max().item())) + 1
    wanted = torch.bincount(classes, minlength=n_classes).double()
    present = torch.bincount(reference_classes, minlength=n_classes).double()
    share = torch.where(present > 0, wanted / present.clamp_min(1), torch.zeros_like(wanted))
    weights = share[reference_classes]
    if weights.sum() <= 0:
        return float("nan")
    return frechet_distance(*gaussian(features), *gaussian(reference, weights))
