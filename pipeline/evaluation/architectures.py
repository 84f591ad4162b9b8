"""Several architectures trained alike, compared: what each relies on, and how alike their attribution maps are.

Works on any ``{name: nn.Module}`` of classifiers of N x C x H x W float images in [0, 1] (uint8 images are
scaled); settings come in :class:`ComparisonOptions`. Training reuses :func:`pipeline.models.training.train`;
the scores are those of :mod:`pipeline.attribution.scores` (colormap alignment, Spearman's rho) and relevance mass beside
a uniform map on each method's own support (:mod:`pipeline.scoring.relevance`), as the attribute stage scores it.

Two maps are compared as the stage's randomisation check does, by Spearman's rank correlation of their pixel
maps, here the channel sum of |map| (so a method's sign convention does not matter), per image, then averaged.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Annotated, Callable, Literal

import numpy as np
import torch
from annotated_types import Ge, Len
from torch import nn

from pipeline.attribution.methods import AttributionOptions, make_explainer, skip_reason
from pipeline.attribution.scores import color_scores, nanmean, pixel_map, rank_correlation
from pipeline.scoring.chance import Lift, lift_over_chance, not_judged
from pipeline.scoring.relevance import SUPPORT, relevance_mass, support_share
from pipeline.models.training import TrainingSettings, train
from pipeline.data.tensors import as_float, batch_slices

COMPARISON_METHODS = ("ig_zero", "saliency", "inputxgrad", "deeplift", "guided_backprop", "gradcam", "guided_gradcam")
Maps = dict[str, dict[str, torch.Tensor]]   # architecture -> method -> N x C x H x W attributions


@dataclass(frozen=True)
class ComparisonOptions:
    """Which captum methods explain every model, and how they are batched (``ig_steps``: integrated gradients).

    Methods: those of :func:`pipeline.attribution.methods.make_explainer` that need no further setting: ig_zero,
    saliency, inputxgrad, deeplift, guided_backprop, gradcam, guided_gradcam.
    """

    methods: Annotated[tuple[Literal[COMPARISON_METHODS], ...], Len(1)] = ("ig_zero", "saliency", "gradcam")
    ig_steps: Annotated[int, Ge(1)] = 32
    batch_size: Annotated[int, Ge(1)] = 256  # images per attribution call
    internal_batch_size: Annotated[int, Ge(1)] = 4096  # interpolated images per forward pass

    def attribution_options(self) -> AttributionOptions:
        """The settings ``make_explainer`` reads: these, and the defaults for methods this comparison does not run."""
        return AttributionOptions(batch_size=self.batch_size, internal_batch_size=self.internal_batch_size,
                                  ig_steps=self.ig_steps)


# --------------------------------------------------------------------------------------------
# Training alike
# --------------------------------------------------------------------------------------------
def train_alike(models: dict[str, nn.Module], images: torch.Tensor, labels: torch.Tensor, settings: TrainingSettings,
                data_order: Callable[[], torch.Generator]) -> tuple[dict[str, list[dict]], dict[str, float]]:
    """Train every model with the same settings on the same images in the same order (``data_order()`` makes a
    fresh generator for each, so each draws the same permutations). Returns per model its epoch records, and
    the seconds its training took."""
    histories, seconds = {}, {}
    for name, model in models.items():
        started = time.perf_counter()
        histories[name] = train(model, images, labels, settings, data_order())
        seconds[name] = time.perf_counter() - started
    return histories, seconds


# --------------------------------------------------------------------------------------------
# Attribution maps of every model
# --------------------------------------------------------------------------------------------
def attribution_maps(models: dict[str, nn.Module], images: torch.Tensor, targets: torch.Tensor,
                     options: ComparisonOptions) -> tuple[Maps, dict[str, dict[str, str]]]:
    """Every method's maps (float32, on the images' device) of every model for the same images and targets, and
    {model: {method: why it was skipped}} for methods a model cannot run (Grad-CAM without a convolution)."""
    maps: Maps = {name: {} for name in models}
    skipped: dict[str, dict[str, str]] = {name: {} for name in models}
    for (name, model), method in itertools.product(models.items(), options.methods):
        reason = skip_reason(method, model)
        if reason:
            skipped[name][method] = reason
            continue
        explain = make_explainer(method, model, options.attribution_options())
        parts = [explain(as_float(images[part]), targets[part]).detach().float()
                 for part in batch_slices(len(images), options.batch_size)]
        maps[name][method] = torch.cat(parts) if parts else torch.empty((0, *images.shape[1:]), device=images.device)
    return maps, {name: reasons for name, reasons in skipped.items() if reasons}


def magnitude(maps: torch.Tensor) -> torch.Tensor:
    """The channel sum of |map| (N x H x W): how much relevance each pixel gets, whatever its sign."""
    return pixel_map(maps.float().abs())


def mean_rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rho of two models' maps of the same images (channel-summed |map|), averaged over the images
    (images where either map is constant are left out; NaN when all are)."""
    return nanmean(rank_correlation(magnitude(a), magnitude(b)))


def pair_name(a: str, b: str) -> str:
    return f"{a} vs {b}"


def pairwise_correlations(maps: Maps, methods: list[str] | tuple[str, ...]) -> dict[str, dict[str, float]]:
    """{"a vs b": {method: mean rank correlation}} for every pair of models, for each method both ran."""
    return {pair_name(a, b): {m: mean_rank_correlation(maps[a][m], maps[b][m]) for m in methods
                              if m in maps[a] and m in maps[b]}
            for a, b in itertools.combinations(maps, 2)}


def correlation_matrix(correlations: dict[str, dict[str, float]], names: list[str], method: str) -> np.ndarray:
    """K x K matrix of one method's mean rank correlations: 1 on the diagonal, NaN where a model lacks the method
    (a model has it when any of its pairs has it)."""
    matrix = np.full((len(names), len(names)), np.nan)
    for (i, a), (j, b) in itertools.combinations(enumerate(names), 2):
        matrix[i, j] = matrix[j, i] = correlations[pair_name(a, b)].get(method, float("nan"))
    has = [any(method in per_method for pair, per_method in correlations.items() if name in pair.split(" vs "))
           for name in names]
    matrix[np.diag_indices(len(names))] = np.where(has, 1.0, np.nan)
    return matrix


# --------------------------------------------------------------------------------------------
# Scores against the known answer, per model and method
# --------------------------------------------------------------------------------------------
def relevance_lifts(maps: Maps, masks: torch.Tensor, streams: Callable[[str], torch.Generator],
                    among: dict[str, torch.Tensor] | None = None,
                    reason_if_empty: str = "no image to score") -> tuple[dict[str, Lift], dict[str, dict[str, Lift]], list[str]]:
    """Relevance mass inside ``masks`` [N, H, W] beside a uniform map on each method's own support (the attribute
    stage's figure and chance level), per image, as lifts with bootstrap intervals over the images.

    Returns (per model: the lift of the per-image mean over the methods that every model scored, so that the models
    compare like with like; per model and method: its lift; those shared methods). ``among``: per model, a boolean
    row selection (e.g. the images it was fooled on). ``streams(name)``: one random stream per bootstrap."""
    per_image: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    per_method: dict[str, dict[str, Lift]] = {}
    for name, methods in maps.items():
        rows = among[name].to(masks.device) if among is not None else slice(None)
        per_image[name] = {m: (relevance_mass(values[rows], masks[rows]), support_share(values[rows], masks[rows]))
                           for m, values in methods.items()}
        per_method[name] = {m: lift_over_chance(mass, {SUPPORT: chance}, streams(f"{name}/{m}"), reason_if_empty=reason_if_empty)
                            for m, (mass, chance) in per_image[name].items()}
    order = next(iter(maps.values()), {})
    shared = [m for m in order if all(per_method[name].get(m, not_judged("")).verdict != "not judged" for name in maps)]
    means = {}
    for name in maps:
        if not shared:
            means[name] = not_judged("no method was judged for every architecture")
            continue
        mass, chance = (torch.stack([per_image[name][m][i] for m in shared]).mean(0) for i in (0, 1))
        means[name] = lift_over_chance(mass, {SUPPORT: chance}, streams(name), reason_if_empty=reason_if_empty)
    return means, per_method, shared


def colormap_alignment(maps: Maps, labels: torch.Tensor, class_names: list[str], channel_std: np.ndarray) -> dict[str, dict]:
    """{model: {method: colormap alignment}}: the attribute stage's agreement of the per-class channel shares of
    |map| with how much each channel varies along each class's colormap (NaN for maps spread evenly over channels)."""
    return {name: {m: color_scores(values, labels, class_names, channel_std)["colormap_alignment"]
                   for m, values in per_method.items()}
            for name, per_method in maps.items()}


def mean_over_shared_methods(scores: dict[str, dict[str, float]]) -> tuple[dict[str, float], list[str]]:
    """Each model's mean over the methods that gave a finite score for *every* model (so that the means compare
    like with like), and those methods. NaN for every model when no method is shared."""
    finite = [{m for m, v in per_method.items() if v is not None and np.isfinite(v)} for per_method in scores.values()]
    order = next(iter(scores.values()), {})
    shared = [m for m in order if all(m in f for f in finite)]
    means = {name: float(np.mean([per_method[m] for m in shared])) if shared else float("nan")
             for name, per_method in scores.items()}
    return means, shared


# --------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------
def maps_figure(images: np.ndarray, maps: dict[str, dict[str, np.ndarray]], methods: list[str], titles: list[str],
                suptitle: str):
    """Rows: images; columns: the input, then each method's map (channel-summed |map|, each scaled to its own
    maximum) for every model side by side. A method a model cannot run is left blank ("n/a")."""
    from pipeline.plotting import as_hwc, plt

    names = list(maps)
    n_rows, n_cols = len(images), 1 + len(methods) * len(names)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.15 * n_cols, 1.15 * n_rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for r, image in enumerate(images):
        axes[r, 0].imshow(as_hwc(image), interpolation="nearest")
        axes[r, 0].set_ylabel(titles[r], fontsize=6)
        for c, (method, name) in enumerate(itertools.product(methods, names), start=1):
            if r == 0:
                axes[r, c].set_title(f"{name}\n{method}", fontsize=7)
            if method not in maps[name]:
                axes[r, c].text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=7, transform=axes[r, c].transAxes)
                continue
            value = np.abs(maps[name][method][r]).sum(axis=0)
            axes[r, c].imshow(value / max(float(value.max()), 1e-12), cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
    axes[0, 0].set_title("input", fontsize=7)
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


def correlation_figure(correlations: dict[str, dict[str, dict[str, float]]], names: list[str], methods: list[str],
                       suptitle: str):
    """Heat maps of the mean rank correlation of every pair of models' maps: one row per image set (``correlations``:
    {set: pairwise_correlations(...)}), one column per method; "–" where a model did not run the method."""
    from pipeline.plotting import plt

    rows, cols = len(correlations), len(methods)
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 + (0.55 * len(names) + 0.9) * cols, 0.6 + (0.5 * len(names) + 0.8) * rows),
                             squeeze=False, layout="constrained")
    for r, (images, per_pair) in enumerate(correlations.items()):
        for ax, method in zip(axes[r], methods):
            matrix = correlation_matrix(per_pair, names, method)
            shown = ax.imshow(np.ma.masked_invalid(matrix), cmap="RdBu_r", vmin=-1, vmax=1)
            for (i, j), value in np.ndenumerate(matrix):
                ax.text(j, i, f"{value:.2f}" if np.isfinite(value) else "–", ha="center", va="center", fontsize=7,
                        color="white" if np.isfinite(value) and abs(value) > 0.6 else "black")
            ax.set_xticks(range(len(names)), names, fontsize=7, rotation=45)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.set_title(f"{method} ({images})", fontsize=8)
    fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.8, label="mean Spearman rho")
    fig.suptitle(suptitle, fontsize=9)
    return fig
