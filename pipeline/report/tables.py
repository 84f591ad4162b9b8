"""The report's tables, one set per stage section, built from the typed results: classes by name, every
known-answer figure as its lift with its 95 % interval beside the chance level it is a lift over."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.data.known_answer import PlantedShortcuts
from pipeline.report.findings import evidence, pct
from pipeline.report.results import DatasetRun, Figures, known
from pipeline.scoring.chance import Lift

MAX_ROWS = 12   # a larger table (per class pair ...) stays in details.json


@dataclass(frozen=True)
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]


def number(value, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if known(value) else "–"


def cell(lift: Lift | None) -> str:
    """'0.44 [0.42, 0.45]' (the lift and its interval), '–' where there is none, 'not judged'."""
    if lift is None:
        return "–"
    if lift.verdict == "not judged":
        return "not judged"
    return f"{lift.lift:.2f} [{lift.low:.2f}, {lift.high:.2f}]"


def lift_rows(lifts: dict[str, Lift], labels: dict[str, str]) -> list[list[str]]:
    """One row per figure: what it is, its score, its chance level and what that is, the lift and interval, the verdict."""
    return [[labels.get(name, name), number(lift.score), number(lift.chance), lift.reference or "–", cell(lift),
             lift.verdict + (f" ({lift.reason})" if lift.reason else "")] for name, lift in lifts.items()]


LIFT_HEADER = ["figure", "score", "chance", "chance level", "lift [95 % interval]", "verdict"]


def grid(title: str, members: list[str], columns: dict[str, dict[str, Lift]], labels: dict[str, str],
         first: str, extra: dict[str, dict[str, str]] | None = None) -> Table:
    """Members (methods, architectures) as rows, figures as columns of lift cells; ``extra``: more columns of text."""
    extra = extra or {}
    header = [first, *extra, *(labels.get(f, f) for f in columns)]
    rows = [[m, *(extra[e].get(m, "–") for e in extra), *(cell(columns[f].get(m)) for f in columns)] for m in members]
    return Table(title, header, rows[:MAX_ROWS])


# --------------------------------------------------------------------------------------------
# Per stage
# --------------------------------------------------------------------------------------------
def classifier_tables(run: DatasetRun) -> list[Table]:
    c = run.result("train_classifier")
    tables = []
    if isinstance(run.answer, PlantedShortcuts) and c.shortcuts:
        rows = [[use.class_name, run.answer.describe(k, run.class_names), pct(use.area_fraction), pct(use.reliance),
                 pct(use.base_rate), pct(use.occlusion_rate)] for k, use in enumerate(c.shortcuts)]
        tables.append(Table("What each planted shortcut does: share of clean test images of other classes assigned to its class",
                            ["class", "planted", "area", "stamped (reliance)", "as they are (base rate)", "blacked out"], rows))
    if len(c.per_class_accuracy) <= MAX_ROWS:
        tables.append(Table("Test accuracy per class", ["class", "accuracy"],
                            [[name, pct(value)] for name, value in c.per_class_accuracy.items()]))
    return tables


ATTRIBUTE_LABELS = {"relevance_mass_shortcut": "relevance mass, own class stamped", "pointing_game_shortcut": "pointing game, own class",
                    "relevance_mass_flipped": "relevance mass, others flipped", "pointing_game_flipped": "pointing game, flipped",
                    "relevance_mass_digit": "relevance mass on the digit", "pointing_game_digit": "pointing game, digit"}


def attribute_tables(run: DatasetRun) -> list[Table]:
    a = run.result("attribute")
    raw = {"deletion AUC": {m: number(s.get("deletion_auc")) for m, s in a.scores.items()},
           "randomisation ρ": {m: number(s.get("randomization_spearman"), 2) for m, s in a.scores.items()}}
    return [grid("Each method: lift over chance of each localisation figure [95 % interval]; deletion AUC (random order: "
                 f"{number(a.random_order_deletion_auc)}); rank correlation with the map of a re-initialised model",
                 list(a.scores), a.chance, ATTRIBUTE_LABELS, "method", raw)]


ARCHITECTURE_LABELS = {"relevance_mass": "relevance mass on the shortcut: lift [95 % interval]",
                       "digit_relevance_mass": "relevance mass on the digit: lift [95 % interval]"}


def architecture_tables(run: DatasetRun) -> list[Table]:
    r = run.result("architectures")
    planted = isinstance(run.answer, PlantedShortcuts)
    extra = {"test accuracy": {a: pct(x.test_accuracy) for a, x in r.architectures.items()}}
    if planted:
        extra["reliance"] = {a: pct(x.shortcut_reliance) for a, x in r.architectures.items()}
        extra["as they are"] = {a: pct(x.shortcut_base_rate) for a, x in r.architectures.items()}
    return [grid("Architectures trained alike", list(r.architectures), {r.headline: r.chance.get(r.headline, {})},
                 ARCHITECTURE_LABELS, "architecture", extra)]


# explain's figures shown per method (the mask mass beside each IoU stays in details.json)
EXPLAIN_LABELS = {"score_vs_random": "score over the random map's", "score_vs_residual": "score over the residual's",
                  "shortcut_iou": "IoU with the shortcut", "shortcut_iou_carried": "IoU, pairs carrying it",
                  "control_shortcut_iou": "distractor control: IoU", "digit_mass_fraction": "mass on the digit"}


def explain_tables(run: DatasetRun) -> list[Table]:
    e = run.result("explain")
    extra = {"median score": {m: number(s) for m, s in e.median_score.items()}}
    if e.control is not None:
        extra["control: median score"] = {m: number(s) for m, s in e.control.median_score.items()}
    columns = {f: e.chance[f] for f in EXPLAIN_LABELS
               if any(lift.verdict != "not judged" for lift in e.chance.get(f, {}).values())}
    return [grid(f"Each method: lift over chance [95 % interval] (best discriminative: {e.best})", list(e.median_score),
                 columns, EXPLAIN_LABELS, "method", extra)]


def discover_tables(run: DatasetRun) -> list[Table]:
    d = run.result("discover")
    rows = []
    for name, c in d.classes.items():
        tested = [r for r in c.regions if r.trigger is not None]
        best = max(tested, key=lambda r: r.trigger.lift, default=None)
        rows.append([name, str(c.n_pairs), "yes" if c.judged else f"no ({c.reason})", "FLAGGED" if c.flagged else "",
                     str(sum(r.significant for r in c.regions)),
                     f"{best.height}×{best.width} at row {best.top}, column {best.left}" if best else "–",
                     cell(best.trigger) if best else "–", cell(d.region_iou_by_class.get(name))])
    return [Table("Per class: pairs, whether judged and flagged, regions recurring on held-out pairs, the best region's "
                  "trigger rate over its controls and, for a shortcut's class, its IoU over chance",
                  ["class", "pairs", "judged", "flagged", "recurring regions", "best region", "trigger lift",
                   "IoU lift"], rows)]


PROBE_LABELS = {"within_class_auc": "stamped vs. clean queries: within-class AUC", "proponent_precision_at_10":
                "stamped proponents in the top 10", "clean_query_precision_at_10": "clean queries: stamped in the top 10",
                "within_class_auc_stamped": "stamped queries: within-class AUC", "within_class_auc_clean":
                "clean queries: within-class AUC", "proponent_position_closeness": "proponents' closeness along the colormap",
                "shortcut_unit_iou": "best shortcut unit: IoU", "digit_unit_iou": "best digit unit: IoU",
                "color_unit_iou": "best colour unit: IoU", "criticism_unstamped_share": "criticisms without the shortcut",
                "prototype_unstamped_share": "prototypes without the shortcut",
                "criticism_colormap_end_share": "criticisms at a colormap's end",
                "prototype_colormap_end_share": "prototypes at a colormap's end",
                "criticism_position_gap": "criticisms' gap to the nearest prototype"}


def probe_tables(run: DatasetRun, stage: str) -> list[Table]:
    r = run.result(stage)
    tables = [Table("Each figure beside its chance level", LIFT_HEADER, lift_rows(r.chance, PROBE_LABELS))] if r.chance else []
    if r.concepts:
        tables.append(Table("Each concept: units that detect it, the best unit and its IoU on the whole sample",
                            ["concept", "share of the image", "units", "best unit IoU"],
                            [[c, pct(f.get("area_share")), number(f.get("units")), number(f.get("best_iou"), 2)]
                             for c, f in r.concepts.items()][:MAX_ROWS]))
    return tables


def feature_viz_tables(run: DatasetRun) -> list[Table]:
    r = run.result("feature_viz")
    tables = []
    starts = sorted({s for v in r.class_probability.values() for s in v})
    if r.class_probability and len(r.class_probability) <= MAX_ROWS:
        tables.append(Table("Class probability of each class's synthesised input, per start", ["class", *starts],
                            [[c, *(number(v.get(s), 3) for s in starts)] for c, v in r.class_probability.items()]))
    for name, dream in r.dreams.items():
        tables.append(Table(f"Layer dream against {name}'s shortcut region ({pct(dream.area_share)} of the image)",
                            ["layer", "change inside", "toward its colour", f"assigned to {name}"],
                            [[layer, pct(share), pct(dream.toward_color.get(layer)), pct(dream.predicted_as_class.get(layer))]
                             for layer, share in dream.change_share.items()]))
    return tables


def evidence_table(run: DatasetRun) -> list[Table]:
    """The verdict's evidence: each detector's headline figure beside its chance level."""
    found = evidence(run)
    rows = [[e.name, e.measure, number(e.lift.score, 2),
             f"{number(e.lift.chance, 2)} ({e.lift.reference})" if known(e.lift.chance) else "–",
             cell(e.lift), e.lift.verdict + (f" ({e.lift.reason})" if e.lift.reason else "")] for e in found]
    return [Table("How sure: each detector's headline figure against the known answer, beside its chance level",
                  ["detector", "measures", "score", "chance (what it is)", "lift [95 % interval]", "verdict"], rows)] if rows else []


def figures_table(figures: Figures) -> list[Table]:
    rows = [[key, number(value, 4)] for key, value in figures.metrics.items()]
    return [Table("", ["metric", "value"], rows)] if rows else []


def tables(run: DatasetRun, stage: str) -> list[Table]:
    """The tables of one stage's section (none for a stage that has not run)."""
    result = run.result(stage)
    if result is None:
        return []
    if isinstance(result, Figures):
        return figures_table(result)
    builders = {"train_classifier": classifier_tables, "attribute": attribute_tables, "architectures": architecture_tables,
                "explain": explain_tables, "discover": discover_tables, "feature_viz": feature_viz_tables}
    return builders[stage](run) if stage in builders else probe_tables(run, stage)
