"""Discovery: recurring evidence for a class, found from explanations alone, without the answer.

Input: one binary mask per explained (real, counterfactual) pair (for example the optimal masks of
the explain stage: the smallest region that, copied from the counterfactual, flips the decision) and
the class each pair was translated into. For every class the question is: *is there a region that
the masks of pairs into this class cover far more often than the masks of pairs into other classes?*
What every class shares, such as the centre where digits sit, is no evidence for one class, so each
class is compared with the pairs into all other classes, never with an absolute level.

1. Per class c and pixel p: ``frequency[c, p]`` = share of pairs into c whose mask covers p, and
   ``enrichment[c, p] = frequency[c, p] - frequency[not c, p]``.
2. Null: the class labels of the pairs are permuted (seeded); the largest enrichment over all pixels
   of each permutation gives a threshold that controls the family-wise error over pixels. Pixels above
   both that threshold and ``min_enrichment`` are candidate evidence.
3. Candidates are grouped into 8-connected regions (at most ``max_regions`` per class, the largest
   first, at least ``min_area`` pixels). With ``region_shape = "hull"`` each region is the convex hull
   of its candidate pixels: a shortcut is a compact patch, and where it overlaps the place every class's
   evidence shares (the digit's centre) its pixels are not enriched, which would cut a notch into it.
   Per region: ``consistency`` = share of pairs into c whose mask
   covers at least ``coverage`` of the region, ``background`` = the same share among pairs into other
   classes, and a permutation p-value of their difference.
4. A region is *recurring* when it is significant (p <= ``alpha``) and its consistency exceeds its
   background by at least ``min_enrichment``. Recurring regions are also the parts of a class's own
   shape (the stem of a 1), so a fifth step asks what a shortcut is: evidence that works on its own.
5. Trigger test (when a ``trigger`` function is given): the region's content, taken from images of
   the class (for example counterfactuals into it), is pasted into images of other classes; the
   ``trigger_rate`` is the share the classifier then assigns to the class. A class is flagged when a
   recurring region reaches ``min_trigger_rate``: a small region that moves decisions whatever the
   rest of the image shows. Without a trigger function every recurring region flags its class.

Everything here takes tensors and returns plain results, so it runs on anyone's masks. At the end:
choosing the method and its masks from the arrays of an explanations file, scoring what was found
against a planted answer, a per-class summary of it and its figure.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable, Literal

import numpy as np
import torch
from annotated_types import Ge, Interval

from pipeline.storage import InputError


REGION_SHAPES = ("hull", "pixels")


@dataclass(frozen=True)
class DiscoverySettings:
    min_pairs: Annotated[int, Ge(1)] = 20  # classes with fewer explained pairs are not judged
    min_enrichment: Annotated[float, Interval(gt=0, le=1)] = 0.25  # share into the class minus share into the others
    min_area: Annotated[int, Ge(1)] = 4  # pixels; smaller connected regions are ignored
    max_regions: Annotated[int, Ge(1)] = 3  # per class, the largest first
    coverage: Annotated[float, Interval(gt=0, le=1)] = 0.5  # a pair "uses" a region its mask covers this much of
    n_permutations: Annotated[int, Ge(1)] = 200
    alpha: Annotated[float, Interval(gt=0, lt=1)] = 0.01  # family-wise error over pixels; the region's level
    min_trigger_rate: Annotated[float, Interval(gt=0, le=1)] = 0.5  # share of others' images the pasted region moves
    region_shape: Literal[REGION_SHAPES] = "hull"  # hull: the convex hull of its candidate pixels | pixels: those alone

    def __post_init__(self) -> None:
        if self.region_shape not in REGION_SHAPES:
            raise ValueError(f"unknown region shape {self.region_shape!r}; known: {', '.join(REGION_SHAPES)}")
        if self.n_permutations + 1 < 1 / self.alpha:
            raise ValueError(f"n_permutations = {self.n_permutations!r} is not valid; allowed: at least "
                             f"{int(np.ceil(1 / self.alpha)) - 1} for alpha = {self.alpha} (the smallest permutation p-value is 1 / (n_permutations + 1))")


@dataclass
class Region:
    """One connected region of recurring evidence for ``target``."""

    target: int
    mask: torch.Tensor             # [H, W] bool
    area: int
    top: int
    left: int
    bottom: int                    # inclusive
    right: int                     # inclusive
    consistency: float             # share of pairs into target that use the region
    background: float              # share of pairs into other classes that use it
    p_value: float
    significant: bool              # recurring: p <= alpha and consistency - background >= min_enrichment
    trigger_rate: float = float("nan")  # share of other classes' images moved into target by the pasted region
    shortcut: bool = False         # recurring, and its trigger rate reaches min_trigger_rate (or no trigger test)

    @property
    def height(self) -> int:
        return self.bottom - self.top + 1

    @property
    def width(self) -> int:
        return self.right - self.left + 1


@dataclass
class ClassDiscovery:
    target: int
    n_pairs: int
    judged: bool                   # False: too few pairs to judge
    pixel_threshold: float         # enrichment a pixel must exceed (permutation max statistic)
    regions: list[Region]

    @property
    def flagged(self) -> bool:
        return any(r.shortcut for r in self.regions)


@dataclass
class Discovery:
    frequency: torch.Tensor        # [K, H, W] share of pairs into each class covering each pixel
    enrichment: torch.Tensor       # [K, H, W] frequency minus the frequency among pairs into other classes
    classes: list[ClassDiscovery]

    @property
    def flagged_classes(self) -> list[int]:
        return [c.target for c in self.classes if c.flagged]


def class_frequencies(masks: torch.Tensor, targets: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(frequency [K, H*W], counts [K]) of flattened binary ``masks`` [N, H*W] grouped by ``targets``."""
    one_hot = torch.nn.functional.one_hot(targets.long(), n_classes).float()   # [N, K]
    counts = one_hot.sum(0)
    sums = one_hot.T @ masks.float()
    return sums / counts.clamp_min(1)[:, None], counts


def enrichment_of(masks: torch.Tensor, targets: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(enrichment [K, P], frequency [K, P], counts [K]): each class against the pairs into all others."""
    frequency, counts = class_frequencies(masks, targets, n_classes)
    totals = frequency * counts[:, None]
    others = (totals.sum(0, keepdim=True) - totals) / (counts.sum() - counts).clamp_min(1)[:, None]
    return frequency - others, frequency, counts


def permutations(n: int, n_permutations: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """[n_permutations, n] seeded permutations, drawn on the generator's device and moved to ``device`` once."""
    if n_permutations == 0:
        return torch.empty(0, n, dtype=torch.long, device=device)
    return torch.stack([torch.randperm(n, generator=generator) for _ in range(n_permutations)]).to(device)


def permutation_max_enrichment(masks: torch.Tensor, targets: torch.Tensor, n_classes: int, n_permutations: int,
                               generator: torch.Generator) -> torch.Tensor:
    """[n_permutations, K]: the largest pixel enrichment per class under randomly permuted class labels."""
    orders = permutations(len(targets), n_permutations, generator, targets.device)
    maxima = [enrichment_of(masks, targets[order], n_classes)[0].amax(1) for order in orders]
    return torch.stack(maxima).cpu() if maxima else torch.empty(0, n_classes)


def connected_regions(candidates: np.ndarray, min_area: int, max_regions: int) -> list[np.ndarray]:
    """8-connected components of a bool [H, W] map with at least ``min_area`` pixels, largest first."""
    from scipy import ndimage

    labelled, n = ndimage.label(candidates, structure=np.ones((3, 3), dtype=bool))
    components = [labelled == k for k in range(1, n + 1)]
    components = [c for c in components if c.sum() >= min_area]
    components.sort(key=lambda c: -int(c.sum()))
    return components[:max_regions]


def convex_hull(mask: np.ndarray) -> np.ndarray:
    """bool [H, W]: the pixels whose centres lie in the convex hull of ``mask``'s pixels, each pixel taken as its
    unit square (so a single pixel or a one-pixel line is its own hull), and the pixels of ``mask`` themselves."""
    from scipy.spatial import Delaunay

    if not mask.any():
        return mask.copy()
    corners = np.argwhere(mask)[:, None, :] + np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])[None]
    centres = np.argwhere(np.ones(mask.shape, dtype=bool))
    inside = Delaunay(corners.reshape(-1, 2)).find_simplex(centres) >= 0
    return inside.reshape(mask.shape) | mask


def region_use(masks: torch.Tensor, region: torch.Tensor, coverage: float) -> torch.Tensor:
    """[N] bool: which pairs' masks cover at least ``coverage`` of ``region`` (both flattened)."""
    covered = (masks.float() @ region.float()) / region.float().sum().clamp_min(1)
    return covered >= coverage


def share_used(used: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Per row of ``members`` [P, N] bool: the share of its members that use the region (0 for none), float32."""
    counts = members.sum(-1)
    shares = (used & members).sum(-1).float() / counts.clamp_min(1).float()
    return torch.where(counts > 0, shares, torch.zeros_like(shares))


def region_p_value(used: torch.Tensor, into: torch.Tensor, n_permutations: int, generator: torch.Generator) -> tuple[float, float, float]:
    """(consistency, background, p-value) of ``used`` [N] bool among pairs ``into`` the class vs. the rest."""
    consistency = used[into].float().mean().item() if into.any() else float("nan")
    background = used[~into].float().mean().item() if (~into).any() else 0.0
    observed = consistency - background
    labels = into[permutations(len(into), n_permutations, generator, into.device)]      # [P, N]
    differences = share_used(used, labels).double() - share_used(used, ~labels).double()
    exceed = int((differences >= observed).sum().item())
    return consistency, background, (1 + exceed) / (1 + n_permutations)


Trigger = Callable[[int, torch.Tensor], float]


def discover(masks: torch.Tensor, targets: torch.Tensor, n_classes: int, settings: DiscoverySettings = DiscoverySettings(),
             generator: torch.Generator | None = None, trigger: Trigger | None = None) -> Discovery:
    """Recurring regions per class in binary ``masks`` [N, H, W] of pairs translated into ``targets`` [N].

    ``trigger(class, region [H, W] bool)`` gives a recurring region's trigger rate (see
    :func:`trigger_rate`); without it every recurring region counts as a shortcut."""
    if masks.ndim != 3 or len(masks) != len(targets):
        raise ValueError(f"masks must be [N, H, W] with one target per mask; got {tuple(masks.shape)} and {len(targets)} targets")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    n, height, width = masks.shape
    flat = masks.reshape(n, height * width).bool()
    enrichment, frequency, counts = enrichment_of(flat, targets, n_classes)
    null = permutation_max_enrichment(flat, targets, n_classes, settings.n_permutations, generator) if n else \
        torch.zeros(settings.n_permutations, n_classes)
    classes = []
    for c in range(n_classes):
        n_c = int(counts[c].item())
        threshold = float(torch.quantile(null[:, c], 1.0 - settings.alpha).item()) if settings.n_permutations else 0.0
        judged = n_c >= settings.min_pairs and n - n_c >= settings.min_pairs
        regions = []
        if judged:
            candidates = (enrichment[c] > max(threshold, settings.min_enrichment)).reshape(height, width).cpu().numpy()
            into = targets == c
            for component in connected_regions(candidates, settings.min_area, settings.max_regions):
                if settings.region_shape == "hull":
                    component = convex_hull(component)
                region = torch.from_numpy(component).to(flat.device)
                consistency, background, p_value = region_p_value(
                    region_use(flat, region.flatten(), settings.coverage), into, settings.n_permutations, generator)
                rows, cols = np.nonzero(component)
                recurring = p_value <= settings.alpha and consistency - background >= settings.min_enrichment
                rate = trigger(c, region) if recurring and trigger is not None else float("nan")
                regions.append(Region(c, region, int(component.sum()), int(rows.min()), int(cols.min()), int(rows.max()),
                                      int(cols.max()), consistency, background, p_value, significant=recurring,
                                      trigger_rate=rate,
                                      shortcut=recurring and (trigger is None or rate >= settings.min_trigger_rate)))
        classes.append(ClassDiscovery(c, n_c, judged, threshold, regions))
    return Discovery(frequency.reshape(n_classes, height, width), enrichment.reshape(n_classes, height, width), classes)


def pasted(recipients: torch.Tensor, donors: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``recipients`` [N,C,H,W] with the ``region`` [H, W] (bool) replaced by the same pixels of ``donors`` [N,C,H,W]."""
    keep = region.to(recipients.device, recipients.dtype)
    return torch.lerp(recipients, donors.to(recipients.dtype), keep)


def trigger_rate(classify: Callable[[torch.Tensor], torch.Tensor], recipients: torch.Tensor, donors: torch.Tensor,
                 region: torch.Tensor, target: int, generator: torch.Generator, batch_size: int = 1024) -> float:
    """Share of ``recipients`` (images of other classes, [N,C,H,W]) that ``classify`` (images -> predicted
    classes) assigns to ``target`` once ``region`` holds the content of a donor image drawn at random
    (seeded) from ``donors`` (images of the target class, [M,C,H,W]) for each recipient."""
    if len(recipients) == 0 or len(donors) == 0:
        return float("nan")
    chosen = torch.randint(len(donors), (len(recipients),), generator=generator).to(donors.device)
    hits = 0
    for start in range(0, len(recipients), batch_size):
        part = slice(start, start + batch_size)
        predicted = classify(pasted(recipients[part], donors[chosen[part]], region))
        hits += int((predicted == target).sum().item())
    return hits / len(recipients)


def region_iou(region: torch.Tensor, truth: torch.Tensor) -> float:
    """Intersection over union of two bool [H, W] masks."""
    union = (region | truth).sum().item()
    return (region & truth).sum().item() / union if union else float("nan")


def third(start: int, end: int, size: int) -> int:
    """0, 1 or 2: the third of an axis of ``size`` pixels that the span ``start..end`` (inclusive) lies towards. A span
    that touches one border, and not the other, lies towards that border wherever its centre falls (a 20-pixel
    square in a 28-pixel image's corner is in the corner, though its centre is near the middle)."""
    touches_start, touches_end = start == 0, end == size - 1
    if touches_start != touches_end:
        return 0 if touches_start else 2
    centre = (start + end) / 2 / max(size - 1, 1)
    return 0 if centre < 1 / 3 else 2 if centre > 2 / 3 else 1


def where_in_image(region: Region, height: int, width: int) -> str:
    """'top-left', 'centre', 'bottom-right', ... from the region's box in a 3 x 3 division of the image (:func:`third`)."""
    vertical = ("top", "middle", "bottom")[third(region.top, region.bottom, height)]
    horizontal = ("left", "centre", "right")[third(region.left, region.right, width)]
    if vertical == "middle":
        return "centre" if horizontal == "centre" else horizontal
    return f"{vertical}-{horizontal}" if horizontal != "centre" else vertical


def describe(region: Region, class_name: str, height: int, width: int) -> str:
    """Plain sentences: what the decisions for a class hinge on, where, how often, and whether it works alone."""
    text = (f"Decisions for class {class_name} hinge on a region of about {region.height}×{region.width} pixels "
            f"at the {where_in_image(region, height, width)} (rows {region.top}–{region.bottom}, columns "
            f"{region.left}–{region.right}) in {100 * region.consistency:.0f} % of pairs "
            f"(pairs into other classes: {100 * region.background:.0f} %; permutation p = {region.p_value:.3g}).")
    if region.trigger_rate == region.trigger_rate:  # tested
        verdict = ("a shortcut: it works on its own" if region.shortcut
                   else "part of the class's own evidence, not a shortcut on its own")
        text += (f" Pasted alone into images of other classes it moves {100 * region.trigger_rate:.0f} % of them into "
                 f"{class_name}: {verdict}.")
    return text


# --------------------------------------------------------------------------------------------
# On the explain stage's explanations, scored against a known answer, summarised and drawn
# --------------------------------------------------------------------------------------------
def is_discriminative(method: str) -> bool:
    """explain names its discriminative methods (the counterfactual as reference) ``d_*``."""
    return method.startswith("d_")


def chosen_method(arrays: dict, setting: str) -> str:
    """``setting`` itself, or for ``auto`` the discriminative method with the highest median score."""
    methods = [str(m) for m in arrays["methods"]]
    if setting != "auto":
        if setting not in methods:
            raise InputError(f"discover.method = {setting!r} was not run by explain (it ran {', '.join(methods)}); "
                             f"add it to explain.methods or use 'auto'")
        return setting
    scored = [(float(np.median(arrays[f"{m}_score"])), m) for m in methods
              if is_discriminative(m) and len(arrays.get(f"{m}_score", ()))]
    if not scored:
        return next((m for m in methods if is_discriminative(m)), methods[0])
    return max(scored)[1]


def binary_masks(arrays: dict, method: str) -> torch.Tensor:
    """[N, H, W] bool: a pixel belongs to a pair's optimal mask when its (blurred) weight is above one half in any channel."""
    key = f"{method}_optimal_mask"
    if key not in arrays:
        return torch.zeros(0, 1, 1, dtype=torch.bool)
    return torch.from_numpy(arrays[key]).amax(dim=1) > 127


def shortcut_truth(test: dict) -> dict[int, torch.Tensor]:
    """Planted shortcut pixels per shortcut class (Clever Hans), empty for other datasets."""
    if "shortcut_alpha" not in test:
        return {}
    truth: dict[int, torch.Tensor] = {}
    for alpha, label in zip(test["shortcut_alpha"].cpu(), test["shortcut_labels"].cpu().tolist()):
        truth[label] = truth.get(label, torch.zeros(alpha.shape, dtype=torch.bool)) | (alpha > 0)
    return truth


def score_against_truth(found: Discovery, truth: dict[int, torch.Tensor]) -> dict:
    """false alarms (flagged classes without a planted shortcut) and, per shortcut class, the region IoU."""
    flagged = found.flagged_classes
    scores = {"false_alarms": sum(1 for c in flagged if c not in truth)}
    if truth:
        ious = []
        for label, mask in truth.items():
            significant = [r.mask.cpu() for r in found.classes[label].regions if r.shortcut] if label < len(found.classes) else []
            union = torch.stack(significant).any(0) if significant else torch.zeros_like(mask)
            ious.append(region_iou(union, mask))
        scores["shortcut_region_iou"] = float(np.mean(ious))
    return scores


def discovery_details(found: Discovery, class_names: list[str], method: str, n_pairs: int) -> dict:
    """Per class: its pairs, whether it was judged and flagged, and every region's box and statistics;
    and the sentences (:func:`describe`) of every recurring region, shortcuts first (then in class order)."""
    height, width = found.frequency.shape[-2:]
    recurring = [r for c in found.classes for r in c.regions if r.significant]
    recurring.sort(key=lambda r: not r.shortcut)  # stable: class order within each group
    return {
        "method": method,
        "n_pairs": n_pairs,
        "flagged_classes": [class_names[c] for c in found.flagged_classes],
        "sentences": [describe(r, class_names[r.target], height, width) for r in recurring],
        "classes": {class_names[c.target]: {
            "n_pairs": c.n_pairs, "judged": c.judged, "flagged": c.flagged, "pixel_threshold": c.pixel_threshold,
            "max_enrichment": found.enrichment[c.target].max().item(),
            "regions": [{"top": r.top, "left": r.left, "height": r.height, "width": r.width, "area": r.area,
                         "consistency": r.consistency, "background": r.background, "p_value": r.p_value,
                         "significant": r.significant, "trigger_rate": r.trigger_rate, "shortcut": r.shortcut}
                        for r in c.regions],
        } for c in found.classes},
    }


def discovery_figure(found: Discovery, class_names: list[str], truth: dict[int, torch.Tensor], dataset: str, method: str):
    """Per class: enrichment map (share of its pairs' masks minus the other classes'), regions boxed."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(class_names)
    fig, axes = plt.subplots(1, n, figsize=(1.6 * n + 0.8, 2.2), squeeze=False)
    for c, ax in enumerate(axes[0]):
        shown = ax.imshow(found.enrichment[c].cpu().numpy(), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        for region in found.classes[c].regions:
            ax.add_patch(Rectangle((region.left - 0.5, region.top - 0.5), region.width, region.height, fill=False,
                                   edgecolor="black" if region.shortcut else "gray", linewidth=1.5,
                                   linestyle="-" if region.shortcut else "--" if region.significant else ":"))
        if c in truth:
            ax.contour(truth[c].float().numpy(), levels=[0.5], colors="lime", linewidths=0.8)
        state = "FLAGGED" if found.classes[c].flagged else ("not judged" if not found.classes[c].judged else "")
        ax.set_title(f"{class_names[c]} (n={found.classes[c].n_pairs})\n{state}", fontsize=7)
        ax.axis("off")
    fig.colorbar(shown, ax=axes[0].tolist(), fraction=0.02)
    fig.suptitle(f"{dataset}: where the {method} optimal masks of pairs into each class recur more than in other classes "
                 f"(boxes: regions; solid black: recurs and works alone = shortcut, dashed: recurs only; green: planted shortcut)", fontsize=7)
    return fig
