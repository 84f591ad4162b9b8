"""Relevance mass and the pointing game of attribution maps on a truth mask, and their chance level.

An attribution is N x C x H x W (or a pixel map N x H x W); its pixel map is the sum over channels. A map can
only credit the pixels where it is not zero (its *support*): input x gradient-type maps are zero wherever the
input is black, so on a stamped digit most of what they can credit lies on the stamp. The chance level of both
figures is therefore a map with the method's own support and no preference within it: uniform over the pixels
where the method's map of that image is not zero. Its relevance mass and its pointing-game hit rate are both the
truth's share of the support. An empty map credits nothing: its relevance mass is not defined (NaN, left out) and
it misses the pointing game; a tie for the top pixel misses too, wherever the tie falls.
"""
from __future__ import annotations

import torch

from pipeline.attribution.scores import flat_mask, pixel_map

SUPPORT = "a uniform map on the method's own support"


def relevance_mass(attributions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image: the share of *positive* pixel relevance that lies inside ``mask`` (NaN without any)."""
    positive = pixel_map(attributions).flatten(1).clamp(min=0)
    inside = (positive * flat_mask(mask, len(positive))).sum(dim=1)
    total = positive.sum(dim=1)
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(total.dtype).tiny), torch.nan)


def pointing_game(attributions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image: 1.0 when the single most relevant pixel lies inside ``mask``; 0.0 when it lies outside, when
    several pixels share the top value (a tie says nothing about where the method points) or the map is empty."""
    maps = pixel_map(attributions).flatten(1)
    top_value, top = maps.max(dim=1, keepdim=True)
    unique = (maps == top_value).sum(dim=1) == 1
    inside = flat_mask(mask, len(maps)).gather(1, top).squeeze(1)
    return (inside & unique & (top_value.squeeze(1) > 0)).float()


def support_share(attributions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image: the share of the map's support (pixels where its pixel map is not zero) inside ``mask``: what a
    uniform map on the same support scores, for relevance mass and pointing game alike (NaN for an empty map)."""
    support = pixel_map(attributions).flatten(1) != 0
    inside = (support & flat_mask(mask, len(support))).sum(dim=1).float()
    size = support.sum(dim=1).float()
    return torch.where(size > 0, inside / size.clamp_min(1), torch.nan)
