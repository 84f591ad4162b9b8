import numpy as np
import torch
from torch import nn

from pipeline.config import OptimizeCounterfactualsParams
from pipeline.frechet import class_matched_frechet, frechet_distance, gaussian
from pipeline.models import frozen
from pipeline.optimize_counterfactuals import change_measures, match_rows, optimize, select_images, target_margin

N_PIXELS = 3 * 28 * 28


def known_boundary(n_signal=10, distractor=0.05, start_margin=-2.0, seed=0):
    """Two classes; logit(1) - logit(0) = w.x + b, with |w| = 1 on ``n_signal`` pixels, ``distractor`` elsewhere.

    From x0 = 0.5 everywhere (margin ``start_margin``) the least L1 change that gives class 1 a
    margin m moves only signal pixels, by (m - start_margin) in total.
    """
    gen = torch.Generator().manual_seed(seed)
    signs = torch.where(torch.rand(N_PIXELS, generator=gen) < 0.5, -1.0, 1.0)
    w = signs * distractor
    signal = torch.randperm(N_PIXELS, generator=gen)[:n_signal]
    w[signal] = signs[signal]
    model = nn.Sequential(nn.Flatten(), nn.Linear(N_PIXELS, 2))
    x0 = torch.full((1, 3, 28, 28), 0.5)
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(N_PIXELS), w]))
        model[1].bias.copy_(torch.tensor([0.0, start_margin - (w * 0.5).sum().item()]))
    frozen(model, "cpu")
    return model, x0, signal


def minimal_l1(margin, start_margin=-2.0):
    return margin - start_margin


def test_l1_optimiser_reaches_the_target_with_near_minimal_change():
    model, x0, signal = known_boundary()
    cfg = OptimizeCounterfactualsParams(max_steps=500, learning_rate=0.05, distance="l1", distance_weight=0.1, margin=1.0)
    result = optimize(model, x0, torch.tensor([1]), cfg, progress=False)
    x = result["counterfactual"]
    assert result["reached"].all() and result["steps"].item() < cfg.max_steps
    assert target_margin(model(x), torch.tensor([1])).item() >= 1.0
    l1, l0 = change_measures(x0, x, 0.05)
    assert l1.item() <= 1.1 * minimal_l1(1.0), l1
    changed = torch.nonzero((x - x0).flatten().abs() > 1e-6).squeeze(1)
    assert set(changed.tolist()) <= set(signal.tolist())      # distractor pixels untouched
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_without_the_l1_penalty_the_change_is_far_from_minimal():
    """The check above can fail: lambda = 0 spreads the change over every pixel."""
    model, x0, _ = known_boundary()
    cfg = OptimizeCounterfactualsParams(max_steps=500, learning_rate=0.05, distance_weight=0.0, margin=1.0)
    result = optimize(model, x0, torch.tensor([1]), cfg, progress=False)
    l1, _ = change_measures(x0, result["counterfactual"], 0.05)
    assert result["reached"].all() and l1.item() > 3 * minimal_l1(1.0)


def test_batch_stops_per_image_and_keeps_pixels_in_range():
    model, x0, _ = known_boundary()
    images = torch.cat([x0, x0, torch.ones_like(x0) * 0.5])
    target = torch.tensor([1, 0, 1])            # image 1 already is class 0 by margin 2: zero steps, unchanged
    for distance in ("l1", "l2"):
        cfg = OptimizeCounterfactualsParams(max_steps=5, learning_rate=0.05, distance=distance, margin=1.0)
        result = optimize(model, images, target, cfg, progress=False)
        assert result["steps"][1].item() == 0 and torch.equal(result["counterfactual"][1], images[1])
        assert not result["reached"][0] and result["steps"][0].item() == 5   # 5 steps are not enough
        assert result["counterfactual"].min() >= 0 and result["counterfactual"].max() <= 1


def test_selection_targets_true_class_for_mistakes_and_another_class_for_correct_ones():
    labels = np.arange(40) % 4
    predicted = labels.copy()
    predicted[[3, 7, 11]] = (labels[[3, 7, 11]] + 1) % 4
    chosen = select_images(predicted, labels, 4, max_misclassified=2, n_correct=5, rng=np.random.default_rng(0),
                           preferred=np.array([20, 21, 22, 23]))
    wrong, right = chosen["misclassified"], ~chosen["misclassified"]
    assert wrong.sum() == 2 and right.sum() == 5
    assert set(chosen["index"][wrong]) <= {3, 7, 11}
    assert (chosen["target"][wrong] == labels[chosen["index"][wrong]]).all()
    assert (chosen["target"][right] != labels[chosen["index"][right]]).all()
    assert {20, 21, 22, 23} <= set(chosen["index"][right])      # GAN-covered images first
    again = select_images(predicted, labels, 4, 2, 5, np.random.default_rng(0), np.array([20, 21, 22, 23]))
    assert np.array_equal(again["index"], chosen["index"]) and np.array_equal(again["target"], chosen["target"])


def test_match_rows_pairs_image_and_target():
    ours_rows, theirs_rows = match_rows(np.array([5, 5, 9, 2]), np.array([1, 2, 0, 3]),
                                        np.array([9, 5, 5, 7, 5]), np.array([0, 2, 3, 1, 2]), n_classes=4)
    assert ours_rows.tolist() == [1, 2] and theirs_rows.tolist() == [1, 0]
    empty = match_rows(np.array([1]), np.array([0]), np.array([], dtype=np.int64), np.array([], dtype=np.int64), 4)
    assert len(empty[0]) == 0


def test_change_measures():
    real = torch.zeros(2, 3, 28, 28)
    changed = real.clone()
    changed[0, 0, 0, 0] = 0.5
    changed[0, 1, 0, 0] = 0.5       # same pixel, another channel: one pixel in L0
    changed[0, 2, 5, 5] = 0.04      # below the threshold
    l1, l0 = change_measures(real, changed, 0.05)
    assert torch.allclose(l1, torch.tensor([1.04, 0.0])) and l0.tolist() == [1.0, 0.0]


def test_frechet_distance_of_gaussians():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=gen)
    b = torch.randn(4000, 3, generator=gen) * 2 + 1
    assert frechet_distance(*gaussian(a), *gaussian(a)) < 1e-6
    # exact value for N(0, I) vs N(1, 4I) in 3-d: 3 * 1 + 3 * (1 + 4 - 2 * 2) = 6
    assert abs(frechet_distance(*gaussian(a), *gaussian(b)) - 6.0) < 0.3


def test_class_matched_frechet_reweights_the_reference():
    gen = torch.Generator().manual_seed(0)
    reference_classes = torch.arange(3000) % 3
    reference = torch.randn(3000, 2, generator=gen) + reference_classes[:, None].float() * 5
    wanted = torch.full((500,), 2)
    same = torch.randn(500, 2, generator=gen) + 10
    other = torch.randn(500, 2, generator=gen)
    assert class_matched_frechet(same, wanted, reference, reference_classes) < 0.2
    assert class_matched_frechet(other, wanted, reference, reference_classes) > 50
