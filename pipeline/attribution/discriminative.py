"""Discriminative attribution and its quantitative test: the mask-size / score-change sweep.

For a pair (real image ``x`` of class ``s``, counterfactual ``x'`` that the classifier assigns to
class ``t``) an attribution map says which pixels matter. The sweep turns the map into masks of
growing size (threshold, morphological closing, Gaussian blur), copies the masked region from the
counterfactual into the real image (the *hybrid* ``x' * m + x * (1 - m)``) and records how much
the classifier's probability of ``t`` rises. A good explanation flips the decision with a small
mask; its score is the area under score change over mask size on [0, 1].

Two score conventions (:class:`MaskSettings` ``convention``), both with a pixel entering the mask
when its map value is strictly above the threshold:

- ``pipeline``: thresholds from 1 (the empty mask) down to 0 on the [0, 1] map; the mask size is the
  mean of the blurred mask, i.e. of what the hybrid really copies; a curve stays flat beyond its
  largest mask, so pixels that a map gives no attribution at all earn it nothing.
- ``quac``: the conventions of QuAC's reference evaluator: thresholds ``-1 + 2k/T`` (k = 0..T-1, so
  every negative one gives the full mask and the largest is below 1); the mask size is counted on
  the closed mask before the blur; the curve is anchored at (0, 0) and at (1, the score change of
  the lowest threshold) and linear in between.

Everything here is batched on the device. Each map is closed once in greyscale, which gives the closed
mask of every threshold by thresholding (:func:`closing`); thresholds that give a pair the same closed
mask share one hybrid (:func:`distinct_masks`), so each distinct mask is built and classified once, and
the results are copied back to every threshold. :func:`sweep_loop` is the plain per-pair,
per-threshold version, kept as the reference the vectorised one is tested against.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline.attribution.blur import gaussian_blur
from pipeline.models.inference import autocast

DISCRIMINATIVE = ("d_ig", "d_deeplift", "d_inputxgrad")
CONTROLS = ("ig", "deeplift", "residual", "random")
METHODS = DISCRIMINATIVE + CONTROLS


# --------------------------------------------------------------------------------------------
# Attribution maps
# --------------------------------------------------------------------------------------------
def closing(x: torch.Tensor, size: int, outside: float = 0.0) -> torch.Tensor:
    """Morphological closing (dilation, then erosion) with a ``size`` x ``size`` square; 1 = off.

    Binary masks: outside the image is background (``outside`` 0), so that erosion can shrink back to the
    border (max_pool's own -inf padding would count outside as foreground and grow masks near the edge).
    Greyscale maps: give ``outside`` -inf, below every threshold. A max and a min filter commute with
    thresholding, so ``closing(maps, size, -inf) > t`` is ``closing((maps > t).float(), size)`` for every ``t``:
    one closing of a map gives the closed masks of all its thresholds."""
    if size <= 1:
        return x
    pad = size // 2
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), value=outside)
    dilated = F.max_pool2d(padded, size, stride=1, padding=pad)[..., : h + 2 * pad, : w + 2 * pad]
    eroded = -F.max_pool2d(-dilated, size, stride=1, padding=pad)
    return eroded[..., pad : pad + h, pad : pad + w]


CHANNEL_AGGREGATIONS = ("sum", "max", "per_channel")


def normalise_maps(maps: torch.Tensor, across_channels: bool | str) -> torch.Tensor:
    """|map| scaled to [0, 1] per pair. ``across_channels``: ``"sum"`` (or True) sums |map| over the
    channels into one spatial map, ``"max"`` takes the largest channel, ``"per_channel"`` (or False)
    keeps one map per channel, so that a mask may take some channels of a pixel and not others."""
    how = {True: "sum", False: "per_channel"}.get(across_channels, across_channels)
    if how not in CHANNEL_AGGREGATIONS:
        raise ValueError(f"unknown channel aggregation {how!r}; known: {', '.join(CHANNEL_AGGREGATIONS)}")
    maps = maps.detach().float().abs()
    if how == "sum":
        maps = maps.sum(dim=1, keepdim=True)
    elif how == "max":
        maps = maps.amax(dim=1, keepdim=True)
    peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return maps / peak


ATTRIBUTED = ("real", "counterfactual", "logit_gap")


def class_attribution(method: str, model: nn.Module, real: torch.Tensor, counterfactual: torch.Tensor,
                      target: torch.Tensor, ig_steps: int) -> torch.Tensor:
    """A gradient-based method's map of the logit of class ``target`` [N] (one class per pair)."""
    from captum.attr import DeepLift, IntegratedGradients, Saliency

    if method in ("d_ig", "ig"):
        baseline = counterfactual if method == "d_ig" else torch.zeros_like(real)
        return IntegratedGradients(model).attribute(real, baselines=baseline, target=target, n_steps=ig_steps)
    if method in ("d_deeplift", "deeplift"):
        baseline = counterfactual if method == "d_deeplift" else torch.zeros_like(real)
        return DeepLift(model).attribute(real, baselines=baseline, target=target)
    if method == "d_inputxgrad":
        # gradient at the real image times the change to the counterfactual, signed like IG and
        # DeepLift (f(real) - f(counterfactual) to first order); the normalised map takes |.|
        gradient = Saliency(model).attribute(real, target=target, abs=False)
        return gradient * (real - counterfactual)
    raise ValueError(f"{method!r} attributes no class")


def attribution_maps(method: str, model: nn.Module, real: torch.Tensor, counterfactual: torch.Tensor,
                     source: torch.Tensor, ig_steps: int = 32, random_sigma: float = 2.0,
                     generator: torch.Generator | None = None, target: torch.Tensor | None = None,
                     attributed: str = "real") -> torch.Tensor:
    """Raw (signed, per-channel) attribution maps of one batch of pairs, float32 NCHW.

    Discriminative methods use the counterfactual as the reference. ``attributed`` says which output
    the gradient methods explain: the logit of the real class ``source`` (``real``, as QuAC does), of
    the counterfactual's class ``target`` (``counterfactual``), or their difference, target minus
    source (``logit_gap``; every method here is linear in the explained output, so this is the
    difference of the two maps).
    """
    if method == "residual":
        return (real.float() - counterfactual.float()).abs()
    if method == "random":
        noise = torch.rand(real.shape[0], 1, *real.shape[2:], generator=generator, device=generator.device if generator else real.device)
        return gaussian_blur(noise.to(real.device), random_sigma).expand_as(real).contiguous()
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; known: {', '.join(METHODS)}")
    if attributed not in ATTRIBUTED:
        raise ValueError(f"unknown attributed output {attributed!r}; known: {', '.join(ATTRIBUTED)}")
    if attributed != "real" and target is None:
        raise ValueError(f"attributed={attributed!r} needs the counterfactuals' classes (target)")
    real, counterfactual = real.float(), counterfactual.float()
    explain = lambda cls: class_attribution(method, model, real, counterfactual, cls.long(), ig_steps)  # noqa: E731
    if attributed == "real":
        return explain(source)
    if attributed == "counterfactual":
        return explain(target)
    return explain(target) - explain(source)


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------
CONVENTIONS = ("pipeline", "quac")


@dataclass(frozen=True)
class MaskSettings:
    """How maps become masks (threshold, closing, blur) and which score convention measures them."""

    n_thresholds: int = 200
    closing_size: int = 3
    blur_sigma: float = 1.0
    convention: str = "pipeline"  # pipeline | quac: see the module docstring

    def __post_init__(self):
        if self.convention not in CONVENTIONS:
            raise ValueError(f"unknown score convention {self.convention!r}; known: {', '.join(CONVENTIONS)}")

    def thresholds(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Descending, so that masks grow along the sweep. ``pipeline``: from 1 (the empty mask, the
        real image) to 0. ``quac``: QuAC's ``-1 + 2k/T``, k = T-1..0."""
        if self.convention == "quac":
            k = torch.arange(self.n_thresholds - 1, -1, -1, device=device, dtype=torch.float32)
            return -1.0 + 2.0 * k / self.n_thresholds
        return torch.linspace(1.0, 0.0, self.n_thresholds, device=device)


def closed_and_blurred(binary: torch.Tensor, settings: MaskSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(closed binary mask, soft mask in [0, 1]) of thresholded masks [N,C,H,W]."""
    closed = closing(binary, settings.closing_size)
    return closed, gaussian_blur(closed, settings.blur_sigma).clamp(0.0, 1.0)


def mask_sizes(closed: torch.Tensor, soft: torch.Tensor, convention: str) -> torch.Tensor:
    """Share of the image each mask [N,C,H,W] covers: the soft mask's mean (``pipeline``: what the
    hybrid copies) or the closed mask's before the blur (``quac``)."""
    return (closed if convention == "quac" else soft).flatten(1).mean(dim=1)


def build_masks(maps: torch.Tensor, thresholds: torch.Tensor, settings: MaskSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks for every (pair, threshold): ``maps`` [B,C,H,W] in [0, 1], ``thresholds`` [T] or [B,T].

    Returns soft masks [B,T,C,H,W] in [0, 1] (threshold, closing, blur) and their sizes [B,T].
    """
    b, c, h, w = maps.shape
    thresholds = thresholds.to(maps.device, maps.dtype)
    if thresholds.dim() == 1:
        thresholds = thresholds.expand(b, -1)
    t = thresholds.shape[1]
    binary = (maps[:, None] > thresholds.view(b, t, 1, 1, 1)).to(maps.dtype)
    closed, soft = closed_and_blurred(binary.reshape(b * t, c, h, w), settings)
    return soft.reshape(b, t, c, h, w), mask_sizes(closed, soft, settings.convention).reshape(b, t)


def hybrids(real: torch.Tensor, counterfactual: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``counterfactual * mask + real * (1 - mask)``; masks [B,T,C,H,W] broadcast over channels."""
    return torch.lerp(real[:, None], counterfactual[:, None], masks)


@dataclass
class SweepResult:
    """Per pair and threshold (thresholds descending): mask size, score change, predicted class."""

    mask_size: torch.Tensor     # [B, T] float32, share of the image the mask covers (per the convention)
    score_change: torch.Tensor  # [B, T] float32, p_target(hybrid) - p_target(real)
    predicted: torch.Tensor     # [B, T] int64, the classifier's decision on the hybrid
    real_probability: torch.Tensor  # [B] float32, p_target(real)


def _probabilities(model: nn.Module, x: torch.Tensor, mixed_precision: bool) -> torch.Tensor:
    with autocast(x.device, mixed_precision):
        return model(x).float().softmax(dim=1)


CPU_IMAGES_PER_THREAD = 256  # per forward pass: larger CPU batches run slower (their activations leave the cache)


def pass_size(device: torch.device, batch_size: int) -> int:
    """Images per forward pass: ``batch_size`` on an accelerator; on the CPU at most
    :data:`CPU_IMAGES_PER_THREAD` per torch thread."""
    return min(batch_size, CPU_IMAGES_PER_THREAD * torch.get_num_threads()) if device.type == "cpu" else batch_size


def distinct_masks(maps: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """[B,T] bool: whether threshold k gives pair b a different mask from threshold k - 1 (always at k = 0).

    ``thresholds`` [T] descend, so the masks ``maps > t`` only grow: threshold k adds the map values
    in (t_k, t_{k-1}] and gives the same mask when there are none, i.e. when as many values lie above
    both thresholds. Those counts come from each pair's sorted map values.
    """
    values = maps.flatten(1).sort(dim=1).values
    thresholds = thresholds.to(values.device, values.dtype).expand(len(values), -1).contiguous()
    above = values.shape[1] - torch.searchsorted(values, thresholds, right=True)
    first = torch.ones_like(above[:, :1], dtype=torch.bool)
    return torch.cat([first, above[:, 1:] != above[:, :-1]], dim=1)


def pair_chunks(images: list[int], capacity: int) -> list[slice]:
    """Consecutive runs of pairs whose ``images`` (to classify, per pair) add up to at most
    ``capacity``; a pair that needs more than that runs alone."""
    chunks, start, used = [], 0, 0
    for i, count in enumerate(images):
        if i > start and used + count > capacity:
            chunks.append(slice(start, i))
            start, used = i, 0
        used += count
    chunks.append(slice(start, len(images)))
    return chunks


class _Classifier:
    """Softmax probabilities of forward passes for one sweep. On the CPU the images go in channels-last, the
    layout the CPU convolutions and poolings run fastest in: the model sees the same values, and its results
    differ by float rounding only. A model that needs its input contiguous in NCHW (one that calls
    ``x.view(len(x), -1)``, say) fails on that layout; it then gets NCHW from that pass on (a real error fails
    again there, and is raised)."""

    def __init__(self, model: nn.Module, mixed_precision: bool):
        self.model, self.mixed_precision, self.channels_last = model, mixed_precision, True

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last and batch.device.type == "cpu" and batch.dim() == 4:
            try:
                return _probabilities(self.model, batch.contiguous(memory_format=torch.channels_last), self.mixed_precision)
            except RuntimeError:
                self.channels_last = False
        return _probabilities(self.model, batch.contiguous(), self.mixed_precision)


@torch.no_grad()
def sweep(model: nn.Module, real: torch.Tensor, counterfactual: torch.Tensor, maps: torch.Tensor,
          target: torch.Tensor, settings: MaskSettings, batch_size: int = 16384,
          mixed_precision: bool = False, progress: str | None = None) -> SweepResult:
    """The vectorised sweep over all pairs: ``real``/``counterfactual`` float [N,3,H,W] in [0, 1],
    ``maps`` normalised [N,C,H,W], ``target`` [N]. ``batch_size`` caps the images per forward pass
    (see :func:`pass_size`).

    Each map is closed once, in greyscale (:func:`closing`: thresholding the closed map gives every
    threshold's closed mask), and thresholds that give a pair the same closed mask share one hybrid
    (:func:`distinct_masks` of the closed maps). Each chunk of pairs is one forward pass: the real
    images, then one hybrid per distinct closed mask of each pair; every threshold takes its mask's result."""
    n, t = len(real), settings.n_thresholds
    thresholds = settings.thresholds(real.device)
    if n == 0:
        empty = torch.empty(0, t, device=real.device)
        return SweepResult(empty, empty.clone(), empty.long(), torch.empty(0, device=real.device))
    capacity = pass_size(real.device, batch_size)
    closed_maps = batched(lambda part: closing(maps[part].float(), settings.closing_size, -float("inf")), n, capacity)
    new = batched(lambda part: distinct_masks(closed_maps[part], thresholds), n, capacity)
    chunks = pair_chunks((new.sum(dim=1) + 1).tolist(), capacity)
    classify = _Classifier(model, mixed_precision)
    sizes, changes, predicted, base = [], [], [], []
    for part in tqdm(chunks, desc=progress or "sweep", leave=False, file=sys.stderr, mininterval=2, disable=progress is None):
        x, cf, m, tgt, keep = real[part].float(), counterfactual[part].float(), closed_maps[part], target[part], new[part]
        b = len(x)
        pair, k = keep.nonzero(as_tuple=True)                     # one row per distinct closed mask, in sweep order
        closed = (m[pair] > thresholds[k].view(-1, 1, 1, 1)).to(m.dtype)
        soft = gaussian_blur(closed, settings.blur_sigma).clamp(0.0, 1.0)
        size = mask_sizes(closed, soft, settings.convention)
        probs = classify(torch.cat([x, torch.lerp(x[pair], cf[pair], soft)]))  # the real images first
        p_real = probs[:b].gather(1, tgt[:, None]).squeeze(1)
        hybrid_probs = probs[b:]
        p_hybrid = hybrid_probs.gather(1, tgt[pair, None]).squeeze(1)
        row = keep.flatten().cumsum(0).view(b, t) - 1             # each threshold's closed mask
        sizes.append(size[row])
        changes.append(p_hybrid[row] - p_real[:, None])
        predicted.append(hybrid_probs.argmax(dim=1)[row])
        base.append(p_real)
    return SweepResult(torch.cat(sizes), torch.cat(changes), torch.cat(predicted), torch.cat(base))


@torch.no_grad()
def sweep_loop(model: nn.Module, real: torch.Tensor, counterfactual: torch.Tensor, maps: torch.Tensor,
               target: torch.Tensor, settings: MaskSettings) -> SweepResult:
    """The straightforward reference: one pair, one threshold, one image per forward pass."""
    n, t = len(real), settings.n_thresholds
    thresholds = settings.thresholds(real.device)
    sizes = torch.zeros(n, t, device=real.device)
    changes = torch.zeros(n, t, device=real.device)
    predicted = torch.zeros(n, t, dtype=torch.long, device=real.device)
    base = torch.zeros(n, device=real.device)
    for i in range(n):
        x, cf, m, tgt = real[i : i + 1].float(), counterfactual[i : i + 1].float(), maps[i : i + 1].float(), int(target[i])
        p_real = model(x).softmax(dim=1)[0, tgt]
        base[i] = p_real
        for k in range(t):
            closed, mask = closed_and_blurred((m > thresholds[k]).float(), settings)
            hybrid = cf * mask + x * (1.0 - mask)
            probs = model(hybrid).softmax(dim=1)[0]
            sizes[i, k] = mask_sizes(closed, mask, settings.convention)[0]
            changes[i, k] = probs[tgt] - p_real
            predicted[i, k] = probs.argmax()
    return SweepResult(sizes, changes, predicted, base)


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------
def size_grid(n_points: int = 101, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.linspace(0.0, 1.0, n_points, device=device)


def interpolate_curves(sizes: torch.Tensor, values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Row-wise linear interpolation of ``values`` over ``sizes`` at ``grid`` (like np.interp:
    constant beyond the ends). ``sizes``/``values`` [B,K], ``grid`` [G] -> [B,G]."""
    order = sizes.argsort(dim=1, stable=True)
    x = sizes.gather(1, order).contiguous()
    y = values.gather(1, order)
    g = grid.to(x.dtype).expand(len(x), -1).contiguous()
    upper = torch.searchsorted(x, g, right=True)
    k = x.shape[1]
    lo, hi = (upper - 1).clamp(0, k - 1), upper.clamp(0, k - 1)
    x0, x1, y0, y1 = x.gather(1, lo), x.gather(1, hi), y.gather(1, lo), y.gather(1, hi)
    span = x1 - x0
    weight = torch.where(span > 0, (g - x0) / span.clamp_min(1e-12), torch.zeros_like(g))
    return y0 + weight.clamp(0, 1) * (y1 - y0)


def quac_anchored(sizes: torch.Tensor, changes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """QuAC's curve ends: (0, 0) and (1, the change at the lowest threshold, the last column) added."""
    zeros, ones = sizes.new_zeros(len(sizes), 1), sizes.new_ones(len(sizes), 1)
    return torch.cat([zeros, sizes, ones], dim=1), torch.cat([zeros, changes, changes[:, -1:]], dim=1)


def curve_scores(result: SweepResult, grid: torch.Tensor, convention: str = "pipeline") -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolated curves [B,G] and their areas [B] (score change integrated over mask size 0..1).

    ``pipeline``: flat beyond the measured sizes; ``quac``: linear to QuAC's anchors at sizes 0 and 1."""
    sizes, changes = result.mask_size, result.score_change
    if convention == "quac":
        sizes, changes = quac_anchored(sizes, changes)
    curves = interpolate_curves(sizes, changes, grid)
    if len(curves) == 0:
        return curves, torch.empty(0, device=curves.device)
    return curves, torch.trapezoid(curves, grid.to(curves.dtype), dim=1)


def optimal_threshold_index(result: SweepResult) -> torch.Tensor:
    """Per pair, the threshold whose mask minimises (mask size - score change); ties go to the
    smaller mask (the first along the descending thresholds)."""
    return (result.mask_size - result.score_change).argmin(dim=1)


@dataclass
class PairScores:
    """Everything the stage reports per pair for one method."""

    score: torch.Tensor                  # [B]
    curve: torch.Tensor                  # [B, G]
    optimal_index: torch.Tensor          # [B]
    optimal_threshold: torch.Tensor      # [B]
    optimal_mask_size: torch.Tensor      # [B]
    optimal_score_change: torch.Tensor   # [B]
    optimal_predicted: torch.Tensor      # [B]


def score_pairs(result: SweepResult, settings: MaskSettings, grid: torch.Tensor) -> PairScores:
    curves, score = curve_scores(result, grid, settings.convention)
    index = optimal_threshold_index(result)
    pick = lambda values: values.gather(1, index[:, None]).squeeze(1)  # noqa: E731
    thresholds = settings.thresholds(result.mask_size.device)
    return PairScores(score, curves, index, thresholds[index], pick(result.mask_size), pick(result.score_change),
                      pick(result.predicted))


def optimal_masks(maps: torch.Tensor, thresholds: torch.Tensor, settings: MaskSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(binary closed mask, soft mask) at one threshold per pair: [B,C,H,W] each."""
    thresholds = thresholds.to(maps.device, maps.dtype)
    return closed_and_blurred((maps > thresholds.view(-1, 1, 1, 1)).to(maps.dtype), settings)


def mask_overlap(binary: torch.Tensor, soft: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU of the binary mask with ``truth`` [B,H,W] (bool) and the share of soft mask mass on it.

    Channel masks count a pixel when any channel is on (binary) or by their channel mean (soft)."""
    region = binary.amax(dim=1) > 0.5
    truth = truth.bool()
    inter = (region & truth).flatten(1).sum(1).float()
    union = (region | truth).flatten(1).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))
    mass = soft.mean(dim=1).flatten(1)
    total = mass.sum(1)
    on_truth = (mass * truth.flatten(1).float()).sum(1)
    share = torch.where(total > 0, on_truth / total.clamp_min(1e-12), torch.zeros_like(total))
    return iou, share


def batched(fn: Callable[[slice], torch.Tensor], n: int, batch_size: int, desc: str | None = None) -> torch.Tensor:
    """Concatenate ``fn(slice)`` over slices of ``range(n)``, with a progress bar when ``desc``."""
    parts = [fn(slice(s, min(s + batch_size, n)))
             for s in tqdm(range(0, n, batch_size), desc=desc, leave=False, file=sys.stderr, mininterval=2, disable=desc is None)]
    return torch.cat(parts) if parts else torch.empty(0)
