"""Discovery on constructed masks: a planted recurring region is found where it is, noise and shared regions are not."""
from __future__ import annotations

import torch

from pipeline.evaluation.discovery import (DiscoverySettings, Region, chosen_method, convex_hull, describe, discover,
                                           discovery_details, region_iou, score_against_truth, where_in_image)

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


def case(n_per_class: int = 100, n_classes: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(n_classes).repeat_interleave(n_per_class)
    return random_squares(len(targets), generator), targets, generator


def test_a_planted_recurring_region_is_flagged_at_its_place():
    masks, targets, generator = case()
    planted = square(1, 1, 8)
    carriers = (targets == 2) & (torch.rand(len(targets), generator=generator) < 0.9)
    masks[carriers] |= planted
    found = discover(masks, targets, 4, DiscoverySettings(), torch.Generator().manual_seed(1))
    assert found.flagged_classes == [2]
    region = next(r for r in found.classes[2].regions if r.significant)
    assert region_iou(region.mask, planted) >= 0.8
    assert abs(region.consistency - carriers[targets == 2].float().mean().item()) < 0.05
    assert region.background < 0.05 and region.p_value <= 0.01
    assert where_in_image(region, H, W) == "top-left"
    assert describe(region, "7", H, W).startswith(
        "Decisions for class 7 hinge on a region of about 8×8 pixels at the top-left (rows 1–8, columns 1–8) in 9")


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
    assert found.flagged_classes == []
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


def test_classes_with_too_few_pairs_are_not_judged():
    masks, targets, _ = case(n_per_class=10)
    masks[targets == 0] |= square(0, 0, 6)
    found = discover(masks, targets, 4, DiscoverySettings(min_pairs=20), torch.Generator().manual_seed(0))
    assert not any(c.judged for c in found.classes) and found.flagged_classes == []


def test_the_result_is_the_same_for_the_same_seed():
    masks, targets, generator = case(seed=9)
    masks[(targets == 3) & (torch.rand(len(targets), generator=generator) < 0.6)] |= square(2, 18, 7)
    runs = [discover(masks, targets, 4, DiscoverySettings(n_permutations=120), torch.Generator().manual_seed(2)) for _ in range(2)]
    assert runs[0].flagged_classes == runs[1].flagged_classes == [3]
    assert [r.p_value for r in runs[0].classes[3].regions] == [r.p_value for r in runs[1].classes[3].regions]
    assert where_in_image(runs[0].classes[3].regions[0], H, W) == "top-right"


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


def test_too_few_permutations_for_alpha_is_refused():
    import pytest

    with pytest.raises(ValueError, match="at least 99"):
        DiscoverySettings(n_permutations=50, alpha=0.01)


def test_auto_method_is_the_discriminative_one_with_the_best_median_score():
    import numpy as np

    arrays = {"methods": np.array(["d_ig", "d_deeplift", "residual"]), "d_ig_score": np.array([0.2, 0.3, 0.4]),
              "d_deeplift_score": np.array([0.5, 0.6, 0.1]), "residual_score": np.array([0.9, 0.9, 0.9])}
    assert chosen_method(arrays, "auto") == "d_deeplift"      # the residual scores higher but is no attribution
    assert chosen_method(arrays, "d_ig") == "d_ig"


def test_flagged_regions_are_scored_against_the_planted_shortcut():
    masks, targets, generator = case(n_classes=4)
    planted = square(1, 1, 8)
    masks[(targets == 3) & (torch.rand(len(targets), generator=generator) < 0.9)] |= planted
    masks[(targets == 0) & (torch.rand(len(targets), generator=generator) < 0.9)] |= square(18, 18, 6)
    found = discover(masks, targets, 4, DiscoverySettings(), torch.Generator().manual_seed(1))
    assert found.flagged_classes == [0, 3]
    scores = score_against_truth(found, {3: planted})
    assert scores["false_alarms"] == 1 and scores["shortcut_region_iou"] >= 0.8
    assert score_against_truth(found, {})["false_alarms"] == 2      # no planted answer: every flag is a false alarm


def red_square_classifier(x: torch.Tensor) -> torch.Tensor:
    """Class 3 when the top-left 8x8 is red (a shortcut that works on its own), else class 0."""
    red = (x[:, 0, 1:9, 1:9].mean(dim=(1, 2)) > 0.9) & (x[:, 1, 1:9, 1:9].mean(dim=(1, 2)) < 0.1)
    return torch.where(red, 3, 0)


def test_a_recurring_region_is_a_shortcut_only_when_it_moves_decisions_on_its_own():
    """Class 3's masks recur on a red square that alone decides; class 1's on a stroke that recurs
    (part of its shape) but moves nothing when pasted elsewhere. Only class 3 is flagged."""
    from pipeline.evaluation.discovery import trigger_rate

    masks, targets, generator = case(n_classes=4)
    planted, stroke = square(1, 1, 8), square(18, 12, 6)
    masks[(targets == 3) & (torch.rand(len(targets), generator=generator) < 0.9)] |= planted
    masks[(targets == 1) & (torch.rand(len(targets), generator=generator) < 0.9)] |= stroke
    donors = {3: torch.zeros(20, 3, H, W), 1: torch.zeros(20, 3, H, W)}
    donors[3][:, 0, 1:9, 1:9] = 1.0
    donors[1][:, :, 18:24, 12:18] = 1.0
    recipients = torch.rand(50, 3, H, W, generator=generator) * 0.5
    trigger = lambda c, region: trigger_rate(red_square_classifier, recipients, donors[c], region, c,  # noqa: E731
                                             torch.Generator().manual_seed(0), batch_size=16)
    found = discover(masks, targets, 4, DiscoverySettings(), torch.Generator().manual_seed(1), trigger=trigger)
    assert found.flagged_classes == [3]
    shortcut = next(r for r in found.classes[3].regions if r.significant)
    shape = next(r for r in found.classes[1].regions if r.significant)
    assert shortcut.shortcut and shortcut.trigger_rate == 1.0 and region_iou(shortcut.mask, planted) >= 0.8
    assert not shape.shortcut and shape.trigger_rate == 0.0
    assert describe(shortcut, "3", H, W).endswith("moves 100 % of them into 3: a shortcut: it works on its own.")
    assert "not a shortcut on its own" in describe(shape, "1", H, W)
    assert discover(masks, targets, 4, DiscoverySettings(), torch.Generator().manual_seed(1)).flagged_classes == [1, 3]


def test_the_trigger_rate_counts_recipients_moved_by_the_pasted_region():
    from pipeline.evaluation.discovery import pasted, trigger_rate

    region = square(1, 1, 8)
    donors = torch.zeros(4, 3, H, W)
    donors[:2, 0, 1:9, 1:9] = 1.0   # half the donors carry the red square, half do not
    recipients = torch.full((400, 3, H, W), 0.3)
    hybrid = pasted(recipients[:1], donors[:1], region)
    assert torch.equal(hybrid[0, :, ~region], recipients[0, :, ~region]) and hybrid[0, 0, 1:9, 1:9].eq(1).all()
    rate = trigger_rate(red_square_classifier, recipients, donors, region, 3, torch.Generator().manual_seed(0), batch_size=64)
    assert abs(rate - 0.5) < 0.1
    assert trigger_rate(red_square_classifier, recipients[:0], donors, region, 3, torch.Generator()) != \
        trigger_rate(red_square_classifier, recipients[:0], donors, region, 3, torch.Generator())  # NaN: nothing to move


def test_the_discover_stage_flags_a_pasted_shortcut_and_not_class_shape(tmp_path, monkeypatch):
    """A constructed workspace: a classifier that calls an image 7 when its 4 x 4 top-left square is red,
    counterfactuals into 7 that paint the square red, and explanations whose masks recur on the square
    (pairs into 7) or on a stroke (pairs into 1). The stage must find the square and call the stroke shape."""
    import json

    import numpy as np
    import yaml

    from pipeline import paths
    from pipeline.stages.discover import main
    from pipeline.models.classifiers import save_model
    from pipeline.storage import save_arrays, write_json
    from tests.test_explain import SQUARE, square_detector

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    n = 200
    images = np.repeat((rng.random((n, 1, H, W)) < 0.2).astype(np.uint8) * 200, 3, axis=1)
    images[:, :, SQUARE[0], SQUARE[1]] = 0
    labels = np.arange(n) % 10
    stamped = images.copy()
    stamped[:, 0, SQUARE[0], SQUARE[1]] = 255
    alpha = np.zeros((1, H, W), dtype=np.float32)
    alpha[0][SQUARE] = 1.0
    save_arrays(paths.prepared_dir("clever_hans") / "test.npz", images=images, labels=labels, shortcut_alpha=alpha,
                shortcut_labels=np.array([7]), clean_images=images, shortcut_images=stamped[None])
    write_json(paths.prepared_dir("clever_hans") / "meta.json", {"class_names": [str(c) for c in range(10)], "n_classes": 10})
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
                source=source, target=target, methods=np.array(["d_ig"]), d_ig_score=np.ones(len(target)),
                d_ig_optimal_mask=masks)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"device": "cpu", "discover": {"min_pairs": 5, "n_trigger_images": 100}}))

    main(["clever_hans"])
    metrics = json.loads(paths.metrics_path("clever_hans", "discover").read_text())
    details = json.loads((paths.plots_dir("clever_hans", "discover") / "details.json").read_text())
    assert metrics["n_flagged_classes"] == 1 and metrics["false_alarms"] == 0 and metrics["shortcut_region_iou"] == 1.0
    square = next(r for r in details["classes"]["7"]["regions"] if r["significant"])
    stroke = next(r for r in details["classes"]["1"]["regions"] if r["significant"])
    assert square["shortcut"] and square["trigger_rate"] == 1.0
    assert not stroke["shortcut"] and stroke["trigger_rate"] == 0.0
