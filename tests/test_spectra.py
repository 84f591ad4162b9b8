import numpy as np
import torch

from pipeline.config import SpectraParams
from pipeline.spectra import balanced_split, detector_accuracy, held_out_indices, log_spectra, radial_profile, train_detector


def blobs(n, seed):
    """Smooth random images in [0, 1] (low-pass filtered noise): digit-like content without a pattern."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 3, 28, 28, generator=gen)
    kernel = torch.ones(3, 1, 5, 5) / 25
    smooth = torch.nn.functional.conv2d(noise, kernel, padding=2, groups=3)
    return ((smooth - 0.5) * 4 + 0.5).clamp(0, 1)


def checkerboard(amplitude=0.1):
    yy, xx = torch.meshgrid(torch.arange(28), torch.arange(28), indexing="ij")
    return amplitude * torch.where((yy // 2 + xx // 2) % 2 == 0, 1.0, -1.0)


def fit_and_score(a, b, cfg):
    """Train on the first half of each group, test on the second; labels 0 = a, 1 = b."""
    half = len(a) // 2
    fa, fb = log_spectra(a, cfg.epsilon).flatten(1), log_spectra(b, cfg.epsilon).flatten(1)
    train_x, test_x = torch.cat([fa[:half], fb[:half]]), torch.cat([fa[half:], fb[half:]])
    train_y = torch.cat([torch.zeros(half), torch.ones(half)])
    test_y = torch.cat([torch.zeros(len(a) - half), torch.ones(len(b) - half)])
    detector = train_detector(train_x, train_y, cfg, progress=False)
    return detector_accuracy(detector, test_x, test_y)


def test_detector_separates_a_planted_periodic_pattern():
    cfg = SpectraParams(epochs=100)
    clean = blobs(400, seed=0)
    patterned = (blobs(400, seed=1) + checkerboard()).clamp(0, 1)
    assert fit_and_score(clean, patterned, cfg) > 0.95


def test_detector_does_not_separate_two_halves_of_one_set():
    cfg = SpectraParams(epochs=100)
    clean = blobs(1200, seed=2)
    order = torch.randperm(1200, generator=torch.Generator().manual_seed(0))
    accuracy = fit_and_score(clean[order[:600]], clean[order[600:]], cfg)
    assert abs(accuracy - 0.5) < 0.08, accuracy


def test_log_spectrum_is_centred_and_uint8_matches_float():
    constant = torch.full((1, 3, 28, 28), 255, dtype=torch.uint8)
    spectrum = log_spectra(constant, 1e-3)
    assert spectrum.shape == (1, 3, 28, 28)
    assert spectrum[0, 0].argmax().item() == 14 * 28 + 14     # all energy at DC, shifted to the centre
    assert torch.allclose(spectrum, log_spectra(torch.ones(1, 3, 28, 28), 1e-3))
    radius, value = radial_profile(spectrum[0])
    assert radius[0] == 0 and value[0] == value.max()


def test_split_keeps_a_test_image_and_its_counterfactuals_on_one_side_and_balances_groups():
    rng = np.random.default_rng(0)
    held = held_out_indices(100, 0.3, rng)
    assert held.sum() == 30
    generated_index = np.repeat(np.arange(100), 3)          # three counterfactuals per test image
    split = balanced_split(np.arange(100), generated_index, held, max_images=1000, rng=rng)
    for fold, expect_held in (("train", False), ("test", True)):
        real_rows, generated_rows = split[fold]
        assert len(real_rows) == len(generated_rows) > 0
        assert (held[real_rows] == expect_held).all() and (held[generated_index[generated_rows]] == expect_held).all()
