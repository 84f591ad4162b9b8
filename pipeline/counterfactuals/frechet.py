"""Fréchet distance between Gaussians fitted to feature sets (FID-style, on the classifier's own features).

Every distance in the pipeline fits its Gaussians with :func:`gaussian`: the sample mean and the
unbiased covariance (divided by N - 1, as ``numpy.cov`` and the usual FID code do). With weights,
the weights are reliability weights and the covariance uses the matching correction
``1 - sum(w^2)`` for weights normalised to sum 1, which is N - 1 again when all weights are equal.

The distance also depends on the number of samples on each side (the covariance estimate is noisy
and the noise adds to the distance), so two distances are comparable only at equal sample sizes.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

# A covariance's eigenvalues are >= 0; one below minus this share of its largest is a numerical failure (a
# covariance that rounding made indefinite), not rounding.
NEGATIVE_TOLERANCE = 1e-3


def gaussian(features: torch.Tensor | np.ndarray, weights: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64 numpy) of ``features`` [N x D], optionally with reliability
    weights per row.

    Fewer than two rows (or weight on fewer than two) give NaN: a covariance needs two samples.
    """
    x = torch.as_tensor(features).double()
    if weights is None:
        w = torch.full((len(x),), 1.0 / max(len(x), 1), dtype=x.dtype, device=x.device)
    else:
        w = torch.as_tensor(weights, device=x.device).double()
        w = w / w.sum()
    if int((w > 0).sum()) < 2:
        nan = np.full(x.shape[1], np.nan)
        return nan, np.full((x.shape[1], x.shape[1]), np.nan)
    mean = (w[:, None] * x).sum(0)
    cov = torch.atleast_2d(torch.cov(x.T, correction=1, aweights=w))
    return mean.cpu().numpy(), cov.cpu().numpy()


def checked_eigenvalues(values: np.ndarray) -> np.ndarray:
    """A covariance's eigenvalues with those below zero (rounding) set to zero; a RuntimeWarning when one lies below
    zero beyond rounding (the covariance is numerically indefinite)."""
    largest = max(float(np.abs(values).max()) if len(values) else 0.0, np.finfo(np.float64).tiny)
    if len(values) and values.min() < -NEGATIVE_TOLERANCE * largest:
        warnings.warn(f"Fréchet distance: a covariance has an eigenvalue of {values.min():.3g} (largest {largest:.3g}): it "
                      f"is numerically indefinite; its negative eigenvalues count as zero.", RuntimeWarning, stacklevel=4)
    return values.clip(min=0.0)


def trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """tr((C_a C_b)^(1/2)) as tr((C_a^(1/2) C_b C_a^(1/2))^(1/2)): the same number (C_a C_b is similar to the
    symmetric inner matrix), from symmetric eigendecompositions, so always real and fast for the rank-deficient
    covariances of few samples too (``scipy.linalg.sqrtm`` of the unsymmetric product took seconds at 512
    dimensions and returned rounding-level imaginary parts). Eigenvalues below zero from rounding count as zero.
    """
    from scipy import linalg

    values, vectors = linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(checked_eigenvalues(values))) @ vectors.T
    checked_eigenvalues(linalg.eigvalsh(cov_b))   # an indefinite C_b is as much a failure as an indefinite C_a
    inner = root_a @ cov_b @ root_a
    return float(np.sqrt(linalg.eigvalsh((inner + inner.T) / 2.0).clip(min=0.0)).sum())


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)); exact 0 for identical Gaussians, NaN for NaN moments."""
    mean_a, mean_b = np.atleast_1d(mean_a).astype(np.float64), np.atleast_1d(mean_b).astype(np.float64)
    cov_a, cov_b = np.atleast_2d(cov_a).astype(np.float64), np.atleast_2d(cov_b).astype(np.float64)
    if not all(np.isfinite(m).all() for m in (mean_a, cov_a, mean_b, cov_b)):
        return float("nan")
    diff = mean_a - mean_b
    distance = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt_product(cov_a, cov_b)
    return float(max(distance, 0.0))


def feature_frechet_distance(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted (:func:`gaussian`) to two feature sets (rows = samples);
    NaN when either has fewer than two rows."""
    return frechet_distance(*gaussian(features_a), *gaussian(features_b))


def class_matched_frechet(features: torch.Tensor, classes: torch.Tensor, reference: torch.Tensor,
                          reference_classes: torch.Tensor) -> float:
    """Fréchet distance of ``features`` to ``reference`` re-weighted to the same class mix as ``classes``.

    Counterfactuals aimed at class c are compared with real images of class c, in the proportion in
    which they were asked for: a realism score that does not reward a skewed mix of targets. When a
    wanted class has no reference rows the mix cannot be matched: the result is NaN and a warning
    names the missing classes.
    """
    if len(features) < 2:
        return float("nan")
    n_classes = int(max(classes.max().item(), reference_classes.max().item())) + 1
    wanted = torch.bincount(classes, minlength=n_classes).double()
    present = torch.bincount(reference_classes, minlength=n_classes).double()
    missing = torch.nonzero((wanted > 0) & (present == 0)).flatten().tolist()
    if missing:
        warnings.warn(f"class-matched Fréchet distance: the reference has no rows of wanted classes {missing}; "
                      f"the class mix cannot be matched, so the distance is NaN", RuntimeWarning, stacklevel=2)
        return float("nan")
    weights = (wanted / present.clamp_min(1))[reference_classes]
    return frechet_distance(*gaussian(features), *gaussian(reference, weights))
