"""Network dissection (Bau et al., 2017): which convolution channels segment a known concept?

Every channel ("unit") of the chosen layers is turned into a binary segmentation of each image: its
activation map is upsampled to the image size (bilinear) and thresholded at the unit's own top
quantile over the whole sample, ``mask = map > T_k`` with ``T_k`` such that ``P(map > T_k) = 1 - quantile``
over every (image, pixel) value of the unit (less where values tie at ``T_k``, never more). Each mask is
compared with the concept masks (pixels of the digit, of a planted shortcut, of one colormap ...) by the
IoU accumulated over the sample, as dissection does: ``sum over images |M ∩ C| / sum over images |M ∪ C|``. A unit *detects* a concept when
that IoU reaches ``iou_threshold``.

Conventions, and where they differ from NetDissect:

- maps are taken after the ReLU (``activation="post_relu"``: the hooked convolution output clamped at
  zero, which is the ReLU's output when a ReLU follows the convolution) or before it (``pre_relu``);
- ``T_k`` is found on the upsampled maps (NetDissect: at the layer's own resolution), so a unit's masks
  cover exactly the share ``1 - quantile`` of the sample's pixels (fewer when the unit is positive on fewer
  of them, post-ReLU). The quantile is exact: the top ``1 - quantile`` of each unit's values are kept while
  streaming over batches (memory: that many values per unit);
- a mask of area share ``a`` against a concept of area share ``c`` scores at most ``min(a, c) / max(a, c)``
  (:func:`iou_ceiling`): the quantile must leave masks about as large as the concept for IoU to be high.

The best unit's IoU is a maximum over hundreds of units, and some unit fits any concept on the images it was
picked on. :func:`held_out_lifts` therefore picks each concept's unit on one half of the images and scores it on
the other, per image, beside three chance levels on the same images: the whole-image mask (what a mask scores that
covers everything), random masks of the unit's own mask area (what a mask of that size scores anywhere), and the
best unit of a re-initialised copy of the network, chosen and scored the same way (what a unit gets from the input
alone: in a network that learned nothing some unit still segments a bright red square, whether or not the
classifier uses it). The highest binds.

The library takes tensors and an ``nn.Module``; it knows nothing of params files or output paths.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from annotated_types import Ge, Interval
from torch import nn

from pipeline.data.tensors import as_float, batch_slices
from pipeline.models.classifiers import conv_layers, layer_outputs
from pipeline.scoring.chance import Lift, lift_over_chance, not_judged
from pipeline.scoring.masks import iou, mask_chance

Layers = Sequence[tuple[str, nn.Module]]
REINITIALIZED = "the best unit of the network re-initialised with random weights"   # chosen and scored the same way


@dataclass(frozen=True)
class DissectionOptions:
    """How units become masks and when a mask detects a concept."""

    # a unit's mask: its values above its own quantile of the sample
    quantile: Annotated[float, Interval(ge=0.5, lt=1),
                        "each unit's top 1 - quantile of values is kept in memory while its threshold is found"] = 0.85
    iou_threshold: Annotated[float, Interval(gt=0, le=1)] = 0.5  # a unit detects a concept from this IoU on
    activation: Literal["post_relu", "pre_relu"] = "post_relu"
    batch_size: Annotated[int, Ge(1)] = 256  # images per forward pass
    # held-out score's chance level: smoothing (pixels) of the random masks of the unit's mask area
    random_mask_sigma: Annotated[float, Ge(0)] = 2.0

    def __post_init__(self):
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"quantile = {self.quantile!r}; allowed: a number in (0, 1)")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold = {self.iou_threshold!r}; allowed: a number in (0, 1]")
        if self.activation not in ("post_relu", "pre_relu"):
            raise ValueError(f"activation = {self.activation!r}; allowed: 'post_relu', 'pre_relu'")
        if self.batch_size < 1:
            raise ValueError(f"batch_size = {self.batch_size!r}; allowed: a positive integer")
        if not self.random_mask_sigma >= 0:
            raise ValueError(f"random_mask_sigma = {self.random_mask_sigma!r}; allowed: a number >= 0")


@dataclass
class Dissection:
    """The scores of every unit (rows, in layer order) against every concept (columns)."""

    layer_names: list[str]
    concept_names: list[str]
    unit_layer: torch.Tensor       # int64 [U]: index into layer_names
    unit_channel: torch.Tensor     # int64 [U]
    thresholds: torch.Tensor       # [U]: T_k
    intersection: torch.Tensor     # float64 [U x K]: pixels in mask and concept, summed over the sample
    union: torch.Tensor            # float64 [U x K]
    mask_share: torch.Tensor       # [U]: share of the sample's pixels in each unit's masks
    concept_share: torch.Tensor    # [K]: share of the sample's pixels in each concept
    peak: torch.Tensor             # [N x U]: each image's largest (upsampled) activation of each unit

    @property
    def iou(self) -> torch.Tensor:
        """[U x K]; 0 where mask and concept are both empty."""
        return torch.where(self.union > 0, self.intersection / self.union.clamp_min(1), torch.zeros_like(self.union))

    def detects(self, iou_threshold: float) -> torch.Tensor:
        """[U x K] bool: the unit's IoU with the concept reaches ``iou_threshold``."""
        return self.iou >= iou_threshold

    def unit_names(self) -> list[str]:
        return [f"{self.layer_names[k]}/{c}" for k, c in zip(self.unit_layer.tolist(), self.unit_channel.tolist())]


def iou_ceiling(mask_share: torch.Tensor, concept_share: torch.Tensor) -> torch.Tensor:
    """The largest IoU a mask covering ``mask_share`` of the pixels can reach on a concept covering ``concept_share``."""
    low, high = torch.minimum(mask_share, concept_share), torch.maximum(mask_share, concept_share)
    return torch.where(high > 0, low / high.clamp_min(1e-12), torch.zeros_like(high))


@torch.no_grad()
def layer_maps(model: nn.Module, layers: Layers, images: torch.Tensor, activation: str = "post_relu") -> list[torch.Tensor]:
    """Activation maps of every layer for one batch, upsampled (bilinear) to the image size: [B x C_l x H x W] each."""
    _, outputs = layer_outputs(model, as_float(images), [module for _, module in layers])
    size = images.shape[-2:]
    maps = []
    for out in outputs:
        a = out.float()
        if activation == "post_relu":
            a = a.clamp_min(0)
        if a.shape[-2:] != size:
            a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
        maps.append(a)
    return maps


def top_count(quantile: float, n_values: int) -> int:
    """How many of ``n_values`` lie above the ``quantile``: ``round((1 - quantile) * n_values)``, at least 1."""
    return max(1, int(round((1.0 - quantile) * n_values)))


def quantile_thresholds(values: torch.Tensor, quantile: float) -> torch.Tensor:
    """Per row of ``values`` [U x M]: ``T``, the ``(top_count + 1)``-th largest value, so that exactly the top
    ``top_count`` values lie above it (``values > T``); fewer where values tie at ``T`` (e.g. the zeros of a unit
    that is positive on fewer pixels than that, post-ReLU): a mask never takes more than its share."""
    keep = min(top_count(quantile, values.shape[1]) + 1, values.shape[1])
    return values.topk(keep, dim=1, sorted=False).values.amin(1)


@torch.no_grad()
def unit_thresholds(model: nn.Module, layers: Layers, images: torch.Tensor,
                    options: DissectionOptions) -> tuple[torch.Tensor, list[int]]:
    """(``T_k`` of every unit [U] over all pixels of all ``images`` as :func:`quantile_thresholds` finds it, units per
    layer). Exact: each unit's top ``1 - quantile`` share of values is kept across batches."""
    n, _, h, w = images.shape
    keep = min(top_count(options.quantile, n * h * w) + 1, n * h * w)   # as quantile_thresholds
    top: list[torch.Tensor | None] = [None] * len(layers)
    pending: list[list[torch.Tensor]] = [[] for _ in layers]   # batches not yet merged: one top-k per ~keep new values
    for start in range(0, n, options.batch_size):
        maps = layer_maps(model, layers, images[start:start + options.batch_size], options.activation)
        last = start + options.batch_size >= n
        for k, a in enumerate(maps):
            pending[k].append(a.transpose(0, 1).reshape(a.shape[1], -1))
            if last or sum(v.shape[1] for v in pending[k]) >= keep:
                values = torch.cat(([top[k]] if top[k] is not None else []) + pending[k], dim=1)
                top[k], pending[k] = values.topk(min(keep, values.shape[1]), dim=1, sorted=False).values, []
    return torch.cat([t.amin(1) for t in top]), [t.shape[0] for t in top]


@torch.no_grad()
def dissect(model: nn.Module, images: torch.Tensor, concepts: torch.Tensor, concept_names: list[str],
            options: DissectionOptions, layers: Layers | None = None) -> Dissection:
    """Score every unit of ``layers`` (default: every convolution) against every concept.

    ``images``: [N x C x H x W] uint8 or float in [0, 1], on the model's device. ``concepts``: [N x K x H x W]
    bool, concept ``k``'s pixels in each image (all false where the concept is absent).
    """
    layers = list(layers if layers is not None else conv_layers(model))
    if concepts.shape[0] != images.shape[0] or concepts.shape[2:] != images.shape[2:] or concepts.shape[1] != len(concept_names):
        raise ValueError(f"concepts {tuple(concepts.shape)} must be [N x K x H x W] for images {tuple(images.shape)} "
                         f"and {len(concept_names)} concept names")
    thresholds, per_layer = unit_thresholds(model, layers, images, options)
    n, units = len(images), len(thresholds)
    device = thresholds.device
    intersection = torch.zeros(units, len(concept_names), dtype=torch.float64, device=device)
    mask_area = torch.zeros(units, dtype=torch.float64, device=device)
    peak = torch.zeros(n, units, device=device)
    for start in range(0, n, options.batch_size):
        part = slice(start, start + options.batch_size)
        maps = torch.cat(layer_maps(model, layers, images[part], options.activation), dim=1)     # [B x U x H x W]
        masks = (maps > thresholds.view(1, -1, 1, 1)).flatten(2).float()                          # [B x U x P]
        intersection += torch.einsum("bup,bkp->uk", masks, concepts[part].flatten(2).float()).double()
        mask_area += masks.sum((0, 2)).double()
        peak[part] = maps.flatten(2).amax(2)
    concept_area = concepts.flatten(2).sum((0, 2)).double().to(device)
    union = mask_area[:, None] + concept_area[None, :] - intersection
    pixels = n * images.shape[-2] * images.shape[-1]
    layer_index = torch.repeat_interleave(torch.arange(len(layers)), torch.tensor(per_layer))
    channel = torch.cat([torch.arange(c) for c in per_layer])
    return Dissection([name for name, _ in layers], list(concept_names), layer_index, channel, thresholds.cpu(),
                      intersection.cpu(), union.cpu(), (mask_area / pixels).float().cpu(), (concept_area / pixels).float().cpu(),
                      peak.cpu())


@torch.no_grad()
def unit_masks(model: nn.Module, layers: Layers, images: torch.Tensor, units: torch.Tensor, thresholds: torch.Tensor,
               activation: str = "post_relu") -> torch.Tensor:
    """The mask of unit ``units[i]`` on image ``images[i]`` (unit indices as in :class:`Dissection`): [N x H x W] bool."""
    maps = torch.cat(layer_maps(model, layers, images, activation), dim=1)
    rows = torch.arange(len(images), device=maps.device)
    units = units.to(maps.device)
    return maps[rows, units] > thresholds.to(maps.device)[units].view(-1, 1, 1)


def best_units(result: Dissection) -> dict[str, dict]:
    """For each concept, the unit with the highest IoU: {concept: {unit, layer, channel, iou}}."""
    iou = result.iou
    names = result.unit_names()
    best = {}
    for k, concept in enumerate(result.concept_names):
        u = int(iou[:, k].argmax())
        best[concept] = {"unit": names[u], "layer": result.layer_names[int(result.unit_layer[u])],
                         "channel": int(result.unit_channel[u]), "iou": float(iou[u, k]), "index": u}
    return best


def same_layers(model: nn.Module, layers: Layers, other: nn.Module) -> Layers:
    """The modules of ``other`` (the same architecture as ``model``) at the places of ``layers`` in ``model``, by name."""
    where = {id(module): name for name, module in model.named_modules()}
    return [(name, other.get_submodule(where[id(module)])) for name, module in layers]


def held_out_masks(model: nn.Module, layers: Layers, images: torch.Tensor, concepts: torch.Tensor,
                   concept_names: list[str], figures: dict[str, list[str]], selection: torch.Tensor,
                   options: DissectionOptions) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict]:
    """Each concept's best unit of ``model`` (and its threshold) chosen by :func:`dissect` on the images where
    ``selection`` is true, and its masks on the others. Returns ({figure: (masks, truth)}: per (held-out image,
    pooled concept) where the concept is present, the unit's mask and the concept's pixels, [M x H x W] bool each, in
    an order that depends on the concepts alone; the best units on the selection part, :func:`best_units`)."""
    chosen = dissect(model, images[selection], concepts[selection], concept_names, options, layers)
    best = best_units(chosen)
    held, truths = images[~selection], concepts[~selection]
    scored = {}
    for figure, pooled in figures.items():
        masks, truth = [], []
        for concept in pooled:
            k = concept_names.index(concept)
            present = torch.nonzero(truths[:, k].flatten(1).any(1)).flatten()
            units = torch.full((len(present),), best[concept]["index"], dtype=torch.long)
            for part in batch_slices(len(present), options.batch_size):
                masks.append(unit_masks(model, layers, held[present[part]], units[part], chosen.thresholds,
                                        options.activation).cpu())
            truth.append(truths[present, k].cpu())
        masks = torch.cat(masks) if masks else torch.zeros(0, *images.shape[-2:], dtype=torch.bool)
        scored[figure] = (masks, torch.cat(truth) if truth else masks.clone())
    return scored, best


def held_out_lifts(model: nn.Module, images: torch.Tensor, concepts: torch.Tensor, concept_names: list[str],
                   figures: dict[str, list[str]], selection: torch.Tensor, options: DissectionOptions,
                   streams: Callable[[str], torch.Generator], layers: Layers | None = None,
                   reinitialized: nn.Module | None = None) -> tuple[dict[str, Lift], dict]:
    """The best unit of each concept chosen on one part of the images and scored on the rest, beside its chance levels.

    The maximum IoU over hundreds of units flatters: some unit fits any concept on the images it was picked on. So
    each concept's unit (and its threshold) is chosen by :func:`dissect` on the images where ``selection`` [N] is
    true, and scored on the others: per (image, concept) where the concept is present, the IoU of the unit's mask with
    the concept's pixels, beside the whole-image mask and random masks of the same area
    (:func:`pipeline.scoring.masks.mask_chance`) on the same items and, where ``reinitialized`` (a copy of ``model``'s
    architecture with random weights) is given, the IoU of *its* best unit, chosen on the same selection images and
    scored on the same items (what a unit gets from the input alone); the highest chance level binds and the lift has
    a bootstrap interval over the items. ``figures``: {figure: the concepts it pools} (colored MNIST's colour figure:
    one unit per colormap, each image scored with its own colormap's). ``streams(name)``: one random stream per use.
    Returns ({figure: Lift}, the chosen units and how many images each part holds)."""
    layers = list(layers if layers is not None else conv_layers(model))
    selection = selection.to(images.device)
    scored, best = held_out_masks(model, layers, images, concepts, concept_names, figures, selection, options)
    baseline, baseline_best = ({}, {}) if reinitialized is None else \
        held_out_masks(reinitialized, same_layers(model, layers, reinitialized), images, concepts, concept_names, figures,
                       selection, options)
    lifts = {}
    for figure, (masks, truth) in scored.items():
        if len(masks) == 0:
            lifts[figure] = not_judged(f"no held-out image holds {' or '.join(figures[figure])}")
            continue
        chance = mask_chance(masks, truth, options.random_mask_sigma, streams(f"random_masks/{figure}"))["iou"]
        if figure in baseline:
            chance[REINITIALIZED] = iou(baseline[figure][0], truth)
        lifts[figure] = lift_over_chance(iou(masks, truth), chance, streams(f"bootstrap/{figure}"))
    concepts_scored = [concept for pooled in figures.values() for concept in pooled]
    held_out = {"n_selection": int(selection.sum()), "n_scored": int((~selection).sum()),
                "units": {concept: best[concept]["unit"] for concept in concepts_scored},
                "selection_iou": {concept: best[concept]["iou"] for concept in concepts_scored}}
    if baseline_best:
        held_out["reinitialized_units"] = {concept: baseline_best[concept]["unit"] for concept in concepts_scored}
        held_out["reinitialized_selection_iou"] = {concept: baseline_best[concept]["iou"] for concept in concepts_scored}
    return lifts, held_out


def half_split(n: int, generator: torch.Generator) -> torch.Tensor:
    """bool [n]: a seeded half of ``n`` items (``n // 2`` of them, drawn on the generator's device)."""
    selection = torch.zeros(n, dtype=torch.bool, device=generator.device)
    selection[torch.randperm(n, generator=generator, device=generator.device)[: n // 2]] = True
    return selection.cpu()


def top_images(result: Dissection, unit: int, n: int) -> np.ndarray:
    """Indices of the ``n`` images on which ``unit`` peaks highest (the images NetDissect shows for a unit)."""
    return result.peak[:, unit].argsort(descending=True, stable=True)[:n].numpy()


def layer_summary(result: Dissection, iou_threshold: float) -> dict[str, dict]:
    """Per layer: units, and per concept the units that detect it and the layer's best IoU."""
    iou, detects = result.iou, result.detects(iou_threshold)
    summary = {}
    for k, layer in enumerate(result.layer_names):
        rows = result.unit_layer == k
        summary[layer] = {"n_units": int(rows.sum())}
        for c, concept in enumerate(result.concept_names):
            summary[layer][f"{concept}_units"] = int(detects[rows, c].sum())
            summary[layer][f"best_{concept}_iou"] = float(iou[rows, c].max()) if rows.any() else 0.0
    return summary


def units_figure(images: np.ndarray, masks: np.ndarray, concept_masks: np.ndarray, row_titles: list[str], suptitle: str = ""):
    """Rows of images (``images`` [R x M x C x H x W]) shown as NetDissect does, dimmed outside a unit's mask, with a
    concept's outline in magenta (``masks``, ``concept_masks`` [R x M x H x W] bool); ``row_titles`` label each row."""
    import matplotlib.pyplot as plt

    from pipeline.plotting import as_hwc

    n_rows, n_cols = images.shape[:2]
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.4 * n_cols, 1.5 * n_rows + 0.4), squeeze=False)
    for r in range(n_rows):
        for m in range(n_cols):
            ax = axes[r, m]
            ax.axis("off")
            shown = as_hwc(images[r, m]) * np.where(masks[r, m], 1.0, 0.25)[..., None]
            ax.imshow(shown + np.where(masks[r, m], 0.0, 0.12)[..., None], interpolation="nearest")
            if concept_masks[r, m].any():
                ax.contour(concept_masks[r, m].astype(float), levels=[0.5], colors="magenta", linewidths=0.9)
        axes[r, 0].set_title(row_titles[r], fontsize=7, loc="left")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig
