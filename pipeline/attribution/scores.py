"""Scores of attribution maps against a known answer; pure functions on batched torch tensors.

An attribution is N x C x H x W (or already a pixel map N x H x W); masks are boolean H x W
(broadcast to every image) or N x H x W. Nothing here loops over images in Python.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

CHANNELS = ("red", "green", "blue")


def pixel_map(attributions: torch.Tensor) -> torch.Tensor:
    """Signed relevance per pixel: the sum over channels (N x H x W); a 3-D input is returned as is."""
    attributions = attributions.float()
    return attributions.sum(dim=1) if attributions.dim() == 4 else attributions


def _flat(maps: torch.Tensor) -> torch.Tensor:
    """N x P (an empty batch stays N = 0 x P)."""
    return maps.flatten(1)


def flat_mask(mask: torch.Tensor, n: int) -> torch.Tensor:
    mask = mask.bool()
    if mask.dim() == 2:
        mask = mask.expand(n, *mask.shape)
    return mask.flatten(1)


def deletion_order_rank(attributions: torch.Tensor) -> torch.Tensor:
    """Per image, each pixel's position in the deletion order (0 = most relevant, removed first)."""
    maps = _flat(pixel_map(attributions))
    order = maps.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(maps.shape[1], device=maps.device).expand_as(order))
    return rank


def deletion_curve(probability: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, attributions: torch.Tensor,
                   targets: torch.Tensor, baseline: torch.Tensor | float = 0.0, n_steps: int = 20) -> torch.Tensor:
    """Target-class probability as pixels are removed in attribution order (N x (n_steps + 1)).

    At step ``k`` the ``round(k / n_steps * H * W)`` most relevant pixels (all channels) are replaced
    by ``baseline``; ``probability`` maps a float image batch to N x classes probabilities.
    """
    n, _, height, width = images.shape
    rank = deletion_order_rank(attributions).reshape(n, 1, height, width)
    baseline = torch.as_tensor(baseline, dtype=images.dtype, device=images.device).expand_as(images)
    removed = torch.tensor([round(step / n_steps * height * width) for step in range(n_steps + 1)], device=images.device)
    # every step of every image in one batch (step-major), so ``probability`` sees few, large batches
    perturbed = torch.where(rank.unsqueeze(0) < removed.reshape(-1, 1, 1, 1, 1), baseline, images)
    probabilities = probability(perturbed.reshape(-1, *images.shape[1:])).reshape(n_steps + 1, n, -1)
    return probabilities[:, torch.arange(n, device=images.device), targets].T


def curve_area(curve: torch.Tensor) -> torch.Tensor:
    """Area under curves sampled at evenly spaced fractions of [0, 1] (trapezoid rule, last dim)."""
    return torch.trapezoid(curve.float(), dx=1.0 / (curve.shape[-1] - 1), dim=-1)


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Row-wise ranks (0-based) with ties given their average rank, as for Spearman's rho."""
    values = values.float()
    ordered = values.sort(dim=1).values
    below = torch.searchsorted(ordered, values, right=False)
    up_to = torch.searchsorted(ordered, values, right=True)
    return (below + up_to - 1).float() / 2


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation between matching rows of ``a`` and ``b`` (NaN for a constant row)."""
    ra, rb = average_ranks(_flat(a)), average_ranks(_flat(b))
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    denominator = ra.norm(dim=1) * rb.norm(dim=1)
    return torch.where(denominator > 0, (ra * rb).sum(dim=1) / denominator.clamp(min=1e-12), torch.nan)


def channel_shares(attributions: torch.Tensor) -> torch.Tensor:
    """Per image, the share of absolute attribution on each channel (N x C, rows sum to 1)."""
    per_channel = attributions.float().abs().sum(dim=(2, 3))
    total = per_channel.sum(dim=1, keepdim=True)
    return torch.where(total > 0, per_channel / total.clamp(min=1e-30), torch.nan)


def colormap_channel_std(colormaps: list[str], n_samples: int = 256) -> np.ndarray:
    """How much each RGB channel varies along each colormap (K x 3 standard deviations over s in [0, 1])."""
    import matplotlib

    s = np.linspace(0.0, 1.0, n_samples)
    return np.stack([matplotlib.colormaps[name](s)[:, :3].std(axis=0) for name in colormaps])


SHARES_VARY = 1e-4  # channel shares closer together than this are float noise around an even split


def color_scores(attributions: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                 channel_std: np.ndarray) -> dict:
    """Share of |attribution| per RGB channel, overall and per class, and how well it follows the colormap's channels.

    The alignment is the correlation of the per-class channel shares with each colormap's channel
    variation; it is undefined (NaN) for a method whose shares do not vary, such as one that spreads
    every pixel's relevance evenly over the channels (occlusion of all channels at once).
    """
    shares = channel_shares(attributions)
    per_class = torch.stack([shares[labels == c].nanmean(dim=0) if (labels == c).any()
                             else torch.full((3,), torch.nan, device=shares.device) for c in range(len(class_names))])
    per_class = per_class.cpu().numpy()
    expected = channel_std / np.maximum(channel_std.sum(axis=1, keepdims=True), 1e-12)
    finite = np.isfinite(per_class).all(axis=1)
    varies = finite.sum() >= 1 and per_class[finite].std() > SHARES_VARY
    alignment = float(np.corrcoef(per_class[finite].ravel(), expected[finite].ravel())[0, 1]) if varies else float("nan")
    return {
        "channel_share": dict(zip(CHANNELS, shares.nanmean(dim=0).tolist())),
        "channel_share_per_class": {name: dict(zip(CHANNELS, row.tolist())) for name, row in zip(class_names, per_class)},
        "colormap_alignment": alignment,
    }


def foreground_mask(images: torch.Tensor) -> torch.Tensor:
    """The object's pixels (N x H x W bool): any channel above zero (uint8 or float images)."""
    return images.amax(dim=1) > 0


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Non-negative maps scaled so each image's maximum is 1 (all-zero maps stay zero)."""
    maps = maps.float().clamp(min=0)
    peak = maps.reshape(len(maps), -1).amax(dim=1).reshape(-1, *[1] * (maps.dim() - 1))
    return maps / peak.clamp(min=1e-12)


def segmentation_iou(maps: torch.Tensor, truth: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """IoU of ``normalised map >= t`` with ``truth`` for every threshold and image (T x N)."""
    maps = _flat(normalise_maps(pixel_map(maps)))
    truth = flat_mask(truth, len(maps))
    segments = maps.unsqueeze(0) >= thresholds.to(maps).reshape(-1, 1, 1)  # T x N x P
    intersection = (segments & truth).sum(dim=2).float()
    union = (segments | truth).sum(dim=2).float()
    return intersection / union.clamp(min=1)


def nanmean(values: torch.Tensor) -> float:
    """Mean of the finite entries as a float (NaN when there are none)."""
    values = values.float()
    finite = values[torch.isfinite(values)]
    return finite.mean().item() if len(finite) else float("nan")
