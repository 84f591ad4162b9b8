"""Every score of every attribution method on its image sets, the details record, and the best method per headline figure.

Scores: faithfulness (:mod:`pipeline.attribution.faithfulness`), localisation on the planted shortcut and on the
digit, and for colored MNIST the alignment of the channel shares with the colormaps
(:mod:`pipeline.attribution.scores`). ``headline`` turns the details into the few numbers of a metrics file.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.attribution.faithfulness import FaithfulnessOptions, faithfulness_scores, probability_function
from pipeline.attribution.methods import AttributionOptions
from pipeline.attribution.scores import CHANNELS, color_scores, curve_area, deletion_curve, nanmean
from pipeline.scoring.relevance import pointing_game, relevance_mass
from pipeline.data.tensors import to_float


def score_methods(methods: list[str], model: nn.Module, random_model: nn.Module, sets: dict, attributions: dict,
                  digit_masks: torch.Tensor, labels: torch.Tensor, class_names: list[str], channel_std: np.ndarray | None,
                  options: AttributionOptions, faithfulness: FaithfulnessOptions, noise: torch.Tensor,
                  perturb) -> tuple[dict, dict]:
    """Every score of every method on the sample ({method: {score: value}}), and its mean deletion curve."""
    sample = sets["sample"]
    images = to_float(sample["images"])
    probability = probability_function(model, options.internal_batch_size)
    results, curves = {}, {}
    for name in tqdm(methods, desc="scores", file=sys.stderr, leave=False):
        maps = attributions[name]["sample"]
        curve = deletion_curve(probability, images, maps, sample["targets"], 0.0, faithfulness.deletion_steps)
        curves[name] = curve.mean(dim=0)
        record = {"deletion_auc": curve_area(curve).mean().item()}
        record.update(faithfulness_scores(name, model, random_model, sample["images"], sample["targets"], maps, options,
                                          faithfulness, noise, perturb))
        if "shortcut" in sets:
            for key, suffix in (("shortcut", ""), ("flipped", "_flipped")):
                maps_k, masks = attributions[name][key], sets[key]["masks"]
                record[f"relevance_mass{suffix}"] = nanmean(relevance_mass(maps_k, masks))
                record[f"pointing_game{suffix}"] = nanmean(pointing_game(maps_k, masks))
        record["relevance_mass_digit"] = nanmean(relevance_mass(maps, digit_masks))
        record["pointing_game_digit"] = nanmean(pointing_game(maps, digit_masks))
        if channel_std is not None and name != "gradcam":  # Grad-CAM has no per-channel relevance
            record.update(color_scores(maps, labels, class_names, channel_std))
        results[name] = record
    return results, curves


def details_record(sets: dict, results: dict, skipped: dict, random_curve: torch.Tensor, digit_masks: torch.Tensor,
                   channel_std: np.ndarray | None, class_names: list[str]) -> dict:
    """The scores of every method (``score_methods``), those skipped, the random-order reference (per-image
    deletion curves) and the sizes of what was measured: the shortcut and digit area fractions."""
    details = {"n_images": len(sets["sample"]["targets"]), "methods": results, "skipped": skipped,
               "random_order_deletion_auc": curve_area(random_curve).mean().item()}
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


BEST_OF = {  # metrics key: (per-method score, True when higher is better)
    "best_deletion_auc": ("deletion_auc", False),
    "best_shortcut_relevance_mass_flipped": ("relevance_mass_flipped", True),
    "best_colormap_alignment": ("colormap_alignment", True),
}


def best_method(results: dict, score: str, higher_is_better: bool) -> str | None:
    """The method with the best finite ``score`` (None when no method has one)."""
    finite = {m: r[score] for m, r in results.items() if isinstance(r.get(score), float) and math.isfinite(r[score])}
    if not finite:
        return None
    return (max if higher_is_better else min)(finite, key=finite.get)


def headline(details: dict) -> tuple[dict, dict]:
    """The metrics file (numbers only) and, for details.json, the method behind each ``best_*`` figure.

    ``best_deletion_auc`` (lowest: most faithful) sits beside ``random_order_deletion_auc``, the same
    area for pixels removed in random order; the known answer adds the best relevance mass on the
    shortcut of images the stamp turned into the shortcut class (Clever Hans) or the best alignment
    of the channel shares with the colormaps' channels (colored MNIST). Scores a dataset does not
    measure are left out.
    """
    results = details["methods"]
    measured = {key: spec for key, spec in BEST_OF.items() if any(spec[0] in r for r in results.values())}
    methods = {key: best_method(results, score, higher_is_better) for key, (score, higher_is_better) in measured.items()}
    best = {key: results[method][measured[key][0]] if method else float("nan") for key, method in methods.items()}
    metrics = {"best_deletion_auc": best.pop("best_deletion_auc"),
               "random_order_deletion_auc": details["random_order_deletion_auc"], **best}
    return metrics, methods


def summary(details: dict, localization: bool) -> str:
    key = "relevance_mass" if localization else "deletion_auc"
    ranked = sorted(((v.get(key, float("nan")), k) for k, v in details["methods"].items()), reverse=localization)
    best = ", ".join(f"{k} {v:.3f}" for v, k in ranked[:3])
    seg = details["gradcam_segmentation"]
    text = f"best {key}: {best}"
    if seg.get("best_iou") is not None:
        text += f"; Grad-CAM digit IoU {seg['best_iou']:.3f} at {seg['best_threshold']:.2f}"
    return text + f"; {details['contrastive']['n_misclassified']} mistakes"


def method_scores_frame(results: dict):
    """One row per method, one column per number it scored: the per-method detail, for bar charts."""
    import pandas as pd

    rows = [{"method": method} | {k: v for k, v in scores.items() if isinstance(v, (int, float))}
            for method, scores in results.items()]
    return pd.DataFrame(rows)
