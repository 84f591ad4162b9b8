"""Counterfactuals by optimising the input itself: no generator, only the classifier's gradient.

A copy of each image is optimised with proximal gradient descent on
``CE(f(x'), wanted) + lambda * distance(x', x)`` (L1 or squared L2), pixels kept in [0, 1], and
frozen as soon as the wanted logit beats every other logit by a margin. Also here: which test
images to change and into what, the size of a change (L1, L0), and the verdict on a GAN's
counterfactuals of the same (image, wanted class) pairs for a comparison.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import torch
from annotated_types import Ge, Gt
from torch import nn
from tqdm import tqdm

from pipeline.counterfactuals.frechet import class_matched_frechet
from pipeline.data.tensors import as_float, batch_slices, to_float, to_uint8
from pipeline.models.inference import embed_images, predict_probabilities


@dataclass(frozen=True)
class OptimizationOptions:
    """The search of :func:`optimize`: at most ``max_steps`` gradient steps of size ``learning_rate``,
    ``distance_weight`` (lambda) times the ``distance`` penalty (``l1`` = sum |x'-x|, ``l2`` =
    sum (x'-x)^2), stopping at ``margin``; ``batch_size`` images are optimised together."""

    max_steps: Annotated[int, Ge(1)] = 300
    learning_rate: Annotated[float, Gt(0)] = 0.1
    distance: Literal["l1", "l2"] = "l1"
    distance_weight: Annotated[float, Ge(0)] = 0.05
    margin: Annotated[float, Ge(0)] = 1.0
    batch_size: Annotated[int, Ge(1)] = 4096


def select_images(predicted: np.ndarray, labels: np.ndarray, n_classes: int, max_misclassified: int, n_correct: int,
                  rng: np.random.Generator, preferred: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Which test images to change and into what.

    Misclassified images (a seeded sample of at most ``max_misclassified``) are pushed to their true
    class; ``n_correct`` correctly classified ones to a seeded random other class. Correct images in
    ``preferred`` (those the GAN translated) are drawn first, so the comparison covers as many as possible.
    """
    wrong = np.flatnonzero(predicted != labels)
    if len(wrong) > max_misclassified:
        wrong = np.sort(rng.choice(wrong, size=max_misclassified, replace=False))
    right = np.flatnonzero(predicted == labels)
    covered = np.isin(right, preferred) if preferred is not None else np.zeros(len(right), dtype=bool)
    order = np.concatenate([rng.permutation(right[covered]), rng.permutation(right[~covered])])
    right = np.sort(order[:n_correct])
    shift = rng.integers(1, n_classes, size=len(right)) if n_classes > 1 else np.zeros(len(right), dtype=np.int64)
    index = np.concatenate([wrong, right]).astype(np.int64)
    target = np.concatenate([labels[wrong], (labels[right] + shift) % n_classes]).astype(np.int64)
    misclassified = np.concatenate([np.ones(len(wrong), bool), np.zeros(len(right), bool)])
    return {"index": index, "target": target, "misclassified": misclassified}


def target_margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Wanted logit minus the largest other logit, per image."""
    wanted = logits.gather(1, target[:, None]).squeeze(1)
    others = logits.scatter(1, target[:, None], float("-inf")).max(1).values
    return wanted - others


def distance(x: torch.Tensor, original: torch.Tensor, kind: str) -> torch.Tensor:
    """Per image: the L1 (``kind="l1"``) or squared L2 size of the change from ``original``."""
    change = (x - original).flatten(1)
    return change.abs().sum(1) if kind == "l1" else change.pow(2).sum(1)


def optimize(model: nn.Module, images: torch.Tensor, target: torch.Tensor, options: OptimizationOptions,
             progress: bool = True) -> dict[str, torch.Tensor]:
    """Batched counterfactual search on float images in [0, 1]; frozen per image once the margin is reached.

    Proximal gradient descent (ISTA): a gradient step of size ``learning_rate`` on the cross-entropy,
    then the exact proximal step of ``distance_weight * distance`` together with the [0, 1] box
    (soft-thresholding of the change for L1, shrinkage for squared L2, then clipping). Unlike a
    subgradient method, this leaves pixels whose gradient is weaker than lambda exactly unchanged,
    so the L1 solutions are sparse. Returns ``counterfactual`` (float, same shape), ``steps``
    (gradient steps each image took: ``max_steps`` also for an image that never reached the margin)
    and ``reached`` (the margin was reached within ``max_steps``); only both together say when an
    image succeeded.
    """
    device = images.device
    step_size, weight = options.learning_rate, options.distance_weight
    x = images.clone()
    active = torch.ones(len(images), dtype=torch.bool, device=device)
    steps = torch.full((len(images),), options.max_steps, dtype=torch.int64, device=device)
    bar = tqdm(range(options.max_steps + 1), desc="counterfactual optimisation", leave=False, file=sys.stderr,
               mininterval=2, disable=not progress)
    for step in bar:
        x.requires_grad_(True)
        logits = model(x).float()
        reached = active & (target_margin(logits.detach(), target) >= options.margin)
        steps = torch.where(reached, step, steps)
        active = active & ~reached
        if step == options.max_steps or (step % 10 == 0 and not active.any()):
            break
        loss = nn.functional.cross_entropy(logits, target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            change = x - images - step_size * grad
            if options.distance == "l1":
                change = change.sign() * (change.abs() - step_size * weight).clamp_min(0.0)
            else:
                change = change / (1.0 + 2.0 * step_size * weight)
            x = torch.where(active[:, None, None, None], (images + change).clamp(0.0, 1.0), x.detach())
    return {"counterfactual": x.detach(), "steps": steps, "reached": ~active}


def change_measures(real: torch.Tensor, changed: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: L1 of the change (sum over channels and pixels, [0, 1] scale) and L0 (pixels whose
    largest channel change exceeds ``threshold``)."""
    def scaled(x: torch.Tensor) -> torch.Tensor:
        return as_float(x)

    change = (scaled(changed) - scaled(real)).abs()
    return change.flatten(1).sum(1), (change.amax(1) > threshold).flatten(1).sum(1).float()


def match_rows(ours_index: np.ndarray, ours_target: np.ndarray, theirs_index: np.ndarray, theirs_target: np.ndarray,
               n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (in ours, in theirs) of the (image, target) pairs both have; the first of duplicates in theirs."""
    ours_key = ours_index.astype(np.int64) * n_classes + ours_target
    theirs_key = theirs_index.astype(np.int64) * n_classes + theirs_target
    keys, first = np.unique(theirs_key, return_index=True)
    where = np.searchsorted(keys, ours_key)
    where = np.clip(where, 0, max(len(keys) - 1, 0))
    found = (keys[where] == ours_key) if len(keys) else np.zeros(len(ours_key), dtype=bool)
    return np.flatnonzero(found), first[where[found]]


def summary(real: torch.Tensor, changed: torch.Tensor, predicted: torch.Tensor, target: torch.Tensor,
            threshold: float) -> dict:
    """Count, success rate and mean L1 and L0 of the changes (see :func:`change_measures`); NaN when empty."""
    if len(real) == 0:
        return {"n": 0, "success_rate": float("nan"), "mean_l1": float("nan"), "mean_l0": float("nan")}
    l1, l0 = change_measures(real, changed, threshold)
    return {"n": len(real), "success_rate": (predicted == target).float().mean().item(),
            "mean_l1": l1.mean().item(), "mean_l0": l0.mean().item()}


def optimize_in_batches(model: nn.Module, real: torch.Tensor, target: torch.Tensor,
                        options: OptimizationOptions) -> dict[str, torch.Tensor]:
    """:func:`optimize` over uint8 ``real`` in batches of ``options.batch_size``; the counterfactuals come back as uint8."""
    parts = [optimize(model, to_float(real[part]), target[part], options)
             for part in batch_slices(len(real), options.batch_size)]
    if not parts:
        empty = torch.zeros(0, dtype=torch.int64, device=real.device)
        return {"counterfactual": real.clone(), "steps": empty, "reached": empty.bool()}
    return {"counterfactual": to_uint8(torch.cat([p["counterfactual"] for p in parts])),
            "steps": torch.cat([p["steps"] for p in parts]), "reached": torch.cat([p["reached"] for p in parts])}


def gan_pairs(gan: dict[str, np.ndarray], chosen: dict[str, np.ndarray], n_classes: int,
              device: torch.device) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """Rows of ``chosen`` that the GAN also translated (same image, same wanted class), and the GAN's rows for them."""
    ours_rows, gan_rows = match_rows(chosen["index"], chosen["target"], gan["image_index"], gan["target"], n_classes)
    theirs = {key: torch.from_numpy(gan[key][gan_rows]).to(device) for key in ("real", "counterfactual", "target")}
    return ours_rows, theirs


def judge_gan(model: nn.Module, theirs: dict[str, torch.Tensor], reference: torch.Tensor,
              reference_labels: torch.Tensor, threshold: float, batch_size: int) -> tuple[torch.Tensor, dict]:
    """The classifier's verdict on the GAN's counterfactuals of the shared pairs, and their summary with the
    class-matched Fréchet distance to ``reference``; L0 counts pixels changed by more than ``threshold``."""
    if not len(theirs["target"]):
        empty = summary(theirs["real"], theirs["counterfactual"], theirs["target"], theirs["target"], threshold)
        return theirs["target"].clone(), {**empty, "frechet_distance": float("nan")}
    predicted = predict_probabilities(model, theirs["counterfactual"], batch_size).argmax(1)
    result = summary(theirs["real"], theirs["counterfactual"], predicted, theirs["target"], threshold)
    features = embed_images(model, theirs["counterfactual"], batch_size)
    result["frechet_distance"] = class_matched_frechet(features, theirs["target"], reference, reference_labels)
    return predicted, result
