"""Scores beside their chance levels, on constructed cases whose chance level is known by hand: the whole-image
mask, random masks of the same area, an all-zero map, a uniform map on a method's own support, and the lift's
bootstrap interval and verdict."""
import math

import pytest
import torch

from pipeline.scoring.chance import lift_between, lift_over_chance, not_judged
from pipeline.scoring.masks import (RANDOM_MASKS, WHOLE_IMAGE, iou, mask_chance, mass_share, random_masks_like,
                                    random_placements)
from pipeline.scoring.relevance import pointing_game, relevance_mass, support_share


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def square_mask(size=28, top=1, left=1, side=4):
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top:top + side, left:left + side] = True
    return mask


# ---------------------------------------------------------------------------------------------
# relevance mass and pointing game
# ---------------------------------------------------------------------------------------------
def test_relevance_mass_of_the_mask_itself_is_one_and_its_peak_points_inside():
    mask = square_mask()
    attribution = mask.float().expand(5, 3, 28, 28).clone()
    assert torch.allclose(relevance_mass(attribution, mask), torch.ones(5))
    attribution[:, 0, 2, 2] += 1.0   # one pixel on top: a unique peak
    assert torch.allclose(pointing_game(attribution, mask), torch.ones(5))


def test_relevance_mass_of_a_random_map_is_about_the_mask_area():
    mask = square_mask(side=7)
    attribution = torch.rand(400, 3, 28, 28, generator=generator())
    assert relevance_mass(attribution, mask).mean().item() == pytest.approx(49 / 784, abs=0.005)
    assert pointing_game(attribution, mask).mean().item() == pytest.approx(49 / 784, abs=0.025)


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
    assert pointing_game(attribution, mask).tolist() == [1.0, 0.0, 0.0]


def test_an_all_zero_map_misses_the_pointing_game_though_its_first_pixel_is_inside():
    """The tie of an empty map falls on pixel (0, 0); a square in the corner holds it. That is no hit."""
    mask = square_mask(top=0, left=0, side=20)
    empty = torch.zeros(4, 3, 28, 28)
    assert pointing_game(empty, mask).tolist() == [0.0] * 4
    assert torch.isnan(relevance_mass(empty, mask)).all() and torch.isnan(support_share(empty, mask)).all()


def test_a_tie_for_the_top_pixel_is_a_miss():
    mask = square_mask()
    attribution = torch.zeros(1, 1, 28, 28)
    attribution[0, 0, 2, 2] = attribution[0, 0, 20, 20] = 1.0
    assert pointing_game(attribution, mask).tolist() == [0.0]


def test_localization_scores_of_no_images_are_empty_not_an_error():
    none = torch.zeros(0, 3, 28, 28)
    for masks in (square_mask(), torch.zeros(0, 28, 28, dtype=torch.bool)):
        assert relevance_mass(none, masks).shape == (0,) and pointing_game(none, masks).shape == (0,)


def test_per_image_masks_are_respected():
    masks = torch.stack([square_mask(top=0, left=0), square_mask(top=20, left=20)])
    attribution = torch.zeros(2, 3, 28, 28)
    attribution[:, :, 1, 1] = 1.0     # inside the first image's mask only
    assert relevance_mass(attribution, masks).tolist() == [1.0, 0.0]


def test_an_input_times_gradient_map_is_held_to_its_own_support():
    """Stamped digit: 16 pixels of stamp and 48 of digit are non-black; an input x gradient-type map credits only
    those, so a map that knows nothing (uniform on them) puts 16 / 64 of its mass on the stamp, not 16 / 784."""
    stamp = square_mask(top=0, left=0, side=4)
    image = torch.zeros(1, 3, 28, 28)
    image[0, :, :4, :4] = 1.0
    image[0, :, 10:16, 10:18] = 0.5             # the digit: 48 pixels
    uninformative = image * 2.0                 # gradient 2 everywhere, times the input
    assert relevance_mass(uninformative, stamp).item() == pytest.approx(16 / (16 + 48 * 0.5))
    assert support_share(uninformative, stamp).item() == pytest.approx(16 / 64)
    saliency_like = torch.ones(1, 3, 28, 28)
    assert support_share(saliency_like, stamp).item() == pytest.approx(16 / 784)


# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------
def test_the_whole_image_mask_scores_the_truths_share_of_the_image():
    truth = square_mask(top=0, left=0, side=20).expand(3, 28, 28)
    whole = torch.ones(3, 28, 28, dtype=torch.bool)
    assert torch.allclose(iou(whole, truth), torch.full((3,), 400 / 784))
    masks = torch.zeros(3, 28, 28, dtype=torch.bool)
    masks[:, :20, :20] = True
    chance = mask_chance(masks, truth, sigma=2.0, generator=generator())
    assert torch.allclose(chance["iou"][WHOLE_IMAGE], torch.full((3,), 400 / 784))
    assert torch.allclose(chance["mass_share"][WHOLE_IMAGE], torch.full((3,), 400 / 784))


def test_random_masks_have_the_area_asked_for_and_land_anywhere():
    areas = torch.tensor([0, 1, 64, 300])
    masks = random_masks_like(areas, (28, 28), 2.0, generator())
    assert masks.flatten(1).sum(1).tolist() == [0, 1, 64, 300]
    truth = square_mask(top=0, left=0, side=8).expand(2000, 28, 28)
    blobs = random_masks_like(torch.full((2000,), 64), (28, 28), 2.0, generator(1))
    share = mass_share(blobs.float(), truth).mean().item()
    assert share == pytest.approx(64 / 784, abs=0.01)   # an area-matched random mask puts the area share on it


def test_a_mask_on_the_truth_beats_both_chance_levels_and_one_as_large_elsewhere_does_not():
    truth = square_mask(top=0, left=0, side=8).expand(50, 28, 28)
    on_truth = truth.clone()
    elsewhere = torch.zeros(50, 28, 28, dtype=torch.bool)
    elsewhere[:, 20:28, 20:28] = True
    for masks, expected in ((on_truth, "above chance"), (elsewhere, "below chance")):
        chance = mask_chance(masks, truth, 2.0, generator())
        lift = lift_over_chance(iou(masks, truth), chance["iou"], generator())
        assert lift.verdict == expected
        assert set(lift.references) == {WHOLE_IMAGE, RANDOM_MASKS}
    assert lift.reference == WHOLE_IMAGE and lift.chance == pytest.approx(64 / 784)


# ---------------------------------------------------------------------------------------------
# lift over chance
# ---------------------------------------------------------------------------------------------
def test_the_highest_chance_level_binds_and_the_interval_holds_the_lift():
    scores = torch.tensor([0.9, 0.8, 0.85, 0.95] * 10)
    lift = lift_over_chance(scores, {"low": 0.1, "high": torch.full((40,), 0.5)}, generator())
    assert lift.reference == "high" and lift.chance == pytest.approx(0.5)
    assert lift.lift == pytest.approx(0.375) and lift.low <= lift.lift <= lift.high and lift.verdict == "above chance"
    assert lift.to_dict()["chance_levels"] == pytest.approx({"low": 0.1, "high": 0.5})


def test_scores_at_chance_are_no_better_than_chance():
    noise = torch.rand(500, generator=generator())
    lift = lift_over_chance(noise, {"coin": 0.5}, generator())
    assert lift.verdict == "no better than chance" and lift.low < 0 < lift.high


def test_nothing_to_judge_is_not_judged_never_zero():
    lift = lift_over_chance(torch.tensor([float("nan")]), {"coin": 0.5}, generator(), reason_if_empty="no pair into 7")
    assert lift.verdict == "not judged" and lift.n == 0 and math.isnan(lift.lift)
    assert lift.to_dict()["reason"] == "no pair into 7" and "not judged (no pair into 7)" in lift.sentence("IoU")
    assert not_judged("why").verdict == "not judged"


def test_a_lift_written_to_json_reads_back_the_same_and_a_broken_record_is_refused():
    """What a stage writes into details.json (``to_dict``, NaN as null) is what the report reads back (``from_dict``)."""
    import json

    from pipeline.scoring.chance import Lift
    from pipeline.storage import rounded

    scores = torch.tensor([0.9, 0.8, 0.85, 0.95] * 10)
    several = lift_over_chance(scores, {"low": 0.1, "high": torch.full((40,), 0.5)}, generator())
    one = lift_over_chance(scores, {"a whole-image mask": 0.2}, generator())
    between = lift_between(scores, scores - 0.1, "clean queries", generator())
    for lift in (several, one, between):
        assert Lift.from_dict(lift.to_dict()) == lift
    written = json.loads(json.dumps(rounded(not_judged("no pair into 7", "a whole-image mask").to_dict())))
    back = Lift.from_dict(written)   # null came back as NaN
    assert back.verdict == "not judged" and back.reason == "no pair into 7" and back.reference == "a whole-image mask"
    assert back.n == 0 and all(math.isnan(v) for v in (back.score, back.chance, back.low, back.high))
    covering = Lift.from_dict({"score": 0.3, "chance": 0.25, "interval": [-0.01, 0.11], "n": 12, "chance_level": "coin"})
    assert covering.verdict == "no better than chance" and covering.lift == pytest.approx(0.05)
    for broken in ({"score": 0.3}, {**one.to_dict(), "score": "high"}, {**one.to_dict(), "interval": [0.1]},
                   {**one.to_dict(), "n": -1}):
        with pytest.raises((KeyError, TypeError, ValueError)):
            Lift.from_dict(broken)


def test_a_class_that_is_95_percent_stamped_sets_a_base_rate_of_095():
    """Proponents of a stamped query that are merely its class's training images are 95 % stamped by chance."""
    stamped_share_of_class = 0.95
    proponents_stamped = torch.tensor([1.0] * 19 + [0.0])      # 19 of 20
    lift = lift_over_chance(proponents_stamped, {"the class's own base rate": stamped_share_of_class}, generator())
    assert lift.verdict == "no better than chance" and lift.chance == pytest.approx(0.95)


def test_two_independent_groups_are_compared_each_resampled():
    stamped_queries = torch.full((30,), 0.9) + torch.rand(30, generator=generator()) * 0.05
    clean_queries = torch.full((30,), 0.5) + torch.rand(30, generator=generator(1)) * 0.05
    lift = lift_between(stamped_queries, clean_queries, "clean queries", generator())
    assert lift.verdict == "above chance" and lift.lift == pytest.approx(0.4, abs=0.02)
    assert lift_between(clean_queries, clean_queries, "itself", generator()).verdict == "no better than chance"


def test_a_region_at_random_other_places_keeps_its_shape_and_scores_its_chance_iou_by_hand():
    """A 4x4 square in the corner of 28x28 has 25 x 25 - 1 other places; only the 15 shifts by 0-3 rows and columns
    overlap it, each with IoU (4 - a)(4 - b) / (32 - (4 - a)(4 - b))."""
    region = square_mask(top=0, left=0, side=4)
    placed = random_placements(region, 20000, generator())
    assert placed.shape == (20000, 28, 28) and (placed.flatten(1).sum(1) == 16).all()
    rows, cols = placed.any(2).float().argmax(1), placed.any(1).float().argmax(1)
    assert torch.equal(placed, torch.stack([square_mask(top=int(r), left=int(c)) for r, c in zip(rows, cols)]))
    assert not ((rows == 0) & (cols == 0)).any() and rows.max() == 24 and cols.max() == 24
    by_hand = sum((4 - a) * (4 - b) / (32 - (4 - a) * (4 - b)) for a in range(4) for b in range(4) if a or b) / 624
    assert iou(placed, region).mean().item() == pytest.approx(by_hand, abs=0.0015)


def test_placements_apart_share_the_fewest_pixels_with_the_region():
    small = square_mask(top=0, left=0, side=4)
    assert not (random_placements(small, 500, generator(), apart=True) & small).any()
    big = square_mask(top=0, left=0, side=20)     # every other place overlaps; the least is the shift by 8 and 8
    assert torch.equal(random_placements(big, 5, generator(), apart=True), square_mask(top=8, left=8, side=20).expand(5, 28, 28))
    assert not random_placements(torch.zeros(28, 28, dtype=torch.bool), 3, generator()).any()
    assert random_placements(square_mask(top=0, left=0, side=28), 3, generator()).shape == (0, 28, 28)


# ---------------------------------------------------------------------------------------------
# proportions against the class's own base rate
# ---------------------------------------------------------------------------------------------
def test_a_class_s_base_rate_is_its_own_share_and_undefined_where_its_images_all_agree():
    from pipeline.scoring.proportions import class_base_rates

    labels = [7] * 20 + [3] * 10 + [1] * 5
    flags = [True] * 19 + [False] + [False] * 10 + [True] * 5
    rates = class_base_rates([7, 3, 1, 7, 5], labels, flags)
    assert rates[0] == rates[3] == pytest.approx(0.95)
    assert all(math.isnan(r) for r in rates[1:3]) and math.isnan(rates[4])   # all unflagged, all flagged, absent


def test_picks_that_are_merely_the_class_s_images_score_its_base_rate_and_no_class_left_is_not_judged():
    from pipeline.scoring.proportions import share_over_class_rate

    labels, flags = [7] * 20 + [3] * 20, [True] * 19 + [False] * 21
    merely = share_over_class_rate([1.0] * 19 + [0.0], [7] * 20, labels, flags, generator())
    assert merely.chance == pytest.approx(0.95) and merely.lift == pytest.approx(0) and merely.verdict == "no better than chance"
    over_all = lift_over_chance(torch.tensor([1.0] * 19 + [0.0]), {"all images": 19 / 40}, generator())
    assert over_all.verdict == "above chance"    # the share among all images would flatter
    none = share_over_class_rate([0.0] * 5, [3] * 5, labels, flags, generator(), reason_if_empty="nothing planted")
    assert none.verdict == "not judged" and none.reason == "nothing planted"
