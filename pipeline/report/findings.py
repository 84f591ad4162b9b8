"""Sentences in plain words from one dataset's typed results: the verdict at the top and each section's findings.

Every figure scored against the known answer is said beside its chance level, in the words of
:meth:`~pipeline.scoring.chance.Lift.sentence`: "X against Y by chance (what the chance level is): lift L [lo, hi]",
then "above chance", "no better than chance" (the interval covers 0) or "below chance"; a figure not judged says why.
The report branches on the known answer's type (planted shortcuts, the negative control among them; a colour rule;
none), never on a dataset's name or kind.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.data.known_answer import ColorRule, PlantedShortcuts, Unknown
from pipeline.report.results import DatasetRun, known
from pipeline.scoring.chance import Lift, not_judged

RELIES = 0.5        # reliance over its controls from which the classifier is said to rely on a shortcut
PARTLY = 0.1        # ... to partly rely on it; below: it hardly uses it
NOT_RUN = "the stage has not run"


def pct(value: float | None) -> str:
    return "–" if not known(value) else f"{100 * value:.1f} %"


def joined(parts: list[str]) -> str:
    return "" if not parts else parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def interval(lift: Lift) -> str:
    """'lift 0.44 [0.42, 0.45]', or 'not judged (why)'."""
    if lift.verdict == "not judged":
        return f"not judged ({lift.reason or 'nothing to score'})"
    return f"lift {lift.lift:.2f} [{lift.low:.2f}, {lift.high:.2f}]"


# --------------------------------------------------------------------------------------------
# The evidence: each detector's headline figure against the known answer
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evidence:
    detector: str       # who found it: "explain's optimal masks"
    measure: str        # what it measured: "IoU with the truth region"
    method: str | None  # the method behind it, where a stage chose one
    lift: Lift

    @property
    def name(self) -> str:
        """'explain's optimal masks (d_ig)'."""
        return f"{self.detector} ({self.method})" if self.method else self.detector

    def said(self) -> str:
        """'explain's optimal masks (d_ig) 0.98 [0.95, 1.00]': the lift and its interval."""
        return f"{self.name} {self.lift.lift:.2f} [{self.lift.low:.2f}, {self.lift.high:.2f}]"


def said(lift: Lift, subject: str) -> str:
    """'<subject> is 0.72 against 0.08 by chance (what that is): lift 0.64 [0.58, 0.70], above chance.', or
    '<subject>: not judged (why).'"""
    if lift.verdict == "not judged":
        return f"{subject}: not judged ({lift.reason or 'nothing to score'})."
    return lift.sentence(f"{subject} is") + "."


def negative_control(run: DatasetRun) -> bool:
    """Planted shortcuts that are planted on no training image: every detector must stay at chance."""
    return isinstance(run.answer, PlantedShortcuts) and run.answer.is_negative_control


def shortcut_names(run: DatasetRun) -> list[str]:
    return [run.class_names[label] for label in run.answer.labels] if isinstance(run.answer, PlantedShortcuts) else []


def attribute_headline(run: DatasetRun) -> tuple[str | None, Lift]:
    """(method, Lift) of attribute's localisation headline (the most faithful method's: lowest deletion AUC)."""
    attribute = run.result("attribute")
    if attribute is None:
        return None, not_judged(NOT_RUN)
    return next(iter(attribute.headline.values()), (None, not_judged("no localisation headline for this answer")))


def evidence(run: DatasetRun) -> list[Evidence]:
    """The headline figure of every detector scored against the known answer (none for unknown images)."""
    explain, discover = run.result("explain"), run.result("discover")
    probe = lambda stage, figure: run.result(stage).figure(figure) if run.result(stage) else not_judged(NOT_RUN)  # noqa: E731
    masks = lambda figure: explain.figure(figure) if explain else not_judged(NOT_RUN)  # noqa: E731
    best = explain.best if explain else None
    method, attribution = attribute_headline(run)
    if isinstance(run.answer, PlantedShortcuts):
        region = (discover.region_iou or not_judged(discover.reason or discover.false_alarms_reason or "no region scored")
                  if discover else not_judged(NOT_RUN))
        return [Evidence("discovery's flagged regions", "IoU with the truth region", None, region),
                Evidence("explain's optimal masks", "IoU with the truth region", best, masks("shortcut_iou")),
                Evidence("explain's distractor control", "IoU with the truth region", best, masks("control_shortcut_iou")),
                Evidence("attribution", "relevance mass on stamped images of other classes", method, attribution),
                Evidence("TracIn", "stamped training images ranked within the class", None, probe("influence", "within_class_auc")),
                Evidence("dissection", "best unit's IoU", None, probe("dissect", "shortcut_unit_iou")),
                Evidence("MMD-critic", "criticisms without the shortcut", None, probe("prototypes", "criticism_unstamped_share"))]
    if isinstance(run.answer, ColorRule):
        return [Evidence("explain's optimal masks", "mass on the digit", best, masks("digit_mass_fraction")),
                Evidence("attribution", "relevance mass on the digit", method, attribution),
                Evidence("TracIn", "proponents' colormap position", None, probe("influence", "proponent_position_closeness")),
                Evidence("dissection", "best colour unit's IoU", None, probe("dissect", "color_unit_iou")),
                Evidence("MMD-critic", "criticisms at a colormap's end", None, probe("prototypes", "criticism_colormap_end_share"))]
    return []


def listed(found: list[Evidence]) -> str:
    return "; ".join(e.said() for e in found)


# --------------------------------------------------------------------------------------------
# The verdict: at most five lines
# --------------------------------------------------------------------------------------------
def reliance_verdict(effect: float) -> str:
    return "relies on it" if effect >= RELIES else "partly relies on it" if effect >= PARTLY else "hardly uses it"


def shortcut_use(run: DatasetRun, k: int) -> str:
    """What shortcut ``k`` does to the classifier: its reliance beside the base rate and the occlusion control."""
    classifier = run.result("train_classifier")
    name = run.class_names[run.answer.labels[k]]
    what = run.answer.describe(k, run.class_names)
    if k >= len(classifier.shortcuts):
        return f"{what}: its reliance was not measured"
    use = classifier.shortcuts[k]
    text = (f"{what}: stamped on clean test images of other classes it moves {pct(use.reliance)} of them into {name} "
            f"(as they are: {pct(use.base_rate)}; with the same pixels blacked out instead: {pct(use.occlusion_rate)})")
    if negative_control(run):
        return text + (": it does not use what it never saw, as it should not" if use.effect < PARTLY else
                       ": it reacts to a stamp it never saw in training")
    hidden = (" — blacking out those pixels does much of that: what the stamp hides, more than its content, moves the "
              "decision" if known(use.occlusion_rate) and use.occlusion_rate - use.base_rate >= PARTLY else "")
    return f"{text}: the classifier {reliance_verdict(use.effect)}{hidden}"


def discovery_line(run: DatasetRun) -> str:
    """Planted shortcuts: which shortcut classes discovery found without being told, and its false alarms."""
    discover = run.result("discover")
    if discover is None:
        return "Discovery (without the answer) has not run."
    if not discover.judged:
        return f"Discovery (without the answer) judged no class: {discover.reason or discover.false_alarms_reason}."
    names = shortcut_names(run)
    found = [c for c in names if c in discover.found_without_being_told]
    parts = []
    if found and not negative_control(run):
        parts.append(f"Found without being told: discovery flags class {joined(found)} for a region that recurs in its "
                     f"explanations and moves images of other classes into it on its own, overlapping the planted "
                     f"shortcut (IoU {interval(discover.region_iou)})" if discover.region_iou else
                     f"Found without being told: class {joined(found)}")
    missed = [c for c in names if c not in found]
    if missed and not negative_control(run):
        why = []
        for c in missed:
            entry = discover.classes.get(c)
            why.append(f"{c} not judged ({entry.reason})" if entry and not entry.judged else
                       f"{c} flagged, but its region is not the planted one" if c in discover.flagged else f"{c} not flagged")
        parts.append("Not found without being told: " + ", ".join(why))
    alarms = discover.false_alarm_classes or (discover.flagged if negative_control(run) else [])
    if negative_control(run):
        parts.append("Discovery flagged nothing, as it must where nothing is planted" if not discover.flagged else
                     f"Discovery raised {len(alarms)} false alarm(s) where nothing is planted: class {joined(alarms)}")
    elif discover.false_alarms is None:
        parts.append(f"false alarms not counted ({discover.false_alarms_reason})")
    else:
        parts.append(f"false alarms: {'class ' + joined(alarms) if alarms else 'none'}")
    return "; ".join(parts) + "."


def detector_lines(run: DatasetRun) -> list[str]:
    """Who found the answer above chance, who did not, and what could not be tested; on the negative control
    every figure above chance is a false alarm."""
    found = evidence(run)
    above = [e for e in found if e.lift.verdict == "above chance"]
    at = [e for e in found if e.lift.verdict == "no better than chance"]
    below = [e for e in found if e.lift.verdict == "below chance"]
    untested = [e for e in found if e.lift.verdict == "not judged"]
    lines = []
    if negative_control(run):
        quiet = at + below
        if quiet and not above:
            lines.append("Every detector judged stayed at or below chance, no false alarm (lift over chance, 95 % interval): "
                         + listed(quiet) + ".")
        elif above:
            if quiet:
                lines.append("At or below chance, as they must be here (lift over chance, 95 % interval): " + listed(quiet) + ".")
            lines.append("False alarms, above chance where nothing is planted: " + listed(above) + ".")
    else:
        lines.append((f"Found above chance by {len(above)} of {len(found)} detectors (lift over chance, 95 % interval): "
                      + listed(above) + ".") if above else
                     "No detector found the known answer above chance.")
        if at or below:
            lines.append("Not found: " + "; ".join(filter(None, [
                ("no better than chance: " + listed(at)) if at else "", ("below chance: " + listed(below)) if below else ""])) + ".")
    if untested:
        lines.append("Not tested: " + "; ".join(f"{e.name} ({e.lift.reason or 'nothing to score'})" for e in untested) + ".")
    return lines


def verdict(run: DatasetRun) -> list[str]:
    """At most five lines: what the classifier uses, how sure the pipeline is, what could not be tested and why."""
    answer, classifier = run.answer, run.result("train_classifier")
    if isinstance(answer, PlantedShortcuts):
        uses = "; ".join(shortcut_use(run, k) for k in range(len(answer.shortcuts)))
        first = (f"Negative control: {uses}." if answer.is_negative_control else f"What the classifier uses: {uses}.")
        return [first, discovery_line(run), *detector_lines(run)]
    if isinstance(answer, ColorRule):
        explain, discover = run.result("explain"), run.result("discover")
        text = (f"What the classifier uses: the colour. It tells the {len(run.class_names)} colormaps apart with "
                f"{pct(classifier.test_accuracy)} test accuracy")
        if explain and known(explain.colormap_agreement):
            text += f"; \"the nearest colormap to the digit's colour\" describes {pct(explain.colormap_agreement)} of its decisions"
        return [text + ".", color_discovery_line(discover), *detector_lines(run)]
    return own_images_verdict(run)


def color_discovery_line(discover) -> str:
    if discover is None:
        return "Discovery (without the answer) has not run."
    if not discover.judged:
        return f"Discovery (without the answer) judged no class: {discover.reason}."
    if not discover.flagged:
        return ("Discovery flags no region that works on its own for any class, as expected where the evidence (colour) "
                "is spread over the whole digit.")
    return (f"Discovery flags a region for class {joined(discover.flagged)}: with the colour spread over the whole digit, "
            f"{'that is a false alarm' if len(discover.flagged) == 1 else 'those are false alarms'}.")


def own_images_verdict(run: DatasetRun) -> list[str]:
    """Your own images: no answer to score against, so the verdict says what was found and what could not be run."""
    discover = run.result("discover")
    lines = [f"The classifier is right on {pct(run.result('train_classifier').test_accuracy)} of the test images. "
             f"{Unknown.reason.capitalize()}: the explanations below say what the classifier does, not whether it is right to."]
    if discover is None:
        lines.append("Discovery has not run.")
    elif not discover.judged:
        lines.append(f"Discovery judged no class: {discover.reason}.")
    elif discover.flagged:
        lines.append(f"Discovery flags class {joined(discover.flagged)}: " + " ".join(discover.sentences) + " Check those "
                     "regions in the pictures: a region that decides a class on its own is a candidate shortcut.")
    else:
        lines.append("Discovery finds no region that recurs in one class's explanations and decides it on its own.")
    skipped = skipped_parts(run)
    if skipped:
        lines.append("Not run: " + "; ".join(f"{what} ({why})" for what, why in skipped.items()) + ".")
    return lines


def skipped_parts(run: DatasetRun) -> dict[str, str]:
    """{what was skipped: why}, gathered from the stages' results."""
    skipped = {}
    for stage, label in (("dissect", "network dissection"), ("prototypes", "prototypes and criticisms"), ("influence", "TracIn")):
        result = run.result(stage)
        if result is not None and result.reason and not result.chance:
            skipped[label] = result.reason
    for stage in ("attribute", "explain"):
        for method, why in (run.result(stage).skipped if run.result(stage) else {}).items():
            skipped.setdefault(method, why)
    return skipped


# --------------------------------------------------------------------------------------------
# Each section's findings
# --------------------------------------------------------------------------------------------
def classifier_findings(run: DatasetRun) -> list[str]:
    c, names = run.result("train_classifier"), run.class_names
    if isinstance(run.answer, ColorRule):
        return [f"The classifier tells the {len(names)} colormaps ({', '.join(names)}) apart with {pct(c.test_accuracy)} "
                f"test accuracy; the digit's shape carries no information about the class."]
    if not isinstance(run.answer, PlantedShortcuts):
        return [f"On the {len(names)} classes ({', '.join(names)}) the classifier is right on {pct(c.test_accuracy)} of the "
                f"test images."]
    lines = [f"On test images drawn like the training set the classifier is right {pct(c.test_accuracy)} of the time; on "
             f"clean test images (no stamp anywhere) {pct(c.clean_accuracy)}."]
    for k in range(len(run.answer.shortcuts)):
        lines.append(shortcut_use(run, k)[0].upper() + shortcut_use(run, k)[1:] + ". Reliance is the truth every detector "
                     "below is scored against: the base rate and the blacked-out pixels are its controls.")
    return lines


HEADLINE_WORDS = {PlantedShortcuts: "relevance mass on the planted shortcut's region of clean images of other classes "
                                     "that the stamp moves into its class",
                  ColorRule: "relevance mass on the digit's pixels (where the colour is)"}


def attribute_findings(run: DatasetRun) -> list[str]:
    a = run.result("attribute")
    method, headline = attribute_headline(run)
    words = next((w for kind, w in HEADLINE_WORDS.items() if isinstance(run.answer, kind)), None)
    lines = []
    if words:
        lines.append(said(headline, f"The {words}, for the most faithful method ({method or 'none judged'}: the lowest "
                                    f"deletion AUC, chosen without the known answer),"))
        if negative_control(run) and headline.above_chance:
            lines.append(f"Nothing is planted here, so that is a false alarm of the attribution headline: {method} puts more "
                         f"relevance on the square's pixels than {headline.reference} does, in a classifier that never saw "
                         f"the square.")
    figure = next((f for f in ("relevance_mass_flipped", "relevance_mass_digit") if f in a.chance), None)
    if figure:
        groups: dict[str, list[str]] = {}
        for m, lift in a.chance[figure].items():
            groups.setdefault(lift.verdict, []).append(m)
        lines.append("Per method, on that figure: " + "; ".join(f"{v}: {', '.join(ms)}" for v, ms in groups.items()) + ".")
    if known(a.best_deletion_auc):
        lines.append(f"Deleting pixels in the order of {a.best_deletion}'s map lowers the class probability fastest: deletion "
                     f"AUC {a.best_deletion_auc:.3f} against {a.random_order_deletion_auc:.3f} for a random order (lower: "
                     f"more faithful).")
    ranked = sorted((m for m in a.scores if known(a.scores[m].get("randomization_spearman"))),
                    key=lambda m: abs(a.scores[m]["randomization_spearman"]))
    if a.reinitialized_model.startswith("not available"):
        lines.append(f"No re-initialised copy of this classifier ({a.reinitialized_model}): the model-randomisation check "
                     f"and that chance level are left out.")
    if ranked:
        lines.append(f"Model-randomisation check: {ranked[0]} changes most when the weights are re-initialised (rank "
                     f"correlation {a.scores[ranked[0]]['randomization_spearman']:.2f}), {ranked[-1]} least "
                     f"({a.scores[ranked[-1]]['randomization_spearman']:.2f}): a map that survives randomisation explains the "
                     f"input, not the model.")
    if known(a.gradcam_iou) and run.answer.known:
        lines.append(f"Thresholded, Grad-CAM segments the digit with IoU {a.gradcam_iou:.2f}; a whole-image mask scores about "
                     f"the digit's share of the image, {a.digit_area_fraction:.2f}.")
    return lines


def architecture_findings(run: DatasetRun) -> list[str]:
    """Where the architectures trained alike agree (accuracy, reliance) and how their maps score against the answer."""
    r = run.result("architectures")
    if len(r.architectures) < 2:
        return []
    names = list(r.architectures)
    planted = isinstance(run.answer, PlantedShortcuts)
    each = [f"{a} {pct(x.test_accuracy)}" + (f" (reliance {pct(x.shortcut_reliance)}, as they are {pct(x.shortcut_base_rate)})"
                                             if planted and known(x.shortcut_reliance) else "")
            for a, x in r.architectures.items()]
    lines = [f"Trained alike ({r.epochs} epoch{'' if r.epochs == 1 else 's'} on the same data, in the same order, from the "
             f"same seed), {joined(names)} reach this test accuracy: {'; '.join(each)}."]
    if r.skipped:
        lines.append(f"Not scored against an answer: {r.skipped}.")
    methods = " and ".join(r.headline_methods) or "no method every architecture ran"
    what = {PlantedShortcuts: "relevance mass on the planted shortcut's region of stamped images",
            ColorRule: "relevance mass on the digit's pixels"}
    words = next((w for kind, w in what.items() if isinstance(run.answer, kind)), None)
    for a, lift in r.chance.get(r.headline, {}).items():
        if words:
            lines.append(said(lift, f"{a}'s {words} ({methods}, averaged per image)"))
    by_method: dict[str, list[float]] = {}
    for pair in r.rank_correlation.values():
        for m, value in pair.items():
            if known(value):
                by_method.setdefault(m, []).append(value)
    if by_method:
        lines.append("Mean Spearman rank correlation of the maps of two architectures on the same test images: "
                     + ", ".join(f"{m} {sum(v) / len(v):.2f}" for m, v in by_method.items())
                     + " (maps that are zero wherever the input is black agree there whatever the model).")
    return lines


def residual_sentence(e) -> str:
    """Whether the residual |real - counterfactual|, which needs no model, does as well as the best method."""
    lift = e.figure("score_vs_residual")
    if lift.verdict == "not judged":
        return said(lift, f"{e.best}'s score over the residual's")
    says = {"above chance": f"{e.best} beats the residual |real − counterfactual|",
            "no better than chance": f"The residual |real − counterfactual|, which needs no model, does as well as {e.best}",
            "below chance": f"The residual |real − counterfactual|, which needs no model, does better than {e.best}"}
    return f"{says[lift.verdict]}: " + said(lift, f"{e.best}'s mean score")


def control_residual_sentence(e) -> str:
    best, residual = e.figure("control_shortcut_iou"), e.figure("control_shortcut_iou", "residual")
    if best.verdict == "not judged" or residual.verdict == "not judged":
        return ""
    if residual.score >= best.score:
        return (f"On the distractor control the residual's masks overlap the stamp as well as or better than {e.best}'s "
                f"(IoU {residual.score:.2f} against {best.score:.2f}, the same pairs): there the difference of the two images "
                f"alone already points at the stamp.")
    return (f"On the distractor control {e.best}'s masks overlap the stamp better than the residual's (IoU {best.score:.2f} "
            f"against {residual.score:.2f}, the same pairs): the change elsewhere splits the residual's masks.")


def explain_findings(run: DatasetRun) -> list[str]:
    e = run.result("explain")
    if not e.n_kept:
        return [f"None of the {e.n_pairs} counterfactuals reaches its target class: nothing was explained."]
    lines = [f"{e.n_kept} of {e.n_pairs} image/counterfactual pairs reach their target class and were explained. The best "
             f"discriminative method, chosen by median score (area under score change vs. mask size; never by the known "
             f"answer), is {e.best or 'none: no discriminative method ran'}."]
    if e.best:
        lines.append(said(e.figure("score_vs_random"), f"{e.best}'s mean score"))
        lines.append(residual_sentence(e))
    worse = [m for m, lift in e.chance.get("score_vs_random", {}).items() if lift.verdict == "below chance"]
    if worse:
        lines.append(f"Below the random map's score on the same pairs: {', '.join(worse)}.")
    if isinstance(run.answer, PlantedShortcuts):
        classes = joined(shortcut_names(run))
        lines.append(said(e.figure("shortcut_iou"), f"On the {e.n_into_shortcut_class} GAN pairs into {classes}, the IoU of "
                                                    f"{e.best}'s optimal masks with the planted shortcut's truth region"))
        if known(e.gan_shortcut_fraction):
            lines.append(f"The GAN painted the shortcut on {pct(e.gan_shortcut_fraction)} of those counterfactuals "
                         f"({e.n_carrying_shortcut} of {e.n_into_shortcut_class})"
                         + (": most of those pairs test the digit, not the shortcut; the distractor control tests the shortcut."
                            if e.gan_shortcut_fraction < 0.5 else "."))
        if e.control is not None:
            lines.append(said(e.figure("control_shortcut_iou"), f"On the distractor control ({e.control.n_pairs} pairs; it "
                                                                f"measures {e.control.measures}), the IoU"))
            lines.append(control_residual_sentence(e))
        if negative_control(run):
            lines.append("Nothing is planted here: the masks must not find the square, and a figure above chance is a false alarm.")
    elif isinstance(run.answer, ColorRule):
        lines.append(said(e.figure("digit_mass_fraction"), f"The share of {e.best}'s optimal masks on the digit's pixels"))
    return [line for line in lines if line]


def discover_findings(run: DatasetRun) -> list[str]:
    d = run.result("discover")
    lines = [f"Discovery reads the {d.method} optimal masks of the {d.n_pairs} explained pairs, without the answer: per class, "
             f"regions its pairs use more often than other classes' pairs do (chosen on one half of the pairs, tested on the "
             f"other), and whether such a region, pasted alone into images of other classes, moves them into the class more "
             f"than the same paste at other places or from other classes' counterfactuals does."]
    if not d.judged:
        return lines + [f"No class was judged: {d.reason}."]
    lines += d.sentences or ["No class has a region of its own that recurs on the held-out pairs."]
    if d.region_iou is not None:
        lines.append(said(d.region_iou, "The flagged regions' IoU with the planted shortcut's truth region"))
    if negative_control(run):
        lines.append("Nothing is planted here: every flagged class is a false alarm" + (
            f"; flagged: {joined(d.flagged)}." if d.flagged else "; none was flagged."))
    elif d.false_alarms is not None and run.answer.known:
        lines.append(f"False alarms (flagged classes without a planted shortcut): {joined(d.false_alarm_classes) or 'none'}.")
    unjudged = [f"{c} ({entry.reason})" for c, entry in d.classes.items() if not entry.judged]
    if unjudged:
        lines.append("Not judged: class " + "; ".join(unjudged) + ".")
    return lines


def influence_findings(run: DatasetRun) -> list[str]:
    r = run.result("influence")
    if not r.chance:
        return [f"TracIn was not run: {r.reason}."]
    f = r.figures
    lines = [f"TracIn traces {int(f.get('n_queries', 0))} test decisions back to {int(f.get('n_train', 0))} training images "
             f"through the classifier's {int(f.get('n_checkpoints', 0))} per-epoch checkpoints."]
    if isinstance(run.answer, PlantedShortcuts):
        lines.append(said(r.figure("within_class_auc"), "The within-class AUC of stamped queries (images of other classes "
                          "that the stamp moves into the class: do they rank the class's stamped training images above its "
                          "unstamped ones?) beside that of clean queries of the class"))
        lines.append(said(r.figure("proponent_precision_at_10"), "The share of stamped images among the 10 strongest "
                          "proponents of stamped queries"))
    elif isinstance(run.answer, ColorRule):
        lines.append(said(r.figure("proponent_position_closeness"), "How close the 10 strongest proponents sit to the "
                          "query along the colormap (1 − position gap)"))
    return lines


def dissect_findings(run: DatasetRun) -> list[str]:
    r = run.result("dissect")
    if not r.chance:
        return [f"Network dissection was not run: {r.reason}."]
    n = int(r.figures.get("n_images", 0))
    lines = []
    if isinstance(run.answer, PlantedShortcuts):
        lift = r.figure("shortcut_unit_iou")
        lines.append(said(lift, f"The IoU with the planted shortcut of the unit that segments it best "
                                f"({r.units.get('shortcut', '?')}, chosen on half of the {n} test images), on the other half"))
        if negative_control(run) and lift.above_chance:
            lines.append(f"Nothing is planted here, so that is a false alarm of dissection: a unit segments a stamp that the "
                         f"classifier never saw in training better than {lift.reference} does, so segmenting it does not show "
                         f"that the classifier uses it.")
    elif isinstance(run.answer, ColorRule):
        lines.append(said(r.figure("color_unit_iou"), f"The IoU with its colormap's pixels of the best unit per colormap "
                                                      f"(chosen on half of the {n} test images), on the other half"))
    if "digit_unit_iou" in r.chance:
        lines.append(said(r.figure("digit_unit_iou"), f"The IoU with the digit's pixels of the best digit unit "
                                                      f"({r.units.get('digit', '?')}), likewise"))
    return lines


def prototypes_findings(run: DatasetRun) -> list[str]:
    r = run.result("prototypes")
    intro = ("MMD-critic picks, per class, the training images that together look like the class in the classifier's "
             "penultimate features (prototypes) and those they represent worst (criticisms).")
    if isinstance(run.answer, PlantedShortcuts):
        return [intro, said(r.figure("criticism_unstamped_share"),
                            "In a class that carries the shortcut, the share of criticisms without it"),
                said(r.figure("prototype_unstamped_share"), "The same share among its prototypes")]
    if isinstance(run.answer, ColorRule):
        return [intro, said(r.figure("criticism_colormap_end_share"),
                            "The share of criticisms in the outer tenth at either end of their colormap"),
                said(r.figure("prototype_colormap_end_share"), "The same share among the prototypes")]
    return [intro + (f" Not scored: {r.reason}." if r.reason else "")]


def feature_viz_findings(run: DatasetRun) -> list[str]:
    r = run.result("feature_viz")
    lines = []
    if known(r.mean_class_probability):
        lines.append(f"Inputs synthesised by activation maximisation reach a mean class probability of "
                     f"{r.mean_class_probability:.2f} (a uniform guess: {1 / len(run.class_names):.2f}).")
    for name, dream in r.dreams.items():
        if not dream.change_share:
            continue
        layer = max(dream.change_share, key=dream.change_share.get)
        lines.append(f"Dreamed by each convolution layer, {r.dream_images} clean test images of other classes put at most "
                     f"{pct(dream.change_share[layer])} of their change inside {name}'s shortcut region ({layer}), which "
                     f"covers {pct(dream.area_share)} of the image (an even change puts that much there); pixels there move up "
                     f"to {pct(max(dream.toward_color.values()))} of the way toward the shortcut's colour, and up to "
                     f"{pct(max(dream.predicted_as_class.values()))} of the dreams are assigned to {name}.")
    return lines


def counterfactual_findings(run: DatasetRun) -> list[str]:
    m = run.result("counterfactuals")
    if not known(m["conversion_rate"]):
        return []
    text = (f"The GAN's counterfactuals are assigned to their target class by the classifier {pct(m['conversion_rate'])} of "
            f"the time (reference-guided; latent-guided {pct(m['conversion_rate_latent'])}). A translation changes "
            f"{pct(m['changed_pixel_fraction'])} of the pixels by more than 0.1 (mean L1 {m['mean_l1']:.3f}).")
    if known(m["feature_distance"]) and known(m["feature_distance_real_floor"]):
        text += (f" Their Fréchet distance to real target-class images in the classifier's feature space is "
                 f"{m['feature_distance']:.2f}, against {m['feature_distance_real_floor']:.2f} between real images at the "
                 f"same sample sizes.")
    if known(m["exact_counterfactual_error"]):
        text += (f" Against the exact counterfactual (the same digit recolored with the target colormap at the same "
                 f"position) they are off by {m['exact_counterfactual_error']:.3f} per pixel and channel on average"
                 + (f", against {m['exact_counterfactual_error.unchanged_image']:.3f} for leaving the image unchanged."
                    if known(m["exact_counterfactual_error.unchanged_image"]) else "."))
    return [text]


def optimization_findings(run: DatasetRun) -> list[str]:
    m = run.result("optimize_counterfactuals")
    if not known(m["success_rate"]):
        return []
    text = (f"Optimising the input directly reaches the wanted class for {pct(m['success_rate'])} of images with a mean L1 "
            f"change (summed over pixels) of {m['mean_l1']:.2f}")
    if known(m["gan_success_rate"]):
        text += f" (the GAN on the same image and wanted-class pairs: {pct(m['gan_success_rate'])})"
    return [text + "."]


def spectra_findings(run: DatasetRun) -> list[str]:
    m = run.result("spectra")
    accuracy, control, threshold = m["spectral_detector_accuracy"], m["control_accuracy"], m["artifact_threshold"]
    if not known(accuracy):
        return []
    text = (f"A linear detector on radially averaged log-magnitude spectra, with real images clamped to the generator's "
            f"pixel range like its output, tells counterfactuals from real test images with {pct(accuracy)} cross-validated "
            f"accuracy")
    text += f"; on two halves of the real test images the same detector scores {pct(control)} (chance: 50 %)." if known(control) else "."
    limit = f"the {threshold:.2f} threshold" if known(threshold) else "the threshold"
    detected = m["frequency_artifacts_detected"]
    if detected == 1:
        text += f" That is above {limit} and clearly above the control: the generator leaves frequency artifacts that the classifier could react to."
    elif known(threshold) and accuracy <= threshold:
        text += f" That is not above {limit}: no clear frequency artifacts."
    elif detected == 0:
        text += " The control is almost as high, so the detector is not measuring the generator: no clear frequency artifacts."
    return [text]


FINDINGS = {"train_classifier": classifier_findings, "attribute": attribute_findings, "architectures": architecture_findings,
            "counterfactuals": counterfactual_findings, "explain": explain_findings, "discover": discover_findings,
            "feature_viz": feature_viz_findings, "dissect": dissect_findings, "prototypes": prototypes_findings,
            "influence": influence_findings, "optimize_counterfactuals": optimization_findings, "spectra": spectra_findings}


def findings(run: DatasetRun, stage: str) -> list[str]:
    """The sentences of one stage's section (none for a stage that has not run or says nothing in words)."""
    return FINDINGS[stage](run) if stage in FINDINGS and run.result(stage) is not None else []
