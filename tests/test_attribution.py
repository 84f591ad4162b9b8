"""Attribution scores and methods on constructed cases whose answer is known."""
import numpy as np
import pytest
import torch
from torch import nn

from pipeline.attribute import color_scores, image_sets
from pipeline.attribution_methods import Negated, gradcam_explainer, make_explainer, skip_reason
from pipeline.attribution_scores import (channel_shares, colormap_channel_std, curve_area, deletion_curve, foreground_mask,
                                         pixel_map, pointing_game, rank_correlation, relevance_mass, segmentation_iou)
from pipeline.config import ATTRIBUTION_METHODS, AttributionParams, ConfigError, Params, build
from pipeline.models import CNNClassifier, DenseClassifier, frozen

PIXEL = (0, 5, 17)  # channel, row, col the one-pixel model reads


class OnePixel(nn.Module):
    """Two classes; the logit of class 0 is 6 * (pixel - 0.5), class 1 is its negative."""

    def forward(self, x):
        value = 6.0 * (x[:, PIXEL[0], PIXEL[1], PIXEL[2]] - 0.5)
        return torch.stack([value, -value], dim=1)


def square_mask(size=28, top=1, left=1, side=4):
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top:top + side, left:left + side] = True
    return mask


# ---------------------------------------------------------------------------------------------
# localization
# ---------------------------------------------------------------------------------------------
def test_relevance_mass_of_the_mask_itself_is_one():
    mask = square_mask()
    attribution = mask.float().expand(5, 3, 28, 28)
    assert torch.allclose(relevance_mass(attribution, mask), torch.ones(5))
    assert torch.allclose(pointing_game(attribution, mask), torch.ones(5))


def test_relevance_mass_of_a_random_map_is_about_the_mask_area():
    mask = square_mask(side=7)
    attribution = torch.rand(400, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    mass = relevance_mass(attribution, mask).mean().item()
    assert mass == pytest.approx(49 / 784, abs=0.005)
    hits = pointing_game(attribution, mask).mean().item()
    assert 0.0 < hits < 0.2  # about 49/784 = 0.0625


def test_relevance_mass_counts_only_positive_relevance_and_handles_empty_maps():
    mask = square_mask()
    attribution = torch.zeros(3, 1, 28, 28)
    attribution[0, 0, 2, 2] = 1.0     # inside
    attribution[0, 0, 20, 20] = -5.0  # negative: ignored
    attribution[1, 0, 2, 2] = 1.0
    attribution[1, 0, 20, 20] = 3.0   # three quarters outside
    mass = relevance_mass(attribution, mask)
    assert mass[0].item() == pytest.approx(1.0) and mass[1].item() == pytest.approx(0.25)
    assert torch.isnan(mass[2])       # nothing positive: undefined, not a perfect score
    assert pointing_game(attribution, mask)[:2].tolist() == [1.0, 0.0]


def test_per_image_masks_are_respected():
    masks = torch.stack([square_mask(top=0, left=0), square_mask(top=20, left=20)])
    attribution = torch.zeros(2, 3, 28, 28)
    attribution[:, :, 1, 1] = 1.0     # inside the first image's mask only
    assert relevance_mass(attribution, masks).tolist() == [1.0, 0.0]


# ---------------------------------------------------------------------------------------------
# faithfulness
# ---------------------------------------------------------------------------------------------
def test_deletion_curve_drops_at_once_when_the_decisive_pixel_goes_first():
    model = OnePixel()
    images = torch.zeros(4, 3, 28, 28)
    images[:, PIXEL[0], PIXEL[1], PIXEL[2]] = 1.0
    targets = torch.zeros(4, dtype=torch.long)
    probability = lambda x: model(x).softmax(dim=1)  # noqa: E731
    right = torch.zeros_like(images)
    right[:, PIXEL[0], PIXEL[1], PIXEL[2]] = 1.0
    wrong = -right  # the decisive pixel comes last
    good = deletion_curve(probability, images, right, targets, 0.0, n_steps=10)
    bad = deletion_curve(probability, images, wrong, targets, 0.0, n_steps=10)
    high, low = torch.sigmoid(torch.tensor(6.0)).item(), torch.sigmoid(torch.tensor(-6.0)).item()
    assert good[:, 0] == pytest.approx(high, abs=1e-5) and torch.allclose(good[:, 1:], torch.full((4, 10), low), atol=1e-5)
    assert torch.allclose(bad[:, :-1], torch.full((4, 10), high), atol=1e-5)
    assert curve_area(good).mean() < 0.1 < 0.9 < curve_area(bad).mean()


def test_curve_area_of_constant_and_linear_curves():
    assert curve_area(torch.full((2, 11), 0.5)).tolist() == pytest.approx([0.5, 0.5])
    assert curve_area(torch.linspace(1, 0, 21)).item() == pytest.approx(0.5)


def test_rank_correlation_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    generator = torch.Generator().manual_seed(1)
    a = torch.randint(0, 5, (6, 40), generator=generator).float()  # many ties
    b = a + torch.rand(6, 40, generator=generator) * 3
    ours = rank_correlation(a, b)
    theirs = [spearmanr(a[i].numpy(), b[i].numpy()).statistic for i in range(6)]
    assert ours.tolist() == pytest.approx(theirs, abs=1e-5)
    assert rank_correlation(a, a).tolist() == pytest.approx([1.0] * 6)
    assert rank_correlation(a, -a).tolist() == pytest.approx([-1.0] * 6)
    assert torch.isnan(rank_correlation(torch.ones(1, 9), torch.rand(1, 9))).all()


# ---------------------------------------------------------------------------------------------
# color vs. shape, segmentation
# ---------------------------------------------------------------------------------------------
def test_channel_shares_and_colormap_variation():
    attribution = torch.zeros(2, 3, 28, 28)
    attribution[0, 1] = -2.0  # all on green (sign ignored)
    attribution[1, 0], attribution[1, 2] = 1.0, 3.0
    assert channel_shares(attribution).flatten().tolist() == pytest.approx([0, 1, 0, 0.25, 0, 0.75])
    std = colormap_channel_std(["autumn", "winter"])  # autumn = (1, s, 0); winter = (0, s, 1 - s/2)
    assert std[0, 0] == pytest.approx(0) and std[0, 2] == pytest.approx(0) and std[0, 1] > 0.25
    assert std[1, 0] == pytest.approx(0) and std[1, 1] == pytest.approx(2 * std[1, 2], rel=1e-3)


def test_color_scores_credit_the_channel_the_colormap_varies():
    std = colormap_channel_std(["autumn", "winter"])
    attribution = torch.zeros(2, 3, 28, 28)
    attribution[:, 1] = 1.0  # the green channel, which varies in both colormaps
    scores = color_scores(attribution, torch.tensor([0, 1]), ["autumn", "winter"], std)
    assert scores["channel_share"]["green"] == pytest.approx(1.0)
    assert scores["colormap_alignment"] > 0.8
    attribution = torch.zeros(2, 3, 28, 28)
    attribution[:, 0] = 1.0  # red: constant in autumn, absent in winter
    assert color_scores(attribution, torch.tensor([0, 1]), ["autumn", "winter"], std)["colormap_alignment"] < 0


def test_segmentation_iou_of_a_map_equal_to_the_digit():
    images = torch.zeros(3, 3, 28, 28, dtype=torch.uint8)
    images[:, :, 8:20, 10:16] = 200
    truth = foreground_mask(images)
    assert truth.sum().item() == 3 * 12 * 6
    cams = truth.float().unsqueeze(1) * torch.tensor([1.0, 2.0, 0.5]).reshape(3, 1, 1, 1)  # scale must not matter
    iou = segmentation_iou(cams, truth, torch.tensor([0.0, 0.5, 0.99]))
    assert iou[0].tolist() == pytest.approx([72 / 784] * 3)  # threshold 0 keeps the whole image
    assert iou[1:].flatten().tolist() == pytest.approx([1.0] * 6)


# ---------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ig_zero", "ig_blur", "saliency", "inputxgrad", "occlusion", "smoothgrad"])
def test_a_model_that_reads_one_pixel_gets_that_pixel(name):
    cfg = AttributionParams(ig_steps=16, occlusion_window=3, occlusion_stride=1, smoothgrad_samples=4)
    images = torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.5
    images[:, PIXEL[0], PIXEL[1], PIXEL[2]] = 0.9
    attribution = make_explainer(name, OnePixel(), cfg)(images, torch.zeros(3, dtype=torch.long))
    assert attribution.shape == images.shape
    relevance = pixel_map(attribution).abs()
    top = relevance.reshape(3, -1).argmax(dim=1)
    if name == "occlusion":  # every window over the pixel shares its effect: the 3x3 neighbourhood
        assert relevance[:, PIXEL[1], PIXEL[2]].tolist() == pytest.approx(relevance.amax(dim=(1, 2)).tolist())
    else:
        assert top.tolist() == [PIXEL[1] * 28 + PIXEL[2]] * 3
    if name == "ig_zero":  # completeness: the attributions add up to f(x) - f(0)
        model = OnePixel()
        gap = model(images)[:, 0] - model(torch.zeros_like(images))[:, 0]
        assert attribution.sum(dim=(1, 2, 3)).tolist() == pytest.approx(gap.tolist(), rel=1e-3)


def test_every_method_runs_batched_on_the_cnn_and_conv_methods_skip_the_dense_model():
    torch.manual_seed(0)
    cnn, dense = frozen(CNNClassifier(4, width=8), "cpu"), frozen(DenseClassifier(4, width=8), "cpu")
    cfg = AttributionParams(ig_steps=4, smoothgrad_samples=2, occlusion_window=7, occlusion_stride=7, internal_batch_size=64)
    images, targets = torch.rand(5, 3, 28, 28), torch.tensor([0, 1, 2, 3, 0])
    for name in ATTRIBUTION_METHODS:
        attribution = make_explainer(name, cnn, cfg)(images, targets)
        assert attribution.shape == images.shape and torch.isfinite(attribution).all(), name
        if skip_reason(name, dense):
            assert name in ("gradcam", "guided_gradcam")
            with pytest.raises(ValueError, match="convolutional"):
                make_explainer(name, dense, cfg)
        else:
            assert make_explainer(name, dense, cfg)(images, targets).shape == images.shape
    # the noise baseline is seeded: the same seed gives the same attributions
    one = make_explainer("ig_noise", cnn, cfg, seed=3)(images, targets)
    assert torch.equal(one, make_explainer("ig_noise", cnn, cfg, seed=3)(images, targets))


def test_counterfactual_gradcam_uses_the_negated_model():
    torch.manual_seed(0)
    cnn = frozen(CNNClassifier(3, width=8), "cpu")
    images = torch.rand(4, 3, 28, 28)
    assert torch.allclose(Negated(cnn)(images), -cnn(images))
    targets = torch.zeros(4, dtype=torch.long)
    normal = gradcam_explainer(cnn)(images, targets)
    against = gradcam_explainer(cnn, counterfactual=True)(images, targets)
    assert (normal >= 0).all() and (against >= 0).all()
    # ReLU(w . A) and ReLU(-w . A) are never both positive at the same place
    assert ((normal > 1e-7) & (against > 1e-7)).float().mean() < 0.05


def test_image_sets_for_clever_hans_pick_the_shortcut_class_and_flipped_images():
    n = 40
    labels = torch.arange(n) % 10
    alpha = torch.zeros(1, 28, 28)
    alpha[0, 1:5, 1:5] = 1.0
    test = {"images": torch.zeros(n, 3, 28, 28, dtype=torch.uint8), "labels": labels,
            "shortcut_images": torch.zeros(1, n, 3, 28, 28, dtype=torch.uint8), "shortcut_alpha": alpha,
            "shortcut_labels": torch.tensor([7])}
    test["shortcut_images"][0, :, :, 1:5, 1:5] = 255

    class SquareMeansSeven(nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = nn.Parameter(torch.zeros(1))  # inference helpers find the device from a parameter

        def forward(self, x):
            logits = torch.zeros(len(x), 10)
            logits[:, 7] = (x[:, 0, 2, 2] > 0.5).float() * 10
            logits[:, 0] = 1.0
            return logits

    cfg = AttributionParams(n_images=8, n_localization_images=3)
    sets = image_sets(test, torch.zeros(n, dtype=torch.long), SquareMeansSeven(), cfg, np.random.default_rng(0))
    assert len(sets["sample"]["targets"]) == 8
    assert (labels[sets["shortcut"]["index"]] == 7).all() and len(sets["shortcut"]["index"]) == 3
    assert (labels[sets["flipped"]["index"]] != 7).all() and len(sets["flipped"]["index"]) == 3
    assert (sets["flipped"]["targets"] == 7).all()
    assert sets["flipped"]["masks"].shape == (3, 28, 28) and sets["flipped"]["masks"][0].sum() == 16


@pytest.mark.parametrize("key, value, must_name", [
    ("methods", ["saliency", "lime"], "attribution.methods[1]"),
    ("methods", ["saliency", "saliency"], "distinct"),
    ("blur_kernel_size", 4, "attribution.blur_kernel_size"),
    ("n_sensitivity_images", 0, "attribution.n_sensitivity_images"),
    ("contrastive_method", "shap", "attribution.contrastive_method"),
])
def test_invalid_attribution_params_are_named(key, value, must_name):
    with pytest.raises(ConfigError, match=must_name.replace("[", r"\[").replace("]", r"\]")):
        build(Params, {"attribution": {key: value}})
