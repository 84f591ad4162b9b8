import numpy as np
import pytest
import torch
from torch import nn

from pipeline.discriminative import (METHODS, MaskSettings, SweepResult, attribution_maps, closing, curve_scores,
                                     gaussian_blur, interpolate_curves, mask_overlap, normalise_maps, optimal_masks,
                                     optimal_threshold_index, score_pairs, size_grid, sweep, sweep_loop)
from pipeline.models import CNNClassifier, frozen

EXACT = MaskSettings(n_thresholds=50, closing_size=1, blur_sigma=0.0)  # masks are the thresholded maps


class PixelSwitch(nn.Module):
    """Class 1 when pixel (5, 5) of the red channel is bright, else class 0 (saturated softmax)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(200.0), requires_grad=False)

    def forward(self, x):
        on = (x[:, 0, 5, 5] - 0.5) * self.scale
        return torch.stack([-on, on], dim=1)


class Constant(nn.Module):
    def __init__(self, n_classes=3):
        super().__init__()
        self.bias = nn.Parameter(torch.linspace(0, 1, n_classes), requires_grad=False)

    def forward(self, x):
        return self.bias.expand(len(x), -1) + 0 * x.flatten(1)[:, :1]


def switch_pair(n=4):
    real = torch.zeros(n, 3, 28, 28)
    counterfactual = real.clone()
    counterfactual[:, :, 5, 5] = 1.0
    return real, counterfactual, torch.ones(n, dtype=torch.long)


def test_a_mask_that_flips_the_class_at_size_zero_scores_one():
    real, counterfactual, target = switch_pair()
    maps = torch.zeros(len(real), 1, 28, 28)
    maps[:, :, 5, 5] = 1.0  # the explanation is exactly the switch pixel
    result = sweep(PixelSwitch(), real, counterfactual, maps, target, EXACT)
    scores = score_pairs(result, EXACT, size_grid(1001))
    assert scores.score.min().item() == pytest.approx(1.0, abs=2e-3)
    assert torch.allclose(scores.optimal_mask_size, torch.full((4,), 1 / 784))
    assert (scores.optimal_predicted == target).all()
    assert scores.optimal_score_change.min().item() > 0.99


def test_a_map_that_misses_the_switch_scores_less():
    real, counterfactual, target = switch_pair()
    maps = torch.rand(len(real), 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.9
    maps[:, :, 5, 5] = 0.0  # the switch pixel is the last to enter the mask
    counterfactual = counterfactual + 0.0
    counterfactual[:, :, 10:20, 10:20] = 0.7  # other changes that do not matter to the classifier
    result = sweep(PixelSwitch(), real, counterfactual, maps, target, EXACT)
    scores = score_pairs(result, EXACT, size_grid(1001))
    assert scores.score.max().item() < 0.05


def test_a_classifier_that_never_changes_scores_zero():
    gen = torch.Generator().manual_seed(1)
    real, counterfactual = torch.rand(5, 3, 28, 28, generator=gen), torch.rand(5, 3, 28, 28, generator=gen)
    maps = torch.rand(5, 1, 28, 28, generator=gen)
    settings = MaskSettings(n_thresholds=30, closing_size=3, blur_sigma=1.0)
    result = sweep(Constant(), real, counterfactual, maps, torch.tensor([0, 1, 2, 1, 0]), settings)
    scores = score_pairs(result, settings, size_grid())
    assert torch.equal(scores.score, torch.zeros(5))
    assert torch.equal(scores.optimal_mask_size, torch.zeros(5))  # nothing gained, so the empty mask is optimal
    assert torch.equal(scores.optimal_index, torch.zeros(5, dtype=torch.long))


def test_optimal_threshold_minimises_size_minus_change_and_prefers_the_smaller_mask():
    sizes = torch.tensor([[0.0, 0.1, 0.2, 0.5, 1.0], [0.0, 0.1, 0.3, 0.6, 1.0]])
    changes = torch.tensor([[0.0, 0.05, 0.6, 0.7, 0.8], [0.0, 0.2, 0.4, 0.7, 1.0]])  # row 1: ties at -0.1
    result = SweepResult(sizes, changes, torch.zeros(2, 5, dtype=torch.long), torch.zeros(2))
    assert optimal_threshold_index(result).tolist() == [2, 1]
    picked = score_pairs(result, MaskSettings(n_thresholds=5), size_grid())
    assert picked.optimal_mask_size.tolist() == pytest.approx([0.2, 0.1])
    assert picked.optimal_threshold.tolist() == pytest.approx([0.5, 0.75])


def test_interpolation_and_area_match_numpy():
    rng = np.random.default_rng(0)
    sizes = np.sort(rng.random((6, 40)), axis=1)[:, ::-1].copy()  # descending, like a sweep
    sizes[:, -1] = sizes[:, -2]  # a repeated size
    values = rng.normal(size=(6, 40))
    grid = np.linspace(0, 1, 101)
    ours = interpolate_curves(torch.tensor(sizes), torch.tensor(values), torch.tensor(grid)).numpy()
    for row in range(6):
        order = np.argsort(sizes[row], kind="stable")
        expected = np.interp(grid, sizes[row][order], values[row][order])
        assert np.abs(ours[row] - expected).max() < 1e-9
    result = SweepResult(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2), torch.zeros(1))
    _, area = curve_scores(result, size_grid())
    assert area.item() == pytest.approx(0.5)


@pytest.mark.parametrize("across", [True, False])
def test_vectorised_sweep_gives_the_same_curve_as_the_per_pair_loop(across):
    torch.manual_seed(0)
    model = CNNClassifier(n_classes=4, width=8).eval()
    frozen(model, "cpu")
    gen = torch.Generator().manual_seed(3)
    real, counterfactual = torch.rand(3, 3, 28, 28, generator=gen), torch.rand(3, 3, 28, 28, generator=gen)
    maps = normalise_maps(torch.randn(3, 3, 28, 28, generator=gen), across_channels=across)
    target = torch.tensor([0, 3, 1])
    settings = MaskSettings(n_thresholds=20, closing_size=3, blur_sigma=1.0)
    fast = sweep(model, real, counterfactual, maps, target, settings, batch_size=42)  # 2 pairs per pass: 2 chunks
    slow = sweep_loop(model, real, counterfactual, maps, target, settings)
    assert (fast.mask_size - slow.mask_size).abs().max().item() < 1e-5
    assert (fast.score_change - slow.score_change).abs().max().item() < 1e-5
    assert torch.equal(fast.predicted, slow.predicted)
    grid = size_grid()
    assert (score_pairs(fast, settings, grid).curve - score_pairs(slow, settings, grid).curve).abs().max().item() < 1e-5
    assert fast.mask_size[:, 0].eq(0).all() and (fast.mask_size.diff(dim=1) >= -1e-7).all()  # masks grow


def test_closing_fills_a_hole_and_blur_keeps_mass():
    ring = torch.zeros(1, 1, 28, 28)
    ring[..., 10:15, 10:15] = 1.0
    ring[..., 12, 12] = 0.0
    closed = closing(ring, 3)
    assert closed[..., 10:15, 10:15].eq(1).all() and closed.sum() == 25
    corner = torch.zeros(1, 1, 28, 28)
    corner[..., 0:4, 0:4] = 1.0  # touching the border: closing must not grow or shrink it
    assert torch.equal(closing(corner, 5), corner)
    blurred = gaussian_blur(closed, 1.0)
    assert blurred.sum().item() == pytest.approx(25.0, rel=1e-5)
    assert blurred.max() < 1.0


def test_discriminative_attributions_on_a_linear_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 3)).eval()
    gen = torch.Generator().manual_seed(0)
    real, counterfactual = torch.rand(4, 3, 28, 28, generator=gen), torch.rand(4, 3, 28, 28, generator=gen)
    counterfactual[:, :, :14] = real[:, :, :14]  # the top half is unchanged
    source = torch.tensor([0, 1, 2, 0])
    weight = model[1].weight.detach()[source].view(4, 3, 28, 28)
    expected = weight * (real - counterfactual)
    for method in ("d_ig", "d_deeplift", "d_inputxgrad"):
        maps = attribution_maps(method, model, real, counterfactual, source, ig_steps=8)
        assert torch.allclose(maps, expected, atol=1e-5), method
        assert maps[:, :, :14].abs().max() < 1e-6  # nothing changed there, so nothing discriminates
    residual = attribution_maps("residual", model, real, counterfactual, source)
    assert torch.equal(residual, (real - counterfactual).abs())
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = attribution_maps("random", model, real, counterfactual, source, generator=gen_a)
    assert torch.equal(a, attribution_maps("random", model, real, counterfactual, source, generator=gen_b))
    assert set(METHODS) == {"d_ig", "d_deeplift", "d_inputxgrad", "ig", "deeplift", "residual", "random"}


def test_normalised_maps_lie_in_unit_interval():
    maps = normalise_maps(torch.randn(3, 3, 28, 28), across_channels=True)
    assert maps.shape == (3, 1, 28, 28) and maps.min() >= 0
    assert torch.allclose(maps.flatten(1).amax(1), torch.ones(3))
    assert normalise_maps(torch.zeros(1, 3, 28, 28), across_channels=False).eq(0).all()


def test_mask_overlap_with_a_known_square():
    truth = torch.zeros(2, 28, 28, dtype=torch.bool)
    truth[:, 1:5, 1:5] = True
    maps = torch.zeros(2, 1, 28, 28)
    maps[0, :, 1:5, 1:5] = 1.0          # exactly the square
    maps[1, :, 1:5, 1:9] = 1.0          # twice as wide
    binary, soft = optimal_masks(maps, torch.tensor([0.5, 0.5]), MaskSettings(closing_size=3, blur_sigma=0.0))
    iou, share = mask_overlap(binary, soft, truth)
    assert iou.tolist() == pytest.approx([1.0, 0.5])
    assert share.tolist() == pytest.approx([1.0, 0.5])
