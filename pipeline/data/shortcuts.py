"""Planted shortcuts for Clever Hans MNIST.

Each kind is an opacity map ``alpha`` (H x W, values in [0, 1]); stamping blends the image toward
the shortcut's color: ``out = image * (1 - alpha) + color * alpha``. The ground-truth mask of a
shortcut is ``alpha > 0``. Nothing downstream removes it: images stay in [0, 1] unnormalised.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
from annotated_types import Ge, Interval, Len, Predicate

@dataclass(frozen=True)
class Shortcut:
    """One planted shortcut: images of class ``label`` carry pattern ``kind``.

    ``position`` is the (row, col) of the pattern's top-left corner and ``side`` its side in
    pixels (for ``text``: the pixel scale of the 3x5 glyphs); ``strength`` is its opacity;
    ``fraction`` is the share of that class's training images that carry it.
    """

    label: Annotated[int, Ge(0)]
    kind: Literal["square", "text", "watermark", "gradient"]
    fraction: Annotated[float, Interval(ge=0, le=1)] = 1.0
    position: Annotated[list[Annotated[int, Ge(0)]], Len(2, 2), "[row, col]"] = field(default_factory=lambda: [1, 1])
    side: Annotated[int, Ge(1)] = 4   # not `size`: DVC's run cache ignores params named size (treeverse/dvc#10296)
    strength: Annotated[float, Interval(gt=0, le=1)] = 1.0
    color: Annotated[list[Annotated[float, Interval(ge=0, le=1)]], Len(3, 3), "[r, g, b]"] = field(
        default_factory=lambda: [1.0, 1.0, 1.0])
    text: Annotated[str, Predicate(renderable), "of the characters of GLYPHS: digits, ' -./:'"] = "09:41"

# 3x5 pixel glyphs for time-stamp-like strings, one string of rows per character.
GLYPHS = {
    "0": ("111", "101", "101", "101", "111"),
    "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"),
    "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"),
    "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"),
    "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"),
    "9": ("111", "101", "111", "001", "111"),
    ":": ("000", "010", "000", "010", "000"),
    "-": ("000", "000", "111", "000", "000"),
    "/": ("001", "001", "010", "100", "100"),
    ".": ("000", "000", "000", "000", "010"),
    " ": ("000", "000", "000", "000", "000"),
}
GLYPH_WIDTH = 3  # columns of every glyph; render_text puts one blank column between glyphs


def renderable(text: str) -> bool:
    """Whether ``text`` is a non-empty string of the characters of ``GLYPHS``."""
    return bool(text) and set(text) <= set(GLYPHS)
WATERMARK_PERIOD = 3


def render_text(text: str, scale: int = 1) -> np.ndarray:
    """Bitmap (float32, 0/1) of ``text`` in the 3x5 font, one blank column between glyphs."""
    columns = []
    for i, char in enumerate(text):
        glyph = np.array([[c == "1" for c in row] for row in GLYPHS[char]], dtype=np.float32)
        if i:
            columns.append(np.zeros((5, 1), dtype=np.float32))
        columns.append(glyph)
    bitmap = np.concatenate(columns, axis=1)
    return np.kron(bitmap, np.ones((scale, scale), dtype=np.float32))


def _place(pattern: np.ndarray, position: list[int], shape: tuple[int, int]) -> np.ndarray:
    """Put ``pattern`` with its top-left corner at ``position`` of an image of ``shape`` (H, W); it must
    lie wholly inside the image.

    A cropped stamp would not be the shortcut the params describe (and its mask would not be its
    pixels), so a pattern that does not fit is refused rather than clipped.
    """
    image_height, image_width = shape
    alpha = np.zeros((image_height, image_width), dtype=np.float32)
    row, col = position
    height, width = pattern.shape
    if row < 0 or col < 0 or row + height > image_height or col + width > image_width:
        raise ValueError(f"a {height}x{width} pattern at {list(position)} does not fit inside the "
                         f"{image_height}x{image_width} image")
    alpha[row : row + height, col : col + width] = pattern
    return alpha


def shortcut_pattern(shortcut: Shortcut) -> np.ndarray:
    """The shortcut's opacity pattern at full strength, before placing: its shape is the stamp's extent."""
    size = shortcut.side
    if shortcut.kind == "square":
        return np.ones((size, size), dtype=np.float32)
    if shortcut.kind == "text":
        return render_text(shortcut.text, scale=size)
    rows, cols = np.indices((size, size))
    if shortcut.kind == "watermark":
        return ((rows + cols) % WATERMARK_PERIOD == 0).astype(np.float32)
    if shortcut.kind == "gradient":
        return ((rows + cols + 1) / (2 * size - 1)).astype(np.float32)
    raise ValueError(f"unknown shortcut kind {shortcut.kind!r}")  # validated in config; kept for direct calls


def shortcut_alpha(shortcut: Shortcut, shape: tuple[int, int]) -> np.ndarray:
    """Opacity map (H x W float32 in [0, 1]) of one shortcut on images of ``shape`` (H, W)."""
    return _place(shortcut_pattern(shortcut), shortcut.position, tuple(shape)) * np.float32(shortcut.strength)


def stamp(images: np.ndarray, alpha: np.ndarray, color: list[float]) -> np.ndarray:
    """Blend ``images`` (N x 3 x H x W uint8) toward ``color`` with opacity ``alpha``; uint8 out."""
    color_img = np.asarray(color, dtype=np.float32).reshape(1, 3, 1, 1) * 255.0
    a = alpha[None, None]
    blended = images.astype(np.float32) * (1.0 - a) + color_img * a
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
