"""The known-answer type on constructed cases: truth regions a perfect find scores 1 on, stamping, the
'carries the shortcut' rule, and the round trip through prepare's meta.json."""
import json

import numpy as np
import pytest
import torch

from pipeline.data.known_answer import (ColorRule, PlantedShortcuts, Unknown, color_name, known_answer_from_meta)
from pipeline.data.shortcuts import Shortcut, shortcut_alpha, stamp

SHAPE = (28, 28)


def planted(*shortcuts: Shortcut) -> PlantedShortcuts:
    return PlantedShortcuts(shortcuts, SHAPE)


def test_a_square_region_is_the_square():
    answer = planted(Shortcut(label=7, kind="square", position=[2, 3], side=4, strength=0.3))
    expected = np.zeros(SHAPE, dtype=bool)
    expected[2:6, 3:7] = True
    np.testing.assert_array_equal(answer.region(0), expected)
    assert answer.area_fraction(0) == 16 / 784


@pytest.mark.parametrize("kind, size, text", [("text", 1, "09:41"), ("watermark", 9, "")])
def test_a_patterned_stamp_region_is_its_whole_patch_less_its_blank_corners(kind, size, text):
    """A time stamp's glyphs and the gaps between them, a watermark's lines and the gaps between them: the hull
    holds every painted pixel, and lies inside the stamp's bounding box."""
    answer = planted(Shortcut(label=1, kind=kind, position=[1, 1], side=size, text=text or "0"))
    painted = answer.alpha(0) > 0
    region = answer.region(0)
    rows, cols = np.nonzero(painted)
    box = np.zeros(SHAPE, dtype=bool)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    assert (region >= painted).all() and not (region & ~box).any()
    assert region.sum() >= 0.8 * box.sum() > painted.sum()


def test_a_gradient_region_is_its_more_opaque_half():
    answer = planted(Shortcut(label=1, kind="gradient", position=[0, 0], side=10))
    alpha = answer.alpha(0)
    region = answer.region(0)
    assert region[9, 9] and not region[0, 0]           # the opaque corner, not the near-invisible start
    step = 1 / 19                                       # the ramp's step: (row + col + 1) / (2 * size - 1)
    assert (alpha[~region] < 0.5).all()                 # every pixel at half opacity or more is in it ...
    assert (alpha[region] >= 0.5 - step - 1e-6).all()   # ... and its hull adds only the staircase's inner corners


def test_stamping_a_tensor_matches_stamping_the_array_prepare_writes():
    answer = planted(Shortcut(label=3, kind="watermark", position=[4, 5], side=9, strength=0.4, color=[0.2, 0.9, 0.5]))
    images = np.random.default_rng(0).integers(0, 256, size=(5, 3, 28, 28), dtype=np.uint8)
    expected = stamp(images, shortcut_alpha(answer.shortcuts[0], SHAPE), [0.2, 0.9, 0.5])
    np.testing.assert_array_equal(answer.stamp(images, 0), expected)
    np.testing.assert_array_equal(answer.stamp_tensor(torch.from_numpy(images), 0).numpy(), expected)
    as_float = answer.stamp_tensor(torch.from_numpy(images).float() / 255, 0)
    assert torch.allclose(as_float * 255, torch.from_numpy(expected).float(), atol=0.5 + 1e-4)


def test_occlusion_blackens_what_the_stamp_paints():
    answer = planted(Shortcut(label=3, kind="square", position=[0, 0], side=2, strength=0.5))
    images = torch.full((1, 3, 28, 28), 200, dtype=torch.uint8)
    hidden = answer.occlude_tensor(images, 0)
    assert (hidden[0, :, :2, :2] == 100).all() and (hidden[0, :, 2:, :] == 200).all()


def test_pairs_into_a_shortcut_class_get_its_region():
    square = Shortcut(label=7, kind="square", position=[0, 0], side=3)
    text = Shortcut(label=2, kind="text", position=[20, 0], side=1, text="1")
    answer = planted(square, text)
    selected, truth = answer.truth_for_targets(torch.tensor([7, 2, 5]))
    assert selected.tolist() == [True, True, False]
    assert torch.equal(truth[0], torch.from_numpy(answer.region(0)))
    assert torch.equal(truth[1], torch.from_numpy(answer.region(1)))
    assert not truth[2].any()


def test_a_counterfactual_carries_the_shortcut_when_it_paints_it():
    answer = planted(Shortcut(label=7, kind="square", position=[0, 0], side=4, color=[1.0, 0.0, 0.0]))
    clean = torch.zeros(3, 3, 28, 28)
    painted = answer.stamp_tensor(clean, 0)
    half_painted = clean.clone()
    half_painted[:, 0, :2, :4] = 1.0   # half of the square red: nearer the stamped image than the clean one? a tie
    half_painted[:, 0, 2, :4] = 1.0    # one more row: nearer the stamped one
    counterfactuals = torch.stack([painted[0], clean[1], half_painted[2]])
    assert answer.carries(counterfactuals, clean, torch.tensor([7, 7, 7])).tolist() == [True, False, True]
    assert answer.carries(painted, clean, torch.tensor([1, 1, 1])).tolist() == [False, False, False]


def test_the_negative_control_plants_nothing():
    answer = planted()
    assert answer.is_negative_control and answer.labels == []
    selected, truth = answer.truth_for_targets(torch.tensor([0, 7]))
    assert not selected.any() and truth.shape == (2, 28, 28)


def test_a_shortcut_on_no_training_image_is_a_negative_control_that_still_names_its_region():
    phantom = planted(Shortcut(label=7, kind="square", position=[0, 0], side=8, fraction=0.0))
    assert phantom.is_negative_control and phantom.labels == [7] and phantom.region(0).sum() == 64
    assert not planted(Shortcut(label=7, kind="square", fraction=0.5)).is_negative_control


def test_one_shortcut_per_class():
    with pytest.raises(ValueError, match="one shortcut per class"):
        planted(Shortcut(label=7, kind="square"), Shortcut(label=7, kind="text"))


@pytest.mark.parametrize("answer", [
    PlantedShortcuts((Shortcut(label=7, kind="text", position=[0, 1], side=1, text="09:41", color=[0.0, 1.0, 0.0]),), (32, 30)),
    PlantedShortcuts((), SHAPE),
    ColorRule(("spring", "winter")),
    Unknown(),
])
def test_the_answer_survives_meta_json(answer):
    meta = json.loads(json.dumps({"class_names": ["a"], "known_answer": answer.to_meta()}))
    assert known_answer_from_meta(meta) == answer


def test_a_meta_without_an_answer_is_refused():
    with pytest.raises(ValueError, match="re-run prepare"):
        known_answer_from_meta({"class_names": ["a"]})


def test_the_description_names_colour_size_place_and_class():
    answer = planted(Shortcut(label=7, kind="square", position=[0, 0], side=8, fraction=0.95, color=[1.0, 0.0, 0.0]))
    assert answer.describe(0, [str(c) for c in range(10)]) == \
        "a red 8x8 square at rows 0-7, columns 0-7 on 95 % of the training images of 7"
    assert color_name([0.9, 0.1, 0.05]) == "red" and color_name([0.45, 0.5, 0.55]) == "gray"


def test_the_exact_counterfactual_repaints_the_digit_with_the_target_colormap():
    rule = ColorRule(("autumn", "winter"))
    gray = np.full((1, 2, 2), 255, dtype=np.uint8)
    repainted = rule.exact_counterfactuals(gray, np.array([0.0], dtype=np.float32), np.array([1]))
    assert repainted[0, :, 0, 0].tolist() == [0, 0, 255]   # winter at 0 is blue
