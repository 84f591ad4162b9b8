"""A score beside its chance level: the lift over chance with a bootstrap 95 % interval, and its verdict.

Every known-answer figure of the pipeline is reported this way. The score and its chance level are computed by
the same code on the same items (pairs, images, queries); the lift is the mean of the per-item differences
``score - chance`` and its interval comes from resampling the items with replacement (a paired bootstrap), so
what varies from item to item in the chance level (the size of each pair's mask, the pixels each map can
credit) is carried into the interval. Where there are several chance levels (a whole-image mask and random
masks of the same size, say) the highest one binds: the lift is taken over it and the others are kept beside.

Not judged stays not judged: an item whose score or chance level is NaN is left out, and with no item left
the lift is NaN with the reason, never 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

CONFIDENCE = 0.95
N_BOOTSTRAP = 2000
# A figure over fewer items than this is not judged: a percentile bootstrap over a handful of items has next to no
# width (over one, none), so an "above chance" there would rest on no evidence. A floor of validity, not tuned. Used
# where a set's size depends on the data (explain's distractor control, attribute's flipped images).
MIN_ITEMS = 10


def too_few(n: int, item: str) -> str | None:
    """The reason a figure over ``n`` items (``item``: their name, singular) is not judged, or None when there are
    none at all (the caller's own reason applies) or enough."""
    if 0 < n < MIN_ITEMS:
        return f"only {n} {item}{'s' if n > 1 else ''}, fewer than {MIN_ITEMS}: too few for a bootstrap interval"
    return None


@dataclass(frozen=True)
class Lift:
    """A score, its chance level and the lift between them, with the lift's bootstrap interval."""

    score: float              # mean score over the items
    chance: float             # mean chance level over the same items (the binding one)
    low: float                # bootstrap interval of score - chance
    high: float
    n: int                    # items judged
    reference: str            # what the chance level is, in words
    references: dict = field(default_factory=dict)   # every chance level computed: {name: mean}
    reason: str = ""          # why nothing was judged (n == 0)

    @property
    def lift(self) -> float:
        return self.score - self.chance

    @property
    def verdict(self) -> str:
        """'above chance', 'no better than chance' (the interval covers 0), 'below chance' or 'not judged'."""
        if not self.n or not math.isfinite(self.low):
            return "not judged"
        if self.low > 0:
            return "above chance"
        return "below chance" if self.high < 0 else "no better than chance"

    @property
    def above_chance(self) -> bool:
        return self.verdict == "above chance"

    def to_dict(self) -> dict:
        """Plain data for details.json (NaN becomes null when written)."""
        record = {"score": self.score, "chance": self.chance, "lift": self.lift, "interval": [self.low, self.high],
                  "n": self.n, "chance_level": self.reference, "verdict": self.verdict}
        if len(self.references) > 1:
            record["chance_levels"] = dict(self.references)
        if self.reason:
            record["reason"] = self.reason
        return record

    @classmethod
    def from_dict(cls, record: dict) -> Lift:
        """The Lift that :meth:`to_dict` wrote, read back (null as NaN; ``lift`` and ``verdict`` are recomputed from
        the numbers). KeyError, TypeError or ValueError when ``record`` is not such a record."""
        def number(value) -> float:
            if isinstance(value, bool) or not (value is None or isinstance(value, (int, float))):
                raise TypeError(f"{value!r} is not a number or null")
            return float("nan") if value is None else float(value)

        low, high = record["interval"]
        score, chance, n = number(record["score"]), number(record["chance"]), record["n"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n = {n!r} is not a count")
        reference = str(record["chance_level"])
        levels = record.get("chance_levels") or ({reference: chance} if n and math.isfinite(chance) else {})
        return cls(score, chance, number(low), number(high), n, reference,
                   {str(name): number(value) for name, value in levels.items()}, str(record.get("reason", "")))

    def metrics(self, name: str) -> dict:
        """The metrics file's keys for headline figure ``name``: ``<name>_lift``, ``<name>_lift_low``,
        ``<name>_lift_high`` (NaN, written as null, when nothing was judged)."""
        return {f"{name}_lift": self.lift, f"{name}_lift_low": self.low, f"{name}_lift_high": self.high}

    def sentence(self, what: str, digits: int = 2) -> str:
        """'<what> 0.72 against 0.08 by chance (a whole-image mask): lift 0.64 [0.58, 0.70], above chance'."""
        if self.verdict == "not judged":
            return f"{what}: not judged ({self.reason or 'nothing to score'})"
        f = f"{{:.{digits}f}}"
        return (f"{what} {f.format(self.score)} against {f.format(self.chance)} by chance ({self.reference}): lift "
                f"{f.format(self.lift)} [{f.format(self.low)}, {f.format(self.high)}], {self.verdict}")


def not_judged(reason: str, reference: str = "") -> Lift:
    nan = float("nan")
    return Lift(nan, nan, nan, nan, 0, reference, {}, reason)


def bootstrap_mean_interval(values: torch.Tensor, generator: torch.Generator, n_bootstrap: int = N_BOOTSTRAP,
                            confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` [N] (finite) over ``n_bootstrap`` resamples with replacement."""
    values = values.double().cpu()
    if len(values) == 0:
        return float("nan"), float("nan")
    draws = torch.randint(len(values), (n_bootstrap, len(values)), generator=generator)
    means = values[draws].mean(dim=1)
    tail = (1 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return low, high


def lift_over_chance(scores: torch.Tensor, chances: dict[str, torch.Tensor | float], generator: torch.Generator,
                     n_bootstrap: int = N_BOOTSTRAP, reason_if_empty: str = "no item to score") -> Lift:
    """The lift of per-item ``scores`` [N] over the highest of the per-item chance levels ``chances`` ({name: [N] or
    a number that holds for every item}), paired by item, with a bootstrap interval. Items with a NaN anywhere are
    left out."""
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten().cpu()
    levels = {name: torch.as_tensor(value, dtype=torch.float64).flatten().cpu().expand(len(scores))
              if torch.as_tensor(value).numel() == 1 else torch.as_tensor(value, dtype=torch.float64).flatten().cpu()
              for name, value in chances.items()}
    for name, level in levels.items():
        if len(level) != len(scores):
            raise ValueError(f"chance level {name!r} has {len(level)} items, the scores {len(scores)}")
    finite = torch.isfinite(scores)
    for level in levels.values():
        finite &= torch.isfinite(level)
    if not finite.any():
        return not_judged(reason_if_empty, ", ".join(levels))
    means = {name: level[finite].mean().item() for name, level in levels.items()}
    binding = max(means, key=means.get)
    differences = scores[finite] - levels[binding][finite]
    low, high = bootstrap_mean_interval(differences, generator, n_bootstrap)
    return Lift(scores[finite].mean().item(), means[binding], low, high, int(finite.sum()), binding, means)


def lift_between(group: torch.Tensor, reference: torch.Tensor, reference_name: str, generator: torch.Generator,
                 n_bootstrap: int = N_BOOTSTRAP, reason_if_empty: str = "no item to score") -> Lift:
    """The lift of the mean of ``group`` [N] over the mean of an independent ``reference`` group [M] (for example
    stamped queries against clean ones), each resampled on its own."""
    group = torch.as_tensor(group, dtype=torch.float64).flatten().cpu()
    reference = torch.as_tensor(reference, dtype=torch.float64).flatten().cpu()
    group, reference = group[torch.isfinite(group)], reference[torch.isfinite(reference)]
    if len(group) == 0 or len(reference) == 0:
        return not_judged(reason_if_empty, reference_name)
    draws_a = torch.randint(len(group), (n_bootstrap, len(group)), generator=generator)
    draws_b = torch.randint(len(reference), (n_bootstrap, len(reference)), generator=generator)
    differences = group[draws_a].mean(1) - reference[draws_b].mean(1)
    tail = (1 - CONFIDENCE) / 2
    low, high = torch.quantile(differences, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    chance = reference.mean().item()
    return Lift(group.mean().item(), chance, low, high, len(group), reference_name, {reference_name: chance})
