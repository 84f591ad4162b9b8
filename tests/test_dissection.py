"""Network dissection on hand-built networks whose units segment known regions."""
from __future__ import annotations

import copy

import pytest
import torch
import yaml
from torch import nn

from pipeline.config import ConfigError, Params, build
from pipeline.models.classifiers import conv_layers
from pipeline.evaluation.dissection import (REINITIALIZED, DissectionOptions, best_units, dissect, half_split, held_out_lifts,
                                            iou_ceiling, layer_maps, layer_summary, quantile_thresholds, same_layers,
                                            top_images, unit_masks, unit_thresholds)
from pipeline.scoring.masks import RANDOM_MASKS, WHOLE_IMAGE
from tests.conftest import REPO, repo_params

SIZE = 16
SQUARE = (slice(2, 6), slice(2, 6))   # 4x4, aligned to the 2x2 pooling blocks
STROKE_COLUMN = 12


class RedSquareNet(nn.Module):
    """conv1 channel 0: red minus green minus blue (positive on pure red only); channel 1: green (the gray stroke,
    never the red square). conv2 copies channel 0 at half resolution (after 2x2 max pooling)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 2, 1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(2, 1, 1)
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.zero_()
                conv.bias.zero_()
            self.conv1.weight[0, :, 0, 0] = torch.tensor([1.0, -1.0, -1.0])
            self.conv1.weight[1, :, 0, 0] = torch.tensor([0.0, 1.0, 0.0])
            self.conv2.weight[0, 0, 0, 0] = 1.0

    def forward(self, x):
        a = torch.relu(self.conv2(self.pool(torch.relu(self.conv1(x)))))
        return self.head(a.mean((2, 3)))


def red_square_data(n_images: int = 4, n_stamped: int = 2):
    """Black images with a vertical gray stroke of distinct intensities; the first ``n_stamped`` carry a red square.
    Concepts: ``square`` (its pixels where stamped) and ``stroke``."""
    images = torch.zeros(n_images, 3, SIZE, SIZE)
    rows = torch.arange(2, 14)
    images[:, :, rows, STROKE_COLUMN] = (0.4 + 0.04 * rows.float()).view(1, 1, -1) + 0.001 * torch.arange(n_images).view(-1, 1, 1)
    square = torch.zeros(n_images, SIZE, SIZE, dtype=torch.bool)
    square[:n_stamped, SQUARE[0], SQUARE[1]] = True
    images[:n_stamped, :, SQUARE[0], SQUARE[1]] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    stroke = images[:, 1] > 0
    return images, torch.stack([square, stroke], 1), ["square", "stroke"]


def streams(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(len(name))


def square_share(concepts: torch.Tensor) -> float:
    return concepts[:, 0].float().mean().item()


@pytest.mark.parametrize("activation", ["post_relu", "pre_relu"])
def test_a_unit_that_copies_the_square_scores_iou_one_and_one_blind_to_it_zero(activation):
    images, concepts, names = red_square_data()
    # A quantile that leaves exactly as many pixels above each unit's threshold as the square has.
    options = DissectionOptions(quantile=1.0 - square_share(concepts), activation=activation, batch_size=3)
    result = dissect(RedSquareNet(), images, concepts, names, options)
    iou = result.iou
    assert result.unit_names() == ["conv1/0", "conv1/1", "conv2/0"]
    # conv1/0 is positive on the square's pixels only; the threshold (the next largest value) is 0 post-ReLU and
    # 0 (the black background) pre-ReLU as well: the mask is the square, exactly.
    assert iou[0, 0] == pytest.approx(1.0) and iou[0, 1] == 0.0
    # conv2/0: the square at half resolution, upsampled bilinearly. Every square pixel (>= 0.5625) stays above every
    # pixel outside it (<= 0.25), so with the square's own share the mask is the square again: IoU exactly 1.
    assert iou[2, 0] == pytest.approx(1.0)
    # conv1/1 (green) never fires on the red square: IoU 0 with it; its top pixels are the stroke's brightest.
    assert iou[1, 0] == 0.0
    stroke_pixels = concepts[:, 1].sum().item()
    assert iou[1, 1] == pytest.approx(concepts[:, 0].sum().item() / stroke_pixels)
    assert result.detects(0.5)[:, 0].tolist() == [True, False, True]
    assert best_units(result)["square"]["unit"] in ("conv1/0", "conv2/0")


def test_a_smaller_quantile_lets_the_mask_overflow_the_square_and_the_iou_drop_to_its_ceiling():
    images, concepts, names = red_square_data()
    share = square_share(concepts)
    result = dissect(RedSquareNet(), images, concepts, names, DissectionOptions(quantile=1.0 - 2 * share))
    # conv2/0's upsampled map spreads past the square: twice its area is kept, so the IoU is one half at most.
    assert result.mask_share[2].item() == pytest.approx(2 * share)
    assert result.iou[2, 0].item() == pytest.approx(0.5)
    assert iou_ceiling(torch.tensor(2 * share), torch.tensor(share)).item() == pytest.approx(0.5)
    # conv1/0 is positive on the square only: post-ReLU its mask cannot grow past it (the zeros tie at the threshold).
    assert result.mask_share[0].item() == pytest.approx(share) and result.iou[0, 0].item() == pytest.approx(1.0)


def test_iou_is_accumulated_over_the_sample_not_averaged_over_images():
    images, concepts, names = red_square_data(n_images=2, n_stamped=2)
    images[1, :, 2:6, 2:6] = 0.0
    images[1, :, 2:4, 2:4] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)    # a 2x2 red square in image 1
    concepts[0, 0, 2:6, 6:10] = True      # image 0: the concept is twice the red square (per-image IoU 0.5)
    concepts[1, 0] = False
    concepts[1, 0, 2:4, 2:4] = True       # image 1: the concept is the red square (per-image IoU 1)
    red = 16 + 4
    options = DissectionOptions(quantile=1.0 - red / (2 * SIZE * SIZE))
    model = RedSquareNet()
    result = dissect(model, images, concepts, names, options, layers=conv_layers(model)[:1])
    assert len(result.iou) == 2    # only conv1's two units
    iou = result.iou[0, 0].item()
    assert iou == pytest.approx(red / (32 + 4))        # (16 + 4) / (32 + 4), not the mean of 0.5 and 1
    assert iou != pytest.approx(0.75)


def test_quantile_thresholds_leave_exactly_the_top_share_above_and_never_more_on_ties():
    values = torch.stack([torch.randperm(200).float(), torch.cat([torch.zeros(195), torch.arange(1.0, 6.0)])])
    thresholds = quantile_thresholds(values, 0.9)
    above = (values > thresholds[:, None]).sum(1)
    assert above.tolist() == [20, 5]         # row 0: the top 10 %; row 1: only its 5 positive values, never the zeros
    assert thresholds.tolist() == [179.0, 0.0]


@pytest.mark.parametrize("quantile", [0.93, 0.5])   # 0.5: several batches are held back before each merge
def test_streamed_thresholds_equal_the_thresholds_of_all_values_at_once(quantile):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3, padding=1))
    images = torch.rand(7, 3, 12, 12)
    layers = conv_layers(model)
    for activation in ("post_relu", "pre_relu"):
        options = DissectionOptions(quantile=quantile, activation=activation, batch_size=2)
        streamed, per_layer = unit_thresholds(model, layers, images, options)
        # the same batches as the stream, so that the convolutions' floating-point sums are the same
        maps = torch.cat([torch.cat(layer_maps(model, layers, images[i:i + 2], activation), 1) for i in range(0, 7, 2)])
        assert per_layer == [4, 5] and maps.shape == (7, 9, 12, 12)
        direct = quantile_thresholds(maps.transpose(0, 1).reshape(9, -1), quantile)
        assert torch.equal(streamed, direct)
        assert (maps.min() < 0) == (activation == "pre_relu")


def test_unit_masks_and_top_images_show_what_was_scored():
    images, concepts, names = red_square_data()
    model = RedSquareNet()
    result = dissect(model, images, concepts, names, DissectionOptions(quantile=1.0 - square_share(concepts)))
    shown = top_images(result, 2, 2)
    assert sorted(shown.tolist()) == [0, 1]            # the two stamped images
    masks = unit_masks(model, conv_layers(model), images[shown], torch.tensor([2, 2]), result.thresholds)
    assert torch.equal(masks, concepts[shown, 0])
    summary = layer_summary(result, 0.5)
    assert summary["conv1"]["square_units"] == 1 and summary["conv2"]["square_units"] == 1
    assert summary["conv1"]["n_units"] == 2 and summary["conv2"]["best_square_iou"] == pytest.approx(1.0)


def test_the_unit_is_chosen_on_one_half_and_scored_on_the_other():
    """The red-square unit wins on the selection half; on the held-out half the concept's square is green, which that
    unit cannot see: scored there, its empty masks fall below the whole-image mask's IoU (16 / 256 per image). Picked
    on all images, the green unit would have looked like a find."""
    images, concepts, names = red_square_data(n_images=8, n_stamped=8)
    images[4:, :, SQUARE[0], SQUARE[1]] = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)
    selection = torch.tensor([True] * 4 + [False] * 4)
    options = DissectionOptions(quantile=1.0 - square_share(concepts), batch_size=3)
    lifts, held_out = held_out_lifts(RedSquareNet(), images, concepts, names, {"square_iou": ["square"]}, selection,
                                     options, streams)
    assert held_out["units"]["square"] == "conv1/0" and held_out["selection_iou"]["square"] == pytest.approx(1.0)
    assert held_out["n_selection"] == 4 and held_out["n_scored"] == 4
    lift = lifts["square_iou"]
    assert lift.n == 4 and lift.score == 0.0 and lift.reference == WHOLE_IMAGE
    assert lift.chance == pytest.approx(16 / SIZE ** 2) and lift.verdict == "below chance"


def test_a_unit_that_copies_the_square_is_above_both_chance_levels_on_held_out_images():
    images, concepts, names = red_square_data(n_images=12, n_stamped=8)
    selection = torch.tensor([True, False] * 6)
    options = DissectionOptions(quantile=1.0 - square_share(concepts[selection]), batch_size=5)
    lifts, held_out = held_out_lifts(RedSquareNet(), images, concepts, names,
                                     {"square_iou": ["square"], "stroke_iou": ["stroke"]}, selection, options, streams)
    lift = lifts["square_iou"]
    assert lift.n == 4 and lift.score == pytest.approx(1.0)            # the 4 stamped held-out images, clean ones left out
    assert set(lift.references) == {WHOLE_IMAGE, RANDOM_MASKS} and lift.verdict == "above chance"
    assert lifts["stroke_iou"].n == 6


class UntrainedNet(nn.Module):
    """16 units of 1x1 convolution with weights drawn from ``seed``, never trained. A unit with a positive red weight
    and a negative sum of weights answers more to pure red than to any gray or black pixel; among 16 units some
    does, so its mask at the square's share is the red square, whatever any classifier uses."""

    def __init__(self, seed: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv1 = nn.Conv2d(3, 16, 1)
            self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(torch.relu(self.conv1(x)).mean((2, 3)))


def test_a_unit_that_segments_the_stamp_in_an_untrained_network_gives_no_lift():
    """Both networks are untrained: each has a unit whose held-out masks are the red square exactly (IoU 1 per image).
    Beside the whole-image mask and random masks alone that looks like a find (lift 0.94); beside the best unit of the
    other untrained network, chosen on the same half and scored on the same images, it is no better than chance: the
    input alone draws such a unit."""
    images, concepts, names = red_square_data(n_images=12, n_stamped=8)
    selection = torch.tensor([True, False] * 6)
    options = DissectionOptions(quantile=1.0 - square_share(concepts[selection]), batch_size=5)
    figures = {"square_iou": ["square"]}
    without, _ = held_out_lifts(UntrainedNet(0), images, concepts, names, figures, selection, options, streams)
    assert without["square_iou"].verdict == "above chance" and without["square_iou"].lift == pytest.approx(1 - 16 / SIZE ** 2)
    lifts, held_out = held_out_lifts(UntrainedNet(0), images, concepts, names, figures, selection, options, streams,
                                     reinitialized=UntrainedNet(1))
    lift = lifts["square_iou"]
    assert lift.score == pytest.approx(1.0) and lift.reference == REINITIALIZED and lift.chance == pytest.approx(1.0)
    assert set(lift.references) == {WHOLE_IMAGE, RANDOM_MASKS, REINITIALIZED}
    assert lift.lift == pytest.approx(0.0) and lift.verdict == "no better than chance"
    assert held_out["reinitialized_selection_iou"]["square"] == pytest.approx(1.0)
    assert held_out["reinitialized_units"]["square"] != held_out["units"]["square"]   # another unit, chosen by itself


def test_a_unit_the_untrained_copy_cannot_match_keeps_its_lift():
    """The re-initialised copy sees only green: none of its units segments the red square on the held-out images (IoU 0),
    so the whole-image mask binds and the red-square unit stays above chance. Layers given by the caller are found
    in the copy by their place in the network."""
    images, concepts, names = red_square_data(n_images=12, n_stamped=8)
    selection = torch.tensor([True, False] * 6)
    options = DissectionOptions(quantile=1.0 - square_share(concepts[selection]), batch_size=5)
    model, blind = RedSquareNet(), RedSquareNet()
    with torch.no_grad():
        blind.conv1.weight[0, :, 0, 0] = torch.tensor([0.0, 1.0, 0.0])
    layers = conv_layers(model)[:1]
    assert [module for _, module in same_layers(model, layers, blind)] == [blind.conv1]
    lifts, held_out = held_out_lifts(model, images, concepts, names, {"square_iou": ["square"]}, selection, options,
                                     streams, layers=layers, reinitialized=blind)
    lift = lifts["square_iou"]
    assert lift.references[REINITIALIZED] == 0.0 and lift.reference == WHOLE_IMAGE
    assert lift.score == pytest.approx(1.0) and lift.verdict == "above chance"
    assert held_out["units"]["square"] == "conv1/0"


def test_a_concept_absent_from_the_held_out_half_is_not_judged():
    images, concepts, names = red_square_data(n_images=4, n_stamped=2)
    lifts, _ = held_out_lifts(RedSquareNet(), images, concepts, names, {"square_iou": ["square"]},
                              torch.tensor([True, True, False, False]), DissectionOptions(quantile=0.9), streams)
    assert lifts["square_iou"].verdict == "not judged" and "square" in lifts["square_iou"].reason


def test_the_half_split_is_seeded_and_halves():
    first, again = (half_split(11, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(first, again) and first.sum() == 5
    assert not torch.equal(first, half_split(11, torch.Generator().manual_seed(4)))


def test_concepts_must_match_the_images():
    images, concepts, names = red_square_data()
    with pytest.raises(ValueError, match="concepts"):
        dissect(RedSquareNet(), images, concepts[:, :1], names, DissectionOptions())


@pytest.mark.parametrize("field, value", [("quantile", 1.0), ("quantile", 0.0), ("iou_threshold", 0.0),
                                          ("activation", "sigmoid"), ("batch_size", 0), ("random_mask_sigma", -1.0)])
def test_bad_options_name_the_field_and_value(field, value):
    with pytest.raises(ValueError, match=rf"{field} = {value!r}"):
        DissectionOptions(**{field: value})


DEFAULTS = yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize("key, value, allowed", [
    ("quantile", 0.3, "[0.5, 1)"), ("quantile", 1.0, "[0.5, 1)"), ("iou_threshold", 0.0, "(0, 1]"),
    ("stamped_fraction", 1.5, "[0, 1]"), ("activation", "softmax", "'post_relu', 'pre_relu'"),
    ("max_images", 0, "a positive integer"), ("digit_threshold", 1.0, "[0, 1)"),
])
def test_bad_dissect_params_name_key_value_and_what_is_allowed(key, value, allowed):
    raw = copy.deepcopy(DEFAULTS)
    raw["dissect"][key] = value
    with pytest.raises(ConfigError) as err:
        build(Params, raw)
    message = str(err.value)
    assert f"dissect.{key}" in message and repr(value) in message and allowed in message


@pytest.mark.parametrize("dataset, fraction", [("clever_hans", 0.95), ("negative_control", 0.0), ("colored_mnist", None)])
def test_the_stage_writes_the_held_out_lift_and_its_chance_levels(dataset, fraction, tmp_path, monkeypatch):
    import json

    import numpy as np

    from pipeline import paths
    from pipeline.data.known_answer import ColorRule, PlantedShortcuts
    from pipeline.data.shortcuts import Shortcut
    from pipeline.models.classifiers import build_seeded_classifier, save_model
    from pipeline.stages.dissect import main
    from pipeline.storage import save_arrays, write_json

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    n, n_classes = 24, 4 if fraction is None else 10
    gray = (rng.random((n, 28, 28)) < 0.2).astype(np.uint8) * 200
    images = np.repeat(gray[:, None], 3, axis=1)
    test = {"images": images, "labels": np.arange(n) % n_classes}
    if fraction is None:
        answer = ColorRule(("spring", "summer", "autumn", "winter"))
        test["gray"] = gray
    else:
        answer = PlantedShortcuts((Shortcut(label=7, kind="square", position=[0, 0], side=8, fraction=fraction,
                                             color=[1.0, 0.0, 0.0]),), (28, 28))
        test["clean_images"] = images
    save_arrays(paths.prepared_dir(dataset) / "test.npz", **test)
    write_json(paths.prepared_dir(dataset) / "meta.json", {"n_classes": n_classes, "known_answer": answer.to_meta(),
                                                           "class_names": [str(c) for c in range(n_classes)]})
    config = {"architecture": "cnn", "n_classes": n_classes, "width": 4}
    save_model(paths.classifier_path(dataset), build_seeded_classifier(config, 0), config)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params({"device": "cpu",
                                                                      "dissect": {"max_images": 20, "batch_size": 8}})))
    main([dataset])

    headline = "color_unit_iou" if fraction is None else "shortcut_unit_iou"
    metrics = json.loads(paths.metrics_path(dataset, "dissect").read_text())
    assert list(metrics) == [f"{headline}_lift", f"{headline}_lift_low", f"{headline}_lift_high"]
    details = json.loads((paths.plots_dir(dataset, "dissect") / "details.json").read_text())
    assert details["held_out"]["n_selection"] == details["held_out"]["n_scored"] == 10
    lift = details["chance"][headline]
    levels = {WHOLE_IMAGE, RANDOM_MASKS, REINITIALIZED}   # the re-initialised classifier's best unit among them
    assert lift["chance_level"] in levels and set(lift["chance_levels"]) == levels
    assert lift["chance"] == max(lift["chance_levels"].values())
    assert set(details["held_out"]["reinitialized_units"]) == set(details["held_out"]["units"])
    assert metrics[f"{headline}_lift"] == pytest.approx(lift["lift"], abs=1e-6)
    assert set(details["chance"]) == {headline, "digit_unit_iou"}
