"""MNIST loading, colorisation, shortcut planting, and device-resident batching."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from pipeline import paths
from pipeline.config import CleverHansParams, ColoredMnistParams, DataParams
from pipeline.shortcuts import shortcut_alpha, stamp
from pipeline.storage import InputError, load_arrays, read_json


class DatasetUnavailable(InputError):
    """The source images are not on disk and could not be downloaded."""


def _source_class(source: str):
    from torchvision import datasets

    return {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[source]


def load_source(data: DataParams, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Grayscale images (N x 28 x 28 uint8) and labels of one split, read through torchvision.

    Files already under ``<root>/<MNIST|FashionMNIST>/raw`` are used as they are; otherwise they
    are downloaded when ``data.download`` allows. Failing both, the error names the folder.
    """
    cls = _source_class(data.source)
    raw_dir = Path(data.root) / cls.__name__ / "raw"
    try:
        dataset = cls(data.root, train=train, download=False)
    except RuntimeError:
        if not data.download:
            raise DatasetUnavailable(_missing_message(raw_dir, cls, "data.download is false")) from None
        try:
            dataset = cls(data.root, train=train, download=True)
        except Exception as err:  # URLError, HTTPError, socket errors, checksum errors ...
            raise DatasetUnavailable(_missing_message(raw_dir, cls, f"download failed: {type(err).__name__}: {err}")) from None
    return dataset.data.numpy().astype(np.uint8), dataset.targets.numpy().astype(np.int64)


def _missing_message(raw_dir: Path, cls, reason: str) -> str:
    files = ", ".join(Path(url).name.removesuffix(".gz") for url, _ in cls.resources)
    return (
        f"no {cls.__name__} files in {raw_dir.resolve()} ({reason}). Put the four raw files there "
        f"({files}; .gz archives work too), or point data.root at a folder that has {cls.__name__}/raw, "
        f"e.g. `dvc exp run -S data.root=/path/to/datasets`."
    )


def subsample(n_total: int, size: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``size`` items (all of them when None)."""
    if size is None or size >= n_total:
        return np.arange(n_total)
    return np.sort(rng.choice(n_total, size=size, replace=False))


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """N x H x W uint8 -> N x 3 x H x W uint8 (equal channels)."""
    return np.repeat(gray[:, None], 3, axis=1)


# --------------------------------------------------------------------------------------------
# colored MNIST: the class is the colormap
# --------------------------------------------------------------------------------------------
def colorize(gray: np.ndarray, digits: np.ndarray, cfg: ColoredMnistParams, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Color each digit by ``cmap(s)`` of a random colormap (its class) at a random ``s`` in [0, 1)."""
    import matplotlib

    n = len(gray)
    labels = rng.integers(0, len(cfg.colormaps), size=n)
    positions = rng.random(n).astype(np.float32)
    colors = np.empty((n, 3), dtype=np.float32)
    for k, name in enumerate(cfg.colormaps):
        chosen = labels == k
        colors[chosen] = matplotlib.colormaps[name](positions[chosen])[:, :3]
    intensity = gray.astype(np.float32)[:, None]  # N x 1 x H x W, 0..255
    images = np.clip(np.rint(intensity * colors[:, :, None, None]), 0, 255).astype(np.uint8)
    return {"images": images, "labels": labels.astype(np.int64), "digits": digits, "positions": positions, "colors": colors}


# --------------------------------------------------------------------------------------------
# Clever Hans MNIST: chosen classes carry a planted shortcut
# --------------------------------------------------------------------------------------------
def plant_shortcuts(
    gray: np.ndarray, labels: np.ndarray, cfg: CleverHansParams, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Stamp ``fraction`` of each shortcut class's images; keep which were stamped and the pixel mask."""
    images = gray_to_rgb(gray)
    n = len(images)
    stamped = np.zeros((n, len(cfg.shortcuts)), dtype=bool)
    masks = np.zeros((n,) + gray.shape[1:], dtype=bool)
    for k, shortcut in enumerate(cfg.shortcuts):
        members = np.flatnonzero(labels == shortcut.label)
        count = int(round(shortcut.fraction * len(members)))
        chosen = np.sort(rng.choice(members, size=count, replace=False)) if count else members[:0]
        alpha = shortcut_alpha(shortcut)
        images[chosen] = stamp(images[chosen], alpha, shortcut.color)
        stamped[chosen, k] = True
        masks[chosen] |= alpha > 0
    return {"images": images, "labels": labels, "digits": labels.copy(), "stamped": stamped, "masks": masks}


def shortcut_test_sets(gray: np.ndarray, cfg: CleverHansParams) -> dict[str, np.ndarray]:
    """Every test image stamped with each planted shortcut, for measuring reliance."""
    clean = gray_to_rgb(gray)
    alphas = np.stack([shortcut_alpha(s) for s in cfg.shortcuts])
    stamped = np.stack([stamp(clean, alpha, s.color) for alpha, s in zip(alphas, cfg.shortcuts)])
    return {
        "clean_images": clean,
        "shortcut_images": stamped,
        "shortcut_alpha": alphas,
        "shortcut_labels": np.array([s.label for s in cfg.shortcuts], dtype=np.int64),
    }


# --------------------------------------------------------------------------------------------
# Prepared data on the device
# --------------------------------------------------------------------------------------------
def load_prepared(dataset: str, split: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """All arrays of a prepared split as tensors on ``device`` (images stay uint8)."""
    arrays = load_arrays(paths.prepared_dir(dataset) / f"{split}.npz", made_by=f"prepare@{dataset}")
    return {key: torch.from_numpy(value).to(device) for key, value in arrays.items()}


def load_meta(dataset: str) -> dict:
    return read_json(paths.prepared_dir(dataset) / "meta.json", made_by=f"prepare@{dataset}")


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float32 NCHW in [0, 1], on the same device."""
    return images.float().div_(255.0)


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
