import numpy as np
import pytest

from pipeline.data.shortcuts import Shortcut, render_text, shortcut_alpha, shortcut_pattern, stamp

MNIST_SHAPE = (28, 28)


def test_square_alpha_is_the_square():
    alpha = shortcut_alpha(Shortcut(label=7, kind="square", position=[2, 3], side=4, strength=1.0), MNIST_SHAPE)
    expected = np.zeros((28, 28), dtype=np.float32)
    expected[2:6, 3:7] = 1.0
    np.testing.assert_array_equal(alpha, expected)


def test_square_touching_the_border_is_whole():
    alpha = shortcut_alpha(Shortcut(label=1, kind="square", position=[24, 24], side=4), MNIST_SHAPE)
    assert alpha.sum() == 16 and alpha[24:, 24:].all()


@pytest.mark.parametrize("kind, position, size", [("square", [26, 26], 4), ("square", [1, 1], 40),
                                                  ("text", [0, 0], 2), ("watermark", [0, 20], 10),
                                                  ("gradient", [20, 0], 10)])
def test_a_pattern_that_does_not_fit_is_refused_not_cropped(kind, position, size):
    with pytest.raises(ValueError, match="does not fit inside the 28x28 image"):
        shortcut_alpha(Shortcut(label=1, kind=kind, position=position, side=size), MNIST_SHAPE)


@pytest.mark.parametrize("kind, size, text, extent", [("square", 6, "", (6, 6)), ("watermark", 5, "", (5, 5)),
                                                      ("gradient", 7, "", (7, 7)), ("text", 2, "1:1", (10, 22))])
def test_pattern_extent_per_kind(kind, size, text, extent):
    assert shortcut_pattern(Shortcut(label=1, kind=kind, side=size, text=text or "0")).shape == extent


def test_stamp_blends_toward_color_with_opacity():
    images = np.full((2, 3, 28, 28), 100, dtype=np.uint8)
    alpha = shortcut_alpha(Shortcut(label=0, kind="square", position=[0, 0], side=2, strength=0.5), MNIST_SHAPE)
    out = stamp(images, alpha, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(out[:, :, 0, 0], [[178, 50, 50]] * 2)  # 100*0.5 + 255*0.5 = 177.5 -> 178
    assert (out[:, :, 5, 5] == 100).all()  # outside the mask untouched


def test_text_renders_glyphs_side_by_side():
    bitmap = render_text("1:1")
    assert bitmap.shape == (5, 3 * 3 + 2)
    np.testing.assert_array_equal(render_text("1", scale=2).shape, (10, 6))


@pytest.mark.parametrize("kind", ["text", "watermark", "gradient"])
def test_every_kind_has_a_nonempty_mask_within_strength(kind):
    size = 1 if kind == "text" else 6  # text: the glyph scale; "09:41" at scale 1 is 5x19 pixels
    shortcut = Shortcut(label=3, kind=kind, position=[0, 0], side=size, strength=0.2)
    alpha = shortcut_alpha(shortcut, MNIST_SHAPE)
    assert (alpha > 0).sum() > 3
    assert alpha.max() <= 0.2 + 1e-6


def test_gradient_rises_corner_to_corner():
    alpha = shortcut_alpha(Shortcut(label=3, kind="gradient", position=[0, 0], side=28, strength=1.0), MNIST_SHAPE)
    assert alpha[0, 0] < alpha[14, 14] < alpha[27, 27] == pytest.approx(1.0)


def test_the_image_shape_comes_from_the_caller():
    alpha = shortcut_alpha(Shortcut(label=0, kind="square", position=[40, 30], side=8), (64, 48))
    assert alpha.shape == (64, 48) and alpha.sum() == 64 and alpha[40:48, 30:38].all()
    with pytest.raises(ValueError, match="does not fit inside the 64x32 image"):
        shortcut_alpha(Shortcut(label=0, kind="square", position=[40, 30], side=8), (64, 32))
