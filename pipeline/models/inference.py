"""Batched forward passes of a trained model over device-resident uint8 images."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from pipeline.data.tensors import as_float, batch_slices


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA when enabled; a no-op elsewhere. No cast cache, so it is safe in CUDA graphs."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def map_batches(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, device: torch.device,
                batch_size: int = 4096, mixed_precision: bool = False) -> torch.Tensor:
    """Apply ``fn`` to float [0, 1] batches of ``images`` (uint8 or float NCHW); float32 results, concatenated.
    No images: ``fn`` of the empty batch, so the result keeps its shape (0 x C, not 0)."""
    if len(images) == 0:
        with autocast(device, mixed_precision):
            return fn(as_float(images.to(device))).float()
    out = []
    for part in batch_slices(len(images), batch_size):
        batch = images[part].to(device, non_blocking=True)
        batch = as_float(batch)
        with autocast(device, mixed_precision):
            out.append(fn(batch).float())
    return torch.cat(out)


def predict_probabilities(model: nn.Module, images: torch.Tensor, batch_size: int = 4096, mixed_precision: bool = False) -> torch.Tensor:
    """Softmax probabilities (N x C float32) on the model's device."""
    return map_batches(lambda x: model(x).float().softmax(dim=1), images, model_device(model), batch_size, mixed_precision)


def embed_images(model: nn.Module, images: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Penultimate-layer features (N x D float32) of a classifier with an ``embed`` method."""
    return map_batches(model.embed, images, model_device(model), batch_size)


def moved_by_stamp(model: nn.Module, test: dict, answer, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(which shortcut, which test image) for every test image of another class that the shortcut's stamp alone
    moves into its class, and how many (shortcut, image of another class) candidates there were.

    ``answer``: the planted shortcuts (:class:`~pipeline.data.known_answer.PlantedShortcuts`), each stamped on the
    clean test images (``test["clean_images"]``) as prepare plants it."""
    labels, shortcut, index, n_candidates = test["labels"], [], [], 0
    for k, label in enumerate(answer.labels):
        others = torch.nonzero(labels != label).flatten()
        n_candidates += len(others)
        stamped = answer.stamp_tensor(test["clean_images"][others], k)
        moved = others[predict_probabilities(model, stamped, batch_size).argmax(1).to(others.device) == label]
        shortcut.append(torch.full_like(moved, k))
        index.append(moved)
    if not index:
        empty = torch.zeros(0, dtype=torch.long, device=labels.device)
        return empty, empty, 0
    return torch.cat(shortcut), torch.cat(index), n_candidates
