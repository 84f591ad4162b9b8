import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from pipeline import paths
from pipeline.counterfactuals.optimization import (OptimizationOptions, change_measures, match_rows, optimize,
                                                   select_images, target_margin)
from pipeline.counterfactuals.optimization_plots import success_curve
from pipeline.models.classifiers import DenseClassifier, frozen, save_model
from pipeline.stages.optimize_counterfactuals import main, output_path
from pipeline.storage import load_arrays, save_arrays, write_json
from tests.conftest import repo_params

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
    options = OptimizationOptions(max_steps=500, learning_rate=0.05, distance="l1", distance_weight=0.1, margin=1.0)
    result = optimize(model, x0, torch.tensor([1]), options, progress=False)
    x = result["counterfactual"]
    assert result["reached"].all() and result["steps"].item() < options.max_steps
    assert target_margin(model(x), torch.tensor([1])).item() >= 1.0
    l1, l0 = change_measures(x0, x, 0.05)
    assert l1.item() <= 1.1 * minimal_l1(1.0), l1
    changed = torch.nonzero((x - x0).flatten().abs() > 1e-6).squeeze(1)
    assert set(changed.tolist()) <= set(signal.tolist())      # distractor pixels untouched
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_without_the_l1_penalty_the_change_is_far_from_minimal():
    """The check above can fail: lambda = 0 spreads the change over every pixel."""
    model, x0, _ = known_boundary()
    options = OptimizationOptions(max_steps=500, learning_rate=0.05, distance_weight=0.0, margin=1.0)
    result = optimize(model, x0, torch.tensor([1]), options, progress=False)
    l1, _ = change_measures(x0, result["counterfactual"], 0.05)
    assert result["reached"].all() and l1.item() > 3 * minimal_l1(1.0)


def test_batch_stops_per_image_and_keeps_pixels_in_range():
    model, x0, _ = known_boundary()
    images = torch.cat([x0, x0, torch.ones_like(x0) * 0.5])
    target = torch.tensor([1, 0, 1])            # image 1 already is class 0 by margin 2: zero steps, unchanged
    for distance in ("l1", "l2"):
        options = OptimizationOptions(max_steps=5, learning_rate=0.05, distance=distance, margin=1.0)
        result = optimize(model, images, target, options, progress=False)
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


def test_an_unreachable_margin_is_not_reached():
    model, x0, _ = known_boundary()
    options = OptimizationOptions(max_steps=8, learning_rate=0.05, margin=1e6)
    result = optimize(model, torch.cat([x0, x0]), torch.tensor([1, 0]), options, progress=False)
    assert not result["reached"].any() and result["steps"].tolist() == [8, 8]


def test_success_curve_counts_only_images_that_reached_the_margin():
    steps = np.array([0, 3, 5, 5])                  # the last two took every step; only the third reached at 5
    reached = np.array([True, True, True, False])
    curve = success_curve(steps, reached, max_steps=5)
    assert curve["step"].tolist() == [0, 1, 2, 3, 4, 5]
    assert curve["share_reached"].tolist() == [0.25, 0.25, 0.25, 0.5, 0.5, 0.75]


# --------------------------------------------------------------------------------------------
# The stage on a constructed workspace
# --------------------------------------------------------------------------------------------
DATASET = "colored_mnist"
LOGIT_SCALE = (20.0, 20.0, 0.5)   # class k's logit = scale_k * mean of channel k: class 2 never leads by 1


def channel_mean_classifier() -> nn.Module:
    """A dense classifier whose logit for class k is LOGIT_SCALE[k] times the mean of channel k.

    Hidden unit k is the channel mean plus an offset that keeps its ReLU open (a gradient even on a
    black channel); the head subtracts the offset again.
    """
    model = DenseClassifier(n_classes=3, width=1)
    first, second, head = model.embedding[1], model.embedding[3], model.head
    offset = 0.01
    with torch.no_grad():
        for layer in (first, second, head):
            layer.weight.zero_()
            layer.bias.zero_()
        for k, scale in enumerate(LOGIT_SCALE):
            first.weight[k, k * 28 * 28:(k + 1) * 28 * 28] = 1.0 / (28 * 28)
            first.bias[k] = offset
            second.weight[k, k] = 1.0
            head.weight[k, k] = scale
            head.bias[k] = -scale * offset
    return model


def lit(channels: list[int]) -> np.ndarray:
    """uint8 images with a 10 x 10 patch of 200 in the given channel each (-1: a black image)."""
    images = np.zeros((len(channels), 3, 28, 28), dtype=np.uint8)
    for i, channel in enumerate(channels):
        if channel >= 0:
            images[i, channel, 9:19, 9:19] = 200
    return images


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """Test split: images 0-2 misclassified (true classes 0, 1, 2), 3-5 correct. The GAN translated
    image 0 into class 0 (judged class 0), image 1 into class 1 (a black image, judged class 0) and
    image 3 into class 1 (not selected)."""
    monkeypatch.chdir(tmp_path)
    labels = np.array([0, 1, 2, 0, 1, 2])
    images = lit([1, 0, 0, 0, 1, 2])
    save_arrays(paths.prepared_dir(DATASET) / "test.npz", images=images, labels=labels)
    write_json(paths.prepared_dir(DATASET) / "meta.json", {"class_names": ["zero", "one", "two"], "n_classes": 3})
    save_model(paths.classifier_path(DATASET), channel_mean_classifier(),
               {"architecture": "dense", "n_classes": 3, "width": 1})
    image_index, target = np.array([0, 1, 3]), np.array([0, 1, 1])
    save_arrays(paths.counterfactuals_path(DATASET), real=images[image_index], counterfactual=lit([0, -1, 1]),
                image_index=image_index, source=labels[image_index], target=target)
    params = {"seed": 0, "device": "cpu", "optimize_counterfactuals": {
        "max_misclassified": 10, "n_correct": 0, "max_steps": 30, "learning_rate": 5.0, "distance": "l1",
        "distance_weight": 0.001, "margin": 1.0, "change_threshold": 0.05, "batch_size": 2, "n_example_images": 3}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params(params)))
    return tmp_path


def test_stage_counts_images_that_cannot_reach_the_margin_as_not_reached(workspace):
    main([DATASET, "--params", str(workspace / "params.yaml")])
    saved = load_arrays(output_path(DATASET))
    assert saved["image_index"].tolist() == [0, 1, 2] and saved["target"].tolist() == [0, 1, 2]
    assert saved["reached"].tolist() == [True, True, False]       # class 2 can never lead by the margin
    assert saved["steps"][2] == 30 and (saved["steps"][:2] < 30).all()

    out = paths.plots_dir(DATASET, "optimize_counterfactuals")
    curve = pd.read_csv(out / "success_curve.csv")
    assert len(curve) == 31 and curve["share_reached"].iloc[0] == 0.0
    assert curve["share_reached"].is_monotonic_increasing
    assert curve["share_reached"].iloc[-1] == pytest.approx(2 / 3)

    metrics = json.loads(paths.metrics_path(DATASET, "optimize_counterfactuals").read_text())
    assert set(metrics) == {"success_rate", "mean_l1", "frechet_distance", "gan_success_rate"}
    assert metrics["success_rate"] == pytest.approx(float((saved["predicted"] == saved["target"]).mean()), abs=1e-6)
    l1 = np.abs(saved["counterfactual"].astype(np.float64) - saved["real"].astype(np.float64)).sum((1, 2, 3)) / 255
    assert metrics["mean_l1"] == pytest.approx(l1.mean(), rel=1e-5)
    assert metrics["gan_success_rate"] == 0.5                     # of the two shared pairs, one judged right
    details = json.loads((out / "details.json").read_text())
    assert details["margin_reached_rate"] == pytest.approx(2 / 3, abs=1e-6)
    assert details["gan"]["n"] == details["matched"]["n"] == 2 and details["n_misclassified"] == 3
    assert len(pd.read_csv(out / "changes" / "optimisation.csv")) == 3
    assert len(pd.read_csv(out / "changes" / "gan.csv")) == 2
    pictures = paths.pictures_dir(DATASET, "optimize_counterfactuals")
    assert (pictures / "examples.png").stat().st_size > 1000 and (pictures / "comparison.png").stat().st_size > 1000
