"""The known answer of a dataset: what its classifier is known to rely on, built once from prepare's output.

One of three kinds, each a frozen object that every stage and the report receive instead of parsing params,
array keys or strings to find out which class carries what where:

- :class:`PlantedShortcuts` (Clever Hans): chosen classes carry a planted stamp. It gives each shortcut's
  opacity, its *truth region* (what a perfect find is scored against), stamps and occludes images, and says
  which pairs go into a shortcut's class and whether a counterfactual carries the shortcut. With no
  shortcut at all it is the **negative control**: the answer is known, and it is "nothing planted".
- :class:`ColorRule` (colored MNIST): the class is the colormap; the exact counterfactual is the same digit
  recolored along the target's colormap.
- :class:`Unknown` (your own images): nothing to score against; stages skip those scores and say why.

The truth region of a shortcut is the convex hull of the pixels where its opacity reaches half of its peak:
the square itself; a time stamp's glyphs and the gaps between them; a watermark's lattice and the gaps between
its lines; the more opaque half of a gradient (a ramp that starts at opacity 0.026 is not visible at its
start). Region-finding detectors report convex hulls too, so a perfect find scores IoU 1 on every kind.
Which pixels a stamp *paints* (opacity > 0) is a different question, answered by :meth:`PlantedShortcuts.alpha`:
occlusion controls and area limits use those.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from pipeline.data.colored_mnist import exact_counterfactuals
from pipeline.data.regions import convex_hull
from pipeline.data.shortcuts import Shortcut, shortcut_alpha, stamp

TRUTH_OPACITY = 0.5  # a truth region holds the pixels at >= this share of the stamp's peak opacity (and their hull)


class KnownAnswer:
    """Base of the three kinds. ``known`` is False only for :class:`Unknown`."""

    kind: ClassVar[str]
    known: ClassVar[bool] = True

    def to_meta(self) -> dict:
        """Plain data for prepare's ``meta.json``; :func:`known_answer_from_meta` reads it back."""
        fields = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"kind": self.kind, **fields}


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(Shortcut)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Unknown(KnownAnswer):
    """Your own images as they are: nothing planted that the pipeline knows of."""

    kind: ClassVar[str] = "unknown"
    known: ClassVar[bool] = False
    reason: ClassVar[str] = ("no known answer: an image_folder dataset has no planted shortcut or color rule to "
                             "score against")


@dataclass(frozen=True)
class ColorRule(KnownAnswer):
    """The class is the colormap: each digit is painted with its class's colormap at a random position."""

    colormaps: tuple[str, ...]
    kind: ClassVar[str] = "color_rule"

    def exact_counterfactuals(self, gray: np.ndarray, positions: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Each digit's own intensities painted with the target class's colormap at its own position (uint8 NCHW)."""
        return exact_counterfactuals(gray, positions, targets, list(self.colormaps))

    @staticmethod
    def colored_pixels(images: torch.Tensor) -> torch.Tensor:
        """[N, H, W] bool: where the colour is (the digit's pixels: any channel above zero)."""
        return images.amax(dim=1) > 0


@dataclass(frozen=True)
class PlantedShortcuts(KnownAnswer):
    """Shortcuts planted on chosen classes of images of ``image_shape`` (H, W); none at all = the negative control."""

    shortcuts: tuple[Shortcut, ...]
    image_shape: tuple[int, int]
    kind: ClassVar[str] = "planted_shortcuts"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shortcuts", tuple(self.shortcuts))
        object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
        labels = self.labels
        if len(set(labels)) != len(labels):
            raise ValueError(f"one shortcut per class; classes {labels} repeat")

    # -- what is planted where ------------------------------------------------------------------
    @property
    def labels(self) -> list[int]:
        """The class of each shortcut, in order."""
        return [s.label for s in self.shortcuts]

    @property
    def is_negative_control(self) -> bool:
        """Nothing is planted: no shortcut, or each on no training image (``fraction`` 0). A shortcut planted on no
        image still names a class and a region: every detector is scored against it, and must stay at chance."""
        return all(s.fraction == 0 for s in self.shortcuts)

    def shortcut_of(self, label: int) -> int | None:
        """Index of the shortcut planted on class ``label``, or None."""
        return next((k for k, s in enumerate(self.shortcuts) if s.label == label), None)

    def alpha(self, k: int) -> np.ndarray:
        """Opacity (H x W float32 in [0, 1]) of shortcut ``k``: where and how strongly its stamp paints."""
        return shortcut_alpha(self.shortcuts[k], self.image_shape)

    def region(self, k: int) -> np.ndarray:
        """Truth region (H x W bool) of shortcut ``k``: the hull of its pixels at >= half its peak opacity."""
        alpha = self.alpha(k)
        return convex_hull(alpha >= TRUTH_OPACITY * alpha.max())

    def regions(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """[K, H, W] bool: every shortcut's truth region."""
        return torch.from_numpy(np.stack([self.region(k) for k in range(len(self.shortcuts))])
                                if self.shortcuts else np.zeros((0, *self.image_shape), dtype=bool)).to(device)

    def area_fraction(self, k: int) -> float:
        """Share of the image that shortcut ``k`` paints (opacity > 0)."""
        return float((self.alpha(k) > 0).mean())

    # -- images ---------------------------------------------------------------------------------
    def stamp(self, images: np.ndarray, k: int) -> np.ndarray:
        """uint8 N x 3 x H x W images with shortcut ``k`` stamped on (as prepare plants it)."""
        return stamp(images, self.alpha(k), self.shortcuts[k].color)

    def stamp_tensor(self, images: torch.Tensor, k: int) -> torch.Tensor:
        """``images`` (uint8 or float NCHW tensor) with shortcut ``k`` stamped on, in the same dtype: uint8
        results are rounded exactly as :meth:`stamp` rounds them."""
        alpha = torch.from_numpy(self.alpha(k)).to(images.device)
        scale = 255.0 if images.dtype == torch.uint8 else 1.0
        color = torch.tensor(self.shortcuts[k].color, dtype=torch.float32, device=images.device).reshape(1, -1, 1, 1)
        blended = images.float() * (1.0 - alpha) + color * scale * alpha
        return blended.round().clamp(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else blended

    def occlude_tensor(self, images: torch.Tensor, k: int) -> torch.Tensor:
        """``images`` (uint8 NCHW) with shortcut ``k``'s opacity blended towards black: its area hidden, no colour."""
        keep = 1.0 - torch.from_numpy(self.alpha(k)).to(images.device)
        return (images.float() * keep).round().to(images.dtype)

    # -- pairs translated into a class ----------------------------------------------------------
    def truth_for_targets(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(selected [N] bool, truth [N, H, W] bool): which targets carry a shortcut, and its truth region."""
        regions = self.regions(targets.device)
        selected = torch.zeros(len(targets), dtype=torch.bool, device=targets.device)
        truth = torch.zeros(len(targets), *self.image_shape, dtype=torch.bool, device=targets.device)
        for k, label in enumerate(self.labels):
            into = targets == label
            selected |= into
            truth[into] = regions[k]
        return selected, truth

    def carries(self, counterfactual: torch.Tensor, clean: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """[N] bool: whether each counterfactual (float NCHW in [0, 1]) carries the shortcut of its target class:
        within the shortcut's truth region it is closer (mean absolute difference) to its real image ``clean``
        (float NCHW) stamped than to the same image clean. A generator that learned the class's look paints the
        shortcut too; one that only redraws the digit does not. False for targets without a shortcut."""
        carried = torch.zeros(len(targets), dtype=torch.bool, device=targets.device)
        for k, label in enumerate(self.labels):
            into = torch.nonzero(targets == label).flatten()
            if len(into) == 0:
                continue
            region = torch.from_numpy(self.region(k)).to(counterfactual.device)
            generated, real = counterfactual[into][..., region], clean[into]
            to_stamped = (generated - self.stamp_tensor(real, k)[..., region]).abs().flatten(1).mean(1)
            to_clean = (generated - real[..., region]).abs().flatten(1).mean(1)
            carried[into] = to_stamped < to_clean
        return carried

    def describe(self, k: int, class_names: list[str]) -> str:
        """'a red 8x8 square at rows 0-7, columns 0-7 on 95 % of the training images of 7'."""
        s = self.shortcuts[k]
        rows, cols = np.nonzero(self.alpha(k))
        what = f"time stamp {s.text!r}" if s.kind == "text" else s.kind
        opacity = f" at opacity {s.strength:g}" if s.strength < 1 else ""
        return (f"a {color_name(s.color)} {rows.max() - rows.min() + 1}x{cols.max() - cols.min() + 1} {what}{opacity} at "
                f"rows {rows.min()}-{rows.max()}, columns {cols.min()}-{cols.max()} on {100 * s.fraction:.0f} % of the "
                f"training images of {class_names[s.label]}")


def color_name(rgb) -> str:
    """A plain name for an RGB colour in [0, 1] (its nearest of a few), for sentences."""
    names = {"black": (0, 0, 0), "white": (1, 1, 1), "red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1),
             "yellow": (1, 1, 0), "cyan": (0, 1, 1), "magenta": (1, 0, 1), "gray": (0.5, 0.5, 0.5)}
    return min(names, key=lambda n: sum((a - b) ** 2 for a, b in zip(names[n], rgb)))


KINDS = {cls.kind: cls for cls in (Unknown, ColorRule, PlantedShortcuts)}


def known_answer_from_meta(meta: dict) -> KnownAnswer:
    """The known answer recorded in prepare's ``meta.json`` (``meta["known_answer"]``)."""
    record = dict(meta.get("known_answer") or {})
    kind = record.pop("kind", None)
    if kind not in KINDS:
        raise ValueError(f"meta.json has no known answer of a known kind ({kind!r}); re-run prepare")
    if kind == PlantedShortcuts.kind:
        return PlantedShortcuts(tuple(Shortcut(**s) for s in record["shortcuts"]), tuple(record["image_shape"]))
    if kind == ColorRule.kind:
        return ColorRule(tuple(record["colormaps"]))
    return Unknown()
