"""Masks against a truth region, and their chance levels: the whole-image mask and random masks of the same area.

A method's mask (its optimal mask in explain, a discovered region) is scored by its IoU with the truth and by the
share of its mass on the truth. Masks that know nothing set the chance level, scored by the same code:

- the **whole-image mask**: IoU = the truth's share of the image, mass share the same; a big truth region makes
  this high (a 20x20 square on a 28x28 image: 0.51);
- **random masks of the same area**: per item, smooth random blobs (Gaussian-blurred noise, kept at the item's
  mask area exactly), so that a method is not credited for the size of its masks, only for where they are;
- **the same shape at random other places** (:func:`random_placements`): for one region found without the answer
  (discover), where a region of exactly that shape lands by chance;
- **the method's own masks on unrelated items** (:func:`own_mask_chance`): its masks on items the truth cannot be the
  reason for, scored against each item's truth. Random masks fall anywhere; a method's masks fall where its items
  change (on MNIST, the digit in the image's centre), so a truth region in the centre overlaps them with nothing
  learned, and only this level sees it.

Masks are bool [N, H, W] (one spatial mask per item; a per-channel mask counts a pixel when any channel is on).
"""
from __future__ import annotations

import math

import torch

WHOLE_IMAGE = "the whole-image mask"
RANDOM_MASKS = "random masks of the same area"
PLACEMENTS = "the same shape at random other places"
OWN_MASKS = "the method's own masks on unrelated items"


def spatial(mask: torch.Tensor) -> torch.Tensor:
    """bool [N, H, W] from a [N, H, W] or a per-channel [N, C, H, W] mask (a pixel is on when any channel is)."""
    return (mask.amax(dim=1) > 0.5) if mask.dim() == 4 else mask.bool()


def iou(masks: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """[N] intersection over union of bool [N, H, W] masks with bool [N, H, W] (or [H, W]) truth; 0 when both are empty."""
    truth = truth.bool().expand_as(masks)
    inter = (masks & truth).flatten(1).sum(1).float()
    union = (masks | truth).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))


def mass_share(weights: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """[N] share of non-negative ``weights`` [N, H, W] on the truth (NaN for an all-zero weight: nothing to share)."""
    weights = weights.float().clamp_min(0).flatten(1)
    total = weights.sum(1)
    on_truth = (weights * truth.bool().expand(len(weights), *truth.shape[-2:]).flatten(1).float()).sum(1)
    return torch.where(total > 0, on_truth / total.clamp_min(1e-12), torch.full_like(total, float("nan")))


def smooth_noise(n: int, shape: tuple[int, int], sigma: float, generator: torch.Generator) -> torch.Tensor:
    """[n, H, W] Gaussian noise blurred with ``sigma`` pixels (drawn on the CPU from ``generator``). The noise is drawn
    on a canvas larger by the kernel's reach and cropped, so the blur's border handling favours no part of the image."""
    from torchvision.transforms.functional import gaussian_blur

    reach = math.ceil(3 * sigma) if sigma > 0 else 0
    noise = torch.randn(n, 1, shape[0] + 2 * reach, shape[1] + 2 * reach, generator=generator)
    if reach:
        noise = gaussian_blur(noise, [2 * reach + 1, 2 * reach + 1], [sigma, sigma])
    return noise[:, 0, reach:reach + shape[0], reach:reach + shape[1]]


def random_masks_like(areas: torch.Tensor, shape: tuple[int, int], sigma: float, generator: torch.Generator) -> torch.Tensor:
    """bool [N, H, W]: for each item a smooth random blob of exactly ``areas[i]`` pixels (the top of blurred noise)."""
    areas = areas.long().cpu()
    noise = smooth_noise(len(areas), shape, sigma, generator).flatten(1)
    rank = noise.argsort(dim=1, descending=True).argsort(dim=1)          # 0 = the highest noise value
    return (rank < areas[:, None]).reshape(len(areas), *shape)


def random_placements(region: torch.Tensor, n: int, generator: torch.Generator, apart: bool = False) -> torch.Tensor:
    """bool [n, H, W]: ``region`` (bool [H, W]) moved to ``n`` random other places inside the image, drawn uniformly
    (from ``generator``, on the CPU) among the shifts that keep its bounding box inside the image, the zero shift left
    out: the same shape and area, anywhere else. ``apart``: only the shifts whose box shares the fewest pixels with
    the region's own box (none, wherever such a place exists). An empty region gives empty masks; a region without
    another place (its box spans the image) gives none: [0, H, W]."""
    region = region.bool().cpu()
    height, width = region.shape
    rows, cols = torch.nonzero(region, as_tuple=True)
    if len(rows) == 0:
        return torch.zeros(n, height, width, dtype=torch.bool)
    top, left, bottom, right = int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())
    dy, dx = (d.flatten() for d in torch.meshgrid(torch.arange(-top, height - bottom), torch.arange(-left, width - right),
                                                   indexing="ij"))
    other = (dy != 0) | (dx != 0)
    dy, dx = dy[other], dx[other]
    if apart and len(dy):
        shared = (bottom - top + 1 - dy.abs()).clamp_min(0) * (right - left + 1 - dx.abs()).clamp_min(0)
        dy, dx = dy[shared == shared.min()], dx[shared == shared.min()]
    if len(dy) == 0:
        return torch.zeros(0, height, width, dtype=torch.bool)
    pick = torch.randint(len(dy), (n,), generator=generator)
    placed = torch.zeros(n, height * width, dtype=torch.bool)
    placed.scatter_(1, (rows[None] + dy[pick, None]) * width + cols[None] + dx[pick, None], True)
    return placed.reshape(n, height, width)


def mask_chance(masks: torch.Tensor, truth: torch.Tensor, sigma: float, generator: torch.Generator,
                draws: int = 8) -> dict[str, dict[str, torch.Tensor]]:
    """The chance levels of ``masks`` (bool [N, H, W]) against ``truth`` [N, H, W]: {figure: {chance level: [N]}}
    for figures ``iou`` and ``mass_share``, from the whole-image mask and from ``draws`` random masks per item of the
    item's own mask area (their mean)."""
    masks, truth = masks.cpu(), truth.bool().cpu().expand_as(masks.cpu())
    n, shape = len(masks), tuple(masks.shape[-2:])
    whole = torch.ones_like(masks)
    areas = masks.flatten(1).sum(1)
    random_iou = torch.zeros(n)
    random_share = torch.zeros(n)
    for _ in range(draws):
        random = random_masks_like(areas, shape, sigma, generator)
        random_iou += iou(random, truth) / draws
        random_share += torch.nan_to_num(mass_share(random.float(), truth), nan=0.0) / draws
    random_share = torch.where(areas > 0, random_share, torch.full_like(random_share, float("nan")))
    return {"iou": {WHOLE_IMAGE: iou(whole, truth), RANDOM_MASKS: random_iou},
            "mass_share": {WHOLE_IMAGE: mass_share(whole.float(), truth), RANDOM_MASKS: random_share}}


def own_mask_chance(reference_masks: torch.Tensor, reference_weights: torch.Tensor,
                    truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """{figure: [N]} for figures ``iou`` and ``mass_share``: per item of ``truth`` [N, H, W], the mean score of the
    method's masks on unrelated items (bool ``reference_masks`` [M, H, W], non-negative ``reference_weights``
    [M, H, W] for the mass share) against that item's truth. The M reference items are fixed, not resampled: the
    interval of a lift over this level counts the N items' spread only. Items that share a truth region are scored
    once."""
    truth = truth.bool().cpu()
    regions, which = torch.unique(truth.flatten(1), dim=0, return_inverse=True)
    regions = regions.reshape(len(regions), *truth.shape[-2:])
    masks, weights = reference_masks.bool().cpu(), reference_weights.float().cpu()
    per_region = {"iou": torch.stack([iou(masks, region).mean() for region in regions]),
                  "mass_share": torch.stack([mass_share(weights, region).nanmean() for region in regions])}
    return {figure: values[which] for figure, values in per_region.items()}
