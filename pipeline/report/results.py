"""What the report reads: each stage's results as a small typed record, built from its metrics file and details.json.

A figure scored against the known answer comes back as a :class:`~pipeline.scoring.chance.Lift` (score, chance level,
lift and interval; a figure not judged keeps its reason); other figures as plain numbers, NaN where nothing was
measured; classes by name. A file that is missing, or that does not hold what its stage writes, ends in one
:class:`~pipeline.storage.InputError` that names the file and the command that writes it.

Nothing here finds out which class carries what where: :class:`DatasetRun` carries the known answer that prepare
recorded (:func:`pipeline.data.known_answer.known_answer_from_meta`), and the report branches on its type.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.data.known_answer import KnownAnswer, known_answer_from_meta
from pipeline.scoring.chance import Lift, not_judged
from pipeline.storage import InputError, read_json

NAN = float("nan")
MAX_PICTURES = 12   # per stage; the rest stay in plots/<D>/<stage>/
SAME = 1e-5         # a lift in a metrics file and in details.json agree to this (both written rounded to 6 digits)

# stage -> (its metrics file under metrics/<D>/, or None; whether it writes plots/<D>/<stage>/details.json)
STAGE_FILES: dict[str, tuple[str | None, bool]] = {
    "prepare": (None, False), "train_classifier": ("classifier", True), "attribute": ("attribution", True),
    "architectures": ("architectures", True), "train_gan": ("train_gan", False), "counterfactuals": ("counterfactuals", True),
    "explain": ("explain", True), "discover": ("discover", True), "feature_viz": ("feature_viz", True),
    "dissect": ("dissect", True), "prototypes": ("prototypes", True), "influence": ("influence", True),
    "optimize_counterfactuals": ("optimize_counterfactuals", True), "spectra": ("spectra", True),
}
# attribute's headline metrics name -> the figure of its details' ``chance`` it is read from
# (pipeline.attribution.method_scores.HEADLINE_LIFTS, which the report does not import with all of captum)
ATTRIBUTE_HEADLINES = {"shortcut_relevance_mass_flipped": "relevance_mass_flipped", "digit_relevance_mass": "relevance_mass_digit"}


# --------------------------------------------------------------------------------------------
# One JSON file, read with errors that name it
# --------------------------------------------------------------------------------------------
class Record:
    """The object a stage wrote into one JSON file, with its path, so that every error names the file."""

    def __init__(self, path: Path, data, made_by: str):
        self.path, self.data, self.made_by = Path(path), data, made_by
        if not isinstance(data, dict):
            raise self.error(f"holds {type(data).__name__}, not the object {made_by} writes")

    @classmethod
    def read(cls, path: Path, made_by: str) -> Record:
        if not Path(path).exists():
            raise InputError(f"{path} is missing; run `dvc repro {made_by}` first")
        return cls(path, read_json(path, made_by=made_by), made_by)

    def error(self, what: str) -> InputError:
        return InputError(f"{self.path} {what}; re-run `dvc repro {self.made_by}`")

    def get(self, *keys, default=None):
        value = self.data
        for key in keys:
            if isinstance(value, list) and isinstance(key, int) and 0 <= key < len(value):
                value = value[key]
            elif isinstance(value, dict) and key in value:
                value = value[key]
            else:
                return default
        return value

    def sub(self, *keys) -> Record:
        """The nested object at ``keys`` (empty where there is none)."""
        value = self.get(*keys, default={})
        if not isinstance(value, dict):
            raise self.error(f"holds no object at {where(keys)}")
        return Record(self.path, value, self.made_by)

    def rows(self, *keys) -> list[Record]:
        value = self.get(*keys, default=[])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(f"holds no list of objects at {where(keys)}")
        return [Record(self.path, v, self.made_by) for v in value]

    def number(self, *keys) -> float:
        """A number (NaN where it is null or absent: not measured)."""
        value = self.get(*keys)
        if value is None:
            return NAN
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(f"holds {value!r} at {where(keys)}, not a number")
        return float(value)

    def count(self, *keys) -> int:
        """A count (0 where it is null or absent)."""
        value = self.number(*keys)
        if not known(value):
            return 0
        if value != int(value) or value < 0:
            raise self.error(f"holds {value:g} at {where(keys)}, not a count")
        return int(value)

    def text(self, *keys, default: str = "") -> str:
        value = self.get(*keys)
        return default if value is None else str(value)

    def names(self, *keys) -> list[str]:
        value = self.get(*keys, default=[])
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(f"holds no list at {where(keys)}")
        return [str(v) for v in value]

    def lift(self, *keys) -> Lift:
        try:
            return Lift.from_dict(self.get(*keys))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise self.error(f"holds no figure beside its chance level at {where(keys)} ({err})") from err

    def lifts(self, *keys) -> dict[str, Lift]:
        """{name: Lift} of the map at ``keys`` ({} where there is none)."""
        return {str(name): self.lift(*keys, name) for name in self.sub(*keys).data}

    def lift_table(self, *keys) -> dict[str, dict[str, Lift]]:
        """{figure: {member: Lift}} of the map of maps at ``keys`` (per method, per architecture)."""
        return {str(figure): self.lifts(*keys, figure) for figure in self.sub(*keys).data}


def where(keys) -> str:
    return "/".join(str(k) for k in keys)


def agree(metrics: Record, details: Record, headlines: dict[str, Lift]) -> None:
    """Each headline's lift in the metrics file (``<name>_lift``, where it is one) is the one details.json holds: the
    files of two different runs side by side are an error, not a report."""
    for name, lift in headlines.items():
        key = f"{name}_lift"
        if key not in metrics.data:
            continue
        value = metrics.number(key)
        if known(value) != known(lift.lift) or (known(value) and abs(value - lift.lift) > SAME):
            raise InputError(f"{metrics.path} holds {key} = {value:g} but {details.path} {lift.lift:g}: they come from "
                             f"different runs; re-run `dvc repro {metrics.made_by}`")


def known(value) -> bool:
    """A measured number (not None, not NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def by_class(values: Record, class_names: list[str]) -> dict[str, float]:
    """A per-class map that a stage wrote in class order (keyed by name or by index) keyed by the classes' names."""
    if len(values.data) != len(class_names):
        raise values.error(f"holds {len(values.data)} classes where meta.json names {len(class_names)}")
    return {name: values.number(key) for name, key in zip(class_names, values.data)}


# --------------------------------------------------------------------------------------------
# The stages' results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShortcutUse:
    """What one planted shortcut does to the classifier (train_classifier): the truth the detectors are scored
    against. Shares of clean test images of other classes assigned to the shortcut's class: stamped (reliance),
    as they are (base rate), with the stamp's pixels blacked out instead (occlusion rate)."""

    class_name: str
    area_fraction: float
    reliance: float
    base_rate: float
    occlusion_rate: float

    @property
    def control(self) -> float:
        """The higher of the base rate and the occlusion rate: what moves images without the stamp's content."""
        known_rates = [r for r in (self.base_rate, self.occlusion_rate) if known(r)]
        return max(known_rates) if known_rates else NAN

    @property
    def effect(self) -> float:
        """Reliance over the higher of its controls."""
        return self.reliance - self.control if known(self.control) else self.reliance


@dataclass(frozen=True)
class ClassifierResult:
    test_accuracy: float
    clean_accuracy: float
    per_class_accuracy: dict[str, float]
    shortcuts: list[ShortcutUse]            # in the known answer's order


def classifier_result(metrics: Record, details: Record, class_names: list[str]) -> ClassifierResult:
    shortcuts = [ShortcutUse(row.text("class"), row.number("area_fraction"), row.number("reliance"), row.number("base_rate"),
                             row.number("occlusion_rate")) for row in details.rows("shortcuts")]
    return ClassifierResult(metrics.number("test_accuracy"), metrics.number("clean_accuracy"),
                            by_class(details.sub("per_class_accuracy"), class_names), shortcuts)


@dataclass(frozen=True)
class DistractorControl:
    measures: str
    n_pairs: int
    reason: str
    median_score: dict[str, float]


@dataclass(frozen=True)
class ExplainResult:
    n_pairs: int
    n_kept: int
    best: str | None                        # the best discriminative method, chosen by median score
    median_score: dict[str, float]          # per method
    chance: dict[str, dict[str, Lift]]      # figure -> method -> Lift
    not_judged: dict[str, str]              # metrics key -> why that headline was not judged
    skipped: dict[str, str]                 # method -> why it did not run
    gan_shortcut_fraction: float            # share of GAN pairs into a shortcut's class that carry it
    n_into_shortcut_class: int
    n_carrying_shortcut: int
    control: DistractorControl | None       # planted shortcuts only
    colormap_agreement: float               # colour rule: share of decisions the nearest colormap describes

    def figure(self, name: str, method: str | None = None) -> Lift:
        """``name``'s Lift for ``method`` (default: the best discriminative method), not judged with its reason."""
        method = method or self.best
        found = self.chance.get(name, {}).get(method) if method else None
        if found is not None:
            return found
        return not_judged(self.not_judged.get(f"{name}_lift")
                          or (f"{method} has no {name}" if method else "no discriminative method has a score"))


def explain_result(metrics: Record, details: Record, class_names: list[str]) -> ExplainResult:
    control = details.sub("distractor_control")
    methods = details.sub("methods")
    chance, best = details.lift_table("chance"), details.get("best_discriminative_method")
    agree(metrics, details, {figure: lifts[best] for figure, lifts in chance.items() if best in lifts})
    return ExplainResult(
        n_pairs=details.count("n_pairs"), n_kept=metrics.count("n_pairs_kept"),
        best=best, median_score={m: methods.number(m, "median_score") for m in methods.data},
        chance=chance, not_judged={k: str(v) for k, v in details.sub("not_judged").data.items()},
        skipped={k: str(v) for k, v in details.sub("skipped_methods").data.items()},
        gan_shortcut_fraction=metrics.number("gan_shortcut_fraction"),
        n_into_shortcut_class=details.count("n_pairs_into_shortcut_class"),
        n_carrying_shortcut=details.count("n_pairs_carrying_shortcut"),
        control=DistractorControl(control.text("measures"), control.count("n_pairs"), control.text("reason"),
                                  {m: control.number("methods", m, "median_score") for m in control.sub("methods").data})
        if control.data else None,
        colormap_agreement=details.number("color_rule", "nearest_colormap_agreement"))


@dataclass(frozen=True)
class Region:
    """A region that recurs in one class's explanations (discover), and its trigger test."""

    top: int
    left: int
    height: int
    width: int
    significant: bool                       # recurs on the held-out pairs
    shortcut: bool                          # and works on its own beyond its controls
    trigger: Lift | None                    # trigger rate over its controls (None: not tested)


@dataclass(frozen=True)
class ClassDiscovery:
    n_pairs: int
    judged: bool
    reason: str
    flagged: bool
    regions: list[Region]


@dataclass(frozen=True)
class DiscoverResult:
    method: str
    n_pairs: int
    judged: bool                            # some class had enough pairs to be judged
    reason: str                             # why none was
    classes: dict[str, ClassDiscovery]
    flagged: list[str]
    sentences: list[str]
    false_alarms: int | None                # None: not counted (reason)
    false_alarm_classes: list[str]
    false_alarms_reason: str
    region_iou: Lift | None                 # planted shortcuts: the flagged regions' IoU with the truth, over classes
    region_iou_by_class: dict[str, Lift]
    found_without_being_told: list[str]


def discover_result(metrics: Record, details: Record, class_names: list[str]) -> DiscoverResult:
    classes = {}
    for name in details.sub("classes").data:
        entry, triggers = details.sub("classes", name), details.get("chance", "trigger_rate", name) or []
        regions = []
        for i, region in enumerate(entry.rows("regions")):
            tested = i < len(triggers) and triggers[i] is not None
            regions.append(Region(region.count("top"), region.count("left"), region.count("height"), region.count("width"),
                                  bool(region.get("significant")), bool(region.get("shortcut")),
                                  details.lift("chance", "trigger_rate", name, i) if tested else None))
        classes[name] = ClassDiscovery(entry.count("n_pairs"), bool(entry.get("judged")), entry.text("reason"),
                                       bool(entry.get("flagged")), regions)
    judged, alarms = metrics.get("n_flagged_classes") is not None, details.get("false_alarms")
    region_iou = details.lift("chance", "shortcut_region_iou") if details.get("chance", "shortcut_region_iou") else None
    agree(metrics, details, {"shortcut_region_iou": region_iou} if region_iou else {})
    return DiscoverResult(
        method=details.text("method"), n_pairs=details.count("n_pairs"), judged=judged, reason=details.text("not_judged"),
        classes=classes, flagged=details.names("flagged_classes"), sentences=details.names("sentences"),
        false_alarms=details.count("false_alarms") if alarms is not None else None,
        false_alarm_classes=details.names("false_alarm_classes"), false_alarms_reason=details.text("false_alarms_reason"),
        region_iou=region_iou,
        region_iou_by_class=details.lifts("chance", "shortcut_region_iou_by_class"),
        found_without_being_told=details.names("found_without_being_told"))


@dataclass(frozen=True)
class AttributeResult:
    n_images: int
    scores: dict[str, dict[str, float]]     # method -> raw score (deletion AUC, randomisation Spearman, ...)
    chance: dict[str, dict[str, Lift]]      # figure -> method -> Lift
    headline: dict[str, tuple[str | None, Lift]]   # metrics name -> (method chosen, its Lift)
    best_deletion: str | None
    best_deletion_auc: float
    random_order_deletion_auc: float
    skipped: dict[str, str]
    gradcam_iou: float                      # Grad-CAM thresholded against the digit's pixels
    digit_area_fraction: float              # the whole-image mask's share of the digit: that IoU's chance level
    reinitialized_model: str                # the classifier re-initialised with random weights, or why not available


def attribute_result(metrics: Record, details: Record, class_names: list[str]) -> AttributeResult:
    chance = details.lift_table("chance")
    headline = {}
    for name, method in details.sub("best_methods").data.items():
        if name not in ATTRIBUTE_HEADLINES:
            continue
        figure = chance.get(ATTRIBUTE_HEADLINES[name], {})
        headline[name] = (method, figure[method] if method in figure else not_judged("no method was judged"))
    agree(metrics, details, {name: lift for name, (_, lift) in headline.items()})
    methods = details.sub("methods")
    return AttributeResult(
        n_images=details.count("n_images"),
        scores={m: {k: methods.number(m, k) for k, v in methods.sub(m).data.items() if not isinstance(v, dict)}
                for m in methods.data},
        chance=chance, headline=headline, best_deletion=details.get("best_methods", "best_deletion_auc"),
        best_deletion_auc=metrics.number("best_deletion_auc"), random_order_deletion_auc=metrics.number("random_order_deletion_auc"),
        skipped={k: str(v) for k, v in details.sub("skipped").data.items()},
        gradcam_iou=details.number("gradcam_segmentation", "best_iou"), digit_area_fraction=details.number("digit_area_fraction"),
        reinitialized_model=details.get("reinitialized_model", default="") or "")


@dataclass(frozen=True)
class Architecture:
    test_accuracy: float
    shortcut_reliance: float
    shortcut_base_rate: float


@dataclass(frozen=True)
class ArchitecturesResult:
    epochs: int
    architectures: dict[str, Architecture]
    headline: str                           # the figure of ``chance`` the metrics file holds per architecture
    headline_methods: list[str]             # the methods averaged into it
    chance: dict[str, dict[str, Lift]]      # figure -> architecture -> Lift
    rank_correlation: dict[str, dict[str, float]]   # "a vs b" -> method -> Spearman of their maps
    skipped: str


def architectures_result(metrics: Record, details: Record, class_names: list[str]) -> ArchitecturesResult:
    table = details.sub("architectures")
    correlation = details.sub("rank_correlation")
    chance, headline = details.lift_table("chance"), details.text("headline_score")
    agree(metrics, details, {f"{headline}_{a}": lift for a, lift in chance.get(headline, {}).items()})
    return ArchitecturesResult(
        epochs=details.count("epochs"),
        architectures={a: Architecture(table.number(a, "test_accuracy"), table.number(a, "shortcut_reliance"),
                                       table.number(a, "shortcut_base_rate")) for a in table.data},
        headline=headline, headline_methods=details.names("headline_methods"), chance=chance,
        rank_correlation={pair: {m: correlation.number(pair, m) for m in correlation.sub(pair).data} for pair in correlation.data},
        skipped=details.text("skipped_scores"))


@dataclass(frozen=True)
class ProbeResult:
    """A probe's figures beside their chance levels (influence, dissect, prototypes), and why it was not scored."""

    chance: dict[str, Lift]
    reason: str                             # why the stage scored nothing ("" when it did)
    figures: dict[str, float]               # the raw numbers of its details
    concepts: dict[str, dict[str, float]] = field(default_factory=dict)   # dissect: concept -> its figures
    units: dict[str, str] = field(default_factory=dict)                   # dissect: concept -> unit chosen

    def figure(self, name: str) -> Lift:
        return self.chance.get(name) or not_judged(self.reason or f"{name} was not measured")


def probe_result(metrics: Record, details: Record, class_names: list[str]) -> ProbeResult:
    concepts, chance = details.sub("concepts"), details.lifts("chance")
    agree(metrics, details, chance)
    return ProbeResult(
        chance=chance, reason=details.text("skipped") or details.text("reason") or details.text("skipped_scores"),
        figures={k: details.number(k) for k, v in details.data.items() if v is None or (known(v) and not isinstance(v, bool))},
        concepts={c: {k: concepts.number(c, k) for k, v in concepts.sub(c).data.items() if isinstance(v, (int, float))}
                  for c in concepts.data},
        units={k: str(v) for k, v in details.sub("held_out", "units").data.items()})


@dataclass(frozen=True)
class Dream:
    """Where the layer dream of clean images puts its change against one planted shortcut's truth region."""

    area_share: float                       # the region's share of the image: the share of an even change
    change_share: dict[str, float]          # layer -> share of the change inside the region
    toward_color: dict[str, float]          # layer -> how far pixels there move toward the shortcut's colour
    predicted_as_class: dict[str, float]    # layer -> share of dreams assigned to the shortcut's class


@dataclass(frozen=True)
class FeatureVizResult:
    mean_class_probability: float
    class_probability: dict[str, dict[str, float]]   # class -> start -> probability
    dream_images: int
    dreams: dict[str, Dream]                # class name -> its shortcut's dream


def feature_viz_result(metrics: Record, details: Record, class_names: list[str]) -> FeatureVizResult:
    probability = details.sub("class_probability")
    shortcuts = details.sub("dream", "shortcuts")

    def layers(name: str, *keys) -> dict[str, float]:
        return {layer: shortcuts.number(name, *keys, layer) for layer in shortcuts.sub(name, *keys).data}

    return FeatureVizResult(
        metrics.number("mean_class_probability"),
        {c: {s: probability.number(c, s) for s in probability.sub(c).data} for c in probability.data},
        details.count("dream", "images"),
        {name: Dream(shortcuts.number(name, "area_share"), layers(name, "change_share"), layers(name, "toward_color"),
                     layers(name, "predicted_as_shortcut_class")) for name in shortcuts.data})


@dataclass(frozen=True)
class Figures:
    """A stage without known-answer figures (train_gan, counterfactuals, optimisation, spectra): its headline numbers
    (booleans as 0/1) and the few details the report quotes."""

    metrics: dict[str, float]
    details: dict[str, float]

    def __getitem__(self, key: str) -> float:
        return self.metrics.get(key, self.details.get(key, NAN))


def figures_result(metrics: Record, details: Record | None, class_names: list[str]) -> Figures:
    def flat(record: Record | None) -> dict[str, float]:
        if record is None:
            return {}
        out = {}
        for key, value in record.data.items():
            if isinstance(value, dict):
                out |= {f"{key}.{k}": record.number(key, k) for k, v in value.items() if v is None or isinstance(v, (int, float))}
            elif value is None or isinstance(value, (int, float)):
                out[key] = float(value) if value is not None else NAN
        return out

    return Figures(flat(metrics), flat(details))


READERS: dict[str, Callable] = {
    "train_classifier": classifier_result, "explain": explain_result, "discover": discover_result,
    "attribute": attribute_result, "architectures": architectures_result, "influence": probe_result,
    "dissect": probe_result, "prototypes": probe_result, "feature_viz": feature_viz_result,
    "train_gan": figures_result, "counterfactuals": figures_result, "optimize_counterfactuals": figures_result,
    "spectra": figures_result,
}


# --------------------------------------------------------------------------------------------
# One dataset's run
# --------------------------------------------------------------------------------------------
@dataclass
class DatasetRun:
    """One dataset's results as the report reads them: its known answer, each stage's typed result, its pictures."""

    dataset: str
    answer: KnownAnswer
    class_names: list[str]
    source: str                                               # mnist | fashion-mnist | image_folder ...
    results: dict[str, object] = field(default_factory=dict)  # stage -> its result (stages that ran)
    pictures: dict[str, list[Path]] = field(default_factory=dict)
    more_pictures: dict[str, int] = field(default_factory=dict)
    picture_dirs: dict[str, Path] = field(default_factory=dict)

    def result(self, stage: str):
        """The stage's result, or None when it has not run."""
        return self.results.get(stage)

    @property
    def not_run(self) -> list[str]:
        return [stage for stage in READERS if stage not in self.results]


def stage_pictures(folder: Path) -> list[Path]:
    """Every PNG under a stage's plot folder, subfolders included (grids, galleries, DVCLive images)."""
    return sorted(folder.rglob("*.png"), key=lambda p: (len(p.relative_to(folder).parts), p.as_posix()))


def read_stage(stage: str, dataset: str, metrics_file: Path | None, plots: Path, class_names: list[str]):
    """The stage's result, or None when it has not run (none of its files exist); a missing or malformed file of a
    stage that ran is an error that names it."""
    details_file = plots / "details.json" if STAGE_FILES[stage][1] else None
    files = [f for f in (metrics_file, details_file) if f is not None]
    if stage != "train_classifier" and not any(f.exists() for f in files):
        return None
    made_by = f"{stage}@{dataset}"
    metrics = Record.read(metrics_file, made_by)
    details = Record.read(details_file, made_by) if details_file else None
    return READERS[stage](metrics, details, class_names)


def read_run(dataset: str, meta: dict, meta_file: Path, metrics_file: Callable[[str], Path],
             plots_dir: Callable[[str], Path]) -> DatasetRun:
    """Every stage's result of ``dataset`` (``metrics_file(name)``: metrics/<D>/<name>.json; ``plots_dir(stage)``:
    plots/<D>/<stage>), with the known answer and class names from prepare's ``meta`` (read from ``meta_file``)."""
    record = Record(meta_file, meta, f"prepare@{dataset}")
    try:
        answer = known_answer_from_meta(meta)
    except (KeyError, TypeError, ValueError) as err:
        raise record.error(f"records no readable known answer ({err})") from err
    run = DatasetRun(dataset, answer, record.names("class_names"), record.text("source"))
    if not run.class_names:
        raise record.error("names no class")
    for stage, (metrics_name, _) in STAGE_FILES.items():
        plots = plots_dir(stage)
        if stage in READERS:
            result = read_stage(stage, dataset, metrics_file(metrics_name), plots, run.class_names)
            if result is not None:
                run.results[stage] = result
        pictures = stage_pictures(plots) if plots.is_dir() else []
        run.pictures[stage] = pictures[:MAX_PICTURES]
        run.more_pictures[stage] = max(0, len(pictures) - MAX_PICTURES)
        run.picture_dirs[stage] = plots
    return run
