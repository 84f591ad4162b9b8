import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ConfigError
from pipeline.data.tensors import to_float, to_uint8
from pipeline.evaluation.spectra import (DetectorSettings, artifacts_detected, compare_with_real, grouped_folds, log_spectra,
                                         radial_average, rings, separability, to_generator_range)
from pipeline.models.gan import Generator
from tests.conftest import params_with

SETTINGS = DetectorSettings(epsilon=1e-3, C=0.1, folds=5, seed=0)
TARGETS_PER_IMAGE = 3


def digit_like(n, seed, colour=(1.0, 0.55, 0.0)):
    """uint8 N x 3 x 28 x 28: smooth strokes on an exactly black background, blue exactly 0 (like an autumn digit)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 1, 28, 28, generator=gen)
    smooth = F.avg_pool2d(F.pad(noise, (2, 2, 2, 2), mode="circular"), 5, stride=1)
    strokes = ((smooth - 0.55) * 8).clamp(0, 1)
    return to_uint8(strokes * torch.tensor(colour).view(1, 3, 1, 1))


def checkerboard(amplitude):
    """The pattern of a 2x nearest upsampling gone wrong: +-amplitude alternating pixel by pixel."""
    yy, xx = torch.meshgrid(torch.arange(28), torch.arange(28), indexing="ij")
    return amplitude * torch.where((yy + xx) % 2 == 0, 1.0, -1.0)


def translate(real, change):
    """What a generator returning ``change(x)`` would store: TARGETS_PER_IMAGE uint8 outputs per source image."""
    image_index = np.repeat(np.arange(len(real) // 2), TARGETS_PER_IMAGE)
    generated = to_uint8(change(to_float(real[torch.from_numpy(image_index)])))
    return generated, image_index


def unchanged(x):
    """An untrained generator: it changes nothing, but its pixels stay in [PIXEL_EPS, 1 - PIXEL_EPS]."""
    return x.clamp(0.01, 0.99)


@pytest.fixture(scope="module")
def real():
    return digit_like(600, seed=0)


@pytest.fixture(scope="module")
def unchanging_generator(real):
    generated, image_index = translate(real, unchanged)
    return compare_with_real(real, generated, image_index, 600, SETTINGS, np.random.default_rng(0))


def test_range_map_is_what_an_untrained_generator_stores(real):
    generator = Generator(style_dim=8, width=8).eval()
    with torch.no_grad():
        stored = to_uint8(generator(to_float(real[:16]), torch.zeros(16, 8)))
    assert torch.equal(stored, to_generator_range(real[:16]))
    assert real[:16].min() == 0 and stored.min() == 3


def test_control_sits_at_chance_on_real_vs_real(unchanging_generator):
    control = unchanging_generator["control"]
    assert control["n_first"] == control["n_second"] == 300
    assert abs(control["accuracy"] - 0.5) < 0.08, control


def test_a_pure_pixel_floor_is_not_reported_as_a_frequency_artifact(unchanging_generator):
    """The floor alone separates raw real images almost perfectly; through the map it must not count."""
    assert unchanging_generator["floor_effect"]["accuracy"] > 0.9
    accuracy = unchanging_generator["detector"]["accuracy"]
    assert abs(accuracy - 0.5) < 0.08, accuracy
    assert not artifacts_detected(accuracy, unchanging_generator["control"]["accuracy"], 0.75, 0.05)


def test_a_planted_periodic_pattern_is_detected(real):
    generated, image_index = translate(real, lambda x: unchanged(x + checkerboard(0.05)))
    result = compare_with_real(real, generated, image_index, 600, SETTINGS, np.random.default_rng(0))
    assert result["detector"]["accuracy"] > 0.95, result["detector"]["fold_accuracies"]
    assert artifacts_detected(result["detector"]["accuracy"], result["control"]["accuracy"], 0.75, 0.05)


def test_grouped_folds_never_put_one_image_index_on_both_sides():
    rng = np.random.default_rng(0)
    real_index = rng.choice(200, size=120, replace=False)
    generated_index = np.repeat(np.arange(40), TARGETS_PER_IMAGE)      # counterfactuals of 40 of them
    groups = np.r_[real_index, generated_index]
    labels = np.r_[np.zeros(len(real_index)), np.ones(len(generated_index))].astype(int)
    folds = grouped_folds(labels, groups, folds=5, seed=0)
    assert len(folds) == 5
    assert np.array_equal(np.sort(np.concatenate([test for _, test in folds])), np.arange(len(labels)))
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert 0 < labels[test].mean() < 1


def test_separability_is_scored_on_grouped_folds_only():
    with pytest.raises(ValueError, match="cannot fill 5 folds"):
        separability(digit_like(4, seed=1), digit_like(4, seed=2), np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]),
                     SETTINGS)


def test_verdict_needs_the_threshold_and_the_control_margin():
    assert artifacts_detected(0.80, 0.50, threshold=0.75, margin=0.05)
    assert not artifacts_detected(0.80, 0.78, threshold=0.75, margin=0.05)     # the control is just as high
    assert not artifacts_detected(0.70, 0.50, threshold=0.75, margin=0.05)


def test_log_spectrum_is_centred_and_rings_cover_every_frequency():
    constant = torch.full((1, 3, 28, 28), 255, dtype=torch.uint8)
    spectrum = log_spectra(constant, 1e-3)
    assert spectrum.shape == (1, 3, 28, 28)
    assert spectrum[0, 0].argmax().item() == 14 * 28 + 14     # all energy at DC, shifted to the centre
    assert torch.allclose(spectrum, log_spectra(torch.ones(1, 3, 28, 28), 1e-3))
    ring, radii = rings(28, 28)
    assert radii[0] == 0 and radii[-1] == 20 and torch.bincount(ring).min() > 0
    profile = radial_average(spectrum[0])
    assert profile.shape == (3, len(radii)) and profile[0, 0] == profile[0].max()


def test_params_reject_too_few_folds():
    with pytest.raises(ConfigError, match="folds"):
        params_with({"spectra": {"folds": 1}})
