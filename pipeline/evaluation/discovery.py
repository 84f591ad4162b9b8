"""Discovery: recurring evidence for a class, found from explanations alone, without the answer.

Input: one binary mask per explained (real, counterfactual) pair (for example the optimal masks of
the explain stage: the smallest region that, copied from the counterfactual, flips the decision) and
the class each pair was translated into. For every class the question is: *is there a region that
the masks of pairs into this class cover far more often than the masks of pairs into other classes?*
What every class shares, such as the centre where digits sit, is no evidence for one class, so each
class is compared with the pairs into all other classes, never with an absolute level.

0. The pairs are split (seeded, within each target class) into a *selection* half, which chooses the
   regions, and a *held-out* half (``held_out_share`` of each class's pairs), on which every figure of a
   region is computed: a region's p-value comes from pairs that did not choose it. ``min_pairs`` applies
   per half: a class is judged only when it, and the pairs into the other classes, have at least
   ``min_pairs`` pairs in each half (so about twice that many pairs in all).
1. On the selection half, per class c and pixel p: ``frequency[c, p]`` = share of pairs into c whose
   mask covers p, and ``enrichment[c, p] = frequency[c, p] - frequency[not c, p]``.
2. Null: the class labels of the selection pairs are permuted (seeded); the largest enrichment over all
   pixels of each permutation gives a threshold that controls the family-wise error over pixels. Pixels
   above both that threshold and ``min_enrichment`` are candidate evidence.
3. Candidates are grouped into 8-connected regions (at most ``max_regions`` per class, the largest
   first, at least ``min_area`` pixels). With ``region_shape = "hull"`` each region is the convex hull
   of its candidate pixels: a shortcut is a compact patch, and where it overlaps the place every class's
   evidence shares (the digit's centre) its pixels are not enriched, which would cut a notch into it.
   On the held-out half, per region: ``consistency`` = share of pairs into c whose mask covers at least
   ``coverage`` of the region, ``background`` = the same share among pairs into other classes, and a
   permutation p-value of their difference.
4. A region is *recurring* when it is significant (p <= ``alpha``) and its consistency exceeds its
   background by at least ``min_enrichment``. Recurring regions are also the parts of a class's own
   shape (the stem of a 1), so a fifth step asks what a shortcut is: evidence that works on its own.
5. Trigger test (when a ``trigger`` function is given, :func:`trigger_test`): the region's content,
   taken from counterfactuals into the class, is pasted into images of other classes; the
   ``trigger_rate`` is the share the classifier then assigns to the class. The same code gives two
   controls on the same recipients: the same paste from the same donors at random *other places* (the
   region's shape moved inside the image, apart from itself), and the region pasted from counterfactuals
   into *other classes*. A class is flagged when a recurring region reaches ``min_trigger_rate`` and its
   lift over the higher control (paired bootstrap over recipients) is above chance: a small region that
   moves decisions whatever the rest of the image shows, and not because any paste of its size does.
   Without a trigger function every recurring region flags its class.

Everything here takes tensors and returns plain results, so it runs on anyone's masks. At the end:
choosing the method and its masks from the arrays of an explanations file, scoring what was found
against a known answer (afterwards only), a per-class summary of it and its figure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Callable, Literal

import numpy as np
import torch
from annotated_types import Ge, Interval

from pipeline.data.known_answer import KnownAnswer, PlantedShortcuts, Unknown
from pipeline.data.regions import convex_hull
from pipeline.data.tensors import as_float, batch_slices
from pipeline.scoring.chance import CONFIDENCE, Lift, lift_over_chance, not_judged
from pipeline.scoring.masks import PLACEMENTS, WHOLE_IMAGE, iou, random_placements
from pipeline.storage import InputError


REGION_SHAPES = ("hull", "pixels")
SHIFTED = "the same paste at random other places"
OTHER_CLASSES = "the region pasted from counterfactuals into other classes"
N_PLACEMENTS = 1000  # random places of a found region: its chance IoU's mean to about +-0.01, a placement p down to 1/1001


@dataclass(frozen=True)
class DiscoverySettings:
    min_pairs: Annotated[int, Ge(1)] = 20  # per half: classes with fewer explained pairs in either half are not judged
    min_enrichment: Annotated[float, Interval(gt=0, le=1)] = 0.25  # share into the class minus share into the others
    min_area: Annotated[int, Ge(1)] = 4  # pixels; smaller connected regions are ignored
    max_regions: Annotated[int, Ge(1)] = 3  # per class, the largest first
    coverage: Annotated[float, Interval(gt=0, le=1)] = 0.5  # a pair "uses" a region its mask covers this much of
    n_permutations: Annotated[int, Ge(1)] = 200
    alpha: Annotated[float, Interval(gt=0, lt=1)] = 0.01  # family-wise error over pixels; the region's level
    min_trigger_rate: Annotated[float, Interval(gt=0, le=1)] = 0.5  # share of others' images the pasted region moves
    region_shape: Literal[REGION_SHAPES] = "hull"  # hull: the convex hull of its candidate pixels | pixels: those alone
    held_out_share: Annotated[float, Interval(gt=0, lt=1)] = 0.5  # of each class's pairs, for the region's figures

    def __post_init__(self) -> None:
        if self.region_shape not in REGION_SHAPES:
            raise ValueError(f"unknown region shape {self.region_shape!r}; known: {', '.join(REGION_SHAPES)}")
        if self.n_permutations + 1 < 1 / self.alpha:
            raise ValueError(f"n_permutations = {self.n_permutations!r} is not valid; allowed: at least "
                             f"{int(np.ceil(1 / self.alpha)) - 1} for alpha = {self.alpha} (the smallest permutation p-value is 1 / (n_permutations + 1))")
        if not 0 < self.held_out_share < 1:
            raise ValueError(f"held_out_share = {self.held_out_share!r} is not valid; allowed: a number in (0, 1)")


@dataclass(frozen=True)
class TriggerTest:
    """A region pasted alone into images of other classes, beside two controls on the same recipients."""

    rate: float                    # share of recipients moved into the class by the region at its place
    shifted_rate: float            # the same paste (same donors) at random other places of the same shape (NaN: none)
    other_class_rate: float        # the region pasted from counterfactuals into other classes (NaN: none)
    lift: Lift                     # rate over the higher control, paired bootstrap over recipients
    n_recipients: int
    shift_overlap: float = float("nan")  # share of the region's pixels its other places still cover (0: apart)

    @property
    def clears_control(self) -> bool:
        return self.lift.above_chance

    @classmethod
    def not_run(cls, reason: str) -> "TriggerTest":
        nan = float("nan")
        return cls(nan, nan, nan, not_judged(reason), 0)


@dataclass
class Region:
    """One connected region of recurring evidence for ``target``; its figures are those of the held-out pairs."""

    target: int
    mask: torch.Tensor             # [H, W] bool
    area: int
    top: int
    left: int
    bottom: int                    # inclusive
    right: int                     # inclusive
    consistency: float             # share of held-out pairs into target that use the region
    background: float              # share of held-out pairs into other classes that use it
    p_value: float                 # permutation p-value of consistency - background, on the held-out pairs
    significant: bool              # recurring: p <= alpha and consistency - background >= min_enrichment
    trigger: TriggerTest | None = None  # run on recurring regions when a trigger function is given
    shortcut: bool = False         # recurring, and its trigger test reaches min_trigger_rate and clears its controls
    verdict: str = ""              # what the trigger test says of it, in words (:func:`trigger_verdict`)

    @property
    def height(self) -> int:
        return self.bottom - self.top + 1

    @property
    def width(self) -> int:
        return self.right - self.left + 1

    @property
    def trigger_rate(self) -> float:
        return self.trigger.rate if self.trigger is not None else float("nan")


@dataclass
class ClassDiscovery:
    target: int
    n_pairs: int
    n_selection: int               # pairs into the class that chose its regions
    n_held_out: int                # pairs into the class that scored them
    judged: bool                   # False: too few pairs in a half to judge
    pixel_threshold: float         # enrichment a pixel must exceed (permutation max statistic)
    regions: list[Region]
    reason: str = ""               # why the class was not judged

    @property
    def flagged(self) -> bool:
        return any(r.shortcut for r in self.regions)


@dataclass
class Discovery:
    frequency: torch.Tensor        # [K, H, W] share of selection pairs into each class covering each pixel
    enrichment: torch.Tensor       # [K, H, W] frequency minus the frequency among selection pairs into other classes
    classes: list[ClassDiscovery]
    held_out: torch.Tensor         # [N] bool: which pairs scored the regions (the rest chose them)

    @property
    def judged(self) -> bool:
        """Whether any class was judged; with none, "nothing flagged" would say nothing."""
        return any(c.judged for c in self.classes)

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
    if len(targets) == 0:
        return torch.zeros(n_permutations, n_classes)
    orders = permutations(len(targets), n_permutations, generator, targets.device)
    maxima = [enrichment_of(masks, targets[order], n_classes)[0].amax(1) for order in orders]
    return torch.stack(maxima).cpu() if maxima else torch.empty(0, n_classes)


def held_out_split(targets: torch.Tensor, n_classes: int, share: float, generator: torch.Generator) -> torch.Tensor:
    """[N] bool: a seeded share of each class's pairs (rounded half up), held out from choosing regions."""
    held_out = torch.zeros(len(targets), dtype=torch.bool)
    targets = targets.cpu()
    for c in range(n_classes):
        members = torch.nonzero(targets == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        held_out[members[:math.floor(share * len(members) + 0.5)]] = True
    return held_out


def connected_regions(candidates: np.ndarray, min_area: int, max_regions: int) -> list[np.ndarray]:
    """8-connected components of a bool [H, W] map with at least ``min_area`` pixels, largest first."""
    from scipy import ndimage

    labelled, n = ndimage.label(candidates, structure=np.ones((3, 3), dtype=bool))
    components = [labelled == k for k in range(1, n + 1)]
    components = [c for c in components if c.sum() >= min_area]
    components.sort(key=lambda c: -int(c.sum()))
    return components[:max_regions]


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


Trigger = Callable[[int, torch.Tensor], TriggerTest]


def not_judged_reason(counts: tuple[int, int, int, int], min_pairs: int) -> str:
    """Why a class is not judged, from its pairs (selection, held-out) and the other classes' (selection, held-out)."""
    own_selection, own_held_out, other_selection, other_held_out = counts
    return (f"too few pairs: {own_selection} into the class in the selection half and {own_held_out} in the held-out "
            f"half ({other_selection} and {other_held_out} into other classes); min_pairs = {min_pairs} per half")


def class_regions(c: int, candidates: np.ndarray, held_out_masks: torch.Tensor, held_out_targets: torch.Tensor,
                  settings: DiscoverySettings, generator: torch.Generator, trigger: Trigger | None) -> list[Region]:
    """The regions of class ``c`` from its candidate pixels [H, W] (chosen on the selection half), each scored on the
    held-out pairs' flattened masks [M, H*W] and, when recurring, put to the trigger test."""
    into = held_out_targets == c
    regions = []
    for component in connected_regions(candidates, settings.min_area, settings.max_regions):
        if settings.region_shape == "hull":
            component = convex_hull(component)
        region = torch.from_numpy(component).to(held_out_masks.device)
        consistency, background, p_value = region_p_value(
            region_use(held_out_masks, region.flatten(), settings.coverage), into, settings.n_permutations, generator)
        rows, cols = np.nonzero(component)
        recurring = p_value <= settings.alpha and consistency - background >= settings.min_enrichment
        tested = trigger(c, region) if recurring and trigger is not None else None
        verdict = trigger_verdict(tested, settings) if tested is not None else ""
        regions.append(Region(c, region, int(component.sum()), int(rows.min()), int(cols.min()), int(rows.max()),
                              int(cols.max()), consistency, background, p_value, significant=recurring, trigger=tested,
                              shortcut=recurring and (tested is None or verdict == SHORTCUT), verdict=verdict))
    return regions


def discover(masks: torch.Tensor, targets: torch.Tensor, n_classes: int, settings: DiscoverySettings = DiscoverySettings(),
             generator: torch.Generator | None = None, trigger: Trigger | None = None,
             split_generator: torch.Generator | None = None) -> Discovery:
    """Recurring regions per class in binary ``masks`` [N, H, W] of pairs translated into ``targets`` [N].

    ``generator`` draws the permutations, ``split_generator`` the held-out split (seeds 0 and 1 when not given).
    ``trigger(class, region [H, W] bool)`` puts a recurring region to the trigger test (see :func:`trigger_test`);
    without it every recurring region counts as a shortcut."""
    if masks.ndim != 3 or len(masks) != len(targets):
        raise ValueError(f"masks must be [N, H, W] with one target per mask; got {tuple(masks.shape)} and {len(targets)} targets")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    split_generator = split_generator if split_generator is not None else torch.Generator().manual_seed(1)
    n, height, width = masks.shape
    flat = masks.reshape(n, height * width).bool()
    held_out = held_out_split(targets, n_classes, settings.held_out_share, split_generator).to(flat.device)
    chosen_by, chosen_targets = flat[~held_out], targets[~held_out]
    enrichment, frequency, counts = enrichment_of(chosen_by, chosen_targets, n_classes)
    held_out_counts = torch.bincount(targets[held_out].long().cpu(), minlength=n_classes)
    null = permutation_max_enrichment(chosen_by, chosen_targets, n_classes, settings.n_permutations, generator)
    classes = []
    for c in range(n_classes):
        own = (int(counts[c].item()), int(held_out_counts[c].item()))
        split_counts = (*own, len(chosen_targets) - own[0], int(held_out.sum().item()) - own[1])
        threshold = float(torch.quantile(null[:, c], 1.0 - settings.alpha).item()) if settings.n_permutations else 0.0
        judged = min(split_counts) >= settings.min_pairs
        regions = []
        if judged:
            candidates = (enrichment[c] > max(threshold, settings.min_enrichment)).reshape(height, width).cpu().numpy()
            regions = class_regions(c, candidates, flat[held_out], targets[held_out], settings, generator, trigger)
        classes.append(ClassDiscovery(c, sum(own), own[0], own[1], judged, threshold, regions,
                                      "" if judged else not_judged_reason(split_counts, settings.min_pairs)))
    return Discovery(frequency.reshape(n_classes, height, width), enrichment.reshape(n_classes, height, width), classes,
                     held_out.cpu())


def pasted(recipients: torch.Tensor, donors: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``recipients`` [N,C,H,W] with the ``region`` (bool [H, W], or one per image [N, H, W]) replaced by the same
    pixels of ``donors`` [N,C,H,W]."""
    keep = region.to(recipients.device, recipients.dtype)
    return torch.lerp(recipients, donors.to(recipients.device, recipients.dtype), keep[:, None] if keep.dim() == 3 else keep)


def moved_into(classify: Callable[[torch.Tensor], torch.Tensor], recipients: torch.Tensor, donors: torch.Tensor,
               chosen: torch.Tensor, region: torch.Tensor, target: int, batch_size: int) -> torch.Tensor:
    """[N] float (1 or 0): whether ``classify`` assigns each recipient to ``target`` once ``region`` ([H, W], or
    [N, H, W]) holds the content of its donor ``donors[chosen[i]]``. Images are uint8 or float in [0, 1]."""
    hits = []
    for part in batch_slices(len(recipients), batch_size):
        where = region[part] if region.dim() == 3 else region
        donor = as_float(donors[chosen[part].to(donors.device)])
        predicted = classify(pasted(as_float(recipients[part]), donor, where))
        hits.append((predicted == target).float().cpu())
    return torch.cat(hits) if hits else torch.zeros(0)


def trigger_test(classify: Callable[[torch.Tensor], torch.Tensor], recipients: torch.Tensor, donors: torch.Tensor,
                 other_donors: torch.Tensor, region: torch.Tensor, target: int, generator: torch.Generator,
                 bootstrap: torch.Generator, batch_size: int = 1024) -> TriggerTest:
    """The trigger test of ``region`` [H, W] bool for class ``target`` on ``recipients`` (images of other classes,
    [N,C,H,W]), with ``classify`` (images -> predicted classes). Each recipient gets a donor drawn at random (from
    ``generator``) from ``donors`` (counterfactuals into the class, [M,C,H,W]) and, for the controls, a random other
    place of the region's shape (apart from it where the image allows) and a donor from ``other_donors``
    (counterfactuals into other classes). The lift of the trigger rate over the higher control comes with a paired
    bootstrap interval over recipients (from ``bootstrap``); a missing control is left out, with none it is not judged."""
    n = len(recipients)
    if n == 0 or len(donors) == 0:
        return TriggerTest.not_run("no image of another class to paste into" if n == 0 else
                                   "no counterfactual into the class to take the region from")
    region = region.bool()
    chosen = torch.randint(len(donors), (n,), generator=generator)
    hits = moved_into(classify, recipients, donors, chosen, region, target, batch_size)
    controls, overlap = {}, float("nan")
    places = random_placements(region.cpu(), n, generator, apart=True)
    if len(places):
        controls[SHIFTED] = moved_into(classify, recipients, donors, chosen, places.to(region.device), target, batch_size)
        overlap = (places & region.cpu()).flatten(1).sum(1).float().mean().item() / max(int(region.sum()), 1)
    if len(other_donors):
        others = torch.randint(len(other_donors), (n,), generator=generator)
        controls[OTHER_CLASSES] = moved_into(classify, recipients, other_donors, others, region, target, batch_size)
    lift = lift_over_chance(hits, controls, bootstrap) if controls else not_judged(
        "no control: the region has no other place in the image and there is no counterfactual into another class")
    nan = float("nan")
    return TriggerTest(hits.mean().item(), controls[SHIFTED].mean().item() if SHIFTED in controls else nan,
                       controls[OTHER_CLASSES].mean().item() if OTHER_CLASSES in controls else nan, lift, n, overlap)


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


def percent(share: float) -> str:
    return f"{100 * share:.0f} %" if math.isfinite(share) else "not measured"


SHORTCUT = "a shortcut: it works on its own"


def trigger_verdict(tested: TriggerTest, settings: DiscoverySettings) -> str:
    """What a trigger test says of a recurring region: a shortcut only when it moves at least ``min_trigger_rate``
    of the recipients *and* more than its controls do (lift above chance)."""
    if tested.lift.verdict == "not judged":
        return f"its trigger test was not judged ({tested.lift.reason})"
    if tested.rate < settings.min_trigger_rate and tested.clears_control:
        return (f"more than its controls move, but short of the {percent(settings.min_trigger_rate)} a region must move "
                f"to be flagged (discover.min_trigger_rate): a partial trigger, not flagged")
    if tested.rate < settings.min_trigger_rate:
        return "part of the class's own evidence, not a shortcut on its own"
    if not tested.clears_control:
        return ("no more than pasting a region of its size elsewhere, or from counterfactuals into other classes, "
                "does: not shown to work on its own")
    return SHORTCUT


def describe(region: Region, class_name: str, height: int, width: int) -> str:
    """Plain sentences: what the decisions for a class hinge on, where, how often, and whether it works alone."""
    text = (f"Decisions for class {class_name} hinge on a region of about {region.height}×{region.width} pixels "
            f"at the {where_in_image(region, height, width)} (rows {region.top}–{region.bottom}, columns "
            f"{region.left}–{region.right}) in {100 * region.consistency:.0f} % of held-out pairs "
            f"(pairs into other classes: {100 * region.background:.0f} %; permutation p = {region.p_value:.3g} on pairs "
            f"that did not choose the region).")
    tested = region.trigger
    if tested is None:
        return text
    if tested.lift.verdict == "not judged":
        return text + f" {region.verdict[0].upper()}{region.verdict[1:]}."
    return text + (f" Pasted alone into images of other classes it moves {percent(tested.rate)} of them into {class_name} "
                   f"(the same paste at other places: {percent(tested.shifted_rate)}; from counterfactuals into other "
                   f"classes: {percent(tested.other_class_rate)}; lift {tested.lift.lift:.2f} [{tested.lift.low:.2f}, "
                   f"{tested.lift.high:.2f}]): {region.verdict}.")


# --------------------------------------------------------------------------------------------
# On the explain stage's explanations, scored against a known answer, summarised and drawn
# --------------------------------------------------------------------------------------------
def is_discriminative(method: str) -> bool:
    """explain names its discriminative methods (the counterfactual as reference) ``d_*``."""
    return method.startswith("d_")


def chosen_method(arrays: dict, setting: str) -> str:
    """``setting`` itself, or for ``auto`` the discriminative method with the highest median score (never the known
    answer). ``auto`` refuses when explain ran no discriminative method: the others explain the decision, not the
    difference between an image and its counterfactual, so their masks would answer another question."""
    methods = [str(m) for m in arrays["methods"]]
    if setting != "auto":
        if setting not in methods:
            raise InputError(f"discover.method = {setting!r} was not run by explain (it ran {', '.join(methods)}); "
                             f"add it to explain.methods or use 'auto'")
        return setting
    discriminative = [m for m in methods if is_discriminative(m)]
    if not discriminative:
        raise InputError(f"discover.method = 'auto' takes the best discriminative method (d_*), but explain ran none "
                         f"(explain.methods: {', '.join(methods) or 'none'}); add d_ig to explain.methods or name the "
                         f"method to search in discover.method")
    medians = {}
    for m in discriminative:
        scores = np.asarray(arrays.get(f"{m}_score", []), dtype=float)
        if np.isfinite(scores).any():
            medians[m] = float(np.nanmedian(scores))
    return max(medians, key=medians.get) if medians else discriminative[0]   # no pair scored: nothing is judged


def binary_masks(arrays: dict, method: str) -> torch.Tensor:
    """[N, H, W] bool: a pixel belongs to a pair's optimal mask when its (blurred) weight is above one half in any channel."""
    key = f"{method}_optimal_mask"
    if key not in arrays:
        return torch.zeros(0, 1, 1, dtype=torch.bool)
    return torch.from_numpy(arrays[key]).amax(dim=1) > 127


def truth_regions(answer: KnownAnswer) -> dict[int, torch.Tensor]:
    """{class: truth region [H, W] bool} of planted shortcuts (the negative control's too); empty for other answers."""
    if not isinstance(answer, PlantedShortcuts):
        return {}
    return {label: torch.from_numpy(answer.region(k)) for k, label in enumerate(answer.labels)}


@dataclass(frozen=True)
class ShortcutFind:
    """What discovery found in one shortcut class, scored afterwards: the IoU of the union of its flagged regions
    with the truth region, beside the whole-image mask and the same union at random other places."""

    label: int
    judged: bool
    flagged: bool
    iou: Lift                      # one item: the class (not judged: no IoU, never 0)
    placement_p: float             # share of random places of the same shape scoring at least this IoU, (1 + k) / (1 + n)

    @property
    def found_without_being_told(self) -> bool:
        """Flagged, IoU above chance, and above all but (1 - CONFIDENCE) / 2 of the same shape's random places."""
        return self.flagged and self.iou.above_chance and self.placement_p <= (1 - CONFIDENCE) / 2


@dataclass(frozen=True)
class AnswerScore:
    """Discovery against a known answer. ``false_alarms`` is None (with ``reason``) when nothing was judged or there
    is no answer; ``region_iou`` is None where the answer has no region (a colour rule, no answer)."""

    known: bool
    negative_control: bool
    false_alarms: int | None
    false_alarm_classes: list[int]
    reason: str
    region_iou: Lift | None        # over the shortcut classes: items = classes, paired with their chance levels
    shortcuts: list[ShortcutFind]


def shortcut_find(found: Discovery, label: int, truth: torch.Tensor, generator: torch.Generator,
                  n_placements: int = N_PLACEMENTS) -> tuple[ShortcutFind, float, float]:
    """(the find, its whole-image chance IoU, its random-places chance IoU) of shortcut class ``label``."""
    judged = label < len(found.classes) and found.classes[label].judged
    if not judged:
        reason = found.classes[label].reason if label < len(found.classes) else "no pair into the class"
        return ShortcutFind(label, False, False, not_judged(reason, WHOLE_IMAGE), float("nan")), float("nan"), float("nan")
    flagged = [r.mask.cpu() for r in found.classes[label].regions if r.shortcut]
    union = torch.stack(flagged).any(0) if flagged else torch.zeros_like(truth)
    score = iou(union[None], truth).item()
    whole = iou(torch.ones_like(truth)[None], truth).item()
    places = torch.zeros(0, *truth.shape, dtype=torch.bool)
    if flagged:   # each flagged region at its own random other place (a union of far-apart regions moves as parts)
        moved = [random_placements(mask, n_placements, generator) for mask in flagged]
        places = torch.stack(moved).any(0) if all(len(m) for m in moved) else places
    else:         # nothing flagged: the same nothing anywhere
        places = torch.zeros(n_placements, *truth.shape, dtype=torch.bool)
    placed = iou(places, truth) if len(places) else torch.zeros(0)
    placement = placed.mean().item() if len(placed) else whole   # no other place: the whole-image mask alone binds
    p = (1 + int((placed >= score).sum())) / (1 + len(placed)) if len(placed) else float("nan")
    lift = lift_over_chance(torch.tensor([score]), {WHOLE_IMAGE: whole, PLACEMENTS: placement}, generator)
    return ShortcutFind(label, True, bool(flagged), lift, p), whole, placement


def score_against_answer(found: Discovery, answer: KnownAnswer, generator: torch.Generator,
                         n_placements: int = N_PLACEMENTS) -> AnswerScore:
    """Discovery against the known answer, afterwards: false alarms (flagged classes without a planted shortcut; on
    the negative control or a colour rule every flagged class) and, for planted shortcuts, each shortcut class's
    region IoU beside its chance levels (:func:`shortcut_find`), and their lift over the shortcut classes."""
    if isinstance(answer, Unknown):
        return AnswerScore(False, False, None, [], answer.reason, None, [])
    negative = isinstance(answer, PlantedShortcuts) and answer.is_negative_control
    planted = set(answer.labels) if isinstance(answer, PlantedShortcuts) and not negative else set()
    alarms = [c for c in found.flagged_classes if c not in planted]
    reason = "" if found.judged else "no class was judged: too few pairs in a half, so no flag could be raised"
    if not isinstance(answer, PlantedShortcuts):
        return AnswerScore(True, False, len(alarms) if found.judged else None, alarms, reason, None, [])
    finds, wholes, places = [], [], []
    for label, truth in truth_regions(answer).items():
        find, whole, placement = shortcut_find(found, label, truth, generator, n_placements)
        finds.append(find)
        wholes.append(whole)
        places.append(placement)
    scores = torch.tensor([f.iou.score for f in finds], dtype=torch.float64)
    region_iou = lift_over_chance(scores, {WHOLE_IMAGE: torch.tensor(wholes), PLACEMENTS: torch.tensor(places)}, generator,
                                  reason_if_empty="no shortcut class was judged: too few pairs in a half")
    return AnswerScore(True, negative, len(alarms) if found.judged else None, alarms, reason, region_iou, finds)


def discovery_metrics(found: Discovery, score: AnswerScore) -> dict:
    """Headline figures: flagged classes and false alarms (None when nothing was judged; no false alarms without an
    answer), and the region IoU's lift over chance with its interval (planted shortcuts only)."""
    metrics = {"n_flagged_classes": len(found.flagged_classes) if found.judged else None}
    if score.known:
        metrics["false_alarms"] = score.false_alarms
    if score.region_iou is not None:
        metrics.update(score.region_iou.metrics("shortcut_region_iou"))
    return metrics


def region_record(region: Region) -> dict:
    record = {"top": region.top, "left": region.left, "height": region.height, "width": region.width, "area": region.area,
              "consistency": region.consistency, "background": region.background, "p_value": region.p_value,
              "significant": region.significant, "shortcut": region.shortcut, "trigger_rate": region.trigger_rate}
    if region.trigger is not None:
        record.update(shifted_rate=region.trigger.shifted_rate, other_class_rate=region.trigger.other_class_rate,
                      shift_overlap=region.trigger.shift_overlap, n_recipients=region.trigger.n_recipients,
                      trigger_verdict=region.trigger.lift.verdict, trigger_says=region.verdict)
    return record


def discovery_details(found: Discovery, class_names: list[str], method: str, n_pairs: int,
                      score: AnswerScore | None = None) -> dict:
    """Per class: its pairs in each half, whether it was judged (or why not) and flagged, every region's box and
    figures; the sentences (:func:`describe`) of every recurring region, shortcuts first (then in class order); and
    under ``chance`` one lift per figure: each tested region's trigger rate over its controls and, with a known
    answer (``score``), the shortcut classes' region IoU."""
    height, width = found.frequency.shape[-2:]
    recurring = [r for c in found.classes for r in c.regions if r.significant]
    recurring.sort(key=lambda r: not r.shortcut)  # stable: class order within each group
    chance: dict = {"trigger_rate": {class_names[c.target]: [r.trigger.lift.to_dict() if r.trigger else None
                                                              for r in c.regions] for c in found.classes if c.regions}}
    details = {
        "method": method,
        "n_pairs": n_pairs,
        "n_held_out": int(found.held_out.sum()),
        "judged_classes": [class_names[c.target] for c in found.classes if c.judged],
        "flagged_classes": [class_names[c] for c in found.flagged_classes] if found.judged else None,
        "sentences": [describe(r, class_names[r.target], height, width) for r in recurring],
        "classes": {class_names[c.target]: {
            "n_pairs": c.n_pairs, "n_selection": c.n_selection, "n_held_out": c.n_held_out, "judged": c.judged,
            **({"reason": c.reason} if c.reason else {}), "flagged": c.flagged, "pixel_threshold": c.pixel_threshold,
            "max_enrichment": found.enrichment[c.target].max().item(), "regions": [region_record(r) for r in c.regions],
        } for c in found.classes},
        "chance": chance,
    }
    if not found.judged:
        details["not_judged"] = "no class had enough pairs in both halves to be judged"
    if score is None or not score.known:
        return details
    details.update(negative_control=score.negative_control, false_alarms=score.false_alarms,
                   false_alarm_classes=[class_names[c] for c in score.false_alarm_classes])
    if score.reason:
        details["false_alarms_reason"] = score.reason
    if score.region_iou is not None:
        chance["shortcut_region_iou"] = score.region_iou.to_dict()
        chance["shortcut_region_iou_by_class"] = {class_names[f.label]: {**f.iou.to_dict(), "placement_p": f.placement_p}
                                                  for f in score.shortcuts}
        details["shortcuts"] = {class_names[f.label]: {"judged": f.judged, "flagged": f.flagged,
                                                       "found_without_being_told": f.found_without_being_told}
                                for f in score.shortcuts}
        details["found_without_being_told"] = [class_names[f.label] for f in score.shortcuts if f.found_without_being_told]
    return details


def discovery_figure(found: Discovery, class_names: list[str], truth: dict[int, torch.Tensor], dataset: str, method: str):
    """Per class: enrichment map of the selection half (share of its pairs' masks minus the other classes'), regions boxed."""
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
    fig.suptitle(f"{dataset}: where the {method} optimal masks of pairs into each class recur more than in other classes, "
                 f"on the half of the pairs that chose the regions (boxes: regions; solid black: recurs on held-out pairs "
                 f"and works alone beyond its controls = shortcut, dashed: recurs only; green: planted shortcut)", fontsize=7)
    return fig
