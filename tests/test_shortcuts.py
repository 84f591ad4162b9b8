import numpy as np
import pytest

from pipeline.config import ShortcutParams
from pipeline.shortcuts import render_text, shortcut_alpha, stamp


def test_square_alpha_is_the_square():
    alpha = shortcut_alpha(ShortcutParams(label=7, kind="square", position=[2, 3], size=4, strength=1.0))
    expected = np.zeros((28, 28), dtype=np.float32)
    expected[2:6, 3:7] = 1.0
    np.testing.assert_array_equal(alpha, expected)


def test_square_is_cropped_at_border():
    alpha = shortcut_alpha(ShortcutParams(label=1, kind="square", position=[26, 26], size=4))
    assert alpha.sum() == 4


def test_stamp_blends_toward_color_with_opacity():
    images = np.full((2, 3, 28, 28), 100, dtype=np.uint8)
    alpha = shortcut_alpha(ShortcutParams(label=0, kind="square", position=[0, 0], size=2, strength=0.5))
    out = stamp(images, alpha, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(out[:, :, 0, 0], [[178, 50, 50]] * 2)  # 100*0.5 + 255*0.5 = 177.5 -> 178
    assert (out[:, :, 5, 5] == 100).all()  # outside the mask untouched


def test_text_renders_glyphs_side_by_side():
    bitmap = render_text("1:1")
    assert bitmap.shape == (5, 3 * 3 + 2)
    np.testing.assert_array_equal(render_text("1", scale=2).shape, (10, 6))


@pytest.mark.parametrize("kind", ["text", "watermark", "gradient"])
def test_every_kind_has_a_nonempty_mask_within_strength(kind):
    shortcut = ShortcutParams(label=3, kind=kind, position=[0, 0], size=6, strength=0.2)
    alpha = shortcut_alpha(shortcut)
    assert (alpha > 0).sum() > 3
    assert alpha.max() <= 0.2 + 1e-6


def test_gradient_rises_corner_to_corner():
    alpha = shortcut_alpha(ShortcutParams(label=3, kind="gradient", position=[0, 0], size=28, strength=1.0))
    assert alpha[0, 0] < alpha[14, 14] < alpha[27, 27] == pytest.approx(1.0)
