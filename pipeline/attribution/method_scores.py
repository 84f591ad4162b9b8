"""Every score of every attribution method on its image sets, the details record, and the best method per headline figure.

Scores: faithfulness (:mod:`pipeline.attribution.faithfulness`), localisation on the planted shortcut and on the
digit, and for colored MNIST the alignment of the channel shares with the colormaps
(:mod:`pipeline.attribution.scores`). ``headline`` turns the details into the few numbers of a metrics file.

Localisation is scored beside its chance level (:mod:`pipeline.scoring.relevance`): relevance mass and the
pointing game of each method's maps against the same figures of a uniform map on that method's own support (the
pixels its map of that image can credit at all), per image, as a lift with a bootstrap 95 % interval over the images.
An input x gradient-type map credits only non-black pixels, so on a stamped digit most of what it can credit lies on
the stamp: its chance level there is that share, not the stamp's share of the image. A tie for the top pixel and an
empty map miss the pointing game; an empty map's uniform counterpart misses too (chance 0 for that image).

A second chance level stands beside it: the same method, with the same settings, on the same images and targets, run
on a re-initialised copy of the classifier (its architecture with seeded random weights: a model that learned
nothing). The uniform map answers "what does a map score that credits only what this method can credit, with no
preference among those pixels?"; the re-initialised model answers "what does a map of this method get from the input
alone?": a bright red patch may draw a method's map whatever the model learned, and then the maps of an untrained
network pile up on the stamp as well. Whether they do is measured, not assumed: the highest of the two chance levels
binds (:func:`~pipeline.scoring.chance.lift_over_chance`). An empty map of the re-initialised model credits the
truth nothing: relevance mass 0 and a miss for that image. Where the classifier's architecture cannot be rebuilt (a
TorchScript network) this chance level is not available and the uniform map stands alone.
"""
from __future__ import annotations

import math
import sys
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.attribution.faithfulness import FaithfulnessOptions, faithfulness_scores, probability_function
from pipeline.attribution.methods import AttributionOptions
from pipeline.attribution.scores import CHANNELS, color_scores, curve_area, deletion_curve
from pipeline.data.known_answer import ColorRule, KnownAnswer, PlantedShortcuts
from pipeline.data.tensors import to_float
from pipeline.scoring.chance import Lift, lift_over_chance, not_judged, too_few
from pipeline.scoring.relevance import SUPPORT, pointing_game, relevance_mass, support_share

Streams = Callable[[str], torch.Generator]   # a named random stream: one per use (here: per bootstrap)
REINITIALIZED = "the same method on the classifier re-initialised with random weights"

# image set: (suffix of its per-method scores, why nothing is judged on it when it holds no image)
LOCATED = {
    "shortcut": ("", "no test image of the shortcut's class to stamp"),
    "flipped": ("_flipped", "the stamp moves no test image of another class into the shortcut's class"),
    "digit": ("_digit", "no sampled image"),
}


def localization_lifts(attributions: torch.Tensor, masks: torch.Tensor, streams: Streams, reason_if_empty: str,
                       reinitialized: torch.Tensor | None = None) -> dict[str, Lift]:
    """Relevance mass and pointing game of ``attributions`` [N, C, H, W] on ``masks`` ([N, H, W] or [H, W]), each as
    a :class:`Lift` over the higher of two chance levels (``streams(figure)``: the figure's bootstrap): a uniform map
    on the method's own support (what a map scores that credits only the pixels the method can credit, without
    preference), and, where ``reinitialized`` is given, the same figure of that method's maps of the same images by a
    re-initialised classifier [N, C, H, W] (what a map of the method gets from the input alone; an empty one scores 0).
    Fewer than :data:`~pipeline.scoring.chance.MIN_ITEMS` images are not judged: the stamp may move only two images
    of other classes into its class, and an interval over two says nothing."""
    few = too_few(len(attributions), "image")
    if few:
        return {"relevance_mass": not_judged(few), "pointing_game": not_judged(few)}
    chance = support_share(attributions, masks)
    mass_levels, pointing_levels = {SUPPORT: chance}, {SUPPORT: chance.nan_to_num(0.0)}
    if reinitialized is not None:
        mass_levels[REINITIALIZED] = relevance_mass(reinitialized, masks).nan_to_num(0.0)
        pointing_levels[REINITIALIZED] = pointing_game(reinitialized, masks)
    if len(attributions):
        reason_if_empty = "no map credits any pixel positively"
    return {"relevance_mass": lift_over_chance(relevance_mass(attributions, masks), mass_levels,
                                               streams("relevance_mass"), reason_if_empty=reason_if_empty),
            "pointing_game": lift_over_chance(pointing_game(attributions, masks), pointing_levels,
                                              streams("pointing_game"), reason_if_empty=reason_if_empty)}


def score_methods(methods: list[str], model: nn.Module, sets: dict, attributions: dict, reinitialized: dict | None,
                  digit_masks: torch.Tensor, labels: torch.Tensor, class_names: list[str], channel_std: np.ndarray | None,
                  options: AttributionOptions, faithfulness: FaithfulnessOptions, noise: torch.Tensor,
                  perturb, streams: Streams) -> tuple[dict, dict, dict]:
    """Every score of every method on the sample ({method: {score: value}}), its mean deletion curve, and the
    localisation figures beside their chance levels ({figure: {method: Lift}}, figure e.g. ``relevance_mass_flipped``).

    ``attributions`` and ``reinitialized``: {method: {set name: maps}} of the classifier and of its re-initialised copy
    (the same images and targets; None where the copy cannot be built: no randomisation check, and localisation beside
    the uniform map alone)."""
    sample = sets["sample"]
    images = to_float(sample["images"])
    probability = probability_function(model, options.internal_batch_size)
    located = {key: sets[key]["masks"] for key in ("shortcut", "flipped") if key in sets} | {"digit": digit_masks}
    results, curves, lifts = {}, {}, {}
    for name in tqdm(methods, desc="scores", file=sys.stderr, leave=False):
        maps = attributions[name]["sample"]
        curve = deletion_curve(probability, images, maps, sample["targets"], 0.0, faithfulness.deletion_steps)
        curves[name] = curve.mean(dim=0)
        record = {"deletion_auc": curve_area(curve).mean().item()}
        random_maps = reinitialized[name] if reinitialized else {}   # {set name: maps}
        record.update(faithfulness_scores(name, model, sample["images"], sample["targets"], maps, random_maps.get("sample"),
                                          options, faithfulness, noise, perturb))
        for key, masks in located.items():
            suffix, reason = LOCATED[key]
            maps_of = key if key != "digit" else "sample"
            scored = localization_lifts(attributions[name][maps_of], masks, lambda figure: streams(f"{figure}_{key}/{name}"),
                                        reason, random_maps.get(maps_of))
            for figure, lift in scored.items():   # raw figure and its chance level, for method_scores.csv
                record[f"{figure}{suffix}"], record[f"{figure}{suffix}_chance"] = lift.score, lift.chance
                lifts.setdefault(f"{figure}_{key}", {})[name] = lift
        if channel_std is not None and name != "gradcam":  # Grad-CAM has no per-channel relevance
            record.update(color_scores(maps, labels, class_names, channel_std))
        results[name] = record
    return results, curves, lifts


def details_record(sets: dict, results: dict, lifts: dict, skipped: dict, random_curve: torch.Tensor,
                   digit_masks: torch.Tensor, channel_std: np.ndarray | None, class_names: list[str],
                   reinitialized_model: str) -> dict:
    """The scores of every method (``score_methods``), the localisation figures beside chance (``chance``: {figure:
    {method: Lift as a dict}}), those skipped, the random-order reference (per-image deletion curves), what the
    re-initialised classifier is (``reinitialized_model``: its description, or "not available: <why>") and the sizes
    of what was measured: the shortcut and digit area fractions."""
    details = {"n_images": len(sets["sample"]["targets"]), "methods": results, "skipped": skipped,
               "random_order_deletion_auc": curve_area(random_curve).mean().item(),
               "reinitialized_model": reinitialized_model,
               "chance": {figure: {m: lift.to_dict() for m, lift in per_method.items()} for figure, per_method in lifts.items()}}
    if "shortcut" in sets:
        details["localization"] = {
            "n_shortcut_images": len(sets["shortcut"]["targets"]),
            "n_flipped_images": len(sets["flipped"]["targets"]),
            "mask_area_fraction": sets["shortcut"]["masks"].float().mean().item(),
        }
    details["digit_area_fraction"] = digit_masks.float().mean().item()
    if channel_std is not None:
        details["colormap_channel_std"] = {n: dict(zip(CHANNELS, row.tolist())) for n, row in zip(class_names, channel_std)}
    return details


BEST_BY = ("deletion AUC: the lowest; a localisation headline: the same method, the most faithful, chosen without the "
           "known answer (the largest of several lifts would flatter: the method most drawn to the stamp wins)")
# metrics name of a localisation headline: the details' figure it is read from (the first one measured is the headline)
HEADLINE_LIFTS = {"shortcut_relevance_mass_flipped": "relevance_mass_flipped",   # planted shortcuts
                  "digit_relevance_mass": "relevance_mass_digit"}                 # colored MNIST


def headline_figures(answer: KnownAnswer) -> tuple[str, ...]:
    """The localisation headline a known answer scores: the shortcut on flipped images, or colored MNIST's digit."""
    if isinstance(answer, PlantedShortcuts):
        return ("shortcut_relevance_mass_flipped",)
    return ("digit_relevance_mass",) if isinstance(answer, ColorRule) else ()


def best_method(results: dict, score: str, higher_is_better: bool) -> str | None:
    """The method with the best finite ``score`` (None when no method has one)."""
    finite = {m: r[score] for m, r in results.items() if isinstance(r.get(score), float) and math.isfinite(r[score])}
    if not finite:
        return None
    return (max if higher_is_better else min)(finite, key=finite.get)


def headline(details: dict, lifts: dict[str, dict[str, Lift]], figures: tuple[str, ...]) -> tuple[dict, dict]:
    """The metrics file (numbers only) and, for details.json, the method behind each headline figure.

    ``best_deletion_auc`` (lowest: most faithful) sits beside ``random_order_deletion_auc``, the same area for pixels
    removed in random order. ``figures``: the metrics names (keys of :data:`HEADLINE_LIFTS`) the known answer scores;
    each becomes the lift over chance of that most faithful method (``lifts``: {figure: {method: Lift}}), with its
    interval: ``<figure>_lift``, ``_lift_low``, ``_lift_high`` (null, with the reason, when it was not judged). The
    method is chosen by faithfulness, which needs no known answer: the largest lift among the methods would be a
    maximum over methods, above chance more often than any one of them.
    """
    results = details["methods"]
    faithful = best_method(results, "deletion_auc", False)
    best = {"best_deletion_auc": faithful}
    metrics = {"best_deletion_auc": results[faithful]["deletion_auc"] if faithful else None,
               "random_order_deletion_auc": details["random_order_deletion_auc"]}
    for name in figures:
        lift = lifts.get(HEADLINE_LIFTS[name], {}).get(faithful) if faithful else None
        best[name] = faithful if lift is not None and lift.verdict != "not judged" else None
        metrics |= (lift or not_judged("no method has a deletion AUC to choose by")).metrics(name)
    return metrics, best


def summary(details: dict, metrics: dict) -> str:
    """One line for the log: the headline lifts with their methods, Grad-CAM's segmentation and the mistakes."""
    parts = [f"best deletion AUC {metrics['best_deletion_auc']:.3f} (random order {metrics['random_order_deletion_auc']:.3f})"
             if metrics["best_deletion_auc"] is not None else "no deletion AUC"]
    for name in (n for n in HEADLINE_LIFTS if f"{n}_lift" in metrics):
        lift = metrics[f"{name}_lift"]
        parts.append(f"{name} lift " + (f"{lift:.3f} [{metrics[f'{name}_lift_low']:.3f}, {metrics[f'{name}_lift_high']:.3f}] "
                                        f"({details['best_methods'][name]})" if lift is not None else "not judged"))
    seg = details["gradcam_segmentation"]
    if seg.get("best_iou") is not None:
        parts.append(f"Grad-CAM digit IoU {seg['best_iou']:.3f} at {seg['best_threshold']:.2f}")
    return "; ".join(parts) + f"; {details['contrastive']['n_misclassified']} mistakes"


def method_scores_frame(results: dict):
    """One row per method, one column per number it scored: the per-method detail, for bar charts."""
    import pandas as pd

    rows = [{"method": method} | {k: v for k, v in scores.items() if isinstance(v, (int, float))}
            for method, scores in results.items()]
    return pd.DataFrame(rows)
