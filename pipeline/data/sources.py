"""Source images: MNIST and Fashion-MNIST through torchvision, with checks of the raw files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.storage import InputError

SOURCES = ("mnist", "fashion-mnist")
SOURCE_IMAGE_SIZE = 28  # MNIST and Fashion-MNIST images are 28 x 28, as published
N_SOURCE_CLASSES = 10  # ... in ten classes


class DatasetUnavailable(InputError):
    """The source images are not on disk and could not be downloaded."""


def _source_class(source: str):
    from torchvision import datasets

    return {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[source]


def load_source(source: str, root: str | Path, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """Grayscale images (N x 28 x 28 uint8) and labels of one split, read through torchvision.

    Files already under ``<root>/<MNIST|FashionMNIST>/raw`` are used as they are; otherwise they
    are downloaded when ``download`` allows. Failing both, the error names the folder. A raw
    file that is truncated or not what its name says is refused, naming the file, before reading.
    ``source``: one of :data:`SOURCES`; ``root``: the torchvision root.
    """
    cls = _source_class(source)
    raw_dir = Path(root) / cls.__name__ / "raw"
    check_raw_files(raw_dir, cls)
    try:
        dataset = cls(root, train=train, download=False)
    except RuntimeError:
        if not download:
            raise DatasetUnavailable(_missing_message(raw_dir, cls, "data.download is false")) from None
        try:
            dataset = cls(root, train=train, download=True)
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
        if images is not None and (len(images) != 3 or images[1:] != (SOURCE_IMAGE_SIZE, SOURCE_IMAGE_SIZE)):
            raise InputError(f"{raw_dir / f'{split}-images-idx3-ubyte'} holds items of shape "
                             f"{' x '.join(map(str, images))}, not N x {SOURCE_IMAGE_SIZE} x {SOURCE_IMAGE_SIZE} images; {REFETCH}")
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


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """N x H x W uint8 -> N x 3 x H x W uint8 (equal channels)."""
    return np.repeat(gray[:, None], 3, axis=1)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def load_image_folder(root: str | Path, train: bool, size: int, channels: int = 3) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (N x channels x size x size uint8), labels and class names of ``<root>/train`` or ``<root>/test``.

    Each class is a subfolder (its name is the class name, sorted as torchvision's ``ImageFolder`` sorts them);
    every image is converted to RGB (``channels`` 3) or gray (1) and resized to ``size`` x ``size`` (bilinear). The test split must have
    the same classes as the training split: the error names what differs.
    """
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets import ImageFolder

    split = Path(root) / ("train" if train else "test")
    if not split.is_dir():
        raise InputError(f"{split} is not a folder: an image_folder dataset needs {Path(root) / 'train'} and "
                         f"{Path(root) / 'test'}, each with one subfolder of images per class")
    try:
        folder = ImageFolder(str(split), loader=lambda path: path, is_valid_file=lambda p: p.lower().endswith(IMAGE_SUFFIXES))
    except (FileNotFoundError, RuntimeError) as err:
        raise InputError(f"{split} holds no class folder with images ({' '.join(str(err).split())}); "
                         f"put the images of each class in {split}/<class>/") from None
    if not train:
        trained = sorted(entry.name for entry in (Path(root) / "train").iterdir() if entry.is_dir())
        if trained != folder.classes:
            raise InputError(f"{split} has the classes {folder.classes} but {Path(root) / 'train'} has {trained}; "
                             "both splits need the same class folders")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (gray) or 3 (RGB), not {channels!r}")
    images = np.empty((len(folder.samples), channels, size, size), dtype=np.uint8)
    for i, (path, _) in enumerate(folder.samples):
        try:
            with Image.open(path) as image:
                resized = image.convert("RGB" if channels == 3 else "L").resize((size, size), Image.BILINEAR)
        except (UnidentifiedImageError, OSError) as err:
            raise InputError(f"{path} cannot be read as an image ({err}); remove or replace it") from None
        pixels = np.asarray(resized)
        images[i] = pixels.transpose(2, 0, 1) if channels == 3 else pixels[None]
    return images, np.array(folder.targets, dtype=np.int64), list(folder.classes)
