"""Discriminative attribution on (real, counterfactual) pairs, scored beside chance and the known answer.

For every pair, each attribution method gives a map; the sweep (:mod:`pipeline.attribution.discriminative`)
turns it into masks of growing size, copies the masked region from the counterfactual into the real
image, and records how far the target's probability rises. This module runs every method on a set of
pairs (:func:`explain_every_method`) and scores what it finds. Every figure is a
:class:`~pipeline.scoring.chance.Lift`: the figure beside its reference, computed by the same code on the same
pairs, with a paired bootstrap 95 % interval; what each one measures:

- **Score over the random map and over the residual** (every dataset). A pair's score (the area under its
  curve) against the score of a smooth random map on the same pair (:func:`random_maps`: independent noise per
  channel, so a per-channel method's masks are not three times smaller than the random map's for free), and
  against the residual ``|real - counterfactual|``, which needs no classifier at all. A method that does not beat
  the residual has shown nothing the pair itself did not show.
- **Shortcut IoU and mask mass on GAN pairs** (planted shortcuts, the negative control too). The optimal masks
  of the pairs translated into a shortcut's class against the shortcut's truth region, over the whole-image mask,
  random masks of each pair's own mask area (:func:`~pipeline.scoring.masks.mask_chance`) and the method's own masks
  on the pairs between classes without a shortcut, against the same region (a centred region overlaps any mask on
  the digit; :func:`~pipeline.scoring.masks.own_mask_chance`); the highest binds.
  The IoU over the pairs whose counterfactual carries the shortcut at all is given apart, and the share of those
  pairs (``gan_shortcut_fraction``) is a property of the generator, kept as a plain figure. On the negative
  control the same figures are taken against the unplanted class and region: they must come out at chance.
- **The distractor control** (planted shortcuts; :func:`distractor_control_pairs`). GAN-free pairs: a clean
  test image, and the same image stamped *and* changed elsewhere, in a box as large as the stamp's, by the pixels
  of another test image of its class, kept only when the classifier assigns the real image's class with that
  change alone and the shortcut's class with both. A method must choose between two changes of the same size,
  one the classifier uses and one it ignores, so the control can fail: the residual and any map that copies
  every change spread their masks over both. It measures whether a method finds what moves the decision, apart
  from what a generator changes besides it. (Pairs that differ only in the stamp would measure how much of the
  stamp flips the decision: any map weighted by ``real - counterfactual`` finds it by construction.)
- **Digit mass fraction** (colored MNIST): the share of optimal-mask mass on the digit's pixels, where the
  colour is, over a uniform map (the coloured pixels' share of the image) and area-matched random masks.

Not judged stays not judged: a figure with no pair to score (no pair into the shortcut's class, a method not run,
no control pair) is NaN with its reason, never 0. The figures are drawn by :mod:`pipeline.evaluation.explanation_plots`.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from typing import Annotated, Callable, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from annotated_types import Ge, Len

from pipeline.attribution.discriminative import (DISCRIMINATIVE, METHODS, MaskSettings, attribution_maps, batched,
                                                 normalise_maps, optimal_masks, score_pairs, sweep)
from pipeline.data.known_answer import ColorRule, KnownAnswer, PlantedShortcuts
from pipeline.data.tensors import subsample, to_float, to_uint8
from pipeline.models.inference import predict_probabilities
from pipeline.scoring.chance import Lift, lift_over_chance, not_judged, too_few
from pipeline.scoring.masks import OWN_MASKS, iou, mask_chance, mass_share, own_mask_chance, smooth_noise, spatial

Streams = Callable[[str], torch.Generator]   # a seeded CPU stream per name (the stage context's ``generator``)
NAN = float("nan")


@dataclass(frozen=True)
class ExplainOptions:
    """Which methods run and how: attribution (``ig_steps``, ``random_sigma``, ``attributed``,
    ``mask_channels``), batch sizes of the sweep and of attribution, and the distractor control's size."""

    methods: Annotated[tuple[Literal[METHODS], ...], Len(1)] = METHODS
    mask_channels: Literal["sum", "max", "per_channel"] = "per_channel"  # see normalise_maps
    attributed: Literal["real", "counterfactual", "logit_gap"] = "counterfactual"  # see attribution_maps
    ig_steps: Annotated[int, Ge(1)] = 32
    random_sigma: Annotated[float, Ge(0)] = 2.0  # the random map's smoothing, and that of the random masks of chance
    batch_size: Annotated[int, Ge(1)] = 16384  # most images per forward pass of the sweep
    attribution_batch_size: Annotated[int, Ge(1)] = 256
    mixed_precision: bool = True
    control_pairs: Annotated[int, Ge(0), "0 = no control"] = 512  # most distractor control pairs


@dataclass
class Pairs:
    """(real, counterfactual) pairs on the device, with their classes and how many there were."""

    real: torch.Tensor            # float [N,3,H,W] in [0, 1] on the device
    counterfactual: torch.Tensor  # float [N,3,H,W]
    image_index: torch.Tensor     # [N] into the prepared test split
    source: torch.Tensor          # [N]
    target: torch.Tensor          # [N]
    n_pairs: int                  # in the file
    n_reaching_target: int        # of those, assigned to their target (before max_pairs)


# --------------------------------------------------------------------------------------------
# Maps, the sweep and its per-method summary
# --------------------------------------------------------------------------------------------
def random_maps(real: torch.Tensor, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    """[N,C,H,W] >= 0: smooth random maps of ``real``'s shape, independent noise per pair *and channel*
    (:func:`~pipeline.scoring.masks.smooth_noise`, drawn on the CPU), each shifted to start at 0 so that its
    order is the noise's. With one noise copied to every channel, a per-channel mask of the random map covers
    all channels of its pixels, three times the footprint a method that takes one channel needs."""
    n, c, h, w = real.shape
    noise = smooth_noise(n * c, (h, w), sigma, generator).reshape(n, c, h, w)
    return (noise - noise.flatten(2).amin(dim=2)[..., None, None]).to(real.device)


def method_maps(method: str, model, pairs: Pairs, options: ExplainOptions, generator: torch.Generator) -> torch.Tensor:
    """Normalised maps of every pair for one method, batched (the random map from :func:`random_maps`)."""
    def one_batch(part: slice) -> torch.Tensor:
        if method == "random":
            raw = random_maps(pairs.real[part], options.random_sigma, generator)
        else:
            raw = attribution_maps(method, model, pairs.real[part], pairs.counterfactual[part], pairs.source[part],
                                   ig_steps=options.ig_steps, target=pairs.target[part], attributed=options.attributed)
        return normalise_maps(raw, options.mask_channels)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # captum notes that it sets requires_grad on inputs
        return batched(one_batch, len(pairs.real), options.attribution_batch_size, desc=f"{method} maps")


def explain_pairs(method: str, model, pairs: Pairs, options: ExplainOptions, settings: MaskSettings, grid: torch.Tensor,
                  generator: torch.Generator, progress: str | None = None):
    """One method on a set of pairs: (normalised maps, :class:`PairScores`, binary and soft optimal masks)."""
    maps = method_maps(method, model, pairs, options, generator)
    result = sweep(model, pairs.real, pairs.counterfactual, maps, pairs.target, settings, options.batch_size,
                   options.mixed_precision, progress=progress)
    scores = score_pairs(result, settings, grid)
    binary, soft = optimal_masks(maps, scores.optimal_threshold, settings)
    return maps, scores, binary, soft


def summarise(values: torch.Tensor) -> tuple[float, float]:
    """Median and interquartile range (NaN when empty)."""
    if len(values) == 0:
        return NAN, NAN
    q = torch.quantile(values.float().cpu(), torch.tensor([0.25, 0.5, 0.75]))
    return q[1].item(), (q[2] - q[0]).item()


METHOD_KEYS = ("median_score", "iqr_score", "mean_optimal_mask_size", "reached_target_fraction")


def method_metrics(scores, target: torch.Tensor) -> dict:
    """A method's plain figures on the pairs (:data:`METHOD_KEYS`)."""
    median, iqr = summarise(scores.score)
    n = len(scores.score)
    return {
        "median_score": median,
        "iqr_score": iqr,
        "mean_optimal_mask_size": scores.optimal_mask_size.mean().item() if n else NAN,
        "reached_target_fraction": (scores.optimal_predicted == target).float().mean().item() if n else NAN,
    }


def best_discriminative(metrics: dict) -> str | None:
    """The discriminative method with the highest median score in ``metrics`` (method -> entry): chosen by the
    sweep's score, never by a known-answer figure."""
    candidates = [(m, metrics[m]["median_score"]) for m in DISCRIMINATIVE if m in metrics]
    candidates = [(m, s) for m, s in candidates if s == s]  # drop NaN
    return max(candidates, key=lambda item: item[1])[0] if candidates else None


# --------------------------------------------------------------------------------------------
# Scores beside their references
# --------------------------------------------------------------------------------------------
SCORE_REFERENCES = {"score_vs_random": ("random", "the random map's score on the same pairs"),
                    "score_vs_residual": ("residual", "the residual |real - counterfactual|'s score on the same pairs")}


def score_lifts(scores: dict[str, torch.Tensor], streams: Streams) -> dict[str, dict[str, Lift]]:
    """{figure: {method: Lift}}: each method's per-pair score over the random map's and over the residual's on the
    same pairs (paired; :data:`SCORE_REFERENCES`), for every method that ran but the reference itself."""
    lifts: dict[str, dict[str, Lift]] = {}
    for figure, (reference, words) in SCORE_REFERENCES.items():
        lifts[figure] = {}
        for method, values in scores.items():
            if method == reference:
                continue
            if reference not in scores:
                lifts[figure][method] = not_judged(f"{reference} was not run (explain.methods)", words)
                continue
            lifts[figure][method] = lift_over_chance(values, {words: scores[reference]},
                                                     streams(f"bootstrap/{figure}/{method}"),
                                                     reason_if_empty="no pair has a score")
    return lifts


MASK_FIGURES = {"iou": "iou", "mass_fraction": "mass_share"}   # figure suffix -> mask_chance's figure


@dataclass(frozen=True)
class MaskJudge:
    """Scores optimal masks against a truth region beside their chance levels (the whole-image mask, random masks
    of each pair's own mask area; :func:`~pipeline.scoring.masks.mask_chance`): figures ``<prefix>_iou`` and
    ``<prefix>_mass_fraction`` (those of ``figures``) over the ``selected`` pairs, and ``<prefix>_iou_<name>`` over
    each subset of them. A binary mask counts a pixel when any channel is on; a soft mask's mass is its channel
    mean."""

    prefix: str                   # "shortcut", "control_shortcut", "digit"
    truth: torch.Tensor           # bool [N,H,W]
    selected: torch.Tensor        # bool [N]: the pairs judged
    reason: str                   # why nothing is judged when no pair is selected
    sigma: float                  # smoothing of the random masks (the random map's)
    streams: Streams
    figures: tuple[str, ...] = ("iou", "mass_fraction")
    subsets: dict[str, tuple[torch.Tensor, str]] = field(default_factory=dict)  # name -> (bool [N], reason if empty)
    unrelated: torch.Tensor | None = None   # bool [N]: pairs whose masks set the method's own-mask chance level

    def names(self) -> list[str]:
        return [f"{self.prefix}_{f}" for f in self.figures] + [f"{self.prefix}_iou_{name}" for name in self.subsets]

    def __call__(self, method: str, binary: torch.Tensor, soft: torch.Tensor) -> dict[str, Lift]:
        keep = self.selected.bool().cpu()
        if not keep.any():
            return self.none(self.reason)
        on = keep.to(binary.device)
        masks, truth = spatial(binary[on]).cpu(), self.truth[on].bool().cpu()
        chance = mask_chance(masks, truth, self.sigma, self.streams(f"random-masks/{self.prefix}/{method}"))
        if self.unrelated is not None and self.unrelated.bool().any():
            other = self.unrelated.bool().to(binary.device)
            own = own_mask_chance(spatial(binary[other]), soft[other].float().mean(dim=1), truth)
            for figure, level in own.items():
                chance[figure][OWN_MASKS] = level
        items = {"iou": iou(masks, truth), "mass_share": mass_share(soft[on].float().mean(dim=1).cpu(), truth)}
        lifts = {}
        for figure in self.figures:
            name, key = f"{self.prefix}_{figure}", MASK_FIGURES[figure]
            lifts[name] = lift_over_chance(items[key], chance[key], self.streams(f"bootstrap/{name}/{method}"),
                                           reason_if_empty="every optimal mask is empty")
        for subset, (members, reason) in self.subsets.items():
            within = members.bool().cpu()[keep]
            name = f"{self.prefix}_iou_{subset}"
            lifts[name] = lift_over_chance(items["iou"][within], {c: v[within] for c, v in chance["iou"].items()},
                                           self.streams(f"bootstrap/{name}/{method}"), reason_if_empty=reason)
        return lifts

    def none(self, reason: str) -> dict[str, Lift]:
        """Every figure not judged, for ``reason``."""
        return {name: not_judged(reason) for name in self.names()}


def class_list(labels, class_names: list[str]) -> str:
    return " and ".join(class_names[label] for label in labels)


def known_answer_judges(answer: KnownAnswer, pairs: Pairs, test: dict, class_names: list[str], sigma: float,
                        streams: Streams) -> list[MaskJudge]:
    """The judges of the GAN pairs' optimal masks against ``answer``: the shortcut's truth region on the pairs into
    its class (planted shortcuts and the negative control, with the pairs that carry it as a subset), or the digit's
    pixels (a colour rule); none for unknown images."""
    if isinstance(answer, PlantedShortcuts):
        selected, truth = answer.truth_for_targets(pairs.target)
        into = class_list(answer.labels, class_names)
        labels = torch.tensor(answer.labels, device=pairs.target.device)
        unrelated = ~torch.isin(pairs.target, labels) & ~torch.isin(pairs.source.to(labels.device), labels)
        return [MaskJudge("shortcut", truth, selected, f"no GAN pair goes into {into}", sigma, streams,
                          subsets={"carried": (carried_shortcut(answer, pairs, test),
                                               f"no counterfactual into {into} carries its shortcut")},
                          unrelated=unrelated)]
    if isinstance(answer, ColorRule):
        return [MaskJudge("digit", answer.colored_pixels(pairs.real), torch.ones_like(pairs.target, dtype=torch.bool),
                          "no pair", sigma, streams, figures=("mass_fraction",))]
    return []


def carried_shortcut(answer: PlantedShortcuts, pairs: Pairs, test: dict) -> torch.Tensor:
    """[N] bool: whether each pair's counterfactual carries the shortcut of its target class
    (:meth:`~pipeline.data.known_answer.PlantedShortcuts.carries`, against its clean test image)."""
    clean = to_float(test["clean_images"][pairs.image_index.to(test["clean_images"].device)]).to(pairs.real.device)
    return answer.carries(pairs.counterfactual, clean, pairs.target)


# --------------------------------------------------------------------------------------------
# The distractor control
# --------------------------------------------------------------------------------------------
CONTROL_MEASURES = ("whether a method's optimal mask picks the stamp, which moves the decision, over a change of the "
                    "same size elsewhere that does not (pixels of another test image of the same class); pairs: clean "
                    "test image vs. the same image stamped and changed there")
FUNNEL = ("n_candidates", "n_assigned_own_class", "n_moved_by_stamp", "n_with_distractor", "n_distractor_keeps_class",
          "n_usable")


def stamp_box(answer: PlantedShortcuts, k: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the box around the pixels shortcut ``k`` paints."""
    rows, cols = np.nonzero(answer.alpha(k) > 0)
    return int(rows.min()), int(cols.min()), int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def distractor_places(shape: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    """bool [H-h+1, W-w+1]: the top-left corners of an h x w box (``box``'s size) that shares no pixel with ``box``."""
    top, left, h, w = box
    rows = torch.arange(shape[0] - h + 1)[:, None]
    cols = torch.arange(shape[1] - w + 1)[None, :]
    return (rows + h <= top) | (rows > top + h - 1) | (cols + w <= left) | (cols > left + w - 1)


def paste_distractor(real: torch.Tensor, donor: torch.Tensor, size: tuple[int, int],
                     places: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(``real`` with an h x w box of ``donor`` pasted in, how many pixels that changes) for uint8 [N,3,H,W] images:
    per image the allowed place (``places``, see :func:`distractor_places`) where the two differ in the most pixels,
    the first in reading order among equals."""
    n, _, height, width = real.shape
    h, w = size
    if n == 0:
        return real, torch.zeros(0, dtype=torch.long, device=real.device)
    differs = (real != donor).any(dim=1, keepdim=True).float()
    counts = F.avg_pool2d(differs, (h, w), stride=1).mul(h * w).round().long()[:, 0]       # [N, H-h+1, W-w+1]
    n_places = places.numel()
    order = torch.arange(n_places - 1, -1, -1, device=real.device).view(places.shape)      # earlier places first
    key = torch.where(places.to(real.device), counts * n_places + order, torch.full_like(counts, -1))
    best = key.flatten(1).argmax(dim=1)
    changed = counts.flatten(1).gather(1, best[:, None]).squeeze(1)
    top, left = best // places.shape[1], best % places.shape[1]
    rows = torch.arange(height, device=real.device)[None, :, None]
    cols = torch.arange(width, device=real.device)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < top[:, None, None] + h)
              & (cols >= left[:, None, None]) & (cols < left[:, None, None] + w))
    return torch.where(inside[:, None], donor, real), changed


def same_class_donors(labels: torch.Tensor, index: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """[len(index)]: for each test image ``index[i]`` another test image of its class, drawn at random (-1 where its
    class has no other image)."""
    labels_host, index_host = labels.cpu().numpy(), index.cpu().numpy()
    donors = np.full(len(index_host), -1, dtype=np.int64)
    for label in np.unique(labels_host[index_host]):
        members = np.flatnonzero(labels_host == label)
        chosen = np.flatnonzero(labels_host[index_host] == label)
        if len(members) < 2:
            continue
        draw = rng.integers(0, len(members) - 1, size=len(chosen))
        own = np.searchsorted(members, index_host[chosen])
        donors[chosen] = members[draw + (draw >= own)]
    return torch.from_numpy(donors).to(index.device)


def distractor_control_pairs(model, answer: PlantedShortcuts, test: dict, n_pairs: int, rng: np.random.Generator,
                             batch_size: int = 4096) -> tuple[Pairs, dict[str, int], str]:
    """The distractor control's pairs (see the module docstring), at most ``n_pairs`` (seeded), with the funnel of
    counts (:data:`FUNNEL`) that led to them and, when there is none, why.

    Per shortcut k and test image x of another class s: the classifier assigns x to s; the stamp alone moves x into
    k's class c; a random other test image of class s gives the distractor: its pixels in a box of the stamp's size
    that shares no pixel with the stamp's box, at the place where the two differ most; with that change alone x
    stays in s, with the stamp as well it goes to c. The counterfactual is x changed there and stamped."""
    clean, labels = test["clean_images"], test["labels"]
    decide = lambda images: predict_probabilities(model, images, batch_size).argmax(1).to(labels.device)  # noqa: E731
    own_class = decide(clean) == labels
    counts = dict.fromkeys(FUNNEL, 0)
    reals, counterfactuals, index, targets, no_room = [], [], [], [], []
    for k, label in enumerate(answer.labels):
        others = torch.nonzero(labels != label).flatten()
        counts["n_candidates"] += len(others)
        box = stamp_box(answer, k)
        places = distractor_places(tuple(clean.shape[-2:]), box)
        if not places.any():
            no_room.append(label)
            continue
        others = others[own_class[others]]
        counts["n_assigned_own_class"] += len(others)
        moved = others[decide(answer.stamp_tensor(clean[others], k)) == label]
        counts["n_moved_by_stamp"] += len(moved)
        donors = same_class_donors(labels, moved, rng)
        moved, donors = moved[donors >= 0], donors[donors >= 0]
        distracted, changed = paste_distractor(clean[moved], clean[donors], box[2:], places)
        moved, distracted = moved[changed > 0], distracted[changed > 0]
        counts["n_with_distractor"] += len(moved)
        keeps = decide(distracted) == labels[moved]
        moved, distracted = moved[keeps], distracted[keeps]
        counts["n_distractor_keeps_class"] += len(moved)
        stamped = answer.stamp_tensor(distracted, k)
        both = decide(stamped) == label
        counts["n_usable"] += int(both.sum())
        reals.append(clean[moved[both]])
        counterfactuals.append(stamped[both])
        index.append(moved[both])
        targets.append(torch.full_like(moved[both], label))
    empty = torch.zeros(0, dtype=torch.long, device=labels.device)
    index, targets = torch.cat(index) if index else empty, torch.cat(targets) if targets else empty
    keep = torch.as_tensor(subsample(len(index), n_pairs, rng), device=labels.device)
    real = torch.cat(reals)[keep] if reals else clean[:0]
    counterfactual = torch.cat(counterfactuals)[keep] if counterfactuals else clean[:0]
    pairs = Pairs(to_float(real), to_float(counterfactual), index[keep], labels[index[keep]], targets[keep],
                  counts["n_candidates"], counts["n_usable"])
    return pairs, counts, control_reason(counts, no_room, len(answer.labels)) if len(keep) == 0 else ""


def control_reason(counts: dict[str, int], no_room: list[int], n_shortcuts: int) -> str:
    """Why the distractor control has no pair: the first step of :data:`FUNNEL` that left none."""
    if len(no_room) == n_shortcuts:
        return "no room for a distractor as large as the stamp that does not overlap it"
    steps = {"n_candidates": "no test image of another class",
             "n_assigned_own_class": "the classifier assigns no test image of another class to its own class",
             "n_moved_by_stamp": "the stamp alone moves no test image into the shortcut's class",
             "n_with_distractor": "no other test image of the same class differs from the real one beside the stamp",
             "n_distractor_keeps_class": "every distractor alone moves the decision",
             "n_usable": "the stamp with the distractor moves no image into the shortcut's class"}
    return next((words for step, words in steps.items() if counts[step] == 0), "no pair")


def distractor_control(model, answer: PlantedShortcuts, test: dict, options: ExplainOptions, settings: MaskSettings,
                       grid: torch.Tensor, streams: Streams, rng: np.random.Generator) -> tuple[dict, dict[str, dict[str, Lift]]]:
    """Every method on the distractor control pairs: (details: what it measures, the funnel of counts, each
    method's median score; {figure: {method: Lift}} of the optimal masks against the shortcut's truth region)."""
    pairs, counts, reason = distractor_control_pairs(model, answer, test, options.control_pairs, rng, options.batch_size)
    few = too_few(len(pairs.target), "control pair")
    reason = few or reason
    selected, truth = answer.truth_for_targets(pairs.target)
    judge = MaskJudge("control_shortcut", truth, selected, reason, options.random_sigma, streams)
    details = {"measures": CONTROL_MEASURES, **counts, "n_pairs": len(pairs.target), "methods": {}}
    if reason:
        details["reason"] = reason
    lifts: dict[str, dict[str, Lift]] = {name: {} for name in judge.names()}
    for method in options.methods:
        if len(pairs.target):
            _, scores, binary, soft = explain_pairs(method, model, pairs, options, settings, grid,
                                                    streams("control-random-map"))
            details["methods"][method] = {"median_score": summarise(scores.score)[0]}
            found = judge.none(reason) if few else judge(method, binary, soft)
        else:
            found = judge.none(reason)
        for name, lift in found.items():
            lifts[name][method] = lift
    return details, lifts


# --------------------------------------------------------------------------------------------
# Every method on the pairs
# --------------------------------------------------------------------------------------------
def explain_every_method(model, pairs: Pairs, options: ExplainOptions, settings: MaskSettings, grid: torch.Tensor,
                         generator: torch.Generator, judges: list[MaskJudge], dataset: str) -> tuple[dict, dict, dict, dict]:
    """Every configured method on the pairs: (per-method figures (:data:`METHOD_KEYS`), method -> (maps, scores),
    arrays for the explanations file, {figure: {method: Lift}} of each judge's figures)."""
    per_method, results, arrays = {}, {}, {}
    lifts: dict[str, dict[str, Lift]] = {name: {} for judge in judges for name in judge.names()}
    for method in options.methods:
        maps, scores, binary, soft = explain_pairs(method, model, pairs, options, settings, grid, generator,
                                                   progress=f"{method} sweep")
        per_method[method] = method_metrics(scores, pairs.target)
        for judge in judges:
            for name, lift in judge(method, binary, soft).items():
                lifts[name][method] = lift
        results[method] = (maps, scores)
        arrays.update({f"{method}_score": scores.score.cpu().numpy(), f"{method}_curve": scores.curve.cpu().numpy(),
                       f"{method}_optimal_threshold": scores.optimal_threshold.cpu().numpy(),
                       f"{method}_optimal_mask_size": scores.optimal_mask_size.cpu().numpy(),
                       f"{method}_optimal_score_change": scores.optimal_score_change.cpu().numpy(),
                       f"{method}_optimal_predicted": scores.optimal_predicted.cpu().numpy(),
                       f"{method}_optimal_mask": to_uint8(soft).cpu().numpy()})
        print(f"[explain@{dataset}] {method}: median score {per_method[method]['median_score']:.3f}, "
              f"optimal mask {per_method[method]['mean_optimal_mask_size']:.3f}", file=sys.stderr)
    return per_method, results, arrays, lifts


def empty_method_entries(methods: list[str]) -> dict:
    """Every per-method key with NaN values, for a run where no pair reaches its target."""
    return {method: dict.fromkeys(METHOD_KEYS, NAN) for method in methods}


def not_judged_for(methods, names, reason: str) -> dict[str, dict[str, Lift]]:
    """{figure: {method: not judged, for ``reason``}} for every figure of ``names`` and method of ``methods``."""
    return {name: {method: not_judged(reason) for method in methods} for name in names}


# --------------------------------------------------------------------------------------------
# Metrics: the headline figures, and the details beside them
# --------------------------------------------------------------------------------------------
HEADLINE = ("score_vs_random", "score_vs_residual", "shortcut_iou", "control_shortcut_iou", "digit_mass_fraction")


def headline_lifts(chance: dict[str, dict[str, Lift]], best: str | None) -> dict[str, Lift]:
    """The best discriminative method's Lift of every headline figure (:data:`HEADLINE`) present in ``chance``."""
    missing = not_judged("no discriminative method has a score (explain.methods, or no pair reaches its target)")
    return {figure: chance[figure].get(best, missing) if best else missing for figure in HEADLINE if figure in chance}


def headline_metrics(n_kept: int, lifts: dict[str, Lift], gan_shortcut_fraction: float | None = None) -> dict:
    """What ``metrics/<D>/explain.json`` holds: the pairs explained, and for each headline figure (``lifts``, the
    best discriminative method's) ``<figure>_lift`` with ``_lift_low`` and ``_lift_high`` (NaN, written null, when not
    judged); where a shortcut is planted the share of GAN pairs into its class that carry it."""
    metrics: dict = {"n_pairs_kept": n_kept}
    for figure, lift in lifts.items():
        metrics.update(lift.metrics(figure))
    if gan_shortcut_fraction is not None:
        metrics["gan_shortcut_fraction"] = gan_shortcut_fraction
    return metrics


def not_judged_reasons(lifts: dict[str, Lift]) -> dict[str, str]:
    """{metric key: reason} for every headline lift that is not judged: what the report says instead of a figure."""
    return {f"{figure}_lift": lift.reason or "nothing to score" for figure, lift in lifts.items()
            if lift.verdict == "not judged"}


def chance_details(chance: dict[str, dict[str, Lift]]) -> dict:
    """details.json's ``chance``: {figure: {method: Lift.to_dict()}}."""
    return {figure: {method: lift.to_dict() for method, lift in per_method.items()} for figure, per_method in chance.items()}


def class_pair_details(pairs: Pairs, results: dict, class_names: list[str]) -> dict:
    """Per (source, target) class pair: how many pairs, and each method's median score and
    share of optimal masks whose hybrid the classifier assigns to the target."""
    source, target = pairs.source.cpu().numpy(), pairs.target.cpu().numpy()
    target_cpu = pairs.target.cpu()
    on_host = {method: (scores.score.cpu(), scores.optimal_predicted.cpu()) for method, (_, scores) in results.items()}
    per_pair = {}
    for s, t in sorted(set(zip(source.tolist(), target.tolist()))):
        members = torch.as_tensor(np.flatnonzero((source == s) & (target == t)))
        entry = {"n_pairs": len(members)}
        sub_target = target_cpu[members]
        for method, (score, optimal_predicted) in on_host.items():
            entry[method] = {"median_score": summarise(score[members])[0],
                             "reached_target_fraction": (optimal_predicted[members] == sub_target).float().mean().item()}
        per_pair[f"{class_names[s]}_to_{class_names[t]}"] = entry
    return per_pair


# --------------------------------------------------------------------------------------------
# Colored MNIST: which color rule did the classifier learn?
# --------------------------------------------------------------------------------------------
def color_rule(model, test: dict, class_names: list[str], batch_size: int) -> tuple[dict, pd.DataFrame]:
    """The classifier's decision on every test image against its colormap position and color.

    ``nearest_colormap_agreement``: how often the decision equals the colormap whose curve passes
    closest (in RGB) to the image's color, i.e. how well "nearest colormap" describes the rule."""
    import matplotlib
    from matplotlib.colors import rgb_to_hsv

    predicted = predict_probabilities(model, test["images"], batch_size).argmax(1).cpu().numpy()
    colors = test["colors"].cpu().numpy()
    labels = test["labels"].cpu().numpy()
    positions = test["positions"].cpu().numpy()
    distance = np.stack([  # [N, K]: RGB distance from each image's color to each colormap's curve
        np.linalg.norm(colors[:, None, :] - matplotlib.colormaps[name](np.linspace(0, 1, 256))[None, :, :3].astype(np.float32),
                       axis=-1).min(axis=1)
        for name in class_names], axis=1)
    nearest = distance.argmin(axis=1)
    frame = pd.DataFrame({
        "position": positions, "hue": rgb_to_hsv(np.clip(colors, 0, 1))[:, 0],
        "red": colors[:, 0], "green": colors[:, 1], "blue": colors[:, 2],
        "colormap": [class_names[c] for c in labels], "predicted": [class_names[c] for c in predicted],
        "nearest_colormap": [class_names[c] for c in nearest],
        "correct": predicted == labels,
    })
    metrics = {
        "test_accuracy": float((predicted == labels).mean()) if len(labels) else NAN,
        "nearest_colormap_agreement": float((predicted == nearest).mean()) if len(labels) else NAN,
        "accuracy_by_position": {
            f"{lo:.2f}-{lo + 0.25:.2f}": float((predicted == labels)[(positions >= lo) & (positions < lo + 0.25)].mean())
            if ((positions >= lo) & (positions < lo + 0.25)).any() else NAN
            for lo in (0.0, 0.25, 0.5, 0.75)
        },
    }
    return metrics, frame


def color_rule_table(frame: pd.DataFrame, n_bins: int = 10) -> pd.DataFrame:
    """Per bin of colormap position (its centre): the share of test images the classifier assigns to
    their colormap (``accuracy``) and to the colormap nearest their color (``nearest_colormap_agreement``).
    Wide: one column per series, so `dvc plots` draws two lines."""
    bins = np.minimum((frame["position"].to_numpy() * n_bins).astype(int), n_bins - 1)
    agrees = frame["predicted"] == frame["nearest_colormap"]
    return pd.DataFrame({
        "position": (np.arange(n_bins) + 0.5) / n_bins,
        "accuracy": [frame["correct"][bins == b].mean() if (bins == b).any() else NAN for b in range(n_bins)],
        "nearest_colormap_agreement": [agrees[bins == b].mean() if (bins == b).any() else NAN for b in range(n_bins)],
    })


# --------------------------------------------------------------------------------------------
# Plot data
# --------------------------------------------------------------------------------------------
def curve_quartiles(curves: torch.Tensor) -> np.ndarray:
    """[3, G]: 25th, 50th and 75th percentile over the pairs' curves at each mask size."""
    return torch.quantile(curves.float().cpu(), torch.tensor([0.25, 0.5, 0.75]), dim=0).numpy()


def curve_table(grid: np.ndarray, quartiles: dict[str, np.ndarray]) -> pd.DataFrame:
    """Median score change at each mask size, one column per method of METHODS (empty for a method
    not run, so the columns dvc.yaml names are always there). Wide: `dvc plots` draws one line each."""
    frame = pd.DataFrame({"mask_size": grid})
    for method in METHODS:
        frame[method] = quartiles[method][1] if method in quartiles else NAN
    return frame


SHORTCUT_PAIR_SETS = {"shortcut_iou": "GAN pairs", "control_shortcut_iou": "distractor control"}


def shortcut_table(methods: list[str], chance: dict[str, dict[str, Lift]]) -> pd.DataFrame:
    """One row per (method, pair set): the IoU of the optimal masks with the shortcut's truth region on GAN pairs
    into its class and on the distractor control, its binding chance level and the lift's interval (NaN when not
    judged). The bars' labels carry both, so `dvc plots` draws one series."""
    rows = []
    for method in methods:
        for figure, pair_set in SHORTCUT_PAIR_SETS.items():
            lift = chance.get(figure, {}).get(method) or not_judged("not run")
            rows.append({"pairs": f"{method}: {pair_set}", "method": method, "pair_set": pair_set,
                         "shortcut_iou": lift.score, "chance": lift.chance, "lift": lift.lift,
                         "lift_low": lift.low, "lift_high": lift.high})
    return pd.DataFrame(rows)


def score_row(method: str, scores) -> dict:
    q25, median, q75 = torch.quantile(scores.score.float().cpu(), torch.tensor([0.25, 0.5, 0.75])).tolist()
    return {"method": method, "median_score": median, "q25_score": q25, "q75_score": q75}


def curve_and_score_summaries(methods: list[str], results: dict, n_grid: int) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Per method, the quartiles of its curves (:func:`curve_quartiles`) and a row of its score quartiles
    (:func:`score_row`); NaN for every method when ``results`` is empty (no pair was explained)."""
    if results:
        quartiles = {m: curve_quartiles(results[m][1].curve) for m in methods}
        score_frame = pd.DataFrame([score_row(m, results[m][1]) for m in methods])
    else:
        quartiles = {m: np.full((3, n_grid), NAN) for m in methods}
        score_frame = pd.DataFrame([{"method": m, "median_score": NAN, "q25_score": NAN, "q75_score": NAN}
                                    for m in methods])
    return quartiles, score_frame
