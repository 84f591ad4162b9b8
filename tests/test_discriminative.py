import math

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.attribution.blur import gaussian_blur, kernel_size_for
from pipeline.attribution.discriminative import (MaskSettings, SweepResult, attribution_maps, closing, curve_scores,
                                     interpolate_curves, mask_overlap, normalise_maps, optimal_masks,
                                     optimal_threshold_index, score_pairs, size_grid, sweep, sweep_loop)
from pipeline.models.classifiers import CNNClassifier, frozen

EXACT = MaskSettings(n_thresholds=50, closing_size=1, blur_sigma=0.0)  # masks are the thresholded maps
EXACT_QUAC = MaskSettings(n_thresholds=50, closing_size=1, blur_sigma=0.0, convention="quac")
PIXELS = 28 * 28


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
    assert scores.score.max().item() == pytest.approx(1.0 - 0.5 / PIXELS, abs=2e-4)  # the curve rises over one pixel
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


class TwoRegions(nn.Module):
    """Class 0 reads the top half of the red channel, class 1 the bottom half (linear logits)."""

    def forward(self, x):
        return torch.stack([x[:, 0, :14].flatten(1).sum(1), x[:, 0, 14:].flatten(1).sum(1)], dim=1)


@pytest.mark.parametrize("method", ["d_ig", "d_deeplift", "d_inputxgrad"])
def test_the_attributed_output_decides_which_change_the_map_shows(method):
    """Real class 0, counterfactual class 1; the counterfactual dims the top (class 0's evidence) and
    brightens the bottom (class 1's). Explaining the real class shows only the top, the
    counterfactual's class only the bottom, the logit gap both, with completeness in each case."""
    model = TwoRegions().eval()
    real = torch.full((2, 3, 28, 28), 0.5)
    counterfactual = real.clone()
    counterfactual[:, 0, :14] = 0.1
    counterfactual[:, 0, 14:] = 0.9
    source, target = torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long)
    maps = {a: attribution_maps(method, model, real, counterfactual, source, ig_steps=8, target=target, attributed=a)
            for a in ("real", "counterfactual", "logit_gap")}
    top, bottom = (slice(None), 0, slice(0, 14)), (slice(None), 0, slice(14, 28))
    assert maps["real"][bottom].abs().max() < 1e-6 and maps["real"][top].gt(0).all()
    assert maps["counterfactual"][top].abs().max() < 1e-6 and maps["counterfactual"][bottom].lt(0).all()
    gap_change = (model(real) - model(counterfactual))[:, 1] - (model(real) - model(counterfactual))[:, 0]
    assert torch.allclose(maps["logit_gap"].flatten(1).sum(1), gap_change, rtol=1e-4)
    with pytest.raises(ValueError, match="needs the counterfactuals' classes"):
        attribution_maps(method, model, real, counterfactual, source, attributed="counterfactual")
    with pytest.raises(ValueError, match="unknown attributed output"):
        attribution_maps(method, model, real, counterfactual, source, target=target, attributed="both")


def test_the_random_map_is_seeded_noise_with_the_correlation_of_its_blur():
    """White noise blurred with a Gaussian of width s correlates exp(-d^2 / (4 s^2)) at distance d:
    0.94 for neighbours at s = 2, where unblurred noise gives 0."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 2)).eval()
    real = torch.zeros(64, 3, 28, 28)
    draw = lambda seed: attribution_maps("random", model, real, real, torch.zeros(64, dtype=torch.long),  # noqa: E731
                                         random_sigma=2.0, generator=torch.Generator().manual_seed(seed))
    maps = draw(5)
    assert torch.equal(maps, draw(5)) and not torch.equal(maps, draw(6))
    assert torch.equal(maps[:, 0], maps[:, 2])  # one spatial map for every channel
    inner = maps[:, 0, 6:-6, 6:-6]  # away from the border, where the blur sees only noise
    left, right = inner[:, :, :-1].flatten(), inner[:, :, 1:].flatten()
    correlation = torch.corrcoef(torch.stack([left, right]))[0, 1].item()
    assert correlation == pytest.approx(math.exp(-1 / 16), abs=0.03)


def test_normalised_maps_are_absolute_values_over_the_peak():
    raw = torch.zeros(2, 3, 28, 28)
    raw[0, 0, 0, 0], raw[0, 1, 0, 0], raw[0, 2, 3, 3] = -2.0, 1.0, 0.5   # channel sum of |.| at (0, 0): 3
    raw[1, 1, 4, 4] = 0.25
    across = normalise_maps(raw, across_channels=True)
    assert across.shape == (2, 1, 28, 28)
    assert across[0, 0, 0, 0] == 1.0 and across[0, 0, 3, 3] == pytest.approx(0.5 / 3) and across[1, 0, 4, 4] == 1.0
    assert across.sum().item() == pytest.approx(1.0 + 0.5 / 3 + 1.0)
    per_channel = normalise_maps(raw, across_channels=False)
    assert per_channel.shape == (2, 3, 28, 28)
    assert per_channel[0, :, 0, 0].tolist() == pytest.approx([1.0, 0.5, 0.0]) and per_channel[0, 2, 3, 3] == 0.25
    assert normalise_maps(torch.zeros(1, 3, 28, 28), across_channels=False).eq(0).all()
    largest = normalise_maps(raw, "max")  # the largest |channel| at (0, 0) is 2
    assert largest.shape == (2, 1, 28, 28)
    assert largest[0, 0, 0, 0] == 1.0 and largest[0, 0, 3, 3] == pytest.approx(0.25) and largest[1, 0, 4, 4] == 1.0
    assert torch.equal(normalise_maps(raw, "sum"), across) and torch.equal(normalise_maps(raw, "per_channel"), per_channel)
    with pytest.raises(ValueError, match="unknown channel aggregation"):
        normalise_maps(raw, "mean")


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


# --------------------------------------------------------------------------------------------
# The shared Gaussian blur
# --------------------------------------------------------------------------------------------
def gaussian_weights(sigma: float) -> torch.Tensor:
    radius = math.ceil(3 * sigma)
    weights = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / sigma) ** 2)
    return weights / weights.sum()


def test_the_blur_keeps_an_inner_pixel_whole_and_reflects_at_the_border():
    """Reflected borders: a corner pixel keeps (w0 + 1) / 2 of its mass per axis (w0: the kernel's
    centre weight), the rest falls outside; replicated borders would add mass instead."""
    w0 = gaussian_weights(1.0)[3].item()
    image = torch.zeros(1, 1, 28, 28)
    image[..., 14, 14] = 1.0
    image[..., 0, 0] = 1.0
    blurred = gaussian_blur(image, 1.0)
    assert blurred[..., 8:21, 8:21].sum().item() == pytest.approx(1.0, abs=1e-6)
    assert blurred[..., :8, :8].sum().item() == pytest.approx(((w0 + 1) / 2) ** 2, abs=1e-6)
    assert blurred[0, 0, 14, 14].item() == pytest.approx(w0**2, abs=1e-6)
    assert torch.equal(gaussian_blur(image, 0.0), image)
    assert gaussian_blur(torch.ones(2, 3, 28, 28), 2.0).sub(1).abs().max() < 1e-6  # a full mask stays full


def test_the_blur_kernel_covers_three_sigma_and_must_fit_in_the_image():
    assert [kernel_size_for(s) for s in (0.1, 0.5, 1.0, 2.0, 3.0)] == [3, 5, 7, 13, 19]
    image = torch.rand(1, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    narrow = gaussian_blur(image, 3.0, kernel_size=11)   # the ig_blur baseline's settings
    assert not torch.allclose(narrow, gaussian_blur(image, 3.0))
    with pytest.raises(ValueError, match="kernel size 57"):
        gaussian_blur(image, 3.0, kernel_size=57)
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(image, 1.0, kernel_size=4)


# --------------------------------------------------------------------------------------------
# Known answers: a classifier that reads one region, and the two score conventions
# --------------------------------------------------------------------------------------------
class RegionSwitch(nn.Module):
    """Class 1 when the mean red of the 4 x 4 region at rows/cols 10..13 is above 0.5, else class 0."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(200.0), requires_grad=False)

    def forward(self, x):
        on = (x[:, 0, 10:14, 10:14].mean(dim=(1, 2)) - 0.5) * self.scale
        return torch.stack([-on, on], dim=1)


def test_the_optimal_mask_of_the_residual_is_exactly_the_region_the_classifier_reads():
    real = torch.zeros(3, 3, 28, 28)
    counterfactual = real.clone()
    counterfactual[:, :, 10:14, 10:14] = 1.0      # the change the classifier reads
    counterfactual[:, :, 20:24, 2:6] = 0.7         # a change it ignores
    target = torch.ones(3, dtype=torch.long)
    model = RegionSwitch()
    maps = normalise_maps(attribution_maps("residual", model, real, counterfactual, target), across_channels=True)
    scores = score_pairs(sweep(model, real, counterfactual, maps, target, EXACT), EXACT, size_grid(1001))
    binary, _ = optimal_masks(maps, scores.optimal_threshold, EXACT)
    region = torch.zeros(28, 28, dtype=torch.bool)
    region[10:14, 10:14] = True
    assert torch.equal(binary[:, 0] > 0.5, region.expand(3, -1, -1))
    assert scores.optimal_mask_size.tolist() == pytest.approx([16 / PIXELS] * 3)
    assert scores.score.tolist() == pytest.approx([1.0 - 8 / PIXELS] * 3, abs=2e-4)  # rises over the region, then flat


def test_the_two_conventions_on_a_map_that_never_points_at_the_switch():
    """The map covers 16 pixels that the classifier ignores and gives the switch pixel nothing.
    Ours: no threshold ever copies the switch, so the score is 0. QuAC's: its negative thresholds
    copy the whole counterfactual (size 1, change 1), and the curve runs linearly from the map's
    16 pixels (change 0) to there: area (1 - 16/784) / 2."""
    real, counterfactual, target = switch_pair()
    maps = torch.zeros(len(real), 1, 28, 28)
    maps[:, :, 20:24, 20:24] = 1.0
    ours = score_pairs(sweep(PixelSwitch(), real, counterfactual, maps, target, EXACT), EXACT, size_grid(1001))
    quac_result = sweep(PixelSwitch(), real, counterfactual, maps, target, EXACT_QUAC)
    quac = score_pairs(quac_result, EXACT_QUAC, size_grid(1001))
    assert ours.score.abs().max().item() < 1e-6
    assert quac.score.tolist() == pytest.approx([(1 - 16 / PIXELS) / 2] * 4, abs=1e-4)
    thresholds = EXACT_QUAC.thresholds()
    assert thresholds.tolist() == pytest.approx((np.arange(-1, 1, 2 / 50)[::-1]).tolist(), abs=1e-6)
    assert quac_result.mask_size[0, thresholds < 0].eq(1).all()          # below every map value: the full mask
    assert quac_result.mask_size[0, thresholds >= 0].eq(16 / PIXELS).all()  # never empty: the largest is below 1
    # optimal: ours keeps the real image (size 0, change 0), QuAC's copies everything (size 1, change 1)
    assert (ours.optimal_mask_size == 0).all() and (quac.optimal_mask_size == 1).all()


def test_the_two_conventions_measure_the_mask_before_and_after_the_blur():
    """A corner pixel, blurred with sigma 1: the hybrid copies ((w0 + 1) / 2)^2 of a pixel (the rest
    of the blur falls outside the image); ours counts that, QuAC's counts the pixel before the blur."""
    w0 = gaussian_weights(1.0)[3].item()
    gen = torch.Generator().manual_seed(0)
    real, counterfactual = torch.rand(2, 3, 28, 28, generator=gen), torch.rand(2, 3, 28, 28, generator=gen)
    maps = torch.zeros(2, 1, 28, 28)
    maps[:, :, 0, 0] = 1.0
    sizes = {}
    for convention in ("pipeline", "quac"):
        settings = MaskSettings(n_thresholds=10, closing_size=1, blur_sigma=1.0, convention=convention)
        result = sweep(Constant(), real, counterfactual, maps, torch.tensor([0, 2]), settings)
        sizes[convention] = result.mask_size[:, settings.thresholds() >= 0][:, 1:]  # one pixel on (0 < threshold < 1)
        assert torch.allclose(result.mask_size, sweep_loop(Constant(), real, counterfactual, maps, torch.tensor([0, 2]),
                                                           settings).mask_size)
    assert sizes["pipeline"].sub(((w0 + 1) / 2) ** 2 / PIXELS).abs().max() < 1e-7
    assert sizes["quac"].eq(1 / PIXELS).all()


def test_curves_stay_flat_below_the_smallest_mask_in_ours_and_start_at_zero_in_quac():
    """Sizes 0.1, 0.2, 0.5 (thresholds descending). Ours: constant beyond both ends. QuAC's: anchored
    at (0, 0) and at (1, the change of the lowest threshold, the last column), which is flat too."""
    result = SweepResult(torch.tensor([[0.1, 0.2, 0.5]]), torch.tensor([[0.3, 0.6, 0.4]]),
                         torch.zeros(1, 3, dtype=torch.long), torch.zeros(1))
    _, ours = curve_scores(result, size_grid(1001), "pipeline")
    _, quac = curve_scores(result, size_grid(1001), "quac")
    shared = 0.1 * (0.3 + 0.6) / 2 + 0.3 * (0.6 + 0.4) / 2 + 0.5 * 0.4
    assert ours.item() == pytest.approx(0.1 * 0.3 + shared, abs=1e-6)
    assert quac.item() == pytest.approx(0.1 * 0.3 / 2 + shared, abs=1e-6)


def test_an_unknown_convention_is_refused():
    with pytest.raises(ValueError, match="quac"):
        MaskSettings(convention="QuAC")


# --------------------------------------------------------------------------------------------
# The sweep classifies each distinct mask once
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("convention", ["pipeline", "quac"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("levels", [10, None])
def test_the_sweep_of_distinct_masks_equals_the_per_threshold_loop(convention, channels, levels):
    """Maps quantised to 10 levels give most thresholds the mask of the one before (QuAC's negative
    thresholds all give the full mask); continuous maps give nearly every threshold its own. Either
    way every threshold gets the result of classifying its own hybrid."""
    from pipeline.attribution.discriminative import distinct_masks

    torch.manual_seed(0)
    model = frozen(CNNClassifier(n_classes=4, width=8), "cpu")
    gen = torch.Generator().manual_seed(7)
    real, counterfactual = torch.rand(5, 3, 28, 28, generator=gen), torch.rand(5, 3, 28, 28, generator=gen)
    maps = normalise_maps(gaussian_blur(torch.rand(5, channels, 28, 28, generator=gen), 1.0), "per_channel")
    if levels:
        maps = (maps * levels).floor() / levels
    maps[4] = 0.0  # a map that attributes nothing: one mask below every non-negative threshold
    target = torch.tensor([0, 3, 1, 2, 0])
    settings = MaskSettings(n_thresholds=40, closing_size=3, blur_sigma=1.0, convention=convention)
    new = distinct_masks(maps, settings.thresholds())
    binary = maps.flatten(1)[:, None] > settings.thresholds()[None, :, None]
    assert torch.equal(new[:, 1:], (binary[:, 1:] != binary[:, :-1]).any(dim=2)) and new[:, 0].all()
    if levels:
        assert new[:4].sum(dim=1).max() <= levels + 1
    fast = sweep(model, real, counterfactual, maps, target, settings, batch_size=30)  # several passes
    slow = sweep_loop(model, real, counterfactual, maps, target, settings)
    assert fast.mask_size.shape == slow.mask_size.shape == (5, 40)
    assert (fast.mask_size - slow.mask_size).abs().max().item() < 1e-5
    assert (fast.score_change - slow.score_change).abs().max().item() < 1e-5
    assert (fast.real_probability - slow.real_probability).abs().max().item() < 1e-5
    assert torch.equal(fast.predicted, slow.predicted)


def test_pairs_are_chunked_to_fill_each_forward_pass():
    from pipeline.attribution.discriminative import pair_chunks

    chunks = pair_chunks([3, 3, 3, 10, 1, 2], capacity=6)
    assert [(c.start, c.stop) for c in chunks] == [(0, 2), (2, 3), (3, 4), (4, 6)]  # 10 > 6 runs alone
    assert [(c.start, c.stop) for c in pair_chunks([2] * 5, capacity=100)] == [(0, 5)]


@pytest.mark.parametrize("size", [2, 3, 5])
def test_thresholding_the_closed_map_gives_the_closed_mask_of_every_threshold(size):
    """Max and min filters commute with thresholding: closing a map once (outside the image below every
    threshold) and thresholding it gives, at every threshold, the closing of the thresholded mask: near the
    border, at ties (a map of 6 levels) and below every value alike."""
    gen = torch.Generator().manual_seed(5)
    maps = normalise_maps(gaussian_blur(torch.rand(4, 3, 28, 28, generator=gen), 1.0), "per_channel")
    maps[0, :, :3, :] = 1.0                      # a band along the top border
    maps[1] = (maps[1] * 6).floor() / 6          # ties
    maps[2, :, 10:15, 10:15] = 0.9
    maps[2, :, 12, 12] = 0.1                     # a hole that closing fills
    closed_maps = closing(maps, size, -float("inf"))
    for threshold in torch.linspace(-0.5, 1.0, 61):
        binary = closing((maps > threshold).float(), size)
        assert torch.equal(closed_maps > threshold, binary > 0.5), threshold


class Counting(nn.Module):
    """A model that records how many images each forward pass classifies."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.images = model, []

    def forward(self, x):
        self.images.append(len(x))
        return self.model(x)


@pytest.mark.parametrize("convention", ["pipeline", "quac"])
def test_thresholds_whose_masks_close_alike_share_one_hybrid(convention):
    """The map is a 3x3 ring at 0.6 around a centre at 0.3: thresholds above 0.6 give the empty mask, those in
    [0.3, 0.6) the ring, those below 0.3 the full square (and QuAC's negative ones the whole image). Closing
    fills the ring's hole, so the ring and the square are one closed mask: one hybrid each, not two."""
    gen = torch.Generator().manual_seed(1)
    real, counterfactual = torch.rand(2, 3, 28, 28, generator=gen), torch.rand(2, 3, 28, 28, generator=gen)
    maps = torch.zeros(2, 1, 28, 28)
    maps[:, :, 9:12, 9:12] = 0.6
    maps[:, :, 10, 10] = 0.3
    target = torch.tensor([0, 2])
    settings = MaskSettings(n_thresholds=20, closing_size=3, blur_sigma=1.0, convention=convention)
    model = Counting(CNNClassifier(n_classes=3, width=4).eval())
    fast = sweep(model, real, counterfactual, maps, target, settings)
    distinct = 2 if convention == "pipeline" else 3   # empty (pipeline) or whole image (quac) besides the square
    assert model.images == [2 + 2 * distinct]          # the real images, then each pair's distinct closed masks
    slow = sweep_loop(model.model, real, counterfactual, maps, target, settings)
    assert (fast.mask_size - slow.mask_size).abs().max().item() < 1e-6
    assert (fast.score_change - slow.score_change).abs().max().item() < 1e-5
    assert torch.equal(fast.predicted, slow.predicted)


class Viewing(nn.Module):
    """A linear classifier that flattens its input with ``view``, so it needs the input contiguous in NCHW."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 28 * 28, 3)

    def forward(self, x):
        return self.linear(x.view(len(x), -1))


def test_a_model_that_needs_its_input_contiguous_gets_it():
    torch.manual_seed(0)
    model = frozen(Viewing(), "cpu")
    with pytest.raises(RuntimeError):
        model(torch.rand(2, 3, 28, 28).contiguous(memory_format=torch.channels_last))
    gen = torch.Generator().manual_seed(2)
    real, counterfactual = torch.rand(3, 3, 28, 28, generator=gen), torch.rand(3, 3, 28, 28, generator=gen)
    maps = normalise_maps(gaussian_blur(torch.rand(3, 3, 28, 28, generator=gen), 1.0), "per_channel")
    target = torch.tensor([0, 1, 2])
    settings = MaskSettings(n_thresholds=30, closing_size=3, blur_sigma=1.0)
    fast = sweep(model, real, counterfactual, maps, target, settings, batch_size=40)  # several passes
    slow = sweep_loop(model, real, counterfactual, maps, target, settings)
    assert (fast.score_change - slow.score_change).abs().max().item() < 1e-5
    assert torch.equal(fast.predicted, slow.predicted)
