"""The schema of ``params.yaml``, loaded and validated into typed, frozen objects before any work.

A section is the library's own option type where the library has one (``gan`` is a ``GanTrainingOptions`` plus
the stage's ``n_grid_images``), so a setting's type, its choices and its range are written once, on the field
that uses it (``Annotated[int, Ge(1)]``, ``Literal[...]``). What a stage alone reads is declared on its section
here, and the rules that tie settings together are each section's ``check``. Defaults live in params.yaml only:
a key missing from it is an error that names it. The ``data`` and ``datasets`` sections are in
:mod:`pipeline.dataset_params`; how annotations are read (pydantic v2, and why) and errors worded, in
:mod:`pipeline.schema`. Stages import everything from here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from annotated_types import Ge, Interval, Len

from pipeline.attribution.discriminative import CONVENTIONS, METHODS as EXPLAIN_METHODS
from pipeline.attribution.faithfulness import FaithfulnessOptions
from pipeline.attribution.methods import AttributionOptions
from pipeline.attribution.names import ATTRIBUTION_METHODS
from pipeline.counterfactuals.gan_training import GanTrainingOptions
from pipeline.counterfactuals.optimization import OptimizationOptions
from pipeline.counterfactuals.translation import TranslationOptions
from pipeline.data.sources import SOURCE_IMAGE_SIZE as IMAGE_SIZE
from pipeline.dataset_params import SPLIT_SIZES, DataParams, DatasetParams, OwnClassifierParams, ShortcutParams  # noqa: F401
from pipeline.evaluation.architectures import ComparisonOptions
from pipeline.evaluation.discovery import DiscoverySettings
from pipeline.evaluation.dissection import DissectionOptions
from pipeline.evaluation.explanations import ExplainOptions
from pipeline.evaluation.feature_viz import MaximiseOptions
from pipeline.evaluation.spectra import DetectorSettings
from pipeline.models.classifiers import CLASSIFIERS
from pipeline.schema import (ConfigError, Count, Positive, Share, build, check_distinct, fail,  # noqa: F401
                             keys_of, options_from, read_yaml, to_dict)

PRECISION_AT = 10  # influence: the headline precision is over the first 10 proponents of each query
DATASET_NAME = re.compile(r"[a-z][a-z0-9_]*")
Architecture = Literal[tuple(CLASSIFIERS)]
Counterfactual = Literal["reference", "latent"]   # which translation of counterfactuals@D a stage reads
SIGMA_IN_IMAGE = (IMAGE_SIZE - 1) / 3               # a blur kernel of 3 sigma must fit in the image


# ---- stages: each section is the library's options plus what the stage alone reads --------
@dataclass(frozen=True)
class ClassifierParams:
    """Stage ``train_classifier``: the pipeline's own classifier and its training (``models.training.train``)."""

    architecture: Architecture
    width: Count
    epochs: Count
    batch_size: Count
    learning_rate: Positive
    weight_decay: Annotated[float, Ge(0)]
    eval_batch_size: Count
    mixed_precision: bool
    n_example_images: Count


@dataclass(frozen=True, kw_only=True)
class AttributionParams(AttributionOptions, FaithfulnessOptions):
    """Stage ``attribute``: which captum methods run, on how many images, and how they are scored."""

    n_images: Count
    methods: Annotated[list[Literal[ATTRIBUTION_METHODS]], Len(1)]
    infidelity_noise: Annotated[Positive, "the std of the Gaussian input perturbation"]
    n_localization_images: Count
    segmentation_thresholds: Annotated[int, Ge(2)]
    contrastive_method: Literal[ATTRIBUTION_METHODS]
    n_contrastive_images: Count
    n_gallery_images: Count

    def check(self, where: str) -> None:
        check_distinct(self, where, "methods")
        for name in ("occlusion_window", "occlusion_stride"):
            if getattr(self, name) > IMAGE_SIZE:
                fail(f"{where}.{name}", getattr(self, name), f"an integer in 1..{IMAGE_SIZE}")


@dataclass(frozen=True, kw_only=True)
class GanParams(GanTrainingOptions):
    """Stage ``train_gan``: the translator's training (it never sees the classifier) and the figure's rows."""

    n_grid_images: Count

    def check(self, where: str) -> None:
        if self.cuda_graph and self.r1_every != 1:
            fail(f"{where}.r1_every", self.r1_every, "1 when cuda_graph is true (one captured step is replayed)")


@dataclass(frozen=True, kw_only=True)
class CounterfactualParams(TranslationOptions):
    """Stage ``counterfactuals``: translate test images into every other class and judge them."""

    interpolation_steps: Annotated[int, Ge(2)]
    n_gallery_images: Count
    n_interpolation_images: Count
    n_style_points: Count


@dataclass(frozen=True, kw_only=True)
class ExplainParams(ExplainOptions):
    """Stage ``explain``: discriminative attribution on (real, counterfactual) pairs and the mask-size sweep
    (``n_thresholds``, ``closing_size``, ``blur_sigma`` and ``score_convention`` make its ``MaskSettings``)."""

    counterfactual: Counterfactual
    n_thresholds: Annotated[int, Ge(2)]
    closing_size: Annotated[Count, "1 = no closing"]
    blur_sigma: Annotated[float, Ge(0), "0 = no blur"]
    score_convention: Literal[CONVENTIONS]
    n_grid: Annotated[int, Ge(2)]
    max_pairs: Optional[Annotated[Count, "null = every pair whose counterfactual reaches its target"]]
    gallery_top_k: Count

    def check(self, where: str) -> None:
        check_distinct(self, where, "methods")
        check_blur_fits(self, where, "blur_sigma", "random_sigma")


def check_blur_fits(section: Any, where: str, *names: str) -> None:
    for name in names:
        if getattr(section, name) > SIGMA_IN_IMAGE:
            fail(f"{where}.{name}", getattr(section, name),
                 f"at most {SIGMA_IN_IMAGE:g} (a blur kernel of 3 sigma must fit in the image)")


@dataclass(frozen=True, kw_only=True)
class FeatureVizParams(MaximiseOptions):
    """Stage ``feature_viz``: the input each class logit and conv channel responds to most (ascended as
    ``MaximiseOptions`` say), and the layer dream of real images."""

    channels_per_layer: Annotated[Count, "the first k channels of every convolution"]
    dream_images: Count
    dream_steps: Annotated[int, Ge(0)]
    dream_step_size: Annotated[Positive, "the mean change per pixel and step"]

    def check(self, where: str) -> None:
        check_blur_fits(self, where, "blur_sigma")
        if self.jitter >= IMAGE_SIZE // 2:
            fail(f"{where}.jitter", self.jitter, f"an integer in 0..{IMAGE_SIZE // 2 - 1}")


@dataclass(frozen=True, kw_only=True)
class OptimizeCounterfactualsParams(OptimizationOptions):
    """Stage ``optimize_counterfactuals``: counterfactuals by optimising the input (no generator)."""

    max_misclassified: Annotated[int, Ge(0)]
    n_correct: Annotated[int, Ge(0)]
    change_threshold: Annotated[float, Interval(ge=0, lt=1)]
    n_example_images: Count

    def check(self, where: str) -> None:
        if self.max_misclassified + self.n_correct < 1:
            fail(f"{where}.n_correct", self.n_correct, "at least one image in all (max_misclassified + n_correct >= 1)")


@dataclass(frozen=True, kw_only=True)
class SpectraParams(DetectorSettings):
    """Stage ``spectra``: can generated images be told from real ones by their log-magnitude spectrum?"""

    seed: int = field(default=0, init=False, repr=False)  # not a param: the stage derives it from the run's seed
    generated: Counterfactual
    max_images: Count
    artifact_threshold: Annotated[float, Interval(ge=0.5, le=1)]
    control_margin: Annotated[float, Interval(ge=0, le=0.5)]


@dataclass(frozen=True, kw_only=True)
class DiscoverParams(DiscoverySettings):
    """Stage ``discover``: regions the explanations of one class share, found without the known answer."""

    method: Annotated[Literal[("auto", *EXPLAIN_METHODS)], "auto = the best discriminative method by median score"]
    n_trigger_images: Count


@dataclass(frozen=True, kw_only=True)
class DissectParams(DissectionOptions):
    """Stage ``dissect``: network dissection of every convolution channel against the known concepts' masks."""

    max_images: Count
    stamped_fraction: Share
    digit_threshold: Annotated[float, Interval(ge=0, lt=1)]
    n_picture_images: Count


@dataclass(frozen=True, kw_only=True)
class ArchitecturesParams(ComparisonOptions):
    """Stage ``architectures``: the same data and seed, several architectures; what each learns, how alike."""

    names: Annotated[list[Architecture], Len(2)]
    epochs: Optional[Annotated[Count, "null = classifier.epochs"]]
    n_images: Count
    n_picture_images: Count

    def check(self, where: str) -> None:
        check_distinct(self, where, "names", "methods")


@dataclass(frozen=True)
class PrototypesParams:
    """Stage ``prototypes``: MMD-critic prototypes and criticisms per class, in the penultimate features
    (``kernel_bandwidth`` and ``regularize_criticisms`` make its ``CriticOptions``)."""

    n_per_class: Count
    n_prototypes: Count
    n_criticisms: Count
    kernel_bandwidth: Optional[Annotated[Positive, "null = the median pairwise distance, per class"]]
    regularize_criticisms: bool
    batch_size: Count

    def check(self, where: str) -> None:
        if self.n_prototypes + self.n_criticisms > self.n_per_class:
            fail(f"{where}.n_per_class", self.n_per_class,
                 f"at least n_prototypes + n_criticisms = {self.n_prototypes + self.n_criticisms}")


@dataclass(frozen=True)
class InfluenceParams:
    """Stage ``influence``: TracIn proponents (captum's TracInCPFast) over the classifier's per-epoch checkpoints."""

    n_test: Count
    n_train: Optional[Annotated[Count, "null = every training image"]]
    top_k: Annotated[int, Ge(PRECISION_AT), f"the headline figure is precision at {PRECISION_AT}"]
    normalize: bool
    batch_size: Count
    n_show: Count

    def check(self, where: str) -> None:
        if self.n_train is not None and self.n_train < self.top_k:
            fail(f"{where}.n_train", self.n_train, f"at least top_k = {self.top_k}, or null (every training image)")


@dataclass(frozen=True)
class Params:
    seed: Annotated[int, Ge(0)]
    device: Literal["auto", "cpu", "cuda"]
    deterministic: bool
    data: DataParams
    datasets: dict[str, DatasetParams]
    classifier: ClassifierParams
    attribution: AttributionParams
    gan: GanParams
    counterfactuals: CounterfactualParams
    explain: ExplainParams
    feature_viz: FeatureVizParams
    optimize_counterfactuals: OptimizeCounterfactualsParams
    spectra: SpectraParams
    discover: DiscoverParams
    dissect: DissectParams
    architectures: ArchitecturesParams
    prototypes: PrototypesParams
    influence: InfluenceParams

    def check(self, where: str) -> None:
        if not self.datasets:
            fail("datasets", self.datasets, "at least one named dataset, e.g. clever_hans: {kind: clever_hans, ...}")
        for name, entry in self.datasets.items():
            if not DATASET_NAME.fullmatch(name):
                fail("datasets", name, "names of lower-case letters, digits and _ that start with a letter "
                     "(a dataset's name names its folders and its DVC stages, e.g. explain@fashion_hans)")
            if entry.source in SPLIT_SIZES:
                self.data.check_against(entry.source, "data")
        # a seeded sample of test images cannot hold more than the test split has (caps of subsets known only
        # later, such as max_pairs, are left to the stages)
        sources = sorted({entry.source for entry in self.datasets.values()} & set(SPLIT_SIZES))
        if not sources:
            return  # image folders only: prepare checks the counts against the files it finds
        n_test = min(self.data.n_images("test", s) for s in sources)
        source = "data.test_size" if self.data.test_size is not None else f"the {' and '.join(sources)} test split"
        for key, value in (("attribution.n_images", self.attribution.n_images),
                           ("counterfactuals.n_images", self.counterfactuals.n_images)):
            if value > n_test:
                fail(key, value, f"at most {n_test}, the number of test images ({source})")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate the whole parameter file."""
    raw = read_yaml(path)
    if raw is not None and not isinstance(raw, dict):
        fail(str(path), raw, "a mapping of sections: " + ", ".join(keys_of(Params)))
    return build(Params, raw or {})
