"""Training and evaluating a classifier on device-resident uint8 images: the loop every stage that trains one shares.

Settings come as any object with the attributes of :class:`TrainingSettings` (the ``classifier`` params
section has them all), so the loop can be called on a user's own model and data without a params file.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.data.known_answer import KnownAnswer, PlantedShortcuts
from pipeline.data.tensors import to_float
from pipeline.models.inference import autocast, predict_probabilities
from pipeline.evaluation.classification import accuracy, confusion_matrix, per_class_accuracy, share_of_others_assigned

EpochCallback = Callable[[dict, nn.Module], dict | None]


class TrainingSettings(Protocol):
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    eval_batch_size: int
    mixed_precision: bool


class NonFiniteLoss(RuntimeError):
    pass


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, ...]:
    """One epoch's index batches: a permutation drawn by ``generator``, moved to the data's ``device`` once."""
    order = torch.randperm(n, generator=generator, device=generator.device)
    return order.to(device).split(batch_size)


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: TrainingSettings,
          generator: torch.Generator, on_epoch: EpochCallback | None = None) -> list[dict]:
    """Train ``model`` on uint8 ``images`` (on the model's device); the data order comes from ``generator``.

    After each epoch ``on_epoch(record, model)`` sees the epoch's record (``epoch``, ``train_loss``,
    ``train_accuracy``, ``learning_rate``: the mean over the epoch's steps of the one-cycle schedule) and
    may return more entries for it (a test accuracy, say).
    """
    device = images.device
    steps_per_epoch = math.ceil(len(images) / cfg.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.learning_rate,
                                                   total_steps=cfg.epochs * steps_per_epoch, pct_start=0.2)
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        learning_rates = []
        batches = epoch_batches(len(images), cfg.batch_size, generator, device)
        for index in tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, file=sys.stderr, mininterval=2):
            x, y = to_float(images[index]), labels[index]
            with autocast(device, cfg.mixed_precision):
                logits = model(x)
            loss = nn.functional.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            learning_rates.append(schedule.get_last_lr()[0])
            schedule.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
        mean_loss = loss_sum.item() / len(images)
        if not math.isfinite(mean_loss):
            raise NonFiniteLoss(f"classifier loss became {mean_loss} in epoch {epoch + 1}; lower classifier.learning_rate")
        record = {"epoch": epoch + 1, "train_loss": mean_loss, "train_accuracy": correct.item() / len(images),
                  "learning_rate": float(np.mean(learning_rates))}
        if on_epoch is not None:
            record.update(on_epoch(dict(record), model) or {})
        history.append(record)
    model.eval()
    return history


@dataclass
class Evaluation:
    """What the test split says about a trained classifier."""

    metrics: dict            # headline figures (metrics/<D>/classifier.json)
    details: dict            # per class and per shortcut (plots/<D>/train_classifier/details.json)
    confusion: torch.Tensor  # n_classes x n_classes counts, rows actual
    predicted: torch.Tensor  # predicted class of every test image


def predicted_classes(model: nn.Module, images: torch.Tensor, cfg: TrainingSettings) -> torch.Tensor:
    return predict_probabilities(model, images, cfg.eval_batch_size, cfg.mixed_precision).argmax(1)


def evaluate(model: nn.Module, test: dict, answer: KnownAnswer, class_names: list[str], cfg: TrainingSettings) -> Evaluation:
    """Accuracy on the test split; where shortcuts are planted (``answer``) also on clean images, and what each does.

    Per shortcut: ``reliance`` is the share of test images *not* of the shortcut's class that the classifier
    assigns to that class once the shortcut is stamped on them; ``base_rate`` is the same share on the clean
    images, without any stamp; and ``occlusion_rate`` the same share once the stamp's pixels are blacked out
    instead (same shape and opacity, no colour): what hiding that part of the image does on its own, so that a
    large stamp's reliance is not mistaken for its colour's. The headline figures are means over the shortcuts;
    the negative control (nothing planted) has clean accuracy and no shortcut figures.
    """
    predicted = predicted_classes(model, test["images"], cfg)
    confusion = confusion_matrix(test["labels"], predicted, len(class_names))
    metrics = {"test_accuracy": accuracy(predicted, test["labels"])}
    details = {"per_class_accuracy": per_class_accuracy(confusion)}
    if isinstance(answer, PlantedShortcuts):
        clean_images, labels = test["clean_images"], test["labels"]
        clean = predicted_classes(model, clean_images, cfg)
        metrics["clean_accuracy"] = accuracy(clean, labels)
        rows = []
        for k, label in enumerate(answer.labels):
            stamped = predicted_classes(model, answer.stamp_tensor(clean_images, k), cfg)
            occluded = predicted_classes(model, answer.occlude_tensor(clean_images, k), cfg)
            rows.append({"class": class_names[label], "kind": answer.shortcuts[k].kind,
                         "area_fraction": answer.area_fraction(k),
                         "reliance": share_of_others_assigned(stamped, labels, label),
                         "base_rate": share_of_others_assigned(clean, labels, label),
                         "occlusion_rate": share_of_others_assigned(occluded, labels, label)})
        details["shortcuts"] = rows
        for figure in ("reliance", "base_rate", "occlusion_rate"):
            if rows:
                metrics[f"shortcut_{figure}"] = float(np.mean([row[figure] for row in rows]))
    return Evaluation(metrics, details, confusion, predicted)

