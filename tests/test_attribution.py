"""Attribution scores and methods on constructed cases whose answer is known."""
import json

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from pipeline import paths
from pipeline.stages.attribute import RANDOM_STREAMS, main, random_streams
from pipeline.attribution.faithfulness import gaussian_perturbation, random_deletion_order
from pipeline.attribution.image_sets import image_sets
from pipeline.attribution.method_scores import REINITIALIZED, headline
from pipeline.attribution.methods import (ATTRIBUTION_METHODS, AttributionOptions, Negated, blurred, gradcam_explainer,
                                          make_explainer, noise_baseline, skip_reason)
from pipeline.attribution.scores import (channel_shares, color_scores, colormap_channel_std, curve_area, deletion_curve,
                                         foreground_mask, pixel_map, rank_correlation, segmentation_iou)
from pipeline.config import ConfigError
from pipeline.scoring.chance import Lift, not_judged
from pipeline.scoring.relevance import SUPPORT
from pipeline.data.known_answer import ColorRule, PlantedShortcuts
from pipeline.data.shortcuts import Shortcut
from pipeline.models.classifiers import DenseClassifier, build_seeded_classifier, frozen, save_model
from pipeline.runtime import StageContext, StageTimer
from pipeline.storage import save_arrays, write_json
from tests.conftest import params_with, repo_params
from tests.dvc_stages import stage_outputs

PIXEL = (0, 5, 17)  # channel, row, col the one-pixel model reads


class OnePixel(nn.Module):
    """Two classes; the logit of class 0 is 6 * (pixel - 0.5), class 1 is its negative."""

    def forward(self, x):
        value = 6.0 * (x[:, PIXEL[0], PIXEL[1], PIXEL[2]] - 0.5)
        return torch.stack([value, -value], dim=1)


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


def test_colormap_alignment_is_undefined_when_relevance_is_spread_evenly_over_the_channels():
    """Occlusion of all channels at once gives each channel the same relevance: no channel preference to align."""
    std = colormap_channel_std(["autumn", "winter"])
    even = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)).expand(2, 3, 28, 28)
    attribution = even * torch.tensor([1.0, 1.0 + 1e-6, 1.0 - 1e-6]).reshape(1, 3, 1, 1)  # float noise, as occlusion leaves
    scores = color_scores(attribution, torch.tensor([0, 1]), ["autumn", "winter"], std)
    assert scores["channel_share"]["red"] == pytest.approx(1 / 3)
    assert np.isnan(scores["colormap_alignment"])


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
    cfg = AttributionOptions(ig_steps=16, occlusion_window=3, occlusion_stride=1, smoothgrad_samples=4)
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


def linear_model(n_classes: int = 2) -> nn.Module:
    """logit_c = w_c . x + b_c: every gradient method has a closed-form answer on it."""
    torch.manual_seed(0)
    return frozen(nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, n_classes)), "cpu")


class RedMinusGreen(nn.Module):
    """Two feature maps A = ReLU(red), ReLU(green), averaged; logit_0 = mean(A_red - A_green), logit_1 = its negative.

    Grad-CAM on A for class 0 is ReLU(red - green) / (H * W); against class 0 it is ReLU(green - red) / (H * W).
    """

    def __init__(self):
        super().__init__()
        self.select = nn.Conv2d(3, 2, 1, bias=False)
        self.relu = nn.ReLU()
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.select.weight.zero_()
            self.select.weight[0, 0] = 1.0
            self.select.weight[1, 1] = 1.0
            self.head.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.relu

    def forward(self, x):
        return self.head(self.relu(self.select(x)).mean(dim=(2, 3)))


LINEAR_METHODS = ["ig_zero", "ig_noise", "ig_blur", "saliency", "inputxgrad", "deeplift", "guided_backprop",
                  "occlusion", "smoothgrad"]
CONV_METHODS = ["gradcam", "guided_gradcam"]


def test_every_method_has_a_known_answer_test():
    assert sorted(LINEAR_METHODS + CONV_METHODS) == sorted(ATTRIBUTION_METHODS)


def test_the_params_allow_exactly_the_library_methods():
    from pipeline import config

    assert tuple(config.ATTRIBUTION_METHODS) == ATTRIBUTION_METHODS


@pytest.mark.parametrize("name", LINEAR_METHODS)
def test_every_method_gives_the_closed_form_answer_on_a_linear_model(name):
    """Batched, with a different target per image: gradient w_t, input x gradient (x - baseline) * w_t."""
    model = linear_model()
    w = model[1].weight.reshape(2, 3, 28, 28)
    cfg = AttributionOptions(ig_steps=8, smoothgrad_samples=4, occlusion_window=4, occlusion_stride=4)
    images = torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 0])
    noise = noise_baseline((3, 28, 28), torch.Generator().manual_seed(2))
    w_t = w[targets]
    window_sums = (images * w_t).reshape(3, 3, 7, 4, 7, 4).sum(dim=(1, 3, 5), keepdim=True)
    expected = {
        "saliency": w_t.abs(), "smoothgrad": w_t.abs(),  # the gradient is the same at every noisy copy
        "guided_backprop": w_t,                          # no ReLU to guide
        "inputxgrad": images * w_t, "deeplift": images * w_t, "ig_zero": images * w_t,
        "ig_noise": (images - noise) * w_t,
        "ig_blur": (images - blurred(images, cfg.blur_kernel_size, cfg.blur_sigma)) * w_t,
        "occlusion": window_sums.expand(3, 3, 7, 4, 7, 4).reshape(3, 3, 28, 28),  # each 4x4 window's effect, spread over it
    }[name]
    attribution = make_explainer(name, model, cfg, noise)(images, targets)
    assert torch.allclose(attribution, expected, atol=1e-6), (attribution - expected).abs().max()


def test_gradcam_and_guided_gradcam_give_the_closed_form_answer():
    model = frozen(RedMinusGreen(), "cpu")
    images = torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 0])
    evidence = torch.where(targets == 0, 1.0, -1.0).reshape(3, 1, 1) * (images[:, 0] - images[:, 1])  # red - green for class 0
    cam = evidence.clamp(min=0) / (28 * 28)
    cfg = AttributionOptions()
    gradcam = make_explainer("gradcam", model, cfg)(images, targets)
    assert torch.allclose(gradcam, (cam / 3).unsqueeze(1).expand_as(images), atol=1e-9)  # spread over the 3 channels
    # guided backprop lets through only the channel of positive evidence (red for class 0, green for class 1)
    guided = torch.zeros_like(images)
    guided[targets == 0, 0] = (images[targets == 0, 0] > 0).float() / (28 * 28)
    guided[targets == 1, 1] = (images[targets == 1, 1] > 0).float() / (28 * 28)
    guided_gradcam = make_explainer("guided_gradcam", model, cfg)(images, targets)
    assert torch.allclose(guided_gradcam, guided * cam.unsqueeze(1), atol=1e-9)


def test_counterfactual_gradcam_shows_the_evidence_against_the_class():
    model = frozen(RedMinusGreen(), "cpu")
    images = torch.rand(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(Negated(model)(images), -model(images))
    targets = torch.zeros(4, dtype=torch.long)
    against = gradcam_explainer(model, counterfactual=True)(images, targets)
    expected = (images[:, 1] - images[:, 0]).clamp(min=0) / (28 * 28) / 3  # green over red: evidence against class 0
    assert torch.allclose(against, expected.unsqueeze(1).expand_as(images), atol=1e-9)


def test_conv_methods_are_skipped_for_the_dense_model_with_a_reason():
    dense = frozen(DenseClassifier(4, width=8), "cpu")
    cfg = AttributionOptions()
    for name in ATTRIBUTION_METHODS:
        needs_conv = name in CONV_METHODS
        assert (skip_reason(name, dense) is not None) == needs_conv, name
        if needs_conv:
            with pytest.raises(ValueError, match="convolutional"):
                make_explainer(name, dense, cfg)
    with pytest.raises(ValueError, match="baseline"):
        make_explainer("ig_noise", dense, cfg)  # without its noise image


# ---------------------------------------------------------------------------------------------
# random streams of the stage
# ---------------------------------------------------------------------------------------------
def stage_context(dataset: str = "clever_hans", seed: int = 0, device: str = "cpu") -> StageContext:
    device = torch.device(device)
    return StageContext(dataset, params_with({"seed": seed}), device, StageTimer("attribute", dataset, device))


def stream_draws(ctx: StageContext) -> dict[str, torch.Tensor]:
    """The first image-sized draw of each random use of the stage."""
    shape = (3, 28, 28)
    streams = random_streams(ctx)
    config = {"architecture": "dense", "n_classes": 2, "width": 1}
    model = build_seeded_classifier(config, streams["randomized_model"].initial_seed())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(streams["captum"].initial_seed())
        captum_draw = torch.rand(shape)
    return {
        "noise_baseline": noise_baseline(shape, streams["noise_baseline"])[0],
        "deletion_order": random_deletion_order((2, *shape), streams["deletion_order"])[0],
        "infidelity": gaussian_perturbation(1.0, streams["infidelity"])(torch.zeros(1, *shape))[0][0],
        "randomized_model": model.embedding[1].weight[0].reshape(shape),
        "captum": captum_draw,
    }


def test_every_random_draw_of_the_attribute_stage_has_its_own_stream():
    ctx = stage_context(device="cuda")  # a GPU run: the streams still live on the CPU
    streams = random_streams(ctx)
    assert set(streams) == set(RANDOM_STREAMS)
    assert all(g.device.type == "cpu" for g in streams.values())
    assert len({g.initial_seed() for g in streams.values()}) == len(streams)
    draws = stream_draws(ctx)
    # the random deletion order is not the ig_noise baseline (as it was when both came from one seed)
    assert not torch.equal(draws["noise_baseline"], draws["deletion_order"])
    correlation = torch.corrcoef(torch.stack([draws["noise_baseline"].flatten(), draws["deletion_order"].flatten()]))[0, 1]
    assert abs(correlation) < 0.1
    again = stream_draws(stage_context(device="cuda"))
    assert all(torch.equal(draws[k], again[k]) for k in draws)  # reproducible from the global seed
    other_seed = stream_draws(stage_context(seed=1))
    assert not any(torch.equal(draws[k], other_seed[k]) for k in draws)


def test_the_headline_is_the_most_faithful_methods_lift_chosen_without_the_answer():
    """b has the lowest deletion AUC, so b's lift is the headline, though c's lift is larger: the largest of several
    lifts would flatter. When b was not judged on the figure, the headline is not judged either (null, the reason)."""
    details = {"random_order_deletion_auc": 0.4, "methods": {
        "a": {"deletion_auc": 0.30, "channel_share": {"red": 1.0}},
        "b": {"deletion_auc": 0.10},
        "c": {"deletion_auc": 0.20},
    }}
    lifts = {"relevance_mass_flipped": {"a": Lift(0.9, 0.9, -0.02, 0.02, 50, SUPPORT),
                                        "b": Lift(0.3, 0.1, 0.15, 0.25, 50, SUPPORT),
                                        "c": Lift(0.5, 0.1, 0.35, 0.45, 50, SUPPORT)}}
    metrics, best = headline(details, lifts, ("shortcut_relevance_mass_flipped",))
    assert metrics == pytest.approx({"best_deletion_auc": 0.10, "random_order_deletion_auc": 0.4,
                                     "shortcut_relevance_mass_flipped_lift": 0.2,
                                     "shortcut_relevance_mass_flipped_lift_low": 0.15,
                                     "shortcut_relevance_mass_flipped_lift_high": 0.25})
    assert best == {"best_deletion_auc": "b", "shortcut_relevance_mass_flipped": "b"}
    lifts["relevance_mass_flipped"]["b"] = not_judged("empty maps")
    metrics, best = headline(details, lifts, ("shortcut_relevance_mass_flipped",))
    assert metrics["shortcut_relevance_mass_flipped_lift"] != metrics["shortcut_relevance_mass_flipped_lift"]   # NaN
    assert best["shortcut_relevance_mass_flipped"] is None


def test_a_headline_no_method_was_judged_on_is_null_not_zero(tmp_path):
    details = {"random_order_deletion_auc": 0.4, "methods": {"a": {"deletion_auc": 0.3}}}
    metrics, best = headline(details, {"relevance_mass_flipped": {"a": not_judged("empty maps")}},
                             ("shortcut_relevance_mass_flipped",))
    assert best["shortcut_relevance_mass_flipped"] is None
    write_json(tmp_path / "metrics.json", metrics)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert [written[f"shortcut_relevance_mass_flipped_lift{end}"] for end in ("", "_low", "_high")] == [None] * 3


def stamped_digits(n=40):
    """n images: a gray digit stroke (48 pixels) and a red 4x4 stamp in the corner (16 pixels); and the stamp's region."""
    images = torch.zeros(n, 3, 28, 28)
    images[:, :, 10:16, 10:18] = 0.5
    images[:, 0, :4, :4] = 1.0
    region = torch.zeros(28, 28, dtype=torch.bool)
    region[:4, :4] = True
    return images, region


def streams(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(len(name))


def test_an_input_times_gradient_map_on_a_stamped_digit_is_held_to_the_stamps_share_of_its_non_black_pixels():
    """A map that knows nothing, input x a gradient of 1 everywhere, credits only the 64 non-black pixels; 16 of
    them lie on the stamp. Its chance level is 16 / 64 for relevance mass and pointing game alike (not 16 / 784, the
    stamp's share of the image, which its relevance mass 16 / (16 + 48 x 1.5) = 0.18 would beat). A saliency-like
    map that is 1 everywhere is held to 16 / 784."""
    from pipeline.attribution.method_scores import localization_lifts

    images, region = stamped_digits()
    support_chance = 16 / 64
    uninformative = localization_lifts(images * 1.0, region, streams, "none")
    assert uninformative["relevance_mass"].chance == pytest.approx(support_chance)
    assert uninformative["relevance_mass"].score == pytest.approx(16 / 88)
    assert uninformative["relevance_mass"].verdict == "below chance"
    assert uninformative["pointing_game"].chance == pytest.approx(support_chance)
    assert uninformative["pointing_game"].score == 0.0   # a tie for the top pixel (16 red pixels at 1.0): a miss
    assert uninformative["pointing_game"].verdict == "below chance"
    flat = localization_lifts(torch.ones(40, 3, 28, 28), region, streams, "none")
    assert flat["relevance_mass"].chance == pytest.approx(16 / 784) and flat["relevance_mass"].lift == pytest.approx(0)
    on_stamp = images.clone()
    on_stamp[:, :, 10:16, 10:18] *= 0.01              # the same support, nearly all relevance on the stamp
    on_stamp[:, 0, 1, 1] += 1.0                      # a single top pixel, on the stamp
    found = localization_lifts(on_stamp, region, streams, "none")
    assert found["relevance_mass"].chance == pytest.approx(support_chance)
    assert found["relevance_mass"].verdict == "above chance" and found["relevance_mass"].score > 0.95
    assert found["pointing_game"].score == 1.0 and found["pointing_game"].lift == pytest.approx(1 - support_chance)


def bright_stamp(n=40):
    """n images: a dim gray digit stroke (48 pixels at 0.3) and a white 4x4 stamp in the corner (16 pixels, its pixel
    (1, 1) the brightest: a single top pixel); and the stamp's region."""
    images, region = stamped_digits(n)
    images[:, :, 10:16, 10:18] = 0.3
    images[:, :, :4, :4] = 0.9
    images[:, :, 1, 1] = 1.0
    return images, region


def test_a_map_that_follows_the_input_alone_has_no_lift_over_the_reinitialised_model():
    """Input x a constant knows nothing of the model: a re-initialised classifier gets the same map (up to the
    constant), so relevance mass and pointing game are exactly its chance level (lift 0, no better than chance). Beside
    the uniform map on its support alone (16 / 64) the bright stamp would look found: relevance mass 0.50, pointing
    game 1."""
    from pipeline.attribution.method_scores import REINITIALIZED, localization_lifts

    images, region = bright_stamp()
    alone = localization_lifts(images * 2.0, region, streams, "none")
    assert alone["relevance_mass"].chance == pytest.approx(16 / 64) and alone["relevance_mass"].verdict == "above chance"
    assert alone["pointing_game"].score == 1.0 and alone["pointing_game"].verdict == "above chance"
    lifts = localization_lifts(images * 2.0, region, streams, "none", reinitialized=images * 0.5)
    for figure in ("relevance_mass", "pointing_game"):
        lift = lifts[figure]
        assert lift.reference == REINITIALIZED and set(lift.references) == {SUPPORT, REINITIALIZED}
        assert lift.score == pytest.approx(alone[figure].score) and lift.chance == pytest.approx(lift.score)
        assert lift.lift == pytest.approx(0.0) and lift.verdict == "no better than chance", figure
    assert lifts["relevance_mass"].score == pytest.approx((15 * 2.7 + 3) / (15 * 2.7 + 3 + 48 * 0.9))


def test_fewer_images_than_the_floor_are_not_judged_however_clear_the_map():
    """Two flipped images whose maps sit on the stamp alone: a bootstrap over two images has no width worth the name,
    so no verdict; ten such images are found."""
    from pipeline.attribution.method_scores import localization_lifts
    from pipeline.scoring.chance import MIN_ITEMS

    images, region = stamped_digits(MIN_ITEMS)
    on_stamp = torch.full_like(images, 0.01)     # every pixel credited a little, the stamp a lot
    on_stamp[:, :, :4, :4] = 1.0
    two = localization_lifts(on_stamp[:2], region, streams, "none")
    assert all(lift.verdict == "not judged" and "only 2 images, fewer than 10" in lift.reason for lift in two.values())
    assert localization_lifts(on_stamp, region, streams, "none")["relevance_mass"].verdict == "above chance"
    assert localization_lifts(on_stamp[:0], region, streams, "none")["relevance_mass"].reason == "none"   # the caller's


def test_a_map_that_the_model_draws_to_the_stamp_beats_the_reinitialised_model_and_an_empty_one_scores_nothing():
    """The model's map puts nearly all relevance on the stamp, the re-initialised model's follows the input (half of it
    on the stamp): lift over the higher chance level, the re-initialised model's. An empty map of the re-initialised
    model credits the stamp nothing (0, a miss): the uniform map binds, as without it."""
    from pipeline.attribution.method_scores import REINITIALIZED, localization_lifts

    images, region = bright_stamp()
    on_stamp = images.clone()
    on_stamp[:, :, 10:16, 10:18] *= 0.01
    lifts = localization_lifts(on_stamp, region, streams, "none", reinitialized=images)
    mass = lifts["relevance_mass"]
    assert mass.reference == REINITIALIZED and mass.chance == pytest.approx((15 * 2.7 + 3) / (15 * 2.7 + 3 + 48 * 0.9))
    assert mass.score > 0.98 and mass.verdict == "above chance"
    empty = localization_lifts(on_stamp, region, streams, "none", reinitialized=torch.zeros_like(images))
    plain = localization_lifts(on_stamp, region, streams, "none")
    for figure in ("relevance_mass", "pointing_game"):
        assert empty[figure].references[REINITIALIZED] == 0.0 and empty[figure].reference == SUPPORT
        assert empty[figure].n == plain[figure].n == 40 and empty[figure].lift == pytest.approx(plain[figure].lift)


def test_the_reinitialised_classifier_is_the_architecture_with_seeded_weights_and_not_available_for_torchscript():
    from pipeline.stages.attribute import reinitialized_classifier

    resnet = {"architecture": "torchvision", "torchvision": "resnet18", "n_classes": 3, "input_shape": (3, 32, 32)}
    first, what = reinitialized_classifier(resnet, 5, "cpu")
    again, _ = reinitialized_classifier(resnet, 5, "cpu")
    other, _ = reinitialized_classifier(resnet, 6, "cpu")
    weight = lambda m: m.network.conv1.weight
    assert torch.equal(weight(first), weight(again)) and not torch.equal(weight(first), weight(other))
    assert "torchvision resnet18" in what and not any(p.requires_grad for p in first.parameters())
    cnn, what = reinitialized_classifier({"architecture": "cnn", "n_classes": 10, "width": 4}, 5, "cpu")
    assert cnn is not None and "cnn" in what
    script, what = reinitialized_classifier({"architecture": "torchscript", "n_classes": 3, "input_shape": (3, 32, 32)},
                                            5, "cpu")
    assert script is None and what.startswith("not available")


def test_an_all_zero_map_is_not_judged_on_relevance_mass_and_misses_the_pointing_game():
    from pipeline.attribution.method_scores import localization_lifts

    _, region = stamped_digits()
    corner = torch.zeros(28, 28, dtype=torch.bool)
    corner[:20, :20] = True                           # the all-zero map's tie falls on pixel (0, 0), inside
    for mask in (region, corner):
        empty = localization_lifts(torch.zeros(10, 3, 28, 28), mask, streams, "no image")
        assert empty["relevance_mass"].verdict == "not judged"
        assert empty["relevance_mass"].reason == "no map credits any pixel positively"
        assert empty["pointing_game"].score == 0.0 and empty["pointing_game"].chance == 0.0
    none = localization_lifts(torch.zeros(0, 3, 28, 28), region, streams, "the stamp moves no image")
    assert none["pointing_game"].verdict == "not judged" and none["pointing_game"].reason == "the stamp moves no image"


class SquareMeansSeven(nn.Module):
    """Class 7 when pixel (2, 2) is bright red, else class 0."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # inference helpers find the device from a parameter

    def forward(self, x):
        logits = torch.zeros(len(x), 10)
        logits[:, 7] = (x[:, 0, 2, 2] > 0.5).float() * 10
        logits[:, 0] = 1.0
        return logits


def test_image_sets_for_planted_shortcuts_stamp_the_shortcut_class_and_the_images_the_stamp_flips():
    from pipeline.data.known_answer import PlantedShortcuts
    from pipeline.data.shortcuts import Shortcut

    n = 40
    labels = torch.arange(n) % 10
    answer = PlantedShortcuts((Shortcut(label=7, kind="square", position=[1, 1], side=4, color=[1.0, 0.0, 0.0]),), (28, 28))
    clean = torch.zeros(n, 3, 28, 28, dtype=torch.uint8)
    clean[:5, 0, 2, 2] = 255   # five images already red there: stamped or not, the model calls them 7; not flipped by it
    clean[:5, 1:, 2, 2] = 255
    test = {"images": clean, "clean_images": clean, "labels": labels}
    sets = image_sets(test, torch.zeros(n, dtype=torch.long), SquareMeansSeven(), 8, 3, 4096, np.random.default_rng(0),
                      answer)
    assert len(sets["sample"]["targets"]) == 8
    assert (labels[sets["shortcut"]["index"]] == 7).all() and len(sets["shortcut"]["index"]) == 3
    assert (labels[sets["flipped"]["index"]] != 7).all() and len(sets["flipped"]["index"]) == 3
    assert (sets["flipped"]["targets"] == 7).all()
    assert (sets["flipped"]["images"][:, 0, 1:5, 1:5] == 255).all() and (sets["flipped"]["images"][:, 1:, 1:5, 1:5] == 0).all()
    assert sets["flipped"]["masks"].shape == (3, 28, 28) and sets["flipped"]["masks"][0].sum() == 16
    assert torch.equal(sets["flipped"]["masks"][0], torch.from_numpy(answer.region(0)))
    without = image_sets(test, torch.zeros(n, dtype=torch.long), SquareMeansSeven(), 8, 3, 4096, np.random.default_rng(0))
    assert list(without) == ["sample"]


@pytest.mark.parametrize("key, value, must_name", [
    ("methods", ["saliency", "lime"], "attribution.methods[1]"),
    ("methods", ["saliency", "saliency"], "distinct"),
    ("blur_kernel_size", 4, "attribution.blur_kernel_size"),
    ("n_sensitivity_images", 0, "attribution.n_sensitivity_images"),
    ("contrastive_method", "shap", "attribution.contrastive_method"),
])
def test_invalid_attribution_params_are_named(key, value, must_name):
    with pytest.raises(ConfigError, match=must_name.replace("[", r"\[").replace("]", r"\]")):
        params_with({"attribution": {key: value}})


# ---------------------------------------------------------------------------------------------
# the stage: headline metrics, details and declared outputs
# ---------------------------------------------------------------------------------------------
HEADLINE_KEYS = {
    "colored_mnist": {"best_deletion_auc", "random_order_deletion_auc", "digit_relevance_mass_lift",
                      "digit_relevance_mass_lift_low", "digit_relevance_mass_lift_high"},
    "clever_hans": {"best_deletion_auc", "random_order_deletion_auc", "shortcut_relevance_mass_flipped_lift",
                    "shortcut_relevance_mass_flipped_lift_low", "shortcut_relevance_mass_flipped_lift_high"},
}
STAGE_METHODS = ["ig_noise", "saliency", "gradcam"]


def write_stage_inputs(dataset: str, n_images: int = 12) -> None:
    """A prepared test split, its meta and a CNN classifier under the cwd, as prepare and train_classifier leave them."""
    rng = np.random.default_rng(0)
    n_classes = 4 if dataset == "colored_mnist" else 10
    images = (rng.random((n_images, 3, 28, 28)) < 0.2).astype(np.uint8) * 200
    labels = (np.arange(n_images) % n_classes).astype(np.int64)
    test = {"images": images, "labels": labels}
    meta = {"n_classes": n_classes, "class_names": [str(c) for c in range(n_classes)],
            "known_answer": ColorRule(("spring", "summer", "autumn", "winter")).to_meta()}
    if dataset == "clever_hans":
        test.update(clean_images=images)
        meta["known_answer"] = PlantedShortcuts((Shortcut(label=7, kind="square", position=[1, 1], side=4),), (28, 28)).to_meta()
    save_arrays(paths.prepared_dir(dataset) / "test.npz", **test)
    write_json(paths.prepared_dir(dataset) / "meta.json", meta)
    config = {"architecture": "cnn", "n_classes": n_classes, "width": 4}
    save_model(paths.classifier_path(dataset), build_seeded_classifier(config, 0), config)


def declared(stage_name: str, dataset: str) -> tuple[list[str], list[str]]:
    """The stage's declared outputs, metrics and plots, and its plots alone, for ``dataset``."""
    return list(stage_outputs(stage_name, dataset)), list(stage_outputs(stage_name, dataset, ("plots",)))


@pytest.mark.parametrize("dataset", ["colored_mnist", "clever_hans"])
def test_stage_writes_three_headline_numbers_and_every_declared_output(dataset, tmp_path, monkeypatch):
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    write_stage_inputs(dataset)
    settings = {"n_images": 6, "methods": STAGE_METHODS, "batch_size": 4, "internal_batch_size": 64, "ig_steps": 2,
                "deletion_steps": 4, "n_faithfulness_images": 2, "infidelity_samples": 2, "n_sensitivity_images": 1,
                "sensitivity_samples": 2, "n_localization_images": 2, "segmentation_thresholds": 4,
                "n_contrastive_images": 2, "contrastive_method": "saliency", "n_gallery_images": 2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params({"device": "cpu", "attribution": settings})))
    main([dataset])

    metrics = json.loads(paths.metrics_path(dataset, "attribution").read_text())
    assert set(metrics) == HEADLINE_KEYS[dataset]
    assert all(value is None or isinstance(value, (int, float)) for value in metrics.values())
    details = json.loads((paths.plots_dir(dataset, "attribute") / "details.json").read_text())
    assert list(details["methods"]) == STAGE_METHODS
    deletion = {m: s["deletion_auc"] for m, s in details["methods"].items()}
    assert metrics["best_deletion_auc"] == pytest.approx(min(deletion.values()), abs=1e-6)
    assert deletion[details["best_methods"]["best_deletion_auc"]] == pytest.approx(min(deletion.values()), abs=1e-6)
    assert metrics["random_order_deletion_auc"] == details["random_order_deletion_auc"]
    figure = "relevance_mass_flipped" if dataset == "clever_hans" else "relevance_mass_digit"
    assert set(details["chance"][figure]) == set(STAGE_METHODS)
    assert "chosen without the known answer" in details["best_methods_chosen_by"]
    best = details["best_methods"][next(k for k in details["best_methods"] if k != "best_deletion_auc")]
    judged = {m: r for m, r in details["chance"][figure].items() if r["verdict"] != "not judged"}
    if best in judged:   # the most faithful method's lift, its interval beside it
        assert best == details["best_methods"]["best_deletion_auc"]
        key = next(k for k in metrics if k.endswith("_lift"))
        assert metrics[key] == pytest.approx(judged[best]["lift"], abs=1e-6)
        assert [metrics[key + "_low"], metrics[key + "_high"]] == pytest.approx(judged[best]["interval"], abs=1e-6)
    assert "cnn" in details["reinitialized_model"]
    for record in (r for per_method in details["chance"].values() for r in per_method.values()):   # both chance levels
        assert record["verdict"] == "not judged" or set(record["chance_levels"]) == {SUPPORT, REINITIALIZED}
        assert record["verdict"] == "not judged" or record["chance"] == max(record["chance_levels"].values())
    spearman = {m: s["randomization_spearman"] for m, s in details["methods"].items()}   # the same copy's maps
    assert all(-1 <= spearman[m] <= 1 for m in ("ig_noise", "saliency")), spearman
    scores = pd.read_csv(paths.plots_dir(dataset, "attribute") / "method_scores.csv")
    assert scores["method"].tolist() == STAGE_METHODS
    assert scores["deletion_auc"].tolist() == pytest.approx(list(deletion.values()), abs=1e-5)
    chance = [details["chance"]["relevance_mass_digit"][m]["chance"] for m in STAGE_METHODS]   # null: not judged
    written = [None if np.isnan(v) else v for v in scores["relevance_mass_digit_chance"]]     # beside its raw figure
    assert written == pytest.approx(chance, abs=1e-5)

    outputs, plotted = declared("attribute", dataset)
    missing = [o for o in outputs if not (tmp_path / o).exists()]
    assert not missing, f"declared in dvc.yaml but not written: {missing}"
    written = [p.relative_to(tmp_path).as_posix() for p in (tmp_path / "plots").rglob("*.csv")]
    undeclared = [f for f in written if not any(f == p or f.startswith(p + "/") for p in plotted)]
    assert not undeclared, f"plot data missing from dvc.yaml's plots: {undeclared}"


def test_a_torchscript_classifier_has_no_reinitialised_chance_level_and_keeps_the_uniform_map(tmp_path, monkeypatch):
    """A TorchScript network cannot be rebuilt with fresh weights: details say the re-initialised model is not
    available, the randomisation check is null (not measured), and every figure stands beside the uniform map alone."""
    import warnings

    from pipeline.models.classifiers import classifier_from_file

    monkeypatch.chdir(tmp_path)
    write_stage_inputs("clever_hans")
    network = build_seeded_classifier({"architecture": "cnn", "n_classes": 10, "width": 4}, 0).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(network, torch.zeros(1, 3, 28, 28)).save(str(tmp_path / "model.ts"))
    config = {"architecture": "torchscript", "n_classes": 10, "input_shape": (3, 28, 28)}
    model, extra = classifier_from_file(config, tmp_path / "model.ts")
    save_model(paths.classifier_path("clever_hans"), model, config, **extra)
    settings = {"n_images": 10, "methods": ["saliency", "inputxgrad"], "batch_size": 4, "internal_batch_size": 64,
                "deletion_steps": 4, "n_faithfulness_images": 2, "infidelity_samples": 2, "n_sensitivity_images": 1,
                "sensitivity_samples": 2, "n_localization_images": 2, "segmentation_thresholds": 4,
                "n_contrastive_images": 2, "contrastive_method": "saliency", "n_gallery_images": 2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params({"device": "cpu", "attribution": settings})))
    main(["clever_hans"])   # 10 sampled images: their digit figures are judged (MIN_ITEMS)

    details = json.loads((paths.plots_dir("clever_hans", "attribute") / "details.json").read_text())
    assert details["reinitialized_model"].startswith("not available") and "TorchScript" in details["reinitialized_model"]
    assert all(s["randomization_spearman"] is None for s in details["methods"].values())
    records = [r for per_method in details["chance"].values() for r in per_method.values()]
    judged = [r for r in records if r["verdict"] != "not judged"]
    assert judged and all(r["chance_level"] == SUPPORT and "chance_levels" not in r for r in judged)

