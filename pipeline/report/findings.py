"""Sentences in plain words built from one dataset's metrics and details: the verdict and the findings per stage."""
from __future__ import annotations

from pipeline.report.run import DatasetRun


def pct(value: float | None) -> str:
    return "–" if value is None or value != value else f"{100 * value:.1f} %"


def known(value) -> bool:
    """A number that was measured (not null, not NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


RELIES = 0.5        # reliance minus base rate from which the classifier is said to rely on a shortcut
PARTLY = 0.1


def reliance_verdict(reliance: float, base_rate: float, kind: str) -> str:
    effect = reliance - (base_rate if known(base_rate) else 0.0)
    return (f"relies on the {kind}" if effect >= RELIES else f"partly relies on the {kind}" if effect >= PARTLY
            else f"hardly uses the {kind}")


def occlusion_caveat(reliance: float, occlusion: float | None, kind: str) -> str:
    """When blacking out the stamp's area moves at least half as many images as the stamp does, what the stamp
    hides, more than its colour, is what moves them: said, so that reliance is not read as a colour shortcut."""
    if not known(occlusion) or not known(reliance) or occlusion < 0.5 * reliance:
        return ""
    return (f", but blacking out the same area does {'most' if occlusion < reliance else 'all'} of that: "
            f"what the {kind} hides of the digit, more than its colour, moves the decision")


def verdict(run: DatasetRun, meta: dict) -> list[str]:
    """The answer first: what the classifier relies on, how sure the pipeline is, how that scores against the truth."""
    classifier, discover = run.metric("classifier"), run.metric("discover")
    flagged = run.detail("discover").get("flagged_classes")
    judged = [name for name, c in (run.detail("discover").get("classes") or {}).items() if c.get("judged", True)]
    if flagged is not None and not flagged and not judged and run.detail("discover").get("classes"):
        flagged = None  # nothing could be judged: no verdict from discovery, said below instead
    lines = []
    if run.kind == "clever_hans":
        reliance, base = classifier.get("shortcut_reliance"), classifier.get("shortcut_base_rate")
        if known(reliance):
            lines.append(f"The classifier {reliance_verdict(reliance, base, 'planted shortcut')}: stamped on images of other "
                         f"classes it moves {pct(reliance)} of them into the shortcut's class (without the stamp: {pct(base)}).")
        if flagged is not None:
            iou = discover.get("shortcut_region_iou")
            found = [c for c in flagged if c in shortcut_classes(run)]
            if found:
                lines.append(f"Found without being told: the discovery stage flags class {', '.join(found)} for a region that recurs "
                             f"in its explanations and, pasted alone into images of other classes, moves them into it; its "
                             f"overlap with the planted shortcut is IoU {iou:.2f}"
                             + (f", with {discover['false_alarms']} false alarm(s)." if discover.get("false_alarms") else ", with no false alarm."))
            else:
                lines.append("Not found without being told: the discovery stage flags no region in the shortcut's class"
                             + (f" (false alarms: {', '.join(flagged)})." if flagged else "."))
    elif run.kind == "image_folder":
        lines += own_images_verdict(run, flagged)
    else:
        rule = run.detail("explain").get("color_rule") or {}
        text = f"The classifier tells the colormaps apart ({pct(classifier.get('test_accuracy'))} test accuracy)"
        if known(rule.get("nearest_colormap_agreement")):
            text += (f"; \"the nearest colormap to the digit's colour\" describes its decision on {pct(rule['nearest_colormap_agreement'])} "
                     f"of test images")
        lines.append(text + ".")
        if flagged is not None:
            lines.append("As expected where the evidence (colour) is spread over the whole digit, the discovery stage finds no "
                         "region that works on its own (a shortcut) for any class." if not flagged else
                         f"The discovery stage flags a recurring region for {', '.join(flagged)}: with colour spread over the digit "
                         f"these are false alarms ({discover.get('false_alarms')}).")
    if run.detail("discover").get("classes") and not judged:
        lines.append("The discovery stage had too few explained pairs per class to judge any class "
                     "(raise counterfactuals.n_images or explain.max_pairs, or lower discover.min_pairs).")
    return lines


def own_images_verdict(run: DatasetRun, flagged: list[str] | None) -> list[str]:
    """Your own images: no answer to score against, so the verdict says what was found and what could not be run."""
    accuracy = run.metric("classifier").get("test_accuracy")
    lines = [f"The classifier is right on {pct(accuracy)} of the test images. These images carry no known answer, so "
             "no explanation below is scored against one: they say what the classifier does, not whether it is right to."]
    sentences = run.detail("discover").get("sentences") or []
    if flagged:
        lines.append("Found without being told: " + " ".join(sentences) + " Check those regions in the pictures: a region "
                     "that decides a class on its own is a candidate shortcut.")
    elif flagged is not None:
        lines.append("The discovery stage finds no region that recurs in one class's explanations and decides it on its own.")
    skipped = skipped_parts(run)
    if skipped:
        lines.append("Not run: " + "; ".join(f"{what} ({why})" for what, why in skipped.items()) + ".")
    return lines


def skipped_parts(run: DatasetRun) -> dict[str, str]:
    """{what was skipped: why}, gathered from the stages' details."""
    skipped = {}
    for stage_name, label in (("dissect", "network dissection"), ("prototypes", "prototypes and criticisms")):
        if run.detail(stage_name).get("skipped"):
            skipped[label] = run.detail(stage_name)["skipped"]
    influence = run.detail("influence")
    if influence.get("n_queries") == 0 and influence.get("reason"):
        skipped["TracIn"] = influence["reason"]
    for stage_name in ("attribute", "explain"):
        for method, why in (run.detail(stage_name).get("skipped" if stage_name == "attribute" else "skipped_methods") or {}).items():
            skipped.setdefault(method, why)
    return skipped


def shortcut_classes(run: DatasetRun) -> set[str]:
    return {str(key).split("_", 1)[0] for key in run.detail("train_classifier").get("shortcut_reliance_per_class", {})}


def classifier_findings(run: DatasetRun, meta: dict) -> list[str]:
    m, d = run.metric("classifier"), run.detail("train_classifier")
    if run.kind == "image_folder":
        return [f"On the {len(meta['class_names'])} classes ({', '.join(meta['class_names'])}) the classifier is right on "
                f"{pct(m.get('test_accuracy'))} of the test images."]
    if run.kind == "colored_mnist":
        return [f"The classifier tells the {len(meta['class_names'])} colormaps ({', '.join(meta['class_names'])}) apart "
                f"with {pct(m['test_accuracy'])} test accuracy; the digit shape carries no information about the class."]
    lines = [f"On test images drawn like the training set the classifier is right {pct(m['test_accuracy'])} of the time; "
             f"on clean test images (no shortcut anywhere) {pct(m.get('clean_accuracy'))}."]
    base_rates = d.get("shortcut_base_rate_per_class", {})
    occlusion_rates = d.get("shortcut_occlusion_rate_per_class", {})
    for key, reliance in d.get("shortcut_reliance_per_class", {}).items():
        label, kind = key.split("_", 1)
        base = base_rates.get(key)
        occlusion = occlusion_rates.get(key)
        occluded = f"; with its pixels blacked out instead: {pct(occlusion)}" if known(occlusion) else ""
        lines.append(f"Once the {kind} is stamped on test images of other classes, the classifier assigns {pct(reliance)} "
                     f"of them to class {label} (without the stamp: {pct(base)}{occluded}): it {reliance_verdict(reliance, base, kind)}"
                     f"{occlusion_caveat(reliance, occlusion, kind)}.")
    return lines


def attribution_findings(run: DatasetRun) -> list[str]:
    d = run.detail("attribute")
    methods = d.get("methods") or {}
    lines = []
    located = {name: s for name, s in methods.items() if known(s.get("pointing_game"))}
    if located:
        exposing = sorted((n for n, s in located.items() if s["pointing_game"] >= 0.5), key=lambda n: -located[n]["pointing_game"])
        hidden = sorted(n for n in located if n not in exposing)
        best = max(located, key=lambda n: located[n].get("relevance_mass") or 0)
        lines.append(f"Methods whose strongest pixel falls on the shortcut for at least half of the stamped images "
                     f"(pointing game ≥ 0.5) expose it: {', '.join(exposing) or 'none'}; "
                     f"the others do not: {', '.join(hidden) or 'none'}. "
                     f"{best} puts the largest share of its positive relevance on the shortcut ({pct(located[best].get('relevance_mass'))}, "
                     f"against {pct((d.get('localization') or {}).get('mask_area_fraction'))} for a random map).")
        flipped = sorted((n for n, s in located.items() if (s.get("pointing_game_flipped") or 0) >= 0.5),
                         key=lambda n: -located[n]["pointing_game_flipped"])
        if any(known(s.get("pointing_game_flipped")) for s in located.values()):
            lines.append(f"On images of other classes that the stamp turned into the shortcut class, the strongest pixel "
                         f"lies on the shortcut for most images with: {', '.join(flipped) or 'no method'}.")
    ranked = sorted((n for n in methods if known(methods[n].get("randomization_spearman"))),
                    key=lambda n: abs(methods[n]["randomization_spearman"]))
    if ranked:
        lines.append(f"Model-randomisation check: {ranked[0]} changes most when the weights are re-initialised "
                     f"(rank correlation {methods[ranked[0]]['randomization_spearman']:.2f}), {ranked[-1]} least "
                     f"({methods[ranked[-1]]['randomization_spearman']:.2f}): a map that survives randomisation explains the input, not the model.")
    seg = d.get("gradcam_segmentation") or {}
    if known(seg.get("best_iou")) and run.kind != "image_folder":  # the foreground of your images is not known
        lines.append(f"Thresholding Grad-CAM at {seg['best_threshold']:.2f} segments the foreground (the digit, the object) with IoU {seg['best_iou']:.2f}.")
    return lines


AGREE_LITTLE, AGREE_CLOSELY = 0.3, 0.6   # mean rank correlation of two maps below / from which they are said to agree little / closely
INPUT_MASKED = ("ig_zero", "inputxgrad", "deeplift")  # zero wherever the input is black: their maps share that, whatever the model


def span(values: list[float], percent: bool = False) -> str:
    """"lo–hi" of measured values ("lo to hi" when lo is negative; one value alone when both show the same)."""
    shown = [pct(v) if percent else f"{v:.2f}" for v in (min(values), max(values))]
    return shown[0] if shown[0] == shown[1] else (" to " if min(values) < 0 else "–").join(shown)


def per_method(correlations: dict) -> dict[str, dict[str, float]]:
    """{method: {pair: rank correlation}} from {pair: {method: rank correlation}}, measured values only."""
    result: dict[str, dict[str, float]] = {}
    for pair, values in correlations.items():
        for method, value in values.items():
            if known(value):
                result.setdefault(method, {})[pair] = value
    return result


def architecture_findings(run: DatasetRun) -> list[str]:
    """Where the architectures trained alike agree (accuracy, reliance on the shortcut) and where they differ (maps)."""
    d = run.detail("architectures")
    per = {a: r for a, r in (d.get("architectures") or {}).items() if known(r.get("test_accuracy"))}
    if len(per) < 2:
        return []
    names = list(per)
    epochs = d.get("epochs")
    text = (f"Trained alike ({epochs} epoch{'' if epochs == 1 else 's'} on the same data, in the same order, from the same "
            f"seed), {', '.join(names[:-1])} and {names[-1]} reach {span([r['test_accuracy'] for r in per.values()], percent=True)} "
            f"test accuracy")
    methods = " and ".join(d.get("headline_methods") or []) or "no method shared by all"
    if all(known(r.get("shortcut_reliance")) for r in per.values()):
        groups: dict[str, list[str]] = {}
        for a, r in per.items():
            groups.setdefault(reliance_verdict(r["shortcut_reliance"], r.get("shortcut_base_rate"), "shortcut"), []).append(a)

        def plural(verdict: str, n: int) -> str:
            return verdict if n == 1 else verdict.replace("relies", "rely").replace("uses", "use")

        if len(groups) == 1:
            text += (f"; all {len(names)} {plural(next(iter(groups)), len(names))} "
                     f"(reliance {span([r['shortcut_reliance'] for r in per.values()])})")
        else:
            text += "; " + ", ".join(f"{' and '.join(group)} {plural(verdict, len(group))} (reliance "
                                     + ", ".join(f"{per[a]['shortcut_reliance']:.2f}" for a in group) + ")"
                                     for verdict, group in groups.items())
        masses = [r["relevance_mass"] for r in per.values() if known(r.get("relevance_mass"))]
        if masses:
            text += (f"; their maps of stamped images of other classes put {span(masses, percent=True)} of the positive "
                     f"relevance for the shortcut's class on it ({methods}, mean"
                     + (f"; a map spread evenly: {pct(d['shortcut_area_fraction'])})" if known(d.get("shortcut_area_fraction")) else ")"))
    elif all(known(r.get("colormap_alignment")) for r in per.values()):
        text += (f"; the colormap alignment of their maps (how well the channels they credit match the channels each "
                 f"colormap varies in; 1 at best) is {span([r['colormap_alignment'] for r in per.values()])} ({methods}, mean)")
    lines = [text + "."]
    by_method = per_method(d.get("rank_correlation") or {})
    if not by_method:
        return lines
    judged = [m for m in by_method if m not in INPUT_MASKED] or list(by_method)
    pooled = [v for m in judged for v in by_method[m].values()]
    overall = sum(pooled) / len(pooled)
    word = "agree little" if overall < AGREE_LITTLE else "agree moderately" if overall < AGREE_CLOSELY else "agree closely"

    def summary(values: dict[str, float]) -> str:
        mean = sum(values.values()) / len(values)
        return f"{mean:.2f} ({span(list(values.values()))})" if len(values) > 1 else f"{mean:.2f} ({next(iter(values))} only)"

    line = (f"On the same {(d.get('n_images') or {}).get('sample', '?')} test images, explained for their true class, their "
            f"maps {word}: mean Spearman rank correlation over the pairs " + ", ".join(f"{m} {summary(by_method[m])}" for m in judged))
    every_pair = [m for m in judged if len(by_method[m]) == max(len(v) for v in by_method.values())]
    if every_pair and len(by_method[every_pair[0]]) > 1:
        by_pair = {pair: sum(by_method[m][pair] for m in every_pair) / len(every_pair) for pair in by_method[every_pair[0]]}
        closest, farthest = max(by_pair, key=by_pair.get), min(by_pair, key=by_pair.get)
        line += (f"; over {' and '.join(every_pair)} the closest pair is {closest} ({by_pair[closest]:.2f}), the farthest "
                 f"{farthest} ({by_pair[farthest]:.2f})")
    stamped = per_method(d.get("rank_correlation_stamped") or {})
    if stamped:
        line += "; on stamped images " + ", ".join(f"{m} {summary(stamped[m])}" for m in judged if m in stamped)
    masked = [m for m in by_method if m not in judged]
    if masked:
        line += (f". {' and '.join(masked)} maps correlate at {span([v for m in masked for v in by_method[m].values()])}, but they "
                 f"are zero wherever the input is black, whatever the model: that figure mostly measures the shared background")
    lines.append(line + ".")
    return lines


def counterfactual_findings(run: DatasetRun) -> list[str]:
    m = run.metric("counterfactuals")
    if not m:
        return []
    text = (f"The GAN's counterfactuals are assigned to their target class by the classifier {pct(m['conversion_rate'])} of the time "
            f"(reference-guided; latent-guided {pct(m.get('conversion_rate_latent'))}). A translation changes "
            f"{pct(m['changed_pixel_fraction'])} of the pixels by more than 0.1 (mean L1 {m['mean_l1']:.3f}).")
    if known(m.get("feature_distance")) and known(m.get("feature_distance_real_floor")):
        text += (f" Their Fréchet distance to real target-class images in the classifier's feature space is "
                 f"{m['feature_distance']:.2f}, against {m['feature_distance_real_floor']:.2f} between real images at the same sample sizes.")
    exact = run.detail("counterfactuals").get("exact_counterfactual_error") or {}
    if known(m.get("exact_counterfactual_error")):
        text += (f" Against the exact counterfactual (the same digit recolored with the target colormap at the same "
                 f"position) they are off by {m['exact_counterfactual_error']:.3f} per pixel and channel on average")
        text += (f", against {exact['unchanged_image']:.3f} for leaving the image unchanged." if known(exact.get("unchanged_image"))
                 else ".")
    return [text]


SAME_SCORE = 0.01  # median scores closer than this are reported as about equal


GAN_MISSES_SHORTCUT = 0.5  # below this share of counterfactuals carrying the shortcut, the GAN pairs test the digit


def method_details(details: dict, method: str | None = None) -> dict:
    """explain's details of one method (default: the best discriminative one); {} when it was not run."""
    return details.get("methods", {}).get(method or details.get("best_discriminative_method"), {}) or {}


def gan_shortcut_sentence(fraction: float, details: dict) -> str:
    """Whether the GAN's counterfactuals into the shortcut class carry the shortcut at all, and what that means for
    the shortcut IoU on GAN pairs."""
    carrying = details.get("n_pairs_carrying_shortcut")
    into = details.get("n_pairs_into_shortcut_class")
    counted = f" ({carrying} of {into})" if carrying is not None and into is not None else ""
    text = f"The GAN painted the shortcut on {100 * fraction:.0f} % of its counterfactuals into that class{counted}"
    if fraction < GAN_MISSES_SHORTCUT:
        return (text + ": it converts them by redrawing the digit, so those pairs test the digit, not the shortcut, and the "
                "stamped control is the test of whether the explanation finds the shortcut. A GAN trained longer learns "
                "the shortcut from the training images of the class.")
    iou = method_details(details).get("shortcut_iou_carried")
    return text + (f"; on those, the optimal masks overlap it with IoU {iou:.2f}." if known(iou) else ".")


def shortcut_overlap_sentence(iou: float, details: dict) -> str:
    """How the best discriminative method's optimal masks on pairs into the shortcut class overlap the shortcut, beside
    what the random map's masks reach there: the floor, which a large shortcut raises (a square on half the image
    overlaps any large mask)."""
    random = method_details(details, "random")
    mass = method_details(details).get("shortcut_mass_fraction")
    text = (f"For images translated into the shortcut class, the best discriminative method's optimal mask overlaps "
            f"the stamped shortcut with IoU {iou:.2f}" + (f" and puts {100 * mass:.0f} % of its mass on it" if known(mass) else ""))
    if known(random.get("shortcut_iou")):
        random_mass = random.get("shortcut_mass_fraction")
        text += (f"; the smoothed random map's masks reach IoU {random['shortcut_iou']:.2f}"
                 + (f" and {100 * random_mass:.0f} %" if known(random_mass) else "") + ", the level of chance")
    return text + "."


def explain_findings(run: DatasetRun) -> list[str]:
    m, d = run.metric("explain"), run.detail("explain")
    scores = {key.removeprefix("median_score_"): v for key, v in m.items() if key.startswith("median_score_") and known(v)}
    if not scores:
        return []
    best = max(scores, key=scores.get)
    lines = [f"{m['n_pairs_kept']} of {d.get('n_pairs', m['n_pairs_kept'])} image/counterfactual pairs were converted and explained. "
             f"The best explanation is {best} (median score {scores[best]:.2f}: area under score change vs. mask size)."]
    for disc, vanilla, name in (("d_ig", "ig", "integrated gradients"), ("d_deeplift", "deeplift", "DeepLift")):
        if disc in scores and vanilla in scores:
            a, b = scores[disc], scores[vanilla]
            relation = "about equal" if abs(a - b) < SAME_SCORE else "better" if a > b else "worse"
            text = f"Discriminative {name} scores {a:.3f} vs. {b:.3f} for vanilla {name}: {relation}"
            if "random" in scores:
                r = scores["random"]
                text += f"; vs. {r:.3f} for the random map: " + ("about equal" if abs(a - r) < SAME_SCORE else "better" if a > r else "worse")
            lines.append(text + ".")
    if "random" in scores:
        lines.append(f"A smoothed random map scores {scores['random']:.2f}; the residual |real − counterfactual| "
                     f"scores {scores.get('residual', float('nan')):.2f}.")
    if known(m.get("shortcut_iou")):
        lines.append(shortcut_overlap_sentence(m["shortcut_iou"], d))
    if known(m.get("gan_shortcut_fraction")):
        lines.append(gan_shortcut_sentence(m["gan_shortcut_fraction"], d))
    control = d.get("stamped_control") or {}
    if known(m.get("stamped_control_shortcut_iou")):
        lines.append(f"On the GAN-free control ({control.get('n_pairs', '?')} clean images vs. the same images stamped, "
                     f"which the stamp alone moves into the shortcut class) it reaches IoU "
                     f"{m['stamped_control_shortcut_iou']:.2f}: the gap to the GAN pairs is what the GAN changes besides the stamp.")
    return lines


def discover_findings(run: DatasetRun) -> list[str]:
    d = run.detail("discover")
    if not d:
        return []
    sentences = list(d.get("sentences") or [])
    if not sentences:
        sentences.append(f"Across the {d.get('n_pairs', 0)} explained pairs, no class has a region of its own that its "
                         f"{d.get('method', '')} optimal masks use significantly more often than those of other classes.")
    return sentences


def probe_findings(run: DatasetRun) -> list[str]:
    lines = []
    fv = run.metric("feature_viz")
    if known(fv.get("mean_class_probability")):
        lines.append(f"Inputs synthesised by activation maximisation reach a mean class probability of {fv['mean_class_probability']:.2f}.")
    lines += dream_findings(run)
    oc = run.metric("optimize_counterfactuals")
    if known(oc.get("success_rate")):
        text = (f"Optimising the input directly reaches the wanted class for {pct(oc['success_rate'])} of images "
                f"with a mean L1 change (summed over pixels) of {oc['mean_l1']:.2f}")
        if known(oc.get("gan_success_rate")):
            text += f" (the GAN on the same image and wanted-class pairs: {pct(oc['gan_success_rate'])})"
        lines.append(text + ".")
    lines += spectra_findings(run)
    return lines


def dream_findings(run: DatasetRun) -> list[str]:
    """What the layer dream paints, and, against a planted shortcut, where and in which color."""
    dream = run.detail("feature_viz").get("dream") or {}
    shortcut = dream.get("shortcut")
    if not shortcut:
        return []
    layers = list(shortcut["change_share"])
    moved, toward, share = shortcut["predicted_as_shortcut_class"], shortcut["toward_color"], shortcut["change_share"]
    most_moved, most_toward = max(layers, key=moved.get), max(layers, key=toward.get)
    low, high, area = min(share.values()), max(share.values()), shortcut["area_share"]
    where = (f"The change is spread over the image ({pct(low)}–{pct(high)} of it inside the region, which covers "
             f"{pct(area)}): the convolutions respond to the shortcut's color wherever it is."
             if high < 1.5 * area else
             f"Up to {pct(high)} of the change falls inside the region, which covers {pct(area)} of the image: "
             f"the layers have localised the shortcut.")
    if toward[most_toward] <= 0.05:
        return [f"Dreamed by each convolution layer, {dream['images']} clean test images of other classes do not move toward "
                f"the shortcut's color inside its region (at most {pct(toward[most_toward])} of the way); up to "
                f"{pct(moved[most_moved])} of the dreams are classified as {shortcut['label']} ({most_moved})."]
    return [f"Dreamed by each convolution layer, {dream['images']} clean test images of other classes move toward the "
            f"shortcut's color: inside its region, pixels move up to {pct(toward[most_toward])} of the way ({most_toward}), "
            f"and up to {pct(moved[most_moved])} of the dreams are classified as {shortcut['label']} ({most_moved}). " + where]


def spectra_findings(run: DatasetRun) -> list[str]:
    sp, threshold = run.metric("spectra"), run.detail("spectra").get("artifact_threshold")
    accuracy, control, detected = sp.get("spectral_detector_accuracy"), sp.get("control_accuracy"), sp.get("frequency_artifacts_detected")
    if not known(accuracy):
        return []
    text = (f"A linear detector on radially averaged log-magnitude spectra, with real images clamped to the generator's "
            f"pixel range like its output, tells counterfactuals from real test images with {pct(accuracy)} cross-validated accuracy")
    text += f"; on two halves of the real test images the same detector scores {pct(control)} (chance: 50 %)." if known(control) else "."
    limit = f"the {threshold:.2f} threshold" if known(threshold) else "the threshold"
    if detected is True:
        text += f" That is above {limit} and clearly above the control: the generator leaves frequency artifacts that the classifier could react to."
    elif known(threshold) and accuracy <= threshold:
        text += f" That is not above {limit}: no clear frequency artifacts."
    elif detected is False:
        text += " The control is almost as high, so the detector is not measuring the generator: no clear frequency artifacts."
    return [text]


def joined(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def dissect_findings(run: DatasetRun) -> list[str]:
    """What network dissection is, and per concept how many units of which layer detect it."""
    d = run.detail("dissect")
    concepts, layers = d.get("concepts") or {}, d.get("layers") or {}
    if not concepts or not layers:
        return []
    phrases = []
    for concept, c in sorted(concepts.items(), key=lambda item: item[0] == "digit"):   # the known answer first, the digit last
        label = {"shortcut": "the planted shortcut", "digit": "the digit"}.get(concept, f"the {concept} digits' pixels")
        parts = [f"{s[f'{concept}_units']} of {s['n_units']} units in {layer}" for layer, s in layers.items()
                 if s.get(f"{concept}_units")]
        best = f"best IoU {c['best_iou']:.2f}, {c['best_unit']}"
        phrases.append(f"{joined(parts)} detect {label} ({best})" if parts else f"no unit detects {label} ({best})")
    return [f"Network dissection thresholds every convolution channel's upsampled activation map at its own top "
            f"{pct(1 - d['quantile'])} over {d['n_images']} test images and scores that mask's overlap (IoU) with known "
            f"pixels; a unit detects a concept from IoU {d['iou_threshold']:g} on: " + "; ".join(phrases) + "."]


def prototypes_findings(run: DatasetRun) -> list[str]:
    """MMD-critic: do the criticisms of a class land where the known answer says the class is unusual?"""
    m = {**run.detail("prototypes"), **run.metric("prototypes")}
    intro = ("MMD-critic picks, per class, the training images that together look like the class in the classifier's "
             "penultimate features (prototypes) and those they represent worst (criticisms). ")
    if known(m.get("criticism_unstamped_share")):
        share, base = m["criticism_unstamped_share"], m["unstamped_base_rate"]
        text = (f"{intro}In the shortcut class, {pct(share)} of the criticisms and {pct(m['prototype_unstamped_share'])} of "
                f"the prototypes lack the planted shortcut, against {pct(base)} of the class's sampled images")
        apart = known(base) and share >= 3 * base
        return [text + (": the images without the shortcut stand apart in the classifier's features." if apart else ".")]
    if known(m.get("criticism_colormap_end_share")):
        return [f"{intro}{pct(m['criticism_colormap_end_share'])} of the criticisms and {pct(m['prototype_colormap_end_share'])} "
                f"of the prototypes sit in the outer tenth at either end of their colormap, against {pct(m['colormap_end_base_rate'])} "
                f"of the sampled images; a criticism's colormap position lies {m['criticism_position_gap']:.3f} from the nearest "
                f"prototype's, a sampled image's {m['sample_position_gap']:.3f}."]
    return []


def influence_findings(run: DatasetRun) -> list[str]:
    """TracIn: are the training images that support a decision the ones the known answer names?"""
    m = {**run.detail("influence"), **run.metric("influence")}
    if not known(m.get("n_queries")) or not m["n_queries"]:
        return []
    compared = "by the cosine of" if m.get("scoring") == "normalized" else "by the dot product of"
    intro = (f"TracIn traces {m['n_queries']} test decisions back to {m['n_train']} training images through the classifier's "
             f"{m['n_checkpoints']} per-epoch checkpoints, {compared} their final-layer loss gradients. ")
    if known(m.get("proponent_precision_at_10")):
        precision, base = m["proponent_precision_at_10"], m["proponent_base_rate"]
        verdict = ("the decisions the stamp causes rest on the stamped training images" if precision >= 3 * base
                   else "the proponents are not mainly the stamped training images")
        return [f"{intro}For test images of other classes that the stamp moves into the shortcut class, {pct(precision)} of "
                f"the 10 strongest proponents are stamped images of that class, against {pct(base)} of the training images "
                f"searched ({pct(m['clean_control_precision_at_10'])} for the same images without the stamp): {verdict}."]
    if known(m.get("proponent_position_gap")):
        near = m["proponent_position_gap"] < m["class_position_gap"]
        return [f"{intro}A query's 10 strongest proponents sit {m['proponent_position_gap']:.3f} from it along the colormap, "
                f"a random training image of the predicted class {m['class_position_gap']:.3f}; "
                f"{pct(m['proponent_same_class_share'])} of the proponents share the predicted class"
                + (": the classifier leans on training images of nearly the same color." if near else ".")]
    return []


def findings(run: DatasetRun, meta: dict) -> list[str]:
    return (classifier_findings(run, meta) + attribution_findings(run) + architecture_findings(run) + counterfactual_findings(run)
            + explain_findings(run) + discover_findings(run) + probe_findings(run) + dissect_findings(run) + prototypes_findings(run)
            + influence_findings(run))
