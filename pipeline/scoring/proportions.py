"""Proportions against the class's own base rate.

Whether a pick carries the planted shortcut (a TracIn proponent, an MMD-critic criticism) is judged against the
share of shortcut-carrying images among the images of the pick's *own class*, not of all images: where 95 % of a
class is stamped, picks that are merely images of that class carry it 95 % of the time. A class whose images all
carry the flag, or none does, cannot tell a pick apart: its base rate is NaN, so those picks are left out of the
lift (not judged), never scored 0 or 1 by construction.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.scoring.chance import Lift, lift_over_chance

CLASS_BASE_RATE = "the class's own base rate"


def class_base_rates(classes: np.ndarray, labels: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """[Q]: for each item of class ``classes[q]``, the share of the reference items of that class (``labels`` [N])
    for which ``flags`` [N] holds; NaN where that class has no reference item, or its items all agree."""
    classes, labels, flags = np.asarray(classes), np.asarray(labels), np.asarray(flags, dtype=bool)
    rates = np.full(len(classes), np.nan)
    for c in np.unique(classes):
        mine = flags[labels == c]
        if 0 < mine.sum() < len(mine):
            rates[classes == c] = mine.mean()
    return rates


def share_over_class_rate(hits: np.ndarray, classes: np.ndarray, labels: np.ndarray, flags: np.ndarray,
                          generator: torch.Generator, reference: str = CLASS_BASE_RATE,
                          reason_if_empty: str = "no class whose images differ in the flag") -> Lift:
    """Per item, ``hits`` [Q] (a 0/1 flag, or a share in [0, 1]) over its class's own base rate
    (:func:`class_base_rates`), as a lift with a bootstrap interval over the items."""
    rates = class_base_rates(classes, labels, flags)
    return lift_over_chance(torch.as_tensor(np.asarray(hits, dtype=np.float64)), {reference: torch.from_numpy(rates)},
                            generator, reason_if_empty=reason_if_empty)
