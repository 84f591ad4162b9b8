"""How good GAN counterfactuals are: conversion, change size, realism to the classifier, exact error.

Conversion is the share the classifier assigns to the target; change size the mean L1 and the
share of pixels changed; realism the Fréchet distance between the classifier's penultimate features
of counterfactuals and of real images of the target class, beside the floor between two sets of
real images; on colored MNIST, the error against the exact counterfactual.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.counterfactuals.frechet import feature_frechet_distance
from pipeline.counterfactuals.translation import MODES
from pipeline.data.tensors import to_float
from pipeline.models.inference import embed_images

CHANGE_THRESHOLD = 0.1  # a pixel "changed" when some channel moved by more than this (images in [0, 1])


def conversion(predicted: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> tuple[float, dict[str, float]]:
    """Share of counterfactuals the classifier assigns to their target: overall and per "source->target" pair."""
    hit = (predicted == target).float()
    overall = hit.mean().item() if len(hit) else float("nan")
    pairs = torch.stack([source, target], 1)
    unique, inverse = torch.unique(pairs, dim=0, return_inverse=True)
    sums = torch.zeros(len(unique), device=hit.device).index_add_(0, inverse, hit)
    counts = torch.bincount(inverse, minlength=len(unique)).float()
    per_pair = {f"{s}->{t}": v for (s, t), v in zip(unique.tolist(), (sums / counts).tolist())}
    return overall, per_pair


def change_size(real: torch.Tensor, counterfactual: torch.Tensor) -> tuple[float, float]:
    """(mean absolute change per pixel and channel, share of pixels changed by more than CHANGE_THRESHOLD)."""
    if len(real) == 0:
        return float("nan"), float("nan")
    diff = (to_float(counterfactual) - to_float(real)).abs()
    return diff.mean().item(), (diff.amax(dim=1) > CHANGE_THRESHOLD).float().mean().item()


def shuffled_members(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Positions where ``mask`` is true, in a seeded random order."""
    members = torch.nonzero(mask).flatten()
    return members[torch.randperm(len(members), generator=generator, device=generator.device).to(members.device)]


def feature_distances(real_features: torch.Tensor, real_labels: torch.Tensor,
                      counterfactual_features: dict[str, torch.Tensor], targets: torch.Tensor, n_classes: int,
                      generator: torch.Generator) -> dict:
    """Per class c, the Fréchet distance of each mode's counterfactuals into c to real images of c, and its floor.

    The real images of c are split once into disjoint halves A and B. Every mode is compared with the
    same half A, on the same ``m`` counterfactual rows (the same images and targets in every mode).
    The floor is the distance between A and ``m`` images of B: the same sample sizes as the
    comparison it is the floor for (the Fréchet distance grows as samples shrink).
    ``m`` = min(counterfactuals into c, size of B). Returns ``{"distance": {mode: {c: value}},
    "floor": {c: value}, "n_compared": {c: m}}``; a class with m < 2 gets NaN.
    """
    result = {"distance": {mode: {} for mode in counterfactual_features}, "floor": {}, "n_compared": {}}
    for c in range(n_classes):
        members = shuffled_members(real_labels == c, generator)
        half_a, half_b = members[: len(members) // 2], members[len(members) // 2:]
        into_c = shuffled_members(targets == c, generator)
        m = min(len(into_c), len(half_b))
        rows = into_c[:m]
        result["floor"][str(c)] = feature_frechet_distance(real_features[half_a], real_features[half_b[:m]])
        for mode, features in counterfactual_features.items():
            result["distance"][mode][str(c)] = feature_frechet_distance(real_features[half_a], features[rows])
        result["n_compared"][str(c)] = m
    return result


def nanmean(values) -> float:
    values = np.asarray(list(values), dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def evaluate(result: dict, classifier: nn.Module, test: dict, n_classes: int, generator: torch.Generator,
             batch_size: int) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """(headline metrics of counterfactuals.json, details per mode/pair/class, target-vs-predicted confusion per mode).

    The test images are embedded once; both modes are compared with the same real images.
    """
    from pipeline.evaluation.classification import confusion_matrix

    real_features = embed_images(classifier, test["images"], batch_size)
    fake_features = {mode: embed_images(classifier, result[f"counterfactual{suffix}"], batch_size)
                     for mode, suffix in MODES.items()}
    distances = feature_distances(real_features, test["labels"], fake_features, result["target"], n_classes, generator)
    details = {"n_counterfactuals": len(result["target"]), "modes": {},
               "feature_distance_real_floor": nanmean(distances["floor"].values()),
               "feature_distance_real_floor_per_class": distances["floor"],
               "feature_distance_n_compared_per_class": distances["n_compared"]}
    confusions = {}
    for mode, suffix in MODES.items():
        rate, per_pair = conversion(result[f"predicted{suffix}"], result["source"], result["target"])
        l1, changed = change_size(result["real"], result[f"counterfactual{suffix}"])
        details["modes"][mode] = {
            "conversion_rate": rate, "mean_l1": l1, "changed_pixel_fraction": changed,
            "feature_distance": nanmean(distances["distance"][mode].values()),
            "feature_distance_per_class": distances["distance"][mode], "conversion_per_pair": per_pair}
        confusions[suffix] = confusion_matrix(result["target"], result[f"predicted{suffix}"], n_classes)
    reference = details["modes"]["reference"]
    metrics = {"conversion_rate": reference["conversion_rate"],
               "conversion_rate_latent": details["modes"]["latent"]["conversion_rate"],
               "mean_l1": reference["mean_l1"], "changed_pixel_fraction": reference["changed_pixel_fraction"],
               "feature_distance": reference["feature_distance"],
               "feature_distance_real_floor": details["feature_distance_real_floor"]}
    return metrics, details, confusions


def mean_abs_error(images: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean absolute per-pixel, per-channel difference of two uint8 image sets, on the [0, 1] scale."""
    if not len(images):
        return float("nan")
    return (images.float() - truth.float()).abs().mean().item() / 255.0


def exact_error(result: dict, test: dict, colormaps: list[str]) -> dict:
    """Colored MNIST: the GAN's error against the exact counterfactual (the same digit, recolored with the
    target colormap at the same position), per guidance mode, beside the error of changing nothing."""
    from pipeline.data.colored_mnist import exact_counterfactuals

    index = result["image_index"].cpu()
    exact = exact_counterfactuals(test["gray"].cpu().numpy()[index], test["positions"].cpu().numpy()[index],
                                  result["target"].cpu().numpy(), colormaps)
    exact = torch.from_numpy(exact).to(result["real"].device)
    errors = {mode: mean_abs_error(result[f"counterfactual{suffix}"], exact) for mode, suffix in MODES.items()}
    errors["unchanged_image"] = mean_abs_error(result["real"], exact)
    return errors
