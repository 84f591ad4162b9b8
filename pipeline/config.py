"""Load and validate ``params.yaml`` into typed, frozen objects.

This is the one place that knows the schema. Every stage calls :func:`load_params` before doing
any work, so a typo or an out-of-range value fails at once with a message that names the key,
the value and what is allowed.

Sections are dataclasses; a field's type annotation is its schema (``int``, ``float``, ``bool``,
``str``, ``Literal[...]``, ``Optional[...]``, ``list[...]``, nested dataclasses). Semantic rules
that a type cannot express live in each section's ``check`` method.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from pipeline.attribution.names import ATTRIBUTION_METHODS
from pipeline.counterfactuals.gan_training import GanTrainingOptions
from pipeline.data.shortcuts import GLYPH_WIDTH, GLYPHS, Shortcut, shortcut_pattern
from pipeline.data.sources import N_SOURCE_CLASSES, SOURCE_IMAGE_SIZE as IMAGE_SIZE  # also the smallest image a dataset may have
from pipeline.evaluation.feature_viz import MaximiseOptions

SPLIT_SIZES = {  # images per split of each source, as published
    "mnist": {"train": 60_000, "test": 10_000},
    "fashion-mnist": {"train": 60_000, "test": 10_000},
}


class ConfigError(ValueError):
    """A parameter is missing, unknown, of the wrong type or out of range."""


def fail(where: str, value: Any, allowed: str) -> typing.NoReturn:
    raise ConfigError(f"params: {where} = {value!r} is not valid; allowed: {allowed}")


def at_least_one(value) -> bool:
    return value >= 1


def positive(value) -> bool:
    return value > 0


def non_negative(value) -> bool:
    return value >= 0


def in_unit_interval(value) -> bool:
    return 0.0 <= value < 1.0


def check_each(section: Any, where: str, is_valid, allowed: str, *names: str) -> None:
    """Fail on the first of ``names`` whose value in ``section`` is not ``is_valid``; ``allowed`` says what is."""
    for name in names:
        value = getattr(section, name)
        if not is_valid(value):
            fail(f"{where}.{name}", value, allowed)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataParams:
    """Where the source images live and how many of each split every dataset takes."""

    root: str = "data/raw"
    download: bool = True
    train_size: Optional[int] = None
    test_size: Optional[int] = None

    def check(self, where: str) -> None:
        if not self.root.strip():
            fail(f"{where}.root", self.root, "a folder path (the torchvision root holding MNIST/raw)")

    def check_against(self, source: str, where: str) -> None:
        """The sizes must fit in the splits of ``source`` (checked once per dataset that uses it)."""
        for name, split in (("train_size", "train"), ("test_size", "test")):
            value = getattr(self, name)
            limit = SPLIT_SIZES[source][split]
            if value is not None and not 1 <= value <= limit:
                fail(f"{where}.{name}", value,
                     f"an integer in 1..{limit} (the {source} {split} split has {limit} images), or null for the whole split")

    def n_images(self, split: str, source: str) -> int:
        """How many images of ``split`` ("train" or "test") of ``source`` the prepared data will hold, at most."""
        size = self.train_size if split == "train" else self.test_size
        return SPLIT_SIZES[source][split] if size is None else size


DEFAULT_COLORMAPS = ["spring", "summer", "autumn", "winter"]


def check_colormaps(colormaps: list[str], where: str) -> None:
    import matplotlib

    known = set(matplotlib.colormaps)
    for i, name in enumerate(colormaps):
        if name not in known:
            fail(f"{where}[{i}]", name, "a matplotlib colormap name, e.g. spring, summer, autumn, winter, viridis")
    if len(colormaps) < 2:
        fail(where, colormaps, "at least two colormaps (one class each)")
    if len(set(colormaps)) != len(colormaps):
        fail(where, colormaps, "distinct colormap names")


@dataclass(frozen=True)
class ShortcutParams(Shortcut):
    """A :class:`~pipeline.data.shortcuts.Shortcut` of a clever_hans dataset. What does not depend on the
    images is checked here; the dataset checks that it fits inside its images (:meth:`check_against`)."""

    def check(self, where: str) -> None:
        if self.label < 0:
            fail(f"{where}.label", self.label, "a class index >= 0")
        if not 0.0 <= self.fraction <= 1.0:
            fail(f"{where}.fraction", self.fraction, "a number in [0, 1]")
        if not 0.0 < self.strength <= 1.0:
            fail(f"{where}.strength", self.strength, "a number in (0, 1]")
        check_each(self, where, at_least_one, "a positive integer", "size")
        if len(self.color) != 3 or not all(0.0 <= c <= 1.0 for c in self.color):
            fail(f"{where}.color", self.color, "[r, g, b] with each in [0, 1]")
        if self.kind == "text":
            bad = sorted(set(self.text) - set(GLYPHS))
            if not self.text or bad:
                fail(f"{where}.text", self.text, f"a non-empty string of the characters {''.join(sorted(GLYPHS))!r}")

    def check_against(self, size: int, n_classes: int | None, where: str) -> None:
        """Within images of ``size`` x ``size`` and, where the classes are known, ``n_classes`` classes."""
        if n_classes is not None and not self.label < n_classes:
            fail(f"{where}.label", self.label, f"a class index in 0..{n_classes - 1}")
        if len(self.position) != 2 or not all(0 <= p < size for p in self.position):
            fail(f"{where}.position", self.position, f"[row, col] with both in 0..{size - 1}")
        self.check_fits_inside_image(size, where)

    def check_fits_inside_image(self, size: int, where: str) -> None:
        """The stamp must lie wholly inside the image: a clipped stamp is not the shortcut these params describe."""
        height, width = shortcut_pattern(self).shape
        if height > size or width > size:
            if self.kind == "text" and shortcut_pattern(dataclasses.replace(self, size=1)).shape[1] > size:
                fail(f"{where}.text", self.text, f"at most {(size + 1) // (GLYPH_WIDTH + 1)} characters, "
                     f"so that the text fits inside the {size}x{size} image")
            unit_height, unit_width = shortcut_pattern(dataclasses.replace(self, size=1)).shape
            largest = size // max(unit_height, unit_width) if self.kind == "text" else size
            fail(f"{where}.size", self.size, f"an integer in 1..{largest}, so that the {self.kind} fits inside the "
                 f"{size}x{size} image (this size makes it {height}x{width})")
        row, col = self.position
        if row + height > size or col + width > size:
            fail(f"{where}.position", self.position, f"[row, col] with row in 0..{size - height} and col in "
                 f"0..{size - width}, so that the {height}x{width} {self.kind} fits inside the {size}x{size} image")


def check_shortcuts(shortcuts: list[ShortcutParams], where: str) -> None:
    if not shortcuts:
        fail(where, shortcuts, "at least one {label, kind} entry")
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
    """

    torchvision: Optional[str] = None
    weights: Optional[str] = None
    torchscript: Optional[str] = None
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    input_size: Optional[int] = None
    gradcam_layer: Optional[str] = None
    features_layer: Optional[str] = None

    def check(self, where: str) -> None:
        if (self.torchvision is None) == (self.torchscript is None):
            fail(where, {"torchvision": self.torchvision, "torchscript": self.torchscript},
                 "exactly one of torchvision (an architecture name, e.g. resnet18) and torchscript (a file)")
        if self.torchscript is not None and self.weights is not None:
            fail(f"{where}.weights", self.weights, "null or left out: a TorchScript file holds its own weights")
        if self.torchvision is not None:
            from torchvision.models import list_models

            known = list_models()
            if self.torchvision not in known:
                fail(f"{where}.torchvision", self.torchvision, "a torchvision.models architecture name, e.g. "
                     + ", ".join(name for name in ("resnet18", "mobilenet_v3_small", "efficientnet_b0", "vgg11")))
        if (self.mean is None) != (self.std is None):
            fail(f"{where}.{'std' if self.std is None else 'mean'}", None,
                 "a list as long as the other: mean and std are given together (or both left out)")
        if self.mean is not None:
            if len(self.mean) != len(self.std) or not self.mean:
                fail(f"{where}.std", self.std, f"one number per channel, as many as mean has ({len(self.mean)})")
            if not all(s > 0 for s in self.std):
                fail(f"{where}.std", self.std, "positive numbers")
        if self.input_size is not None and self.input_size < 1:
            fail(f"{where}.input_size", self.input_size, "a positive integer (the side the network takes), or null")

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
    - ``clever_hans``: the classes of ``source``, with ``shortcuts`` planted on chosen classes. ``source:
      image_folder`` reads your own images: ``root`` holds ``train/<class>/*`` and ``test/<class>/*`` (any
      format PIL opens), resized to ``image_size`` x ``image_size`` RGB; the classes are the folder names.
    - ``image_folder``: your own images as they are (``root``, ``image_size``, ``channels``: 3 for RGB, 1 for
      gray), with no known answer: the stages explain what the classifier does and skip the scores that need
      an answer.

    Any kind may name its own trained ``classifier`` (:class:`OwnClassifierParams`).
    """

    kind: Literal["colored_mnist", "clever_hans", "image_folder"]
    source: Optional[Literal["mnist", "fashion-mnist", "image_folder"]] = None  # image_folder kind: image_folder; else mnist
    root: Optional[str] = None
    image_size: Optional[int] = None
    channels: Optional[int] = None
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
        if self.source == "image_folder":
            if self.kind == "colored_mnist":
                fail(f"{where}.source", self.source, "mnist or fashion-mnist: colored_mnist colors gray images")
            if not self.root.strip():
                fail(f"{where}.root", self.root, "the folder that holds train/<class>/ and test/<class>/")
            if self.image_size < 28 or self.image_size % 4:
                fail(f"{where}.image_size", self.image_size, "a multiple of 4, at least 28 (the GAN halves it twice)")
        if self.channels is not None and self.channels not in (1, 3):
            fail(f"{where}.channels", self.channels, "1 (gray) or 3 (RGB), or null for 3")
        if self.kind == "colored_mnist":
            check_colormaps(self.colormaps, f"{where}.colormaps")
        elif self.kind == "clever_hans":
            check_shortcuts(self.shortcuts, f"{where}.shortcuts")
            n_classes = None if self.source == "image_folder" else N_SOURCE_CLASSES
            for i, shortcut in enumerate(self.shortcuts):
                shortcut.check_against(self.image_shape[0], n_classes, f"{where}.shortcuts[{i}]")

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

    @property
    def known_answer(self) -> str | None:
        """What the classifier is known to rely on: "color", "shortcut", or None (your own images)."""
        return {"colored_mnist": "color", "clever_hans": "shortcut"}.get(self.kind)

    NO_ANSWER = "no known answer: an image_folder dataset has no planted shortcut or color rule to score against"


def default_datasets() -> dict[str, DatasetParams]:
    return {"colored_mnist": DatasetParams(kind="colored_mnist", colormaps=list(DEFAULT_COLORMAPS)),
            "clever_hans": DatasetParams(kind="clever_hans", shortcuts=[
                ShortcutParams(label=7, kind="square", fraction=0.95, size=10, color=[1.0, 0.0, 0.0])])}


DATASET_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class ClassifierParams:
    architecture: Literal["cnn", "dense", "resnet"] = "cnn"
    width: int = 32
    epochs: int = 4
    batch_size: int = 256
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    eval_batch_size: int = 4096
    mixed_precision: bool = True
    n_example_images: int = 32

    def check(self, where: str) -> None:
        check_each(self, where, at_least_one, "a positive integer",
                   "width", "epochs", "batch_size", "eval_batch_size", "n_example_images")
        check_each(self, where, positive, "a positive number", "learning_rate")
        check_each(self, where, non_negative, "a number >= 0", "weight_decay")


@dataclass(frozen=True)
class AttributionParams:
    """Stage ``attribute``: which captum methods run, on how many images, and how they are scored."""

    n_images: int = 512
    methods: list[str] = field(default_factory=lambda: list(ATTRIBUTION_METHODS))
    batch_size: int = 256
    internal_batch_size: int = 4096
    ig_steps: int = 32
    blur_kernel_size: int = 11
    blur_sigma: float = 3.0
    occlusion_window: int = 4
    occlusion_stride: int = 2
    smoothgrad_samples: int = 16
    smoothgrad_stdev: float = 0.15
    deletion_steps: int = 20
    n_faithfulness_images: int = 128
    infidelity_samples: int = 16
    infidelity_noise: float = 0.1
    n_sensitivity_images: int = 16
    sensitivity_samples: int = 8
    sensitivity_radius: float = 0.02
    n_localization_images: int = 256
    segmentation_thresholds: int = 21
    contrastive_method: str = "ig_zero"
    n_contrastive_images: int = 64
    n_gallery_images: int = 8

    def check(self, where: str) -> None:
        check_each(self, where, at_least_one, "a positive integer",
                   "n_images", "batch_size", "internal_batch_size", "ig_steps", "occlusion_window",
                   "occlusion_stride", "smoothgrad_samples", "deletion_steps", "n_faithfulness_images",
                   "infidelity_samples", "n_sensitivity_images", "sensitivity_samples", "n_localization_images",
                   "n_contrastive_images", "n_gallery_images")
        for i, name in enumerate(self.methods):
            if name not in ATTRIBUTION_METHODS:
                fail(f"{where}.methods[{i}]", name, ", ".join(ATTRIBUTION_METHODS))
        if not self.methods or len(set(self.methods)) != len(self.methods):
            fail(f"{where}.methods", self.methods, "a non-empty list of distinct method names")
        if self.contrastive_method not in ATTRIBUTION_METHODS:
            fail(f"{where}.contrastive_method", self.contrastive_method, ", ".join(ATTRIBUTION_METHODS))
        if self.blur_kernel_size < 3 or self.blur_kernel_size % 2 == 0:
            fail(f"{where}.blur_kernel_size", self.blur_kernel_size, "an odd integer >= 3")
        check_each(self, where, positive, "a positive number",
                   "blur_sigma", "smoothgrad_stdev", "infidelity_noise", "sensitivity_radius")
        if self.occlusion_window > IMAGE_SIZE or self.occlusion_stride > IMAGE_SIZE:
            fail(f"{where}.occlusion_window", [self.occlusion_window, self.occlusion_stride], f"window and stride <= {IMAGE_SIZE}")
        if self.segmentation_thresholds < 2:
            fail(f"{where}.segmentation_thresholds", self.segmentation_thresholds, "an integer >= 2")


@dataclass(frozen=True)
class GanParams(GanTrainingOptions):
    """StarGAN v2-style translator (stage ``train_gan``); the GAN never sees the classifier. The training
    settings are :class:`~pipeline.counterfactuals.gan_training.GanTrainingOptions`; ``n_grid_images`` sizes the figure."""

    n_grid_images: int = 8

    def check(self, where: str) -> None:
        check_each(self, where, at_least_one, "a positive integer",
                   "iterations", "batch_size", "style_dim", "latent_dim", "width", "checkpoint_every", "log_every",
                   "n_grid_images")
        if self.batch_size < 2:
            fail(f"{where}.batch_size", self.batch_size, "an integer >= 2 (half latent-, half reference-guided)")
        check_each(self, where, positive, "a positive number", "learning_rate", "mapping_learning_rate", "max_loss")
        check_each(self, where, non_negative, "a number >= 0",
                   "weight_decay", "adversarial_weight", "r1_weight", "style_weight", "cycle_weight")
        check_each(self, where, in_unit_interval, "a number in [0, 1)", "beta1", "beta2", "ema_beta")


@dataclass(frozen=True)
class CounterfactualParams:
    """Stage ``counterfactuals``: translate test images into every other class and judge them."""

    n_images: int = 1000
    reference: Literal["mean_style", "fixed_image"] = "mean_style"
    n_reference_images: int = 64
    batch_size: int = 1024
    interpolation_steps: int = 15
    n_gallery_images: int = 8
    n_interpolation_images: int = 4
    n_style_points: int = 2000

    def check(self, where: str) -> None:
        check_each(self, where, at_least_one, "a positive integer",
                   "n_images", "n_reference_images", "batch_size", "n_gallery_images", "n_interpolation_images",
                   "n_style_points")
        if self.interpolation_steps < 2:
            fail(f"{where}.interpolation_steps", self.interpolation_steps, "an integer >= 2")
EXPLAIN_METHODS = ("d_ig", "d_deeplift", "d_inputxgrad", "ig", "deeplift", "residual", "random")
REGION_SHAPES = ("hull", "pixels")   # discover.region_shape; the same as pipeline.evaluation.discovery.REGION_SHAPES


@dataclass(frozen=True)
class ExplainParams:
    """Discriminative attribution on (real, counterfactual) pairs and the mask-size sweep."""

    methods: list[str] = field(default_factory=lambda: list(EXPLAIN_METHODS))
    counterfactual: Literal["reference", "latent"] = "reference"
    n_thresholds: int = 200
    closing_size: int = 3
    blur_sigma: float = 1.0
    mask_channels: Literal["sum", "max", "per_channel"] = "per_channel"
    attributed: Literal["real", "counterfactual", "logit_gap"] = "counterfactual"
    ig_steps: int = 32
    random_sigma: float = 2.0
    n_grid: int = 101
    score_convention: Literal["pipeline", "quac"] = "pipeline"  # quac: QuAC's evaluator (thresholds, mask size, curve ends)
    batch_size: int = 16384
    attribution_batch_size: int = 256
    mixed_precision: bool = True
    max_pairs: Optional[int] = None
    control_pairs: int = 512
    gallery_top_k: int = 2

    def check(self, where: str) -> None:
        if not self.methods:
            fail(f"{where}.methods", self.methods, "a non-empty list of " + ", ".join(EXPLAIN_METHODS))
        for i, name in enumerate(self.methods):
            if name not in EXPLAIN_METHODS:
                fail(f"{where}.methods[{i}]", name, "one of " + ", ".join(EXPLAIN_METHODS))
        if len(set(self.methods)) != len(self.methods):
            fail(f"{where}.methods", self.methods, "distinct method names")
        if self.n_thresholds < 2:
            fail(f"{where}.n_thresholds", self.n_thresholds, "an integer >= 2")
        check_each(self, where, at_least_one, "a positive integer (closing_size 1 = no closing)",
                   "closing_size", "ig_steps", "batch_size", "attribution_batch_size", "gallery_top_k")
        if self.n_grid < 2:
            fail(f"{where}.n_grid", self.n_grid, "an integer >= 2")
        check_each(self, where, non_negative, "a number >= 0 (0 = no blur)", "blur_sigma", "random_sigma")
        check_each(self, where, lambda sigma: sigma <= (IMAGE_SIZE - 1) / 3,
                   f"at most {(IMAGE_SIZE - 1) / 3:g} (a blur kernel of 3 sigma must fit in the image)", "blur_sigma", "random_sigma")
        if self.max_pairs is not None and self.max_pairs < 1:
            fail(f"{where}.max_pairs", self.max_pairs, "a positive integer, or null for all pairs")
        check_each(self, where, non_negative, "an integer >= 0 (0 = no control)", "control_pairs")


@dataclass(frozen=True)
class FeatureVizParams(MaximiseOptions):
    """Activation maximisation: synthesise the input each class logit / conv channel responds to most. How
    each unit is ascended is :class:`~pipeline.evaluation.feature_viz.MaximiseOptions`; which units, and the dream:"""

    channels_per_layer: int = 8          # the first k channels of every convolutional layer
    dream_images: int = 8                # layer dream: real test images, each dreamed by every conv layer
    dream_steps: int = 64
    dream_step_size: float = 0.01        # mean change per pixel and step (the gradient over its mean magnitude)

    def check(self, where: str) -> None:
        check_each(self, where, at_least_one, "a positive integer", "channels_per_layer", "steps", "dream_images")
        check_each(self, where, non_negative, "an integer >= 0", "dream_steps")
        check_each(self, where, positive, "a positive number", "learning_rate", "noise_scale", "blur_sigma", "dream_step_size")
        check_each(self, where, lambda sigma: sigma <= (IMAGE_SIZE - 1) / 3,
                   f"at most {(IMAGE_SIZE - 1) / 3:g} (a blur kernel of 3 sigma must fit in the image)", "blur_sigma")
        check_each(self, where, non_negative, "an integer >= 0 (0 switches it off)", "jitter", "blur_every")
        if not 0 <= self.jitter < IMAGE_SIZE // 2:
            fail(f"{where}.jitter", self.jitter, f"an integer in 0..{IMAGE_SIZE // 2 - 1}")
        check_each(self, where, non_negative, "a number >= 0 (0 switches it off)", "total_variation")
        check_each(self, where, non_negative, "a number >= 0", "fourier_decay")


@dataclass(frozen=True)
class OptimizeCounterfactualsParams:
    """Counterfactuals by direct optimisation of the input (no generator)."""

    max_misclassified: int = 512         # misclassified test images (wanted class: the true one), at most
    n_correct: int = 512                 # correctly classified test images (wanted class: a random other one)
    max_steps: int = 300
    learning_rate: float = 0.1           # step size of the gradient step (proximal gradient descent)
    distance: Literal["l1", "l2"] = "l1"  # penalty on the change: l1 = sum |x'-x|, l2 = sum (x'-x)^2
    distance_weight: float = 0.05        # lambda in  CE(f(x'), wanted) + lambda * distance(x', x)
    margin: float = 1.0                  # stop when the wanted logit beats every other by this much
    change_threshold: float = 0.05       # L0 counts pixels whose largest channel change exceeds this
    batch_size: int = 4096               # images optimised together
    n_example_images: int = 12

    def check(self, where: str) -> None:
        check_each(self, where, non_negative, "an integer >= 0", "max_misclassified", "n_correct")
        if self.max_misclassified + self.n_correct < 1:
            fail(f"{where}.n_correct", self.n_correct, "at least one image in all (max_misclassified + n_correct >= 1)")
        check_each(self, where, at_least_one, "a positive integer", "max_steps", "batch_size", "n_example_images")
        check_each(self, where, positive, "a positive number", "learning_rate")
        check_each(self, where, non_negative, "a number >= 0", "distance_weight")
        check_each(self, where, non_negative, "a number >= 0", "margin")
        check_each(self, where, in_unit_interval, "a number in [0, 1)", "change_threshold")


@dataclass(frozen=True)
class SpectraParams:
    """Can generated images be told from real ones by their log-magnitude spectrum?"""

    generated: Literal["reference", "latent"] = "reference"  # which GAN counterfactuals to test
    max_images: int = 20000              # per group (real, generated; each control half), at most
    epsilon: float = 1e-3                # log(|F| + epsilon)
    C: float = 0.1                       # inverse L2 strength of the logistic regression (scikit-learn's C)
    folds: int = 5                       # cross-validation folds, grouped by test-image index
    artifact_threshold: float = 0.75     # detector accuracy must exceed this ...
    control_margin: float = 0.05         # ... and the real-vs-real control accuracy by this much

    def check(self, where: str) -> None:
        check_each(self, where, at_least_one, "a positive integer", "max_images")
        if self.folds < 2:
            fail(f"{where}.folds", self.folds, "an integer >= 2")
        check_each(self, where, positive, "a positive number", "epsilon", "C")
        if not 0.5 <= self.artifact_threshold <= 1.0:
            fail(f"{where}.artifact_threshold", self.artifact_threshold, "a number in [0.5, 1]")
        if not 0.0 <= self.control_margin <= 0.5:
            fail(f"{where}.control_margin", self.control_margin, "a number in [0, 0.5]")


@dataclass(frozen=True)
class DiscoverParams:
    """Stage ``discover``: regions that the explanations of one class share, found without the known answer."""

    method: str = "auto"                 # explain method whose optimal masks are searched; auto = best discriminative by median score
    min_pairs: int = 20                  # classes with fewer explained pairs are not judged
    min_enrichment: float = 0.25         # share of the class's pairs using a region minus the share of other classes' pairs
    min_area: int = 4                    # pixels; smaller connected regions are ignored
    max_regions: int = 3                 # per class
    coverage: float = 0.5                # a pair uses a region when its mask covers at least this share of it
    n_permutations: int = 200            # label permutations for the null distribution
    alpha: float = 0.01                  # significance level (family-wise over pixels, and per region)
    min_trigger_rate: float = 0.5        # a recurring region flags its class when, pasted alone, it moves this share of other images
    n_trigger_images: int = 1000         # test images of other classes the region is pasted into
    region_shape: str = "hull"           # hull: a region is the convex hull of its candidate pixels | pixels: those alone
    held_out_share: float = 0.5          # of each class's pairs: the half that scores the regions the other half chose

    def check(self, where: str) -> None:
        allowed = ("auto",) + EXPLAIN_METHODS
        if self.method not in allowed:
            fail(f"{where}.method", self.method, ", ".join(allowed))
        if self.region_shape not in REGION_SHAPES:
            fail(f"{where}.region_shape", self.region_shape, " or ".join(REGION_SHAPES))
        check_each(self, where, at_least_one, "a positive integer", "min_pairs", "min_area", "max_regions", "n_permutations",
                   "n_trigger_images")
        if not 0.0 < self.min_trigger_rate <= 1.0:
            fail(f"{where}.min_trigger_rate", self.min_trigger_rate, "a number in (0, 1]")
        if not 0.0 < self.min_enrichment <= 1.0:
            fail(f"{where}.min_enrichment", self.min_enrichment, "a number in (0, 1]")
        if not 0.0 < self.coverage <= 1.0:
            fail(f"{where}.coverage", self.coverage, "a number in (0, 1]")
        if not 0.0 < self.alpha < 1.0:
            fail(f"{where}.alpha", self.alpha, "a number in (0, 1)")
        if self.n_permutations + 1 < 1.0 / self.alpha:
            fail(f"{where}.n_permutations", self.n_permutations,
                 f"at least {math.ceil(1.0 / self.alpha - 1e-9) - 1} for alpha = {self.alpha} (the smallest p-value is 1 / (n_permutations + 1))")


@dataclass(frozen=True)
class DissectParams:
    """Stage ``dissect``: network dissection of every convolution channel against known concept masks."""

    max_images: int = 2000               # seeded sample of at most this many test images (all when there are fewer)
    stamped_fraction: float = 0.5        # clever_hans: share of the sample stamped with a shortcut (the rest clean)
    quantile: float = 0.85               # a unit's mask: its upsampled activations above its own quantile of the sample
    iou_threshold: float = 0.5           # a unit detects a concept from this IoU on
    activation: Literal["post_relu", "pre_relu"] = "post_relu"
    digit_threshold: float = 0.5         # the digit concept: grayscale intensity above this
    batch_size: int = 256
    n_picture_images: int = 6            # top-activating images shown per best unit
    random_mask_sigma: float = 2.0       # held-out unit IoU's chance level: smoothing of its area-matched random masks

    def check(self, where: str) -> None:
        check_each(self, where, at_least_one, "a positive integer", "max_images", "batch_size", "n_picture_images")
        if not 0.5 <= self.quantile < 1.0:
            fail(f"{where}.quantile", self.quantile, "a number in [0.5, 1) (each unit's top 1 - quantile of values is "
                 "kept in memory while its threshold is found)")
        if not 0.0 < self.iou_threshold <= 1.0:
            fail(f"{where}.iou_threshold", self.iou_threshold, "a number in (0, 1]")
        if not 0.0 <= self.stamped_fraction <= 1.0:
            fail(f"{where}.stamped_fraction", self.stamped_fraction, "a number in [0, 1]")
        check_each(self, where, in_unit_interval, "a number in [0, 1)", "digit_threshold")


ARCHITECTURE_METHODS = ("ig_zero", "saliency", "inputxgrad", "deeplift", "guided_backprop", "gradcam", "guided_gradcam")


@dataclass(frozen=True)
class ArchitecturesParams:
    """Stage ``architectures``: the same data and seed, several architectures; what each learns and how alike their maps are."""

    names: list[Literal["cnn", "dense", "resnet"]] = field(default_factory=lambda: ["dense", "cnn", "resnet"])
    epochs: Optional[int] = None         # null = classifier.epochs (every other training setting is classifier's)
    methods: list[str] = field(default_factory=lambda: ["ig_zero", "saliency", "gradcam"])  # gradcam* skipped for dense
    n_images: int = 256                  # seeded test images every architecture explains (clever_hans: as many stamped)
    ig_steps: int = 32
    batch_size: int = 256                # images per attribution call
    internal_batch_size: int = 4096      # interpolated images per forward pass (ig_zero)
    n_picture_images: int = 6            # rows of maps.png

    def check(self, where: str) -> None:
        if len(self.names) < 2 or len(set(self.names)) != len(self.names):
            fail(f"{where}.names", self.names, "at least two distinct architectures of cnn, dense, resnet")
        for i, name in enumerate(self.methods):
            if name not in ARCHITECTURE_METHODS:
                fail(f"{where}.methods[{i}]", name, ", ".join(ARCHITECTURE_METHODS))
        if not self.methods or len(set(self.methods)) != len(self.methods):
            fail(f"{where}.methods", self.methods, "a non-empty list of distinct method names")
        if self.epochs is not None and self.epochs < 1:
            fail(f"{where}.epochs", self.epochs, "a positive integer, or null for classifier.epochs")
        check_each(self, where, at_least_one, "a positive integer",
                   "n_images", "ig_steps", "batch_size", "internal_batch_size", "n_picture_images")


@dataclass(frozen=True)
class PrototypesParams:
    """Stage ``prototypes``: MMD-critic prototypes and criticisms per class, in the classifier's penultimate features."""

    n_per_class: int = 1000                   # seeded sample of training images per class
    n_prototypes: int = 10                    # per class
    n_criticisms: int = 10                    # per class, never a prototype
    kernel_bandwidth: Optional[float] = None  # RBF sigma in feature units; None = median pairwise distance, per class
    regularize_criticisms: bool = True        # log-determinant diversity term of the criticisms
    batch_size: int = 1024                    # images per forward pass

    def check(self, where: str) -> None:
        check_each(self, where, at_least_one, "a positive integer", "n_per_class", "n_prototypes", "n_criticisms", "batch_size")
        if self.n_prototypes + self.n_criticisms > self.n_per_class:
            fail(f"{where}.n_per_class", self.n_per_class,
                 f"at least n_prototypes + n_criticisms = {self.n_prototypes + self.n_criticisms}")
        if self.kernel_bandwidth is not None and not self.kernel_bandwidth > 0:
            fail(f"{where}.kernel_bandwidth", self.kernel_bandwidth, "a positive number, or null (median heuristic)")


PRECISION_AT = 10  # influence: the headline precision is over the first 10 proponents of each query


@dataclass(frozen=True)
class InfluenceParams:
    """Stage ``influence``: TracIn proponents (captum's TracInCPFast) over the classifier's per-epoch checkpoints."""

    n_test: int = 100                # seeded query images (Clever Hans: other classes the stamp moves into its class)
    n_train: Optional[int] = None    # seeded sample of training images searched; None = all of them
    top_k: int = 10                  # proponents kept per query; at least PRECISION_AT
    normalize: bool = True           # gradient cosines per checkpoint (renormalised TracIn); False = plain dot products
    batch_size: int = 1024           # training images per forward pass
    n_show: int = 8                  # queries in the picture

    def check(self, where: str) -> None:
        check_each(self, where, at_least_one, "a positive integer", "n_test", "batch_size", "n_show")
        if self.top_k < PRECISION_AT:
            fail(f"{where}.top_k", self.top_k, f"at least {PRECISION_AT} (the headline figure is precision at {PRECISION_AT})")
        if self.n_train is not None and self.n_train < self.top_k:
            fail(f"{where}.n_train", self.n_train, f"at least top_k = {self.top_k}, or null (every training image)")


@dataclass(frozen=True)
class Params:
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = False
    data: DataParams = field(default_factory=DataParams)
    datasets: dict[str, DatasetParams] = field(default_factory=default_datasets)
    classifier: ClassifierParams = field(default_factory=ClassifierParams)
    attribution: AttributionParams = field(default_factory=AttributionParams)
    gan: GanParams = field(default_factory=GanParams)
    counterfactuals: CounterfactualParams = field(default_factory=CounterfactualParams)
    explain: ExplainParams = field(default_factory=ExplainParams)
    feature_viz: FeatureVizParams = field(default_factory=FeatureVizParams)
    optimize_counterfactuals: OptimizeCounterfactualsParams = field(default_factory=OptimizeCounterfactualsParams)
    spectra: SpectraParams = field(default_factory=SpectraParams)
    discover: DiscoverParams = field(default_factory=DiscoverParams)
    dissect: DissectParams = field(default_factory=DissectParams)
    architectures: ArchitecturesParams = field(default_factory=ArchitecturesParams)
    prototypes: PrototypesParams = field(default_factory=PrototypesParams)
    influence: InfluenceParams = field(default_factory=InfluenceParams)

    def check(self, where: str) -> None:
        if self.seed < 0:
            fail("seed", self.seed, "an integer >= 0")
        if not self.datasets:
            fail("datasets", self.datasets, "at least one named dataset, e.g. clever_hans: {kind: clever_hans, ...}")
        for name, entry in self.datasets.items():
            if not DATASET_NAME.fullmatch(name):
                fail("datasets", name, "names of lower-case letters, digits and _ that start with a letter "
                     "(a dataset's name names its folders and its DVC stages, e.g. explain@fashion_hans)")
            if entry.source in SPLIT_SIZES:
                self.data.check_against(entry.source, "data")
        self.check_test_samples_exist()

    def check_test_samples_exist(self) -> None:
        """A seeded sample of test images cannot hold more images than the test split (``data``) will have.

        Counts that are caps on a subset known only later (``max_misclassified``, ``n_correct``,
        ``max_pairs``, ``max_images``, ``architectures.n_images``) are left to the stages, which take what there is.
        """
        sources = sorted({entry.source for entry in self.datasets.values()} & set(SPLIT_SIZES))
        if not sources:
            return  # image folders only: prepare checks the counts against the files it finds
        n_test = min(self.data.n_images("test", s) for s in sources)
        source = "data.test_size" if self.data.test_size is not None else f"the {' and '.join(sources)} test split"
        for key, value in (("attribution.n_images", self.attribution.n_images),
                           ("counterfactuals.n_images", self.counterfactuals.n_images)):
            if value > n_test:
                fail(key, value, f"at most {n_test}, the number of test images ({source})")

    def n_classes(self, dataset: str) -> int:
        """Number of classes the classifier of ``dataset`` separates."""
        return self.datasets[dataset].n_classes


# --------------------------------------------------------------------------------------------
# Generic, annotation-driven parsing
# --------------------------------------------------------------------------------------------
def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    if origin is dict:
        return f"a mapping of names to {_type_name(typing.get_args(hint)[1])}"
    if dataclasses.is_dataclass(hint):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(hint))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            fail(where, value, _type_name(hint))
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        if value is None:
            fail(where, value, _type_name(hint))
        return _coerce(value, inner[0], where)
    if origin is list:
        if not isinstance(value, list):
            fail(where, value, _type_name(hint))
        (item_hint,) = typing.get_args(hint)
        return [_coerce(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            fail(where, value, _type_name(hint))
        key_hint, item_hint = typing.get_args(hint)
        return {_coerce(k, key_hint, where): _coerce(v, item_hint, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            fail(where, value, "true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(where, value, "an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(where, value, "a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            fail(where, value, "a string")
        return value
    raise TypeError(f"unsupported annotation {hint!r} at {where}")


def build(cls: type, raw: Any, where: str = ""):
    """Build dataclass ``cls`` from a mapping, validating every key against the annotations."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        fail(where or "params.yaml", raw, _type_name(cls))
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            dotted = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"params: unknown key {dotted!r}; allowed keys here: {', '.join(names)}")
    values = {}
    for f in dataclasses.fields(cls):
        dotted = f"{where}.{f.name}" if where else f.name
        if f.name in raw:
            values[f.name] = _coerce(raw[f.name], hints[f.name], dotted)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"params: missing key {dotted!r} ({_type_name(hints[f.name])})")
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check(where)
    return obj


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error, not "the last one wins"."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key_node.value!r} appears twice in the same mapping", key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """Parse ``path``; a syntax error or a duplicated key becomes a one-line error with the file and line."""
    if not path.is_file():
        where = "is a folder, not a file" if path.is_dir() else "not found; run stages from the repository root"
        raise ConfigError(f"params: {path} {where}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"params: {path} cannot be read as UTF-8 text ({err})") from err
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = " ".join(str(err.problem or err.context or "syntax error").split())
        place = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"params: {path} is not valid YAML{place} ({problem}); fix it there") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"params: {path} is not valid YAML ({' '.join(str(err).split())})") from err


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate the whole parameter file."""
    path = Path(path)
    raw = read_yaml(path)
    if raw is not None and not isinstance(raw, dict):
        fail(str(path), raw, "a mapping of sections: " + ", ".join(f.name for f in dataclasses.fields(Params)))
    return build(Params, raw)


def options_from(section: Any, options: type):
    """The library's ``options`` dataclass with each of its fields read from the params ``section`` of the same
    names (a section may hold more: its figure sizes, its sample counts)."""
    return options(**{f.name: getattr(section, f.name) for f in dataclasses.fields(options)})


def to_dict(obj: Any) -> Any:
    """Plain-data copy of a params object (for checkpoints and logs), as params.yaml would write it: a
    dataset entry leaves out the settings its kind does not read."""
    if dataclasses.is_dataclass(obj):
        unread = obj.unread(vars(obj)) if hasattr(obj, "unread") else set()
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name not in unread}
    if isinstance(obj, dict):
        return {key: to_dict(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [to_dict(value) for value in obj]
    return obj
