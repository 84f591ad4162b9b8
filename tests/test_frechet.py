import warnings

import numpy as np
import pytest
import torch

from pipeline.counterfactuals.frechet import (class_matched_frechet, feature_frechet_distance, frechet_distance,
                              gaussian)


def test_frechet_distance_of_gaussians_matches_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)  # 5 + 1 + 1 + 0
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected)
    assert frechet_distance(mu1, np.diag(var1), mu1, np.diag(var1)) == pytest.approx(0.0, abs=1e-9)
    # a rotated (non-diagonal) covariance against itself shifted: only the means count
    rotation = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
    sigma = rotation @ np.diag(var1) @ rotation.T
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(5.0)
    # from samples: close to the closed form
    rng = np.random.default_rng(0)
    a = rng.normal(mu1, np.sqrt(var1), size=(40_000, 3))
    b = rng.normal(mu2, np.sqrt(var2), size=(40_000, 3))
    assert feature_frechet_distance(a, b) == pytest.approx(expected, rel=0.03)
    assert feature_frechet_distance(torch.from_numpy(a[:20_000]), torch.from_numpy(a[20_000:])) < 0.01


def test_every_distance_uses_the_same_unbiased_covariance():
    """gaussian, feature_frechet_distance and class_matched_frechet fit the same Gaussian to the same rows."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 3, generator=gen)            # few rows: N and N - 1 differ by a fifth
    b = torch.randn(8, 3, generator=gen) * 2 + 1
    mean, cov = gaussian(a)
    assert np.allclose(mean, a.double().mean(0).numpy()) and np.allclose(cov, np.cov(a.double().numpy(), rowvar=False))
    assert np.allclose(gaussian(a, torch.full((6,), 3.0))[1], cov)          # equal weights: the same estimate
    expected = frechet_distance(*gaussian(a), *gaussian(b))
    assert feature_frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)
    # the reference holds only b's rows under class 1: re-weighting to class 1 keeps exactly b
    reference = torch.cat([torch.randn(5, 3, generator=gen) + 9, b])
    reference_classes = torch.cat([torch.zeros(5, dtype=torch.long), torch.ones(8, dtype=torch.long)])
    matched = class_matched_frechet(a, torch.ones(6, dtype=torch.long), reference, reference_classes)
    assert matched == pytest.approx(expected, rel=1e-9)


def test_fewer_than_two_rows_give_nan():
    one = torch.zeros(1, 3)
    assert np.isnan(gaussian(one)[1]).all()
    assert np.isnan(feature_frechet_distance(one, torch.randn(5, 3)))


def test_an_indefinite_covariance_warns_and_its_negative_eigenvalue_counts_as_zero():
    """A covariance that rounding made indefinite (eigenvalues 2 and -0.5): the distance is that of its clipped form."""
    from scipy import linalg

    rotation = np.array([[np.cos(0.4), -np.sin(0.4)], [np.sin(0.4), np.cos(0.4)]])
    cov_a = rotation @ np.diag([2.0, -0.5]) @ rotation.T
    cov_b = np.array([[1.0, 0.3], [0.3, 0.5]])
    with pytest.warns(RuntimeWarning, match="indefinite"):
        distance = frechet_distance(np.zeros(2), cov_a, np.array([2.0, 0.0]), cov_b)
    clipped = rotation @ np.diag([2.0, 0.0]) @ rotation.T
    expected = 4.0 + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(linalg.sqrtm(clipped @ cov_b)).real
    assert expected > 0 and distance == pytest.approx(expected)


def test_the_trace_of_the_square_root_of_a_product_is_known_for_commuting_covariances():
    """Diagonal covariances commute: tr((C_a C_b)^(1/2)) = sum sqrt(a_i b_i)."""
    a, b = np.array([4.0, 1.0, 0.0, 9.0]), np.array([1.0, 16.0, 5.0, 4.0])
    distance = frechet_distance(np.zeros(4), np.diag(a), np.ones(4), np.diag(b))
    assert distance == pytest.approx(4.0 + a.sum() + b.sum() - 2 * np.sqrt(a * b).sum())


def test_rank_deficient_covariances_do_not_warn_and_agree_with_scipy_sqrtm():
    """Fewer samples than dimensions: eigenvalues below zero are rounding only, and the result is sqrtm's."""
    from scipy import linalg

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(10, 40)), rng.normal(size=(12, 40)) + 0.5
    (mean_a, cov_a), (mean_b, cov_b) = gaussian(a), gaussian(b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distance = frechet_distance(mean_a, cov_a, mean_b, cov_b)
    diff = mean_a - mean_b
    expected = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(linalg.sqrtm(cov_a @ cov_b)).real
    assert distance == pytest.approx(expected, rel=1e-6)


def test_class_matched_frechet_reweights_the_reference():
    gen = torch.Generator().manual_seed(0)
    reference_classes = torch.arange(3000) % 3
    reference = torch.randn(3000, 2, generator=gen) + reference_classes[:, None].float() * 5
    wanted = torch.full((500,), 2)
    same = torch.randn(500, 2, generator=gen) + 10
    other = torch.randn(500, 2, generator=gen)
    assert class_matched_frechet(same, wanted, reference, reference_classes) < 0.2
    assert class_matched_frechet(other, wanted, reference, reference_classes) > 50


def test_class_matched_frechet_names_wanted_classes_missing_from_the_reference():
    gen = torch.Generator().manual_seed(0)
    reference_classes = torch.arange(300) % 3 * 2             # classes 0, 2, 4; never 1 or 3
    reference = torch.randn(300, 2, generator=gen)
    features = torch.randn(40, 2, generator=gen)
    wanted = torch.tensor([0, 1, 2, 3] * 10)
    with pytest.warns(RuntimeWarning, match=r"\[1, 3\]"):
        assert np.isnan(class_matched_frechet(features, wanted, reference, reference_classes))
