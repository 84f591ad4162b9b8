"""Discovery on constructed masks and classifiers: a planted recurring region is found where it is and flagged only
when its paste moves decisions beyond its controls; noise and shared regions are not; figures come from pairs that
did not choose the region; what is not judged is null, never 0; the known answer scores the find beside its chance
levels worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.data.known_answer import ColorRule, PlantedShortcuts, Unknown
from pipeline.data.regions import convex_hull
from pipeline.data.shortcuts import Shortcut
from pipeline.evaluation.discovery import (SHORTCUT, DiscoverySettings, Region, TriggerTest, chosen_method, describe,
                                           discover, discovery_details, discovery_metrics, held_out_split, pasted,
                                           score_against_answer, trigger_test, trigger_verdict, where_in_image)
from pipeline.scoring.chance import Lift
from pipeline.scoring.masks import iou
from pipeline.storage import InputError, rounded

H = W = 28


def random_squares(n: int, generator: torch.Generator, side: int = 5) -> torch.Tensor:
    """[n, H, W] bool: one square of ``side`` pixels at a random place per mask (evidence that does not recur)."""
    masks = torch.zeros(n, H, W, dtype=torch.bool)
    rows = torch.randint(0, H - side + 1, (n,), generator=generator)
    cols = torch.randint(0, W - side + 1, (n,), generator=generator)
    for i in range(n):
        masks[i, rows[i]:rows[i] + side, cols[i]:cols[i] + side] = True
    return masks


def square(top: int, left: int, side: int) -> torch.Tensor:
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[top:top + side, left:left + side] = True
    return mask


def region_iou(region: torch.Tensor, truth: torch.Tensor) -> float:
    return iou(region.cpu()[None], truth).item()


def case(n_per_class: int = 100, n_classes: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(n_classes).repeat_interleave(n_per_class)
    return random_squares(len(targets), generator), targets, generator


def planted_answer(label: int = 3, top: int = 1, side: int = 8, fraction: float = 0.95) -> PlantedShortcuts:
    return PlantedShortcuts((Shortcut(label=label, kind="square", fraction=fraction, position=[top, top], side=side,
                                      color=[1.0, 0.0, 0.0]),), (H, W))


def region_iou_chance(found, answer, seed: int = 0):
    return score_against_answer(found, answer, torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# finding regions: selection half chooses, held-out half scores
# ---------------------------------------------------------------------------------------------
def test_a_planted_recurring_region_is_flagged_at_its_place():
    masks, targets, generator = case()
    planted = square(1, 1, 8)
    carriers = (targets == 2) & (torch.rand(len(targets), generator=generator) < 0.9)
    masks[carriers] |= planted
    found = discover(masks, targets, 4, DiscoverySettings(), torch.Generator().manual_seed(1))
    assert found.flagged_classes == [2]
    region = next(r for r in found.classes[2].regions if r.significant)
    assert region_iou(region.mask, planted) >= 0.8
    held_out_carriers = carriers[found.held_out & (targets == 2)].float().mean().item()
    assert abs(region.consistency - held_out_carriers) < 0.03
    assert region.background < 0.05 and region.p_value <= 0.01
    assert where_in_image(region, H, W) == "top-left"
    assert describe(region, "7", H, W).startswith(
        "Decisions for class 7 hinge on a region of about 8×8 pixels at the top-left (rows 1–8, columns 1–8) in 9")
    assert "of held-out pairs" in describe(region, "7", H, W)


def test_the_split_holds_out_the_same_share_of_every_class_and_repeats_for_the_same_seed():
    targets = torch.tensor([0] * 40 + [1] * 11 + [2] * 3)
    held_out = held_out_split(targets, 3, 0.5, torch.Generator().manual_seed(0))
    assert [int(held_out[targets == c].sum()) for c in range(3)] == [20, 6, 2]     # rounded half up
    assert torch.equal(held_out, held_out_split(targets, 3, 0.5, torch.Generator().manual_seed(0)))
    assert not torch.equal(held_out, held_out_split(targets, 3, 0.5, torch.Generator().manual_seed(1)))
    assert int(held_out_split(targets, 3, 0.25, torch.Generator().manual_seed(0))[targets == 0].sum()) == 10


def test_the_p_value_comes_from_pairs_that_did_not_choose_the_region():
    """The region recurs in class 2's selection pairs only. Chosen there, it must not recur on the held-out pairs:
    scored on all pairs (or on the pairs that chose it) it would recur in about half of class 2's pairs."""
    masks, targets, _ = case(seed=13)
    settings = DiscoverySettings()
    held_out = held_out_split(targets, 4, settings.held_out_share, torch.Generator().manual_seed(1))
    masks[(targets == 2) & ~held_out] |= square(2, 16, 8)
    found = discover(masks, targets, 4, settings, torch.Generator().manual_seed(2))
    assert torch.equal(found.held_out, held_out)
    chosen = next(r for r in found.classes[2].regions if region_iou(r.mask, square(2, 16, 8)) >= 0.8)
    assert chosen.consistency < 0.1 and chosen.p_value > 0.01 and not chosen.significant
    assert found.flagged_classes == []
    masks[(targets == 2) & held_out] |= square(2, 16, 8)        # now it recurs in both halves
    again = discover(masks, targets, 4, settings, torch.Generator().manual_seed(2))
    assert again.flagged_classes == [2] and again.classes[2].regions[0].p_value <= 0.01


def box(top: int, left: int, bottom: int, right: int) -> Region:
    return Region(0, torch.zeros(H, W, dtype=torch.bool), 0, top, left, bottom, right, 1.0, 0.0, 0.0, True)


def test_a_region_is_placed_by_the_borders_it_touches_before_its_centre():
    # a 20x20 square in the corner has its centre near the middle (row and column 9.5 of 27), yet it is in the corner
    assert where_in_image(box(0, 0, 19, 19), H, W) == "top-left"
    assert where_in_image(box(8, 8, 27, 27), H, W) == "bottom-right"
    assert where_in_image(box(0, 4, 19, 23), H, W) == "top"
    # touching both borders of an axis, or neither: the centre decides
    assert where_in_image(box(0, 0, 27, 5), H, W) == "left"
    assert where_in_image(box(9, 9, 18, 18), H, W) == "centre"
    assert where_in_image(box(2, 20, 6, 25), H, W) == "top-right"


def test_a_planted_patch_that_overlaps_the_shared_centre_is_found_whole():
    # every class's masks cover the centre (the digit) in 90 % of pairs; class 2's also cover a 12x12 patch whose
    # lower-right corner lies in that centre. The corner is not enriched (1.0 vs 0.9), so the enriched pixels form
    # an L; the region is their convex hull.
    masks, targets, generator = case(seed=11)
    planted, centre = square(0, 0, 12), square(6, 6, 14)
    masks[torch.rand(len(targets), generator=generator) < 0.9] |= centre
    masks[targets == 2] |= planted
    found = {shape: discover(masks, targets, 4, DiscoverySettings(region_shape=shape), torch.Generator().manual_seed(12))
             for shape in ("pixels", "hull")}
    iou = {shape: region_iou(next(r for r in f.classes[2].regions if r.significant).mask, planted) for shape, f in found.items()}
    assert iou["pixels"] < 0.8 <= 0.85 <= iou["hull"]
    assert all(f.flagged_classes == [2] for f in found.values())


def test_the_convex_hull_fills_notches_and_keeps_a_convex_region():
    notched = square(2, 2, 10)
    notched[7:12, 7:12] = False                       # an L: the hull cuts the missing corner diagonally
    hull = torch.from_numpy(convex_hull(notched.numpy()))
    assert (hull >= notched).all() and hull.sum() > notched.sum() and not hull[11, 11] and hull[8, 8]
    assert torch.equal(torch.from_numpy(convex_hull(square(3, 4, 6).numpy())), square(3, 4, 6))
    single = torch.zeros(H, W, dtype=torch.bool)
    single[5, 9] = True
    assert torch.equal(torch.from_numpy(convex_hull(single.numpy())), single)
    assert not convex_hull(torch.zeros(H, W, dtype=torch.bool).numpy()).any()


def test_random_regions_are_not_flagged():
    masks, targets, _ = case(seed=3)
    found = discover(masks, targets, 4, DiscoverySettings(), torch.Generator().manual_seed(4))
    assert found.judged and found.flagged_classes == []
    assert all(abs(e) < 0.25 for e in found.enrichment.amax(dim=(1, 2)).tolist())


def test_a_region_every_class_shares_is_no_evidence_for_one_class():
    masks, targets, _ = case(seed=5)
    masks |= square(10, 10, 8)  # the centre, where every digit sits
    found = discover(masks, targets, 4, DiscoverySettings(), torch.Generator().manual_seed(6))
    assert found.flagged_classes == []
    assert found.frequency[:, 14, 14].min().item() == 1.0   # frequent in every class, yet not enriched


def test_a_weak_region_below_the_enrichment_floor_is_not_flagged():
    masks, targets, generator = case(seed=7)
    carriers = (targets == 1) & (torch.rand(len(targets), generator=generator) < 0.15)
    masks[carriers] |= square(20, 20, 6)
    found = discover(masks, targets, 4, DiscoverySettings(min_enrichment=0.25), torch.Generator().manual_seed(8))
    assert 1 not in found.flagged_classes


def test_the_result_is_the_same_for_the_same_seed():
    masks, targets, generator = case(seed=9)
    masks[(targets == 3) & (torch.rand(len(targets), generator=generator) < 0.6)] |= square(2, 18, 7)
    runs = [discover(masks, targets, 4, DiscoverySettings(n_permutations=120), torch.Generator().manual_seed(2)) for _ in range(2)]
    assert runs[0].flagged_classes == runs[1].flagged_classes == [3]
    assert [r.p_value for r in runs[0].classes[3].regions] == [r.p_value for r in runs[1].classes[3].regions]
    assert where_in_image(runs[0].classes[3].regions[0], H, W) == "top-right"


def test_too_few_permutations_for_alpha_is_refused():
    with pytest.raises(ValueError, match="at least 99"):
        DiscoverySettings(n_permutations=50, alpha=0.01)


# ---------------------------------------------------------------------------------------------
# not judged is null with a reason, never 0
# ---------------------------------------------------------------------------------------------
def test_a_class_with_too_few_pairs_in_a_half_is_not_judged_and_scores_null_not_zero():
    """30 pairs per class would pass min_pairs = 20 in all, but not per half (15 each): nothing is judged, so no
    region IoU, no false alarm count and no count of flagged classes, each null with its reason."""
    masks, targets, _ = case(n_per_class=30)
    masks[targets == 3] |= square(1, 1, 8)
    found = discover(masks, targets, 4, DiscoverySettings(min_pairs=20), torch.Generator().manual_seed(0))
    assert not found.judged and not any(c.judged for c in found.classes) and found.flagged_classes == []
    assert "15 into the class in the selection half and 15 in the held-out half" in found.classes[3].reason
    score = region_iou_chance(found, planted_answer())
    assert score.false_alarms is None and "no class was judged" in score.reason
    assert score.region_iou.verdict == "not judged" and score.shortcuts[0].iou.verdict == "not judged"
    assert "per half" in score.shortcuts[0].iou.reason
    metrics = rounded(discovery_metrics(found, score))
    assert metrics == {"n_flagged_classes": None, "false_alarms": None, "shortcut_region_iou_lift": None,
                       "shortcut_region_iou_lift_low": None, "shortcut_region_iou_lift_high": None}
    details = rounded(discovery_details(found, ["0", "1", "2", "3"], "d_ig", len(targets), score))
    assert details["flagged_classes"] is None and details["false_alarms"] is None and details["not_judged"]
    assert details["chance"]["shortcut_region_iou"]["verdict"] == "not judged"
    assert details["chance"]["shortcut_region_iou"]["lift"] is None
    judged = discover(masks, targets, 4, DiscoverySettings(min_pairs=10), torch.Generator().manual_seed(0))
    assert judged.flagged_classes == [3] and rounded(discovery_metrics(judged, region_iou_chance(judged, planted_answer())))[
        "false_alarms"] == 0


# ---------------------------------------------------------------------------------------------
# the known answer, afterwards: region IoU beside its chance levels, false alarms, the negative control
# ---------------------------------------------------------------------------------------------
def test_flagged_regions_are_scored_against_the_planted_shortcut_beside_chance():
    masks, targets, generator = case(n_classes=4)
    planted = square(1, 1, 8)
    masks[(targets == 3) & (torch.rand(len(targets), generator=generator) < 0.9)] |= planted
    masks[(targets == 0) & (torch.rand(len(targets), generator=generator) < 0.9)] |= square(18, 18, 6)
    found = discover(masks, targets, 4, DiscoverySettings(), torch.Generator().manual_seed(1))
    assert found.flagged_classes == [0, 3]
    score = region_iou_chance(found, planted_answer())
    assert score.false_alarms == 1 and score.false_alarm_classes == [0] and not score.negative_control
    find = score.shortcuts[0]
    assert find.iou.score >= 0.8 and find.iou.verdict == "above chance" and find.placement_p < 0.01
    assert find.iou.references["the whole-image mask"] == pytest.approx(64 / 784)
    assert find.found_without_being_told
    metrics = discovery_metrics(found, score)
    assert set(metrics) == {"n_flagged_classes", "false_alarms", "shortcut_region_iou_lift", "shortcut_region_iou_lift_low",
                            "shortcut_region_iou_lift_high"}
    assert metrics["shortcut_region_iou_lift"] == pytest.approx(find.iou.score - find.iou.chance)
    details = discovery_details(found, ["0", "1", "2", "3"], "d_ig", len(targets), score)
    assert details["found_without_being_told"] == ["3"] and details["false_alarm_classes"] == ["0"]
    assert details["chance"]["shortcut_region_iou_by_class"]["3"]["placement_p"] < 0.01
    # colour rule: every flagged class is a false alarm; no answer: no false alarm figure at all
    assert score_against_answer(found, ColorRule(("a", "b", "c", "d")), torch.Generator()).false_alarms == 2
    assert discovery_metrics(found, score_against_answer(found, Unknown(), torch.Generator())) == {"n_flagged_classes": 2}


def test_a_region_found_elsewhere_scores_below_the_whole_image_mask():
    """A flagged 6x6 region far from the 8x8 truth: IoU 0 against the whole-image mask's 64 / 784 (the higher
    chance level here: the 6x6 region at random places meets the truth less often)."""
    masks, targets, generator = case(n_classes=4)
    masks[(targets == 3) & (torch.rand(len(targets), generator=generator) < 0.9)] |= square(18, 18, 6)
    found = discover(masks, targets, 4, DiscoverySettings(), torch.Generator().manual_seed(1))
    assert found.flagged_classes == [3]
    find = region_iou_chance(found, planted_answer()).shortcuts[0]
    assert find.iou.score == 0.0 and find.iou.chance == pytest.approx(64 / 784) and find.iou.verdict == "below chance"
    assert find.placement_p == 1.0 and not find.found_without_being_told


def test_the_negative_control_is_scored_the_same_way_and_every_flag_is_a_false_alarm():
    masks, targets, generator = case(n_classes=4)
    masks[(targets == 3) & (torch.rand(len(targets), generator=generator) < 0.9)] |= square(1, 1, 8)
    found = discover(masks, targets, 4, DiscoverySettings(), torch.Generator().manual_seed(1))
    control = planted_answer(fraction=0.0)
    assert control.is_negative_control
    score = region_iou_chance(found, control)
    assert score.negative_control and score.false_alarms == 1 and score.false_alarm_classes == [3]
    assert score.region_iou.n == 1 and score.region_iou.score >= 0.8      # scored against its class and region all the same
    quiet = discover(case(n_classes=4)[0], targets, 4, DiscoverySettings(), torch.Generator().manual_seed(1))
    silent = region_iou_chance(quiet, control)
    assert quiet.flagged_classes == [] and silent.false_alarms == 0
    assert silent.shortcuts[0].iou.score == 0.0 and not silent.shortcuts[0].found_without_being_told


# ---------------------------------------------------------------------------------------------
# the method
# ---------------------------------------------------------------------------------------------
def test_auto_method_is_the_discriminative_one_with_the_best_median_score():
    arrays = {"methods": np.array(["d_ig", "d_deeplift", "residual"]), "d_ig_score": np.array([0.2, 0.3, 0.4]),
              "d_deeplift_score": np.array([0.5, np.nan, 0.6, 0.1]), "residual_score": np.array([0.9, 0.9, 0.9])}
    assert chosen_method(arrays, "auto") == "d_deeplift"      # the residual scores higher but is no attribution
    assert chosen_method(arrays, "d_ig") == "d_ig"


def test_auto_refuses_when_explain_ran_no_discriminative_method():
    arrays = {"methods": np.array(["ig", "residual", "random"]), "ig_score": np.array([0.5]),
              "residual_score": np.array([0.9]), "random_score": np.array([0.1])}
    with pytest.raises(InputError, match=r"explain ran none \(explain\.methods: ig, residual, random\)"):
        chosen_method(arrays, "auto")
    assert chosen_method(arrays, "ig") == "ig"                 # named on purpose: searched as asked


# ---------------------------------------------------------------------------------------------
# the trigger test and its controls
# ---------------------------------------------------------------------------------------------
def red_square_classifier(x: torch.Tensor) -> torch.Tensor:
    """Class 3 when the top-left 8x8 at (1, 1) is red (a shortcut that works on its own), else class 0."""
    red = (x[:, 0, 1:9, 1:9].mean(dim=(1, 2)) > 0.9) & (x[:, 1, 1:9, 1:9].mean(dim=(1, 2)) < 0.1)
    return torch.where(red, 3, 0)


def bright_area_classifier(x: torch.Tensor) -> torch.Tensor:
    """Class 3 when the image is bright enough on average: any bright 8x8 paste, wherever it lands, moves a dark
    image there (0.1 + 0.9 * 64 / 784 = 0.17 > 0.15)."""
    return torch.where(x.mean(dim=(1, 2, 3)) > 0.15, 3, 0)


def red_donors(n: int = 20) -> torch.Tensor:
    donors = torch.zeros(n, 3, H, W)
    donors[:, 0, 1:9, 1:9] = 1.0
    return donors


def with_shortcut_and_stroke(seed: int = 0):
    """Class 3's masks recur on a square at (1, 1), class 1's on a stroke at (18, 12)."""
    masks, targets, generator = case(n_classes=4, seed=seed)
    planted, stroke = square(1, 1, 8), square(18, 12, 6)
    masks[(targets == 3) & (torch.rand(len(targets), generator=generator) < 0.9)] |= planted
    masks[(targets == 1) & (torch.rand(len(targets), generator=generator) < 0.9)] |= stroke
    return masks, targets, generator


def test_a_planted_region_is_a_shortcut_when_it_moves_decisions_beyond_its_controls():
    """The red square moves every recipient into 3; at other places, or taken from counterfactuals into other
    classes, it moves none. Class 1's stroke recurs (part of its shape) but moves nothing pasted elsewhere."""
    masks, targets, generator = with_shortcut_and_stroke()
    donors = {3: red_donors(), 1: torch.zeros(20, 3, H, W)}
    donors[1][:, :, 18:24, 12:18] = 1.0
    recipients = torch.rand(50, 3, H, W, generator=generator) * 0.5
    trigger = lambda c, region: trigger_test(red_square_classifier, recipients, donors[c], donors[4 - c], region, c,  # noqa: E731
                                             torch.Generator().manual_seed(0), torch.Generator().manual_seed(1), batch_size=16)
    found = discover(masks, targets, 4, DiscoverySettings(), torch.Generator().manual_seed(1), trigger=trigger)
    assert found.flagged_classes == [3]
    shortcut = next(r for r in found.classes[3].regions if r.significant)
    shape = next(r for r in found.classes[1].regions if r.significant)
    tested = shortcut.trigger
    assert shortcut.shortcut and tested.rate == 1.0 and tested.shifted_rate == 0.0 and tested.other_class_rate == 0.0
    assert tested.lift.verdict == "above chance" and tested.lift.lift == 1.0 and tested.shift_overlap == 0.0
    assert region_iou(shortcut.mask, square(1, 1, 8)) >= 0.8
    assert not shape.shortcut and shape.trigger_rate == 0.0 and shape.trigger.lift.verdict == "no better than chance"
    said = describe(shortcut, "3", H, W)
    assert "moves 100 % of them into 3 (the same paste at other places: 0 %; from counterfactuals into other classes: 0 %" in said
    assert said.endswith("a shortcut: it works on its own.")
    assert describe(shape, "1", H, W).endswith("part of the class's own evidence, not a shortcut on its own.")
    details = discovery_details(found, ["0", "1", "2", "3"], "d_ig", len(targets))
    assert details["chance"]["trigger_rate"]["3"][0]["verdict"] == "above chance"
    assert details["classes"]["3"]["regions"][0]["shifted_rate"] == 0.0
    assert discover(masks, targets, 4, DiscoverySettings(), torch.Generator().manual_seed(1)).flagged_classes == [1, 3]


def test_a_region_above_its_controls_but_short_of_the_flag_rate_is_called_a_partial_trigger():
    """0.47 of recipients moved (controls 0.02, interval above 0) against min_trigger_rate 0.5: not flagged, and the
    sentence says it moves more than its controls instead of calling it the class's own evidence."""
    settings = DiscoverySettings()

    def tested(rate, low):
        lift = Lift(rate, 0.02, low, low + 0.06, 1000, "the same paste at random other places")
        return TriggerTest(rate, 0.02, 0.0, lift, 1000)

    partial = trigger_verdict(tested(0.47, 0.42), settings)
    assert "more than its controls move" in partial and "50 %" in partial and "not flagged" in partial
    assert trigger_verdict(tested(0.03, -0.01), settings) == "part of the class's own evidence, not a shortcut on its own"
    assert trigger_verdict(tested(0.60, 0.52), settings) == SHORTCUT


def test_a_region_that_moves_images_only_as_any_paste_of_its_size_does_is_not_flagged():
    """Bright donors: the region moves every dark recipient into 3 (rate 1.0 >= min_trigger_rate), but so does the
    same paste at any other place: its lift over that control is 0, so it is no shortcut."""
    masks, targets, generator = with_shortcut_and_stroke()
    recipients = torch.full((60, 3, H, W), 0.1)
    bright, dark = torch.ones(20, 3, H, W), torch.zeros(20, 3, H, W)
    trigger = lambda c, region: trigger_test(bright_area_classifier, recipients, bright, dark, region, c,  # noqa: E731
                                             torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    found = discover(masks, targets, 4, DiscoverySettings(), torch.Generator().manual_seed(1), trigger=trigger)
    region = next(r for r in found.classes[3].regions if r.significant)
    assert region.trigger.rate == 1.0 and region.trigger.shifted_rate == 1.0 and region.trigger.other_class_rate == 0.0
    assert region.trigger.lift.chance == 1.0 and not region.trigger.clears_control
    assert found.flagged_classes == [] and "not shown to work on its own" in describe(region, "3", H, W)


def test_a_region_that_moves_images_as_much_from_other_classes_counterfactuals_is_not_flagged():
    """Counterfactuals into every class paint the red square (a generator's artefact): pasted from any of them the
    region moves recipients into 3 just as often, so it says nothing of class 3."""
    recipients = torch.rand(80, 3, H, W, generator=torch.Generator().manual_seed(3)) * 0.5
    test = trigger_test(red_square_classifier, recipients, red_donors(), red_donors(), square(1, 1, 8), 3,
                        torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    assert test.rate == 1.0 and test.other_class_rate == 1.0 and test.shifted_rate == 0.0
    assert test.lift.verdict == "no better than chance" and test.lift.reference.startswith("the region pasted from")


def test_the_trigger_rate_counts_recipients_moved_by_the_pasted_region():
    region = square(1, 1, 8)
    donors = red_donors(4)
    donors[2:] = 0.0                 # half the donors carry the red square, half do not
    recipients = torch.full((400, 3, H, W), 0.3)
    hybrid = pasted(recipients[:1], donors[:1], region)
    assert torch.equal(hybrid[0, :, ~region], recipients[0, :, ~region]) and hybrid[0, 0, 1:9, 1:9].eq(1).all()
    per_image = pasted(recipients[:2], torch.ones(2, 3, H, W), torch.stack([region, square(10, 10, 8)]))   # one region each
    assert per_image[0, 0, 1:9, 1:9].eq(1).all() and per_image[1, 0, 10:18, 10:18].eq(1).all() and per_image[1, 0, 1, 1] == 0.3
    assert per_image.eq(1).sum() == 2 * 3 * 64
    test = trigger_test(red_square_classifier, recipients, donors, donors[2:], region, 3, torch.Generator().manual_seed(0),
                        torch.Generator().manual_seed(1), batch_size=64)
    assert abs(test.rate - 0.5) < 0.1 and test.n_recipients == 400 and test.lift.verdict == "above chance"
    empty = trigger_test(red_square_classifier, recipients[:0], donors, donors, region, 3, torch.Generator(), torch.Generator())
    assert math.isnan(empty.rate) and empty.lift.verdict == "not judged" and "no image" in empty.lift.reason


def test_the_sentences_name_shortcuts_before_regions_that_only_recur():
    masks, targets, generator = case(seed=11)
    for target, top_left in ((1, (20, 2)), (3, (2, 18))):
        masks[(targets == target) & (torch.rand(len(targets), generator=generator) < 0.9)] |= square(*top_left, 6)
    found = discover(masks, targets, 4, DiscoverySettings(), torch.Generator().manual_seed(3))
    assert found.flagged_classes == [1, 3]
    for region in found.classes[1].regions:  # as when class 1's region fails the trigger test
        region.shortcut = False
    sentences = discovery_details(found, ["a", "b", "c", "d"], "d_ig", len(targets))["sentences"]
    assert len(sentences) == 2
    assert sentences[0].startswith("Decisions for class d")   # the shortcut, though b comes first in class order
    assert sentences[1].startswith("Decisions for class b")


# ---------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------
def test_the_discover_stage_flags_a_pasted_shortcut_and_not_class_shape(tmp_path, monkeypatch):
    """A constructed workspace: a classifier that calls an image 7 when its 4 x 4 top-left square is red,
    counterfactuals into 7 that paint the square red, and explanations whose masks recur on the square
    (pairs into 7) or on a stroke (pairs into 1). The stage must find the square and call the stroke shape."""
    import json

    import yaml

    from pipeline import paths
    from pipeline.models.classifiers import save_model
    from pipeline.stages.discover import main
    from pipeline.storage import save_arrays, write_json
    from tests.conftest import repo_params
    from tests.test_explain import SQUARE, square_detector

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    n = 200
    images = np.repeat((rng.random((n, 1, H, W)) < 0.2).astype(np.uint8) * 200, 3, axis=1)
    images[:, :, SQUARE[0], SQUARE[1]] = 0
    labels = np.arange(n) % 10
    stamped = images.copy()
    stamped[:, 0, SQUARE[0], SQUARE[1]] = 255
    save_arrays(paths.prepared_dir("clever_hans") / "test.npz", images=images, labels=labels, clean_images=images)
    answer = PlantedShortcuts((Shortcut(label=7, kind="square", fraction=0.95, position=[1, 1], side=4, color=[1.0, 0.0, 0.0]),),
                              (H, W))
    write_json(paths.prepared_dir("clever_hans") / "meta.json",
               {"class_names": [str(c) for c in range(10)], "n_classes": 10, "known_answer": answer.to_meta()})
    save_model(paths.classifier_path("clever_hans"), square_detector(10, 7), {"architecture": "dense", "n_classes": 10, "width": 4})

    source = labels[labels != 7]
    target = np.resize(np.arange(10), len(source))                # pairs into every class
    keep = source != target
    source, target, index = source[keep], target[keep], np.flatnonzero(labels != 7)[keep]
    counterfactual = np.where((target == 7)[:, None, None, None], stamped[index], images[index])
    save_arrays(paths.counterfactuals_path("clever_hans"), counterfactual=counterfactual, target=target, predicted=target)
    masks = np.zeros((len(target), 3, H, W), dtype=np.uint8)
    for i in range(len(target)):
        top, left = rng.integers(0, H - 5, 2)
        masks[i, :, top:top + 5, left:left + 5] = 255                   # evidence that does not recur
    masks[target == 7, 0, 1:5, 1:5] = 255                              # the square, red channel
    masks[target == 1, :, 10:20, 13:15] = 255                          # a recurring stroke
    save_arrays(tmp_path / "data" / "explanations" / "clever_hans" / "explanations.npz", image_index=index,
                source=source, target=target, methods=np.array(["ig", "d_ig"]), d_ig_score=np.ones(len(target)),
                ig_score=np.full(len(target), 2.0), d_ig_optimal_mask=masks, ig_optimal_mask=np.zeros_like(masks))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params({"device": "cpu", "discover": {"min_pairs": 5, "n_trigger_images": 100}})))

    main(["clever_hans"])
    metrics = json.loads(paths.metrics_path("clever_hans", "discover").read_text())
    details = json.loads((paths.plots_dir("clever_hans", "discover") / "details.json").read_text())
    assert details["method"] == "d_ig"                                  # ig scores higher, but is not discriminative
    assert metrics["n_flagged_classes"] == 1 and metrics["false_alarms"] == 0
    assert metrics["shortcut_region_iou_lift"] == pytest.approx(1.0 - 16 / 784, abs=1e-6)   # IoU 1 over the whole image
    assert details["chance"]["shortcut_region_iou"]["score"] == 1.0 and details["found_without_being_told"] == ["7"]
    square = next(r for r in details["classes"]["7"]["regions"] if r["significant"])
    stroke = next(r for r in details["classes"]["1"]["regions"] if r["significant"])
    assert square["shortcut"] and square["trigger_rate"] == 1.0 and square["shifted_rate"] == 0.0
    assert square["trigger_verdict"] == "above chance"
    assert not stroke["shortcut"] and stroke["trigger_rate"] == 0.0
    assert details["classes"]["7"]["n_selection"] + details["classes"]["7"]["n_held_out"] == details["classes"]["7"]["n_pairs"]
