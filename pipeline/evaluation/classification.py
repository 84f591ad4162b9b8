"""Classification scores shared by stages (all on torch tensors, any device)."""
from __future__ import annotations

import torch


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return (predicted == labels).float().mean().item() if len(labels) else float("nan")


def confusion_matrix(actual: torch.Tensor, predicted: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Counts (n_classes x n_classes, int64): rows actual, columns predicted."""
    flat = actual.long() * n_classes + predicted.long()
    return torch.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_accuracy(confusion: torch.Tensor) -> dict[str, float]:
    totals = confusion.sum(dim=1)
    return {str(c): (confusion[c, c] / totals[c]).item() if totals[c] else float("nan") for c in range(len(confusion))}


def share_of_others_assigned(predicted: torch.Tensor, labels: torch.Tensor, label: int) -> float:
    """Share of images *not* of class ``label`` that are predicted as ``label`` (NaN when there are none).

    On images stamped with a shortcut this is the shortcut reliance; on the same images without the
    stamp it is the base rate, the share the classifier gives that class anyway.
    """
    others = labels != label
    return (predicted[others] == label).float().mean().item() if others.any() else float("nan")
