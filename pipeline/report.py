"""Stage ``report``: one readable page per run, built only from the metrics and pictures of the stages.

Writes ``report/index.html`` (self-contained: every picture embedded, no network), ``report/README.md``
(the same text, pictures linked) and ``metrics/timing.json`` (wall time of every stage).
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import paths
from pipeline.config import DATASETS, ConfigError, load_params
from pipeline.storage import InputError, atomic_path, read_json, write_json

REPORT_DIR = Path("report")
TITLES = {"colored_mnist": "Colored MNIST (the class is the colormap)", "clever_hans": "Clever Hans MNIST (a planted shortcut)"}
SECTIONS = [  # (stage folder under plots/<D>/, metrics file name or None, heading)
    ("prepare", None, "The data"),
    ("train_classifier", "classifier", "The classifier"),
    ("attribute", "attribution", "Attributions: what does it look at?"),
    ("train_gan", "train_gan", "The counterfactual GAN"),
    ("counterfactuals", "counterfactuals", "Counterfactuals judged by the classifier"),
    ("explain", "explain", "Discriminative attribution: which small change flips the decision?"),
    ("discover", "discover", "Discovery: evidence that recurs for one class, found without the answer"),
    ("feature_viz", "feature_viz", "Activation maximisation"),
    ("optimize_counterfactuals", "optimize_counterfactuals", "Optimisation-based counterfactuals"),
    ("spectra", "spectra", "Spectral detection of generated images"),
]
MAX_PICTURES = 12  # per stage; the rest stay in plots/<D>/<stage>/


# --------------------------------------------------------------------------------------------
# Reading the run
# --------------------------------------------------------------------------------------------
@dataclass
class DatasetRun:
    dataset: str
    metrics: dict[str, dict] = field(default_factory=dict)   # metrics file name -> headline figures
    details: dict[str, dict] = field(default_factory=dict)   # stage -> plots/<D>/<stage>/details.json
    pictures: dict[str, list[Path]] = field(default_factory=dict)  # stage -> PNG files
    more_pictures: dict[str, int] = field(default_factory=dict)    # stage -> PNGs left out of the page

    def metric(self, name: str) -> dict:
        return self.metrics.get(name) or {}

    def detail(self, stage: str) -> dict:
        return self.details.get(stage) or {}


def stage_pictures(folder: Path) -> list[Path]:
    """Every PNG under a stage's plot folder, subfolders included (grids, galleries, DVCLive images)."""
    return sorted(folder.rglob("*.png"), key=lambda p: (len(p.relative_to(folder).parts), p.as_posix()))


def read_run(dataset: str) -> DatasetRun:
    run = DatasetRun(dataset)
    for stage, metrics_name, _ in SECTIONS:
        if metrics_name:
            path = paths.metrics_path(dataset, metrics_name)
            if path.exists():
                run.metrics[metrics_name] = read_json(path, made_by=f"{stage}@{dataset}")
        detail = paths.plots_dir(dataset, stage) / "details.json"
        if detail.exists():
            run.details[stage] = read_json(detail, made_by=f"{stage}@{dataset}")
        pictures = stage_pictures(paths.plots_dir(dataset, stage))
        run.pictures[stage] = pictures[:MAX_PICTURES]
        run.more_pictures[stage] = max(0, len(pictures) - MAX_PICTURES)
    if "classifier" not in run.metrics:
        raise InputError(f"{paths.metrics_path(dataset, 'classifier')} is missing; run `dvc repro train_classifier@{dataset}` first")
    return run


def collect_timing() -> dict:
    """All per-stage timing files merged: total seconds, device, and each stage's throughput."""
    stages, devices = {}, set()
    for path in sorted(paths.METRICS.glob("*/timing/*.json")):
        record = json.loads(path.read_text())
        devices.add(record["device"])
        stages[record["stage"]] = {k: record[k] for k in ("seconds", "images", "images_per_second")}
    return {
        "device": ", ".join(sorted(devices)) or "unknown",
        "total_seconds": sum(s["seconds"] for s in stages.values()),
        "stages": stages,
    }


# --------------------------------------------------------------------------------------------
# Sentences built from the metrics and details
# --------------------------------------------------------------------------------------------
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


def verdict(run: DatasetRun, meta: dict) -> list[str]:
    """The answer first: what the classifier relies on, how sure the pipeline is, how that scores against the truth."""
    classifier, discover = run.metric("classifier"), run.metric("discover")
    flagged = run.detail("discover").get("flagged_classes")
    judged = [name for name, c in (run.detail("discover").get("classes") or {}).items() if c.get("judged", True)]
    if flagged is not None and not flagged and not judged and run.detail("discover").get("classes"):
        flagged = None  # nothing could be judged: no verdict from discovery, said below instead
    lines = []
    if run.dataset == "clever_hans":
        reliance, base = classifier.get("shortcut_reliance"), classifier.get("shortcut_base_rate")
        if known(reliance):
            lines.append(f"The classifier {reliance_verdict(reliance, base, 'planted shortcut')}: stamped on digits of other "
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


def shortcut_classes(run: DatasetRun) -> set[str]:
    return {str(key).split("_", 1)[0] for key in run.detail("train_classifier").get("shortcut_reliance_per_class", {})}


def classifier_findings(run: DatasetRun, meta: dict) -> list[str]:
    m, d = run.metric("classifier"), run.detail("train_classifier")
    if run.dataset == "colored_mnist":
        return [f"The classifier tells the {len(meta['class_names'])} colormaps ({', '.join(meta['class_names'])}) apart "
                f"with {pct(m['test_accuracy'])} test accuracy; the digit shape carries no information about the class."]
    lines = [f"On test images drawn like the training set the classifier is right {pct(m['test_accuracy'])} of the time; "
             f"on clean test images (no shortcut anywhere) {pct(m.get('clean_accuracy'))}."]
    base_rates = d.get("shortcut_base_rate_per_class", {})
    for key, reliance in d.get("shortcut_reliance_per_class", {}).items():
        label, kind = key.split("_", 1)
        base = base_rates.get(key)
        lines.append(f"Once the {kind} is stamped on test images of other classes, the classifier assigns {pct(reliance)} "
                     f"of them to class {label} (without the stamp: {pct(base)}): it {reliance_verdict(reliance, base, kind)}.")
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
    if known(seg.get("best_iou")):
        lines.append(f"Thresholding Grad-CAM at {seg['best_threshold']:.2f} segments the digit with IoU {seg['best_iou']:.2f}.")
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
        lines.append(f"For images translated into the shortcut class, the best discriminative method's optimal mask overlaps "
                     f"the stamped shortcut with IoU {m['shortcut_iou']:.2f}.")
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


def findings(run: DatasetRun, meta: dict) -> list[str]:
    return (classifier_findings(run, meta) + attribution_findings(run) + counterfactual_findings(run)
            + explain_findings(run) + discover_findings(run) + probe_findings(run))


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
MAX_TABLE_ROWS = 12  # larger detail tables (per class pair ...) stay in details.json


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


def scalar(value) -> bool:
    return not isinstance(value, (dict, list))


def metric_tables(metrics: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """Flat scalars as one key/value table; each nested map of maps (e.g. ``methods``) as a grid."""
    tables = []
    scalars = [[k, fmt(v)] for k, v in metrics.items() if scalar(v)]
    if scalars:
        tables.append(("", ["metric", "value"], scalars))
    for key, value in metrics.items():
        if not isinstance(value, dict) or not value or len(value) > MAX_TABLE_ROWS:
            continue
        if all(isinstance(v, dict) for v in value.values()):
            columns = sorted({c for v in value.values() for c in v if scalar(v[c])})
            if columns:
                rows = [[name] + [fmt(v.get(c)) for c in columns] for name, v in value.items()]
                tables.append((key, [""] + columns, rows))
        elif any(scalar(v) for v in value.values()):
            tables.append((key, ["key", "value"], [[k, fmt(v)] for k, v in value.items() if scalar(v)]))
    return tables


def detail_tables(details: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The grids of a stage's details (per method, per class ...), small ones only; scalars stay in the file."""
    return [table for table in metric_tables(details) if table[0]]


def timing_rows(timing: dict) -> list[list[str]]:
    return [[name, f"{s['seconds']:.1f}", str(s["images"]), f"{s['images_per_second']:.0f}"] for name, s in timing["stages"].items()]


# --------------------------------------------------------------------------------------------
# The document: one list of blocks, rendered as HTML and as Markdown
# --------------------------------------------------------------------------------------------
@dataclass
class Block:
    kind: str                 # heading | list | table | picture | note
    text: str = ""
    level: int = 2
    anchor: str = ""
    items: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    path: Path | None = None


def document(runs: list[DatasetRun], metas: dict, timing: dict) -> list[Block]:
    blocks = [Block("heading", "What has the classifier learned?", level=1)]
    for run in runs:
        meta = metas[run.dataset]
        blocks.append(Block("heading", TITLES[run.dataset], level=2, anchor=run.dataset))
        blocks.append(Block("list", "Verdict", items=verdict(run, meta)))
        blocks.append(Block("list", "What this run found", items=findings(run, meta)))
        for stage, metrics_name, heading in SECTIONS:
            metrics = run.metrics.get(metrics_name) if metrics_name else None
            tables = metric_tables(metrics or {}) + detail_tables(run.detail(stage))
            pictures = run.pictures.get(stage, [])
            if not tables and not pictures:
                continue
            blocks.append(Block("heading", heading, level=3))
            blocks += [Block("table", title, header=header, rows=rows) for title, header, rows in tables]
            blocks += [Block("picture", path=p) for p in pictures]
            if run.more_pictures.get(stage):
                blocks.append(Block("note", f"{run.more_pictures[stage]} more pictures in "
                                            f"{paths.plots_dir(run.dataset, stage).as_posix()}/"))
    blocks.append(Block("heading", f"Timing ({timing['device']}, {timing['total_seconds']:.0f} s in all)", level=2, anchor="timing"))
    blocks.append(Block("table", header=["stage", "seconds", "images", "images/s"], rows=timing_rows(timing)))
    return blocks


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em} h3{margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em} td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}
td:first-child,th:first-child{text-align:left} caption{text-align:left;font-weight:600;padding:.2em 0}
figure{margin:.8em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.85em;color:#555}
.findings{background:#f5f8ff;border-left:4px solid #4a7bd0;padding:.6em 1em} .findings li{margin:.3em 0}
.verdict{background:#fff7e6;border-left:4px solid #d08a1a;padding:.6em 1em;font-size:1.05em}
nav a{margin-right:1em} .note{font-size:.85em;color:#555}
"""
CHECK_IMAGES = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
</script>
"""


def caption(path: Path) -> str:
    return path.stem.replace("_", " ")


def html_block(block: Block) -> str:
    esc = html.escape
    if block.kind == "heading":
        anchor = f' id="{esc(block.anchor)}"' if block.anchor else ""
        return f"<h{block.level}{anchor}>{esc(block.text)}</h{block.level}>"
    if block.kind == "list":
        style = "verdict" if block.text == "Verdict" else "findings"
        return (f'<div class="{style}"><b>{esc(block.text)}</b><ul>' + "".join(f"<li>{esc(s)}</li>" for s in block.items)
                + "</ul></div>")
    if block.kind == "table":
        head = "".join(f"<th>{esc(h)}</th>" for h in block.header)
        body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in block.rows)
        cap = f"<caption>{esc(block.text)}</caption>" if block.text else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if block.kind == "picture":
        data = base64.b64encode(block.path.read_bytes()).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption(block.path))}">'
                f"<figcaption>{esc(caption(block.path))}</figcaption></figure>")
    return f'<p class="note">{esc(block.text)}</p>'


def markdown_block(block: Block) -> str:
    if block.kind == "heading":
        return "#" * block.level + " " + block.text + "\n"
    if block.kind == "list":
        return f"**{block.text}:**\n\n" + "".join(f"- {s}\n" for s in block.items)
    if block.kind == "table":
        lines = [f"**{block.text}**", ""] if block.text else []
        lines += ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
        lines += ["| " + " | ".join(row) + " |" for row in block.rows]
        return "\n".join(lines) + "\n"
    if block.kind == "picture":
        return f"![{caption(block.path)}](../{block.path.as_posix()})\n"
    return f"_{block.text}_\n"


def render_html(runs: list[DatasetRun], metas: dict, timing: dict) -> str:
    nav = "<nav>" + "".join(f'<a href="#{r.dataset}">{html.escape(TITLES[r.dataset])}</a>' for r in runs) + '<a href="#timing">Timing</a></nav>'
    body = [html_block(b) for b in document(runs, metas, timing)]
    return "\n".join([f"<!doctype html><html lang=en><head><meta charset=utf-8><title>What has the classifier learned?</title>"
                      f"<style>{CSS}</style></head><body>", body[0], nav, *body[1:], CHECK_IMAGES + "</body></html>"])


def render_markdown(runs: list[DatasetRun], metas: dict, timing: dict) -> str:
    return "\n".join(markdown_block(b) for b in document(runs, metas, timing))


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        load_params(args.params)  # validate, as every stage does
        runs = [read_run(d) for d in DATASETS]
        metas = {d: read_json(paths.prepared_dir(d) / "meta.json", made_by=f"prepare@{d}") for d in DATASETS}
        timing = collect_timing()
        write_json(paths.METRICS / "timing.json", timing)
        write_text(REPORT_DIR / "index.html", render_html(runs, metas, timing))
        write_text(REPORT_DIR / "README.md", render_markdown(runs, metas, timing))
    except (ConfigError, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    print(f"[report] {REPORT_DIR / 'index.html'}: {len(runs)} datasets, pipeline time {timing['total_seconds']:.0f} s on {timing['device']}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
