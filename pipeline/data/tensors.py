"""Image tensors (uint8 on disk, float in [0, 1] in memory), seeded subsets and batch index slices."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch



def subsample(n_total: int, size: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``size`` items (all of them when None)."""
    if size is None or size >= n_total:
        return np.arange(n_total)
    return np.sort(rng.choice(n_total, size=size, replace=False))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float32 NCHW in [0, 1], on the same device. Float input is refused: scaling it
    again would silently darken it to near black."""
    if images.dtype != torch.uint8:
        raise TypeError(f"to_float takes uint8 images in [0, 255]; got {images.dtype} (already in [0, 1]?)")
    return images.float().div_(255.0)


def as_float(images: torch.Tensor) -> torch.Tensor:
    """Float32 images in [0, 1] from uint8 (scaled) or float (kept as they are) NCHW."""
    return to_float(images) if images.dtype == torch.uint8 else images.float()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.clamp(0, 1).mul(255.0).round_().to(torch.uint8)


def batch_slices(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index tensors of a seeded permutation, on the generator's device."""
    order = torch.randperm(n, generator=generator, device=generator.device)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
