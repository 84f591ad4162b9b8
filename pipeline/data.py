"""MNIST loading, colorisation, shortcut planting, and device-resident batching."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from pipeline import paths
from pipeline.config import IMAGE_SIZE, N_SOURCE_CLASSES, CleverHansParams, ColoredMnistParams, DataParams
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
    are downloaded when ``data.download`` allows. Failing both, the error names the folder. A raw
    file that is truncated or not what its name says is refused, naming the file, before reading.
    """
    cls = _source_class(data.source)
    raw_dir = Path(data.root) / cls.__name__ / "raw"
    check_raw_files(raw_dir, cls)
    try:
        dataset = cls(data.root, train=train, download=False)
    except RuntimeError:
        if not data.download:
            raise DatasetUnavailable(_missing_message(raw_dir, cls, "data.download is false")) from None
        try:
            dataset = cls(data.root, train=train, download=True)
        except Exception as err:  # URLError, HTTPError, socket errors, checksum errors ...
            reason = " ".join(f"download failed: {type(err).__name__}: {err}".split())
            raise DatasetUnavailable(_missing_message(raw_dir, cls, reason)) from None
        check_raw_files(raw_dir, cls)
    labels = dataset.targets.numpy().astype(np.int64)
    check_labels(labels, raw_dir / f"{'train' if train else 't10k'}-labels-idx1-ubyte")
    return dataset.data.numpy().astype(np.uint8), labels


def _missing_message(raw_dir: Path, cls, reason: str) -> str:
    names = [Path(url).name.removesuffix(".gz") for url, _ in cls.resources]
    missing = [name for name in names if not (raw_dir / name).is_file()]
    return (
        f"{cls.__name__} files missing in {raw_dir.resolve()}: {', '.join(missing)} ({reason}); put the four raw "
        f"files there ({', '.join(names)}; their .gz archives are unpacked when data.download is true), or point "
        f"data.root at a folder that has {cls.__name__}/raw, e.g. `dvc exp run -S data.root=/path/to/datasets`"
    )


# --------------------------------------------------------------------------------------------
# Raw idx files: refuse truncated or foreign files with a message that names them
# --------------------------------------------------------------------------------------------
IDX_UNSIGNED_BYTE = 0x08  # the idx type code of MNIST's images and labels
REFETCH = "re-copy it from a good source, or delete it and run again with data.download: true to download it again"


def read_idx_shape(path: Path) -> tuple[int, ...]:
    """Shape that the idx header of ``path`` announces; fail unless the file has exactly that many bytes.

    An idx file starts with two zero bytes, a type code, the number of dimensions and one big-endian
    uint32 per dimension; unsigned-byte data (one byte per item) follow.
    """
    actual = path.stat().st_size
    with path.open("rb") as fh:
        magic = fh.read(4)
        if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] != IDX_UNSIGNED_BYTE or not 1 <= magic[3] <= 3:
            raise InputError(f"{path} is not an idx file of unsigned bytes (it starts with {magic.hex() or 'nothing'}, "
                             f"expected 000008 and a dimension count); {REFETCH}")
        n_dims = magic[3]
        header = fh.read(4 * n_dims)
    if len(header) < 4 * n_dims:
        raise InputError(f"{path} is truncated: it has {actual} bytes, fewer than its {4 + 4 * n_dims}-byte idx header; {REFETCH}")
    shape = tuple(int.from_bytes(header[4 * i : 4 * i + 4], "big") for i in range(n_dims))
    expected = 4 + 4 * n_dims + int(np.prod(shape))
    if actual != expected:
        item = " x ".join(str(d) for d in shape[1:]) + " bytes" if len(shape) > 1 else "one byte"
        raise InputError(f"{path} is truncated or corrupt: its idx header announces {shape[0]} items of {item}, "
                         f"{expected} bytes in all, but the file has {actual} bytes; {REFETCH}")
    return shape


def check_raw_files(raw_dir: Path, cls) -> None:
    """Check every raw file present in ``raw_dir``: sizes against their idx headers, the image shape,
    image and label counts of each split against each other, and archives against their published checksum."""
    from torchvision.datasets.utils import check_integrity

    shapes = {}
    for url, md5 in cls.resources:
        archive = raw_dir / Path(url).name
        raw = archive.with_suffix("")
        if raw.is_file():
            shapes[raw.name] = read_idx_shape(raw)
        elif archive.is_file() and not check_integrity(str(archive), md5):
            raise InputError(f"{archive} is truncated or corrupt: its {archive.stat().st_size} bytes do not have the "
                             f"published MD5 checksum {md5}; {REFETCH}")
    for split in ("train", "t10k"):
        images, labels = shapes.get(f"{split}-images-idx3-ubyte"), shapes.get(f"{split}-labels-idx1-ubyte")
        if images is not None and (len(images) != 3 or images[1:] != (IMAGE_SIZE, IMAGE_SIZE)):
            raise InputError(f"{raw_dir / f'{split}-images-idx3-ubyte'} holds items of shape "
                             f"{' x '.join(map(str, images))}, not N x {IMAGE_SIZE} x {IMAGE_SIZE} images; {REFETCH}")
        if labels is not None and len(labels) != 1:
            raise InputError(f"{raw_dir / f'{split}-labels-idx1-ubyte'} holds items of shape "
                             f"{' x '.join(map(str, labels))}, not a list of labels; {REFETCH}")
        if images is not None and labels is not None and images[0] != labels[0]:
            raise InputError(f"{raw_dir / f'{split}-images-idx3-ubyte'} holds {images[0]} images but "
                             f"{split}-labels-idx1-ubyte holds {labels[0]} labels; re-copy both from the same source, "
                             f"or delete both and run again with data.download: true")


def check_labels(labels: np.ndarray, path: Path) -> None:
    """Every label must name one of the source's classes."""
    outside = labels[(labels < 0) | (labels >= N_SOURCE_CLASSES)]
    if len(outside):
        raise InputError(f"{path} holds {len(outside)} labels outside 0..{N_SOURCE_CLASSES - 1} "
                         f"(e.g. {int(outside[0])}); {REFETCH}")


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
def colormap_colors(colormaps: list[str], classes: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """N x 3 float32 RGB: the color of colormap ``colormaps[classes[i]]`` at position ``positions[i]``."""
    import matplotlib

    colors = np.empty((len(classes), 3), dtype=np.float32)
    for k, name in enumerate(colormaps):
        chosen = classes == k
        colors[chosen] = matplotlib.colormaps[name](positions[chosen])[:, :3]
    return colors


def paint(gray: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """N x H x W uint8 intensities times one N x 3 color each -> N x 3 x H x W uint8 images."""
    intensity = gray.astype(np.float32)[:, None]  # N x 1 x H x W, 0..255
    return np.clip(np.rint(intensity * colors[:, :, None, None]), 0, 255).astype(np.uint8)


def colorize(gray: np.ndarray, digits: np.ndarray, cfg: ColoredMnistParams, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Color each digit by ``cmap(s)`` of a random colormap (its class) at a random ``s`` in [0, 1).

    The gray intensities are kept (``gray``), so the exact counterfactual of an image is known: the same
    digit painted with another class's colormap at the same position (:func:`exact_counterfactuals`)."""
    n = len(gray)
    labels = rng.integers(0, len(cfg.colormaps), size=n)
    positions = rng.random(n).astype(np.float32)
    colors = colormap_colors(cfg.colormaps, labels, positions)
    return {"images": paint(gray, colors), "labels": labels.astype(np.int64), "digits": digits, "positions": positions,
            "colors": colors, "gray": gray}


def exact_counterfactuals(gray: np.ndarray, positions: np.ndarray, targets: np.ndarray, colormaps: list[str]) -> np.ndarray:
    """The exact counterfactual of colored MNIST images into ``targets``: each digit's own intensities,
    painted with the target class's colormap at the image's own colormap position (uint8 NCHW)."""
    return paint(gray, colormap_colors(colormaps, targets, positions))


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
