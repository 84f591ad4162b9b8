"""The ``data`` and ``datasets`` sections of ``params.yaml``: where the source images are, and what each dataset is.

A dataset entry is one of three kinds, each reading its own keys (the others are left out): colored MNIST, Clever
Hans (a source's classes with planted shortcuts, which must fit inside its images; none is the negative control),
or your own image folder. Any kind may name its own trained classifier. Read by :mod:`pipeline.config`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Literal, Optional

from annotated_types import Ge, MultipleOf, Predicate

from pipeline.data.shortcuts import GLYPH_WIDTH, Shortcut, shortcut_pattern
from pipeline.data.sources import N_SOURCE_CLASSES, SOURCES, SOURCE_IMAGE_SIZE as IMAGE_SIZE
from pipeline.schema import Count, Folder, Positive, fail

SPLIT_SIZES = {"mnist": {"train": 60_000, "test": 10_000}, "fashion-mnist": {"train": 60_000, "test": 10_000}}


def is_torchvision_name(name: str) -> bool:
    from torchvision.models import list_models

    return name in list_models()


@dataclass(frozen=True)
class DataParams:
    """Where the source images live, and how many of each split every dataset takes (null: the whole split)."""

    root: Annotated[Folder, "the torchvision root holding MNIST/raw"]
    download: bool
    train_size: Optional[Count]
    test_size: Optional[Count]

    def check_against(self, source: str, where: str) -> None:
        """The sizes must fit in the splits of ``source`` (checked once per dataset that uses it)."""
        for name, split in (("train_size", "train"), ("test_size", "test")):
            value, limit = getattr(self, name), SPLIT_SIZES[source][split]
            if value is not None and value > limit:
                fail(f"{where}.{name}", value,
                     f"an integer in 1..{limit} (the {source} {split} split has {limit} images), or null for the whole split")

    def n_images(self, split: str, source: str) -> int:
        """How many images of ``split`` ("train" or "test") of ``source`` the prepared data will hold, at most."""
        size = self.train_size if split == "train" else self.test_size
        return SPLIT_SIZES[source][split] if size is None else size


def check_colormaps(colormaps: list[str], where: str) -> None:
    import matplotlib

    for i, name in enumerate(colormaps):
        if name not in matplotlib.colormaps:
            fail(f"{where}[{i}]", name, "a matplotlib colormap name, e.g. spring, summer, autumn, winter, viridis")
    if len(colormaps) < 2:
        fail(where, colormaps, "at least two colormaps (one class each)")
    if len(set(colormaps)) != len(colormaps):
        fail(where, colormaps, "distinct colormap names")


@dataclass(frozen=True)
class ShortcutParams(Shortcut):
    """A :class:`~pipeline.data.shortcuts.Shortcut` of a clever_hans dataset; the dataset checks that it fits."""

    def check_against(self, size: int, n_classes: int | None, where: str) -> None:
        """Within images of ``size`` x ``size`` and, where the classes are known, ``n_classes`` classes. The stamp must
        lie wholly inside the image: a clipped stamp is not the shortcut these params describe."""
        if n_classes is not None and not self.label < n_classes:
            fail(f"{where}.label", self.label, f"a class index in 0..{n_classes - 1}")
        (height, width), unit = shortcut_pattern(self).shape, shortcut_pattern(replace(self, side=1)).shape
        if height > size or width > size:
            if self.kind == "text" and unit[1] > size:
                fail(f"{where}.text", self.text, f"at most {(size + 1) // (GLYPH_WIDTH + 1)} characters, "
                     f"so that the text fits inside the {size}x{size} image")
            largest = size // max(unit) if self.kind == "text" else size
            fail(f"{where}.side", self.side, f"an integer in 1..{largest}, so that the {self.kind} fits inside the "
                 f"{size}x{size} image (this side makes it {height}x{width})")
        row, col = self.position
        if row + height > size or col + width > size:
            fail(f"{where}.position", self.position, f"[row, col] with row in 0..{size - height} and col in "
                 f"0..{size - width}, so that the {height}x{width} {self.kind} fits inside the {size}x{size} image")


def check_shortcuts(shortcuts: list[ShortcutParams], where: str) -> None:
    """One shortcut per class; none at all is the negative control (the same images, nothing planted)."""
    first_with_label: dict[int, int] = {}
    for i, shortcut in enumerate(shortcuts):
        if shortcut.label in first_with_label:
            fail(f"{where}[{i}].label", shortcut.label,
                 f"a class without a shortcut yet (shortcuts[{first_with_label[shortcut.label]}] already plants one "
                 f"in class {shortcut.label}): one shortcut per class")
        first_with_label[shortcut.label] = i


@dataclass(frozen=True)
class OwnClassifierParams:
    """A dataset's own classifier, used instead of one the pipeline designs: a torchvision architecture (with your
    ``weights``, a state-dict file, it is evaluated; without, the pipeline trains one with the ``classifier``
    section's settings) or a ``torchscript`` file (evaluated). ``mean`` / ``std`` / ``input_size`` are its input
    transform; ``gradcam_layer`` and ``features_layer`` name modules (as ``model.get_submodule`` does) for
    Grad-CAM and for the penultimate features; left out, the methods that need them are skipped, with the reason.
    Keys left out are null.
    """

    LEFT_OUT_IS_NULL = True
    torchvision: Optional[Annotated[str, Predicate(is_torchvision_name), "a torchvision.models architecture name, "
                                    "e.g. resnet18, mobilenet_v3_small, efficientnet_b0, vgg11"]] = None
    weights: Optional[str] = None
    torchscript: Optional[str] = None
    mean: Optional[list[float]] = None
    std: Optional[list[Positive]] = None
    input_size: Optional[Annotated[Count, "the side the network takes"]] = None
    gradcam_layer: Optional[str] = None
    features_layer: Optional[str] = None

    def check(self, where: str) -> None:
        if (self.torchvision is None) == (self.torchscript is None):
            fail(where, {"torchvision": self.torchvision, "torchscript": self.torchscript},
                 "exactly one of torchvision (an architecture name, e.g. resnet18) and torchscript (a file)")
        if self.torchscript is not None and self.weights is not None:
            fail(f"{where}.weights", self.weights, "null or left out: a TorchScript file holds its own weights")
        if (self.mean is None) != (self.std is None):
            fail(f"{where}.{'std' if self.std is None else 'mean'}", None,
                 "a list as long as the other: mean and std are given together (or both left out)")
        if self.mean is not None and (len(self.mean) != len(self.std) or not self.mean):
            fail(f"{where}.std", self.std, f"one number per channel, as many as mean has ({len(self.mean)})")

    @property
    def trained_here(self) -> bool:
        """True when the pipeline trains this architecture (no weights given)."""
        return self.torchvision is not None and self.weights is None


@dataclass(frozen=True)
class DatasetParams:
    """One dataset of the pipeline, one entry of the DVC matrix. ``kind`` says what it is built from and
    what its known answer is; the name it is listed under names its folders (data/, metrics/, plots/).

    - ``colored_mnist``: the gray images of ``source`` (mnist, fashion-mnist) colored by one colormap per
      class (``colormaps``);
    - ``clever_hans``: the classes of ``source``, with ``shortcuts`` planted on chosen classes; an empty list is
      the negative control (the same images, nothing planted). ``source: image_folder`` reads your own images:
      ``root`` holds ``train/<class>/*`` and ``test/<class>/*`` (any format PIL opens), resized to
      ``image_size`` x ``image_size`` RGB; the classes are the folder names.
    - ``image_folder``: your own images as they are (``root``, ``image_size``, ``channels``: 3 for RGB, 1 for
      gray), with no known answer: the stages explain what the classifier does and skip the scores that need
      an answer.

    Any kind may name its own trained ``classifier`` (:class:`OwnClassifierParams`). The keys a kind does not
    read are left out (:meth:`unread`).
    """

    LEFT_OUT_IS_NULL = True
    kind: Literal["colored_mnist", "clever_hans", "image_folder"]
    source: Optional[Literal[(*SOURCES, "image_folder")]] = None  # left out: image_folder for that kind, else mnist
    root: Optional[Annotated[Folder, "the folder that holds train/<class>/ and test/<class>/"]] = None
    image_size: Optional[Annotated[int, Ge(28), MultipleOf(4), "the GAN halves it twice"]] = None
    channels: Optional[Annotated[Literal[1, 3], "1: gray, 3: RGB; null: 3"]] = None
    colormaps: Optional[list[str]] = None
    shortcuts: Optional[list[ShortcutParams]] = None
    classifier: Optional[OwnClassifierParams] = None

    KEYS = {"colored_mnist": ("colormaps",), "clever_hans": ("shortcuts",), "image_folder": ("channels",)}
    SOURCE_KEYS = {"image_folder": ("root", "image_size")}  # the settings each kind and each source reads
    OPTIONAL = {"channels"}                                 # read, but null means the default

    def __post_init__(self):
        if self.source is None:
            object.__setattr__(self, "source", "image_folder" if self.kind == "image_folder" else "mnist")

    @classmethod
    def unread(cls, values: dict) -> set[str]:
        """The keys an entry of ``values["kind"]`` and ``values["source"]`` does not read (left out of params.yaml)."""
        source = values.get("source") or ("image_folder" if values.get("kind") == "image_folder" else "mnist")
        unread = ({key for kind, keys in cls.KEYS.items() if kind != values.get("kind") for key in keys}
                  | {key for other, keys in cls.SOURCE_KEYS.items() if other != source for key in keys})
        return unread | ({"classifier"} if values.get("classifier") is None else set())

    def check(self, where: str) -> None:
        if self.kind == "image_folder" and self.source != "image_folder":
            fail(f"{where}.source", self.source, "image_folder or left out: an image_folder dataset reads a folder "
                 "(for a known answer on MNIST, use kind clever_hans or colored_mnist)")
        unread = self.unread(vars(self))
        for owner, keys in (*self.KEYS.items(), *self.SOURCE_KEYS.items()):
            for key in keys:
                value = getattr(self, key)
                if key not in unread and value is None and key not in self.OPTIONAL:
                    fail(f"{where}.{key}", value, f"a value: a {owner} dataset needs its {key}")
                if key in unread and value is not None:
                    fail(f"{where}.{key}", value, f"null or left out: only a {owner} dataset has {key}")
        if self.source == "image_folder" and self.kind == "colored_mnist":
            fail(f"{where}.source", self.source, "mnist or fashion-mnist: colored_mnist colors gray images")
        if self.kind == "colored_mnist":
            check_colormaps(self.colormaps, f"{where}.colormaps")
        elif self.kind == "clever_hans":
            check_shortcuts(self.shortcuts, f"{where}.shortcuts")
            for i, shortcut in enumerate(self.shortcuts):
                shortcut.check_against(self.image_shape[0], self.n_classes, f"{where}.shortcuts[{i}]")

    @property
    def image_shape(self) -> tuple[int, int]:
        """(height, width) of the dataset's images."""
        return (self.image_size, self.image_size) if self.source == "image_folder" else (IMAGE_SIZE, IMAGE_SIZE)

    @property
    def n_channels(self) -> int:
        """Channels of the prepared images: 3 (RGB) except for a gray image_folder dataset."""
        return self.channels or 3

    @property
    def n_classes(self) -> int | None:
        """Number of classes the dataset's classifier separates; None for an image folder (its folders say)."""
        if self.kind == "colored_mnist":
            return len(self.colormaps)
        return None if self.source == "image_folder" else N_SOURCE_CLASSES

    @property
    def trains_classifier(self) -> bool:
        """True when train_classifier trains this dataset's classifier (ours, or a torchvision architecture
        named without weights); False when it evaluates one trained elsewhere."""
        return self.classifier is None or self.classifier.trained_here
