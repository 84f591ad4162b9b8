"""Discriminative attribution on (real, counterfactual) pairs, scored and summarised.

For every pair, each attribution method gives a map; the sweep (:mod:`pipeline.attribution.discriminative`)
turns it into masks of growing size, copies the masked region from the counterfactual into the real
image, and records how far the target's probability rises. This module runs every method on a set of
pairs (:func:`explain_every_method`), on GAN-free control pairs with a shortcut stamped on
(:func:`stamped_control`), and summarises the results: per method, per class pair, against a known
answer (the planted shortcut, the digit vs. the color, the color rule the classifier learned), and the
headline figures (:func:`headline_metrics`) and plot tables. The figures are in
:mod:`pipeline.evaluation.explanation_plots`.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import torch
from annotated_types import Ge, Len

from pipeline.attribution.discriminative import (DISCRIMINATIVE, METHODS, MaskSettings, attribution_maps, batched, mask_overlap,
                                                 normalise_maps, optimal_masks, score_pairs, sweep)
from pipeline.data.tensors import subsample, to_float, to_uint8
from pipeline.models.inference import moved_by_stamp, predict_probabilities


@dataclass(frozen=True)
class ExplainOptions:
    """Which methods run and how: attribution (``ig_steps``, ``random_sigma``, ``attributed``,
    ``mask_channels``), batch sizes of the sweep and of attribution, and the stamped control's size."""

    methods: Annotated[tuple[Literal[METHODS], ...], Len(1)] = METHODS
    mask_channels: Literal["sum", "max", "per_channel"] = "per_channel"  # see normalise_maps
    attributed: Literal["real", "counterfactual", "logit_gap"] = "counterfactual"  # see attribution_maps
    ig_steps: Annotated[int, Ge(1)] = 32
    random_sigma: Annotated[float, Ge(0)] = 2.0
    batch_size: Annotated[int, Ge(1)] = 16384  # most images per forward pass of the sweep
    attribution_batch_size: Annotated[int, Ge(1)] = 256
    mixed_precision: bool = True
    control_pairs: Annotated[int, Ge(0), "0 = no control"] = 512  # most stamped control pairs


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


def method_maps(method: str, model, pairs: Pairs, options: ExplainOptions, generator: torch.Generator) -> torch.Tensor:
    """Normalised maps of every pair for one method, batched."""
    def one_batch(part: slice) -> torch.Tensor:
        raw = attribution_maps(method, model, pairs.real[part], pairs.counterfactual[part], pairs.source[part],
                               ig_steps=options.ig_steps, random_sigma=options.random_sigma, generator=generator,
                               target=pairs.target[part], attributed=options.attributed)
        return normalise_maps(raw, options.mask_channels)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # captum notes that it sets requires_grad on inputs
        return batched(one_batch, len(pairs.real), options.attribution_batch_size, desc=f"{method} maps")


def summarise(values: torch.Tensor) -> tuple[float, float]:
    """Median and interquartile range (NaN when empty)."""
    if len(values) == 0:
        return float("nan"), float("nan")
    q = torch.quantile(values.float().cpu(), torch.tensor([0.25, 0.5, 0.75]))
    return q[1].item(), (q[2] - q[0]).item()


def method_metrics(scores, target: torch.Tensor) -> dict:
    median, iqr = summarise(scores.score)
    n = len(scores.score)
    return {
        "median_score": median,
        "iqr_score": iqr,
        "mean_optimal_mask_size": scores.optimal_mask_size.mean().item() if n else float("nan"),
        "reached_target_fraction": (scores.optimal_predicted == target).float().mean().item() if n else float("nan"),
    }


def shortcut_truth(test: dict, pairs: Pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """(selected [N] bool, truth masks [N,H,W]): pairs translated into a shortcut class and its mask."""
    alpha, labels = test["shortcut_alpha"], test["shortcut_labels"]
    selected = torch.zeros(len(pairs.target), dtype=torch.bool, device=pairs.target.device)
    truth = torch.zeros(len(pairs.target), *alpha.shape[1:], dtype=torch.bool, device=pairs.target.device)
    for k in range(len(labels)):
        into = pairs.target == labels[k]
        selected |= into
        truth[into] |= alpha[k] > 0
    return selected, truth


def carries_shortcut(test: dict, pairs: Pairs) -> torch.Tensor:
    """[N] bool: whether each pair's counterfactual carries the shortcut planted on its target class, i.e. within
    the shortcut's pixels it is closer (mean absolute difference) to its real image stamped than to the same image
    clean. A GAN that learned the class's look from the training data paints the shortcut too; one that only redraws
    the digit does not, and then its pairs test the digit, not the shortcut. False for targets without a shortcut."""
    alpha, labels = test["shortcut_alpha"], test["shortcut_labels"]
    carried = torch.zeros(len(pairs.target), dtype=torch.bool, device=pairs.target.device)
    for k in range(len(labels)):
        into = torch.nonzero(pairs.target == labels[k]).flatten()
        if len(into) == 0:
            continue
        region = (alpha[k] > 0).to(pairs.target.device)
        index = pairs.image_index[into]
        counterfactual = pairs.counterfactual[into][..., region]
        to_stamped = (counterfactual - to_float(test["shortcut_images"][k, index])[..., region]).abs().flatten(1).mean(1)
        to_clean = (counterfactual - to_float(test["clean_images"][index])[..., region]).abs().flatten(1).mean(1)
        carried[into] = to_stamped < to_clean
    return carried


def stamped_control_pairs(model, test: dict, n_pairs: int, rng: np.random.Generator) -> Pairs:
    """GAN-free control pairs: (clean test image, the same image with a shortcut stamped on it), for
    images of other classes that the stamp alone moves into the shortcut's class (at most ``n_pairs``,
    seeded). Their only difference is the stamp, so a method's optimal masks here show how well it
    can find the shortcut at all, apart from what the GAN changes besides it."""
    clean, labels, shortcut_labels = test["clean_images"], test["labels"], test["shortcut_labels"]
    shortcut, index, n_candidates = moved_by_stamp(model, test)
    n_moved = len(index)
    keep = torch.as_tensor(subsample(n_moved, n_pairs, rng), device=index.device)
    shortcut, index = shortcut[keep], index[keep]
    return Pairs(to_float(clean[index]), to_float(test["shortcut_images"][shortcut, index]), index, labels[index],
                 shortcut_labels[shortcut], n_pairs=n_candidates, n_reaching_target=n_moved)


def explain_pairs(method: str, model, pairs: Pairs, options: ExplainOptions, settings: MaskSettings, grid: torch.Tensor,
                  generator: torch.Generator, progress: str | None = None):
    """One method on a set of pairs: (normalised maps, :class:`PairScores`, binary and soft optimal masks)."""
    maps = method_maps(method, model, pairs, options, generator)
    result = sweep(model, pairs.real, pairs.counterfactual, maps, pairs.target, settings, options.batch_size,
                   options.mixed_precision, progress=progress)
    scores = score_pairs(result, settings, grid)
    binary, soft = optimal_masks(maps, scores.optimal_threshold, settings)
    return maps, scores, binary, soft


def shortcut_overlap(binary: torch.Tensor, soft: torch.Tensor, truth: tuple[torch.Tensor, ...]) -> dict:
    """Mean IoU and share of mask mass on the shortcut over the pairs ``truth`` selects; with a third element
    (:func:`carries_shortcut`), also the IoU over the selected pairs whose counterfactual carries the shortcut."""
    selected, masks = truth[:2]
    iou, share = mask_overlap(binary[selected], soft[selected], masks[selected])
    mean = lambda values: values.mean().item() if len(values) else float("nan")  # noqa: E731
    overlap = {"shortcut_iou": mean(iou), "shortcut_mass_fraction": mean(share)}
    if len(truth) > 2:
        overlap["shortcut_iou_carried"] = mean(iou[truth[2][selected]])
    return overlap


def stamped_control(model, test: dict, options: ExplainOptions, settings: MaskSettings, grid: torch.Tensor,
                    generator: torch.Generator, rng: np.random.Generator) -> dict:
    """Every method on the stamped control pairs: median score, IoU and mass share on the shortcut."""
    pairs = stamped_control_pairs(model, test, options.control_pairs, rng)
    truth = shortcut_truth(test, pairs)
    methods = {}
    for method in options.methods if len(pairs.target) else ():
        _, scores, binary, soft = explain_pairs(method, model, pairs, options, settings, grid, generator)
        methods[method] = {"median_score": summarise(scores.score)[0], **shortcut_overlap(binary, soft, truth)}
    return {"n_pairs": len(pairs.target), "n_moved_by_stamp": pairs.n_reaching_target, "methods": methods}


def best_discriminative(metrics: dict) -> str | None:
    """The discriminative method with the highest median score in ``metrics`` (method -> entry)."""
    candidates = [(m, metrics[m]["median_score"]) for m in DISCRIMINATIVE if m in metrics]
    candidates = [(m, s) for m, s in candidates if s == s]  # drop NaN
    return max(candidates, key=lambda item: item[1])[0] if candidates else None


# --------------------------------------------------------------------------------------------
# Metrics: the headline figures, and the details beside them
# --------------------------------------------------------------------------------------------
HEADLINE_METHODS = ("d_ig", "d_deeplift", "ig", "deeplift", "residual", "random")
NAN = float("nan")


def headline_metrics(n_kept: int, per_method: dict, best: str | None, control: dict | None,
                     gan_shortcut_fraction: float = NAN) -> dict:
    """What ``metrics/<D>/explain.json`` holds: the pairs explained, the median score of each headline
    method (discriminative, vanilla and the two controls; NaN when not run) and, where a shortcut is
    planted (``control`` given, possibly empty), the shortcut IoU of the best discriminative method on
    GAN pairs into the shortcut class and on the stamped control pairs, and the share of those GAN
    pairs whose counterfactual carries the shortcut at all (:func:`carries_shortcut`)."""
    metrics = {"n_pairs_kept": n_kept}
    metrics.update({f"median_score_{m}": per_method.get(m, {}).get("median_score", NAN) for m in HEADLINE_METHODS})
    if control is not None:
        control_methods = control.get("methods", {})
        control_best = best or best_discriminative(control_methods)
        metrics["shortcut_iou"] = per_method.get(best, {}).get("shortcut_iou", NAN)
        metrics["stamped_control_shortcut_iou"] = control_methods.get(control_best, {}).get("shortcut_iou", NAN)
        metrics["gan_shortcut_fraction"] = gan_shortcut_fraction
    return metrics


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


def shortcut_table(methods: list[str], per_method: dict, control: dict) -> pd.DataFrame:
    """One bar per (method, pair set): IoU of the optimal masks with the shortcut on GAN pairs into
    the shortcut class and on the stamped control pairs (one series: the bars' labels carry both)."""
    control_methods = control.get("methods", {})
    rows = []
    for method in methods:
        rows.append({"pairs": f"{method}: GAN pairs", "shortcut_iou": per_method[method].get("shortcut_iou", NAN)})
        rows.append({"pairs": f"{method}: stamped control", "shortcut_iou": control_methods.get(method, {}).get("shortcut_iou", NAN)})
    return pd.DataFrame(rows)


def shortcut_overlap_frame(methods: list[str], per_method: dict, control: dict) -> pd.DataFrame:
    """Per method: IoU and mass share of the optimal masks on the shortcut (GAN pairs into the
    shortcut class), and IoU on the stamped control pairs (the picture's three bars)."""
    control_methods = control.get("methods", {})
    return pd.DataFrame([{"method": m, "shortcut_iou": per_method[m]["shortcut_iou"],
                          "shortcut_mass_fraction": per_method[m]["shortcut_mass_fraction"],
                          "control_shortcut_iou": control_methods.get(m, {}).get("shortcut_iou", NAN)}
                         for m in methods])


# --------------------------------------------------------------------------------------------
# Every method on the pairs
# --------------------------------------------------------------------------------------------
def explain_every_method(model, pairs: Pairs, options: ExplainOptions, settings: MaskSettings, grid: torch.Tensor,
                         generator: torch.Generator, truth: dict, dataset: str) -> tuple[dict, dict, dict]:
    """Every configured method on the pairs: (per-method details, method -> (maps, scores), arrays
    for the explanations file). ``truth`` may hold ``shortcut`` (selected, masks) and ``digit`` masks."""
    per_method, results, arrays = {}, {}, {}
    for method in options.methods:
        maps, scores, binary, soft = explain_pairs(method, model, pairs, options, settings, grid, generator,
                                                   progress=f"{method} sweep")
        entry = method_metrics(scores, pairs.target)
        if "shortcut" in truth:
            entry.update(shortcut_overlap(binary, soft, truth["shortcut"]))
        if "digit" in truth:
            _, share = mask_overlap(binary, soft, truth["digit"])
            entry["digit_mass_fraction"] = share.mean().item() if len(share) else NAN
            entry["background_mass_fraction"] = 1.0 - entry["digit_mass_fraction"]
        per_method[method] = entry
        results[method] = (maps, scores)
        arrays.update({f"{method}_score": scores.score.cpu().numpy(), f"{method}_curve": scores.curve.cpu().numpy(),
                       f"{method}_optimal_threshold": scores.optimal_threshold.cpu().numpy(),
                       f"{method}_optimal_mask_size": scores.optimal_mask_size.cpu().numpy(),
                       f"{method}_optimal_score_change": scores.optimal_score_change.cpu().numpy(),
                       f"{method}_optimal_predicted": scores.optimal_predicted.cpu().numpy(),
                       f"{method}_optimal_mask": to_uint8(soft).cpu().numpy()})
        print(f"[explain@{dataset}] {method}: median score {entry['median_score']:.3f}, "
              f"optimal mask {entry['mean_optimal_mask_size']:.3f}", file=sys.stderr)
    return per_method, results, arrays


def empty_method_entries(methods: list[str], truth: dict) -> dict:
    """Every per-method key with NaN values, for a run where no pair reaches its target."""
    keys = ("median_score", "iqr_score", "mean_optimal_mask_size", "reached_target_fraction")
    keys += ("shortcut_iou", "shortcut_mass_fraction", "shortcut_iou_carried") if "shortcut" in truth else ()
    keys += ("digit_mass_fraction", "background_mass_fraction") if "digit" in truth else ()
    return {method: dict.fromkeys(keys, NAN) for method in methods}


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
