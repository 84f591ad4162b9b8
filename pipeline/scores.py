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


def shortcut_reliance(predicted_on_stamped: torch.Tensor, labels: torch.Tensor, shortcut_label: int) -> float:
    """Share of images *not* of the shortcut's class that the model assigns to it once stamped."""
    others = labels != shortcut_label
    return (predicted_on_stamped[others] == shortcut_label).float().mean().item() if others.any() else float("nan")
