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


def blacked_out(images: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``images`` (uint8 [N,C,H,W]) with the pixels of a stamp's opacity ``alpha`` [H, W] blended towards black."""
    keep = 1.0 - alpha.to(images.device, torch.float32)
    return (images.float() * keep).round().to(images.dtype)


def evaluate(model: nn.Module, test: dict, meta: dict, cfg: TrainingSettings) -> Evaluation:
    """Accuracy on the test split; for Clever Hans also on clean images, and what each shortcut does.

    Per shortcut: ``shortcut_reliance`` is the share of test images *not* of the shortcut's class
    that the classifier assigns to that class once the shortcut is stamped on them;
    ``shortcut_base_rate`` is the same share on the clean images, without any stamp; and
    ``shortcut_occlusion_rate`` (when the split holds the stamps' ``shortcut_alpha``) the same share
    once the stamp's pixels are blacked out instead (same shape and opacity, no colour): what hiding
    that part of the digit does on its own, so that a large stamp's reliance is not mistaken for its
    colour's. The headline figures are means over the shortcuts.
    """
    predicted = predicted_classes(model, test["images"], cfg)
    confusion = confusion_matrix(test["labels"], predicted, meta["n_classes"])
    metrics = {"test_accuracy": accuracy(predicted, test["labels"])}
    details = {"per_class_accuracy": per_class_accuracy(confusion)}
    if "shortcut_images" in test:
        clean = predicted_classes(model, test["clean_images"], cfg)
        metrics["clean_accuracy"] = accuracy(clean, test["labels"])
        reliance, base_rate, occlusion = {}, {}, {}
        for k, label in enumerate(test["shortcut_labels"].tolist()):
            key = f"{label}_{meta['shortcuts'][k]['kind']}"
            stamped = predicted_classes(model, test["shortcut_images"][k], cfg)
            reliance[key] = share_of_others_assigned(stamped, test["labels"], label)
            base_rate[key] = share_of_others_assigned(clean, test["labels"], label)
            if "shortcut_alpha" in test:
                occluded = predicted_classes(model, blacked_out(test["clean_images"], test["shortcut_alpha"][k]), cfg)
                occlusion[key] = share_of_others_assigned(occluded, test["labels"], label)
        metrics["shortcut_reliance"] = float(np.mean(list(reliance.values())))
        metrics["shortcut_base_rate"] = float(np.mean(list(base_rate.values())))
        details["shortcut_reliance_per_class"] = reliance
        details["shortcut_base_rate_per_class"] = base_rate
        if occlusion:
            metrics["shortcut_occlusion_rate"] = float(np.mean(list(occlusion.values())))
            details["shortcut_occlusion_rate_per_class"] = occlusion
    return Evaluation(metrics, details, confusion, predicted)

