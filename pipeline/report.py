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
    ("train_gan", None, "The counterfactual GAN"),
    ("counterfactuals", "counterfactuals", "Counterfactuals judged by the classifier"),
    ("explain", "explain", "Discriminative attribution: which small change flips the decision?"),
    ("feature_viz", "feature_viz", "Activation maximisation"),
    ("optimize_counterfactuals", "optimize_counterfactuals", "Optimisation-based counterfactuals"),
    ("spectra", "spectra", "Spectral detection of generated images"),
]


# --------------------------------------------------------------------------------------------
# Reading the run
# --------------------------------------------------------------------------------------------
@dataclass
class DatasetRun:
    dataset: str
    metrics: dict[str, dict] = field(default_factory=dict)  # metrics file name -> content
    pictures: dict[str, list[Path]] = field(default_factory=dict)  # stage -> PNG files


def read_run(dataset: str) -> DatasetRun:
    run = DatasetRun(dataset)
    for stage, metrics_name, _ in SECTIONS:
        if metrics_name:
            path = paths.metrics_path(dataset, metrics_name)
            if path.exists():
                run.metrics[metrics_name] = read_json(path, made_by=f"{stage}@{dataset}")
        run.pictures[stage] = sorted(paths.plots_dir(dataset, stage).glob("*.png"))
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
# Sentences built from the metrics
# --------------------------------------------------------------------------------------------
def pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def classifier_findings(run: DatasetRun, meta: dict) -> list[str]:
    m = run.metrics["classifier"]
    if run.dataset == "colored_mnist":
        return [f"The classifier tells the {len(meta['class_names'])} colormaps ({', '.join(meta['class_names'])}) apart "
                f"with {pct(m['test_accuracy'])} test accuracy; the digit shape carries no information about the class."]
    lines = [f"On test images drawn like the training set the classifier is right {pct(m['test_accuracy'])} of the time; "
             f"on clean test images (no shortcut anywhere) {pct(m['clean_accuracy'])}."]
    for key, reliance in m.get("shortcut_reliance_per_class", {}).items():
        label, kind = key.split("_", 1)
        verdict = ("it relies on the " + kind) if reliance >= 0.5 else ("it partly relies on the " + kind) if reliance >= 0.1 else ("it hardly uses the " + kind)
        lines.append(f"Once the {kind} is stamped on test images of other classes, the classifier assigns {pct(reliance)} "
                     f"of them to class {label}: {verdict}.")
    return lines


def attribution_findings(run: DatasetRun) -> list[str]:
    m = run.metrics.get("attribution")
    if not m or "methods" not in m:
        return []
    methods = m["methods"]
    lines = []
    located = {name: s for name, s in methods.items() if s.get("pointing_game") is not None}
    if located:
        exposing = sorted((n for n, s in located.items() if s["pointing_game"] >= 0.5), key=lambda n: -located[n]["pointing_game"])
        hidden = sorted(n for n in located if n not in exposing)
        best = max(located, key=lambda n: located[n].get("relevance_mass") or 0)
        lines.append(f"Methods whose strongest pixel falls on the shortcut for at least half of the stamped images "
                     f"(pointing game ≥ 0.5) expose it: {', '.join(exposing) or 'none'}; "
                     f"the others do not: {', '.join(hidden) or 'none'}. "
                     f"{best} puts the largest share of its positive relevance on the shortcut ({pct(located[best]['relevance_mass'])}, "
                     f"against {pct(m.get('localization', {}).get('mask_area_fraction', float('nan')))} for a random map).")
        flipped = sorted((n for n, s in located.items() if (s.get("pointing_game_flipped") or 0) >= 0.5),
                         key=lambda n: -located[n]["pointing_game_flipped"])
        if any(s.get("pointing_game_flipped") is not None for s in located.values()):
            lines.append(f"On images of other classes that the stamp turned into the shortcut class, the strongest pixel "
                         f"lies on the shortcut for most images with: {', '.join(flipped) or 'no method'}.")
    ranked = sorted((n for n in methods if methods[n].get("randomization_spearman") is not None),
                    key=lambda n: abs(methods[n]["randomization_spearman"]))
    if ranked:
        lines.append(f"Model-randomisation check: {ranked[0]} changes most when the weights are re-initialised "
                     f"(rank correlation {methods[ranked[0]]['randomization_spearman']:.2f}), {ranked[-1]} least "
                     f"({methods[ranked[-1]]['randomization_spearman']:.2f}): a map that survives randomisation explains the input, not the model.")
    seg = m.get("gradcam_segmentation")
    if seg and seg.get("best_iou") is not None:
        lines.append(f"Thresholding Grad-CAM at {seg['best_threshold']:.2f} segments the digit with IoU {seg['best_iou']:.2f}.")
    return lines


def counterfactual_findings(run: DatasetRun) -> list[str]:
    m = run.metrics.get("counterfactuals")
    if not m:
        return []
    text = (f"The GAN's counterfactuals are assigned to their target class by the classifier {pct(m['conversion_rate'])} of the time "
            f"(reference-guided; latent-guided {pct(m['conversion_rate_latent'])}). A translation changes "
            f"{pct(m['changed_pixel_fraction'])} of the pixels by more than 0.1 (mean L1 {m['mean_l1']:.3f}).")
    if m.get("feature_distance") is not None:
        text += (f" Their Fréchet distance to real target-class images in the classifier's feature space is "
                 f"{m['feature_distance']:.2f}, against {m['feature_distance_real_floor']:.2f} between two halves of the real test set.")
    return [text]


SAME_SCORE = 0.01  # median scores closer than this are reported as about equal


def explain_findings(run: DatasetRun) -> list[str]:
    m = run.metrics.get("explain")
    if not m or "methods" not in m:
        return []
    methods = {n: s for n, s in m["methods"].items() if s.get("median_score") is not None}
    if not methods:
        return []
    best = max(methods, key=lambda n: methods[n]["median_score"])
    lines = [f"{m['n_pairs_kept']} of {m['n_pairs']} image/counterfactual pairs were converted and explained. "
             f"The best explanation is {best} (median score {methods[best]['median_score']:.2f}: area under score change vs. mask size)."]
    pairs = [("d_ig", "ig", "integrated gradients"), ("d_deeplift", "deeplift", "DeepLift")]
    for disc, vanilla, name in pairs:
        if disc in methods and vanilla in methods:
            d, v = methods[disc]["median_score"], methods[vanilla]["median_score"]
            verdict = "about equal" if abs(d - v) < SAME_SCORE else "better" if d > v else "worse"
            lines.append(f"Discriminative {name} scores {d:.3f} vs. {v:.3f} for vanilla {name}: {verdict}.")
    if "random" in methods:
        lines.append(f"A smoothed random map scores {methods['random']['median_score']:.2f}; the residual |real − counterfactual| "
                     f"scores {methods.get('residual', {}).get('median_score', float('nan')):.2f}.")
    if m.get("shortcut_iou") is not None:
        lines.append(f"For images translated into the shortcut class, the best discriminative method's optimal mask overlaps "
                     f"the stamped shortcut with IoU {m['shortcut_iou']:.2f}.")
    control = (m.get("stamped_control") or {}).get("methods") or {}
    best_control = m.get("best_discriminative_method")
    if best_control in control and control[best_control].get("shortcut_iou") is not None:
        lines.append(f"On the GAN-free control ({m['stamped_control']['n_pairs']} clean images vs. the same images stamped, "
                     f"which the stamp alone moves into the shortcut class) {best_control} reaches IoU "
                     f"{control[best_control]['shortcut_iou']:.2f}: the gap to the GAN pairs is what the GAN changes besides the stamp.")
    return lines


def probe_findings(run: DatasetRun) -> list[str]:
    lines = []
    fv = run.metrics.get("feature_viz")
    if fv and fv.get("mean_class_probability") is not None:
        lines.append(f"Inputs synthesised by activation maximisation reach a mean class probability of {fv['mean_class_probability']:.2f}.")
    oc = run.metrics.get("optimize_counterfactuals")
    if oc and oc.get("success_rate") is not None:
        text = (f"Optimising the input directly reaches the wanted class for {pct(oc['success_rate'])} of images "
                f"with a mean L1 change (summed over pixels) of {oc['mean_l1']:.2f} and {oc['mean_l0']:.0f} pixels changed")
        gan = oc.get("gan") or {}
        if gan.get("success_rate") is not None:
            text += f" (the GAN: {pct(gan['success_rate'])}, L1 {gan['mean_l1']:.2f}, {gan['mean_l0']:.0f} pixels)"
        lines.append(text + ".")
    sp = run.metrics.get("spectra")
    if sp and sp.get("spectral_detector_accuracy") is not None:
        acc = sp["spectral_detector_accuracy"]
        verdict = ("the generator leaves frequency artifacts that the classifier could react to" if acc >= 0.8
                   else "the spectra of generated and real images are hard to tell apart" if acc <= 0.6 else "some frequency artifacts remain")
        lines.append(f"A linear detector on log-magnitude spectra tells counterfactuals from real images with {pct(acc)} accuracy: {verdict}.")
    return lines


def findings(run: DatasetRun, meta: dict) -> list[str]:
    return (classifier_findings(run, meta) + attribution_findings(run) + counterfactual_findings(run)
            + explain_findings(run) + probe_findings(run))


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


def metric_tables(metrics: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """Flat scalars as one key/value table; each nested map of maps (e.g. ``methods``) as a grid."""
    tables = []
    scalars = [[k, fmt(v)] for k, v in metrics.items() if not isinstance(v, (dict, list))]
    if scalars:
        tables.append(("", ["metric", "value"], scalars))
    for key, value in metrics.items():
        if not isinstance(value, dict) or not value:
            continue
        if all(isinstance(v, dict) for v in value.values()):
            columns = sorted({c for v in value.values() for c in v if not isinstance(v[c], (dict, list))})
            rows = [[name] + [fmt(v.get(c)) for c in columns] for name, v in value.items()]
            tables.append((key, [""] + columns, rows))
        else:
            tables.append((key, ["key", "value"], [[k, fmt(v)] for k, v in value.items() if not isinstance(v, (dict, list))]))
    return tables


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em} h3{margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em} td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}
td:first-child,th:first-child{text-align:left} caption{text-align:left;font-weight:600;padding:.2em 0}
figure{margin:.8em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.85em;color:#555}
.findings{background:#f5f8ff;border-left:4px solid #4a7bd0;padding:.6em 1em} .findings li{margin:.3em 0}
nav a{margin-right:1em}
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


def embed_png(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption(path))}"><figcaption>{html.escape(caption(path))}</figcaption></figure>'


def html_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{html.escape(title)}</caption>" if title else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def md_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"**{title}**", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def timing_rows(timing: dict) -> list[list[str]]:
    return [[name, f"{s['seconds']:.1f}", str(s["images"]), f"{s['images_per_second']:.0f}"] for name, s in timing["stages"].items()]


def render_html(runs: list[DatasetRun], metas: dict, timing: dict) -> str:
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>What has the classifier learned?</title><style>{CSS}</style></head><body>",
             "<h1>What has the classifier learned?</h1>",
             "<nav>" + "".join(f'<a href="#{r.dataset}">{html.escape(TITLES[r.dataset])}</a>' for r in runs) + '<a href="#timing">Timing</a></nav>']
    for run in runs:
        parts.append(f'<h2 id="{run.dataset}">{html.escape(TITLES[run.dataset])}</h2>')
        parts.append('<div class="findings"><b>What this run found</b><ul>'
                     + "".join(f"<li>{html.escape(s)}</li>" for s in findings(run, metas[run.dataset])) + "</ul></div>")
        for stage, metrics_name, heading in SECTIONS:
            metrics = run.metrics.get(metrics_name) if metrics_name else None
            pictures = run.pictures.get(stage, [])
            if not metrics and not pictures:
                continue
            parts.append(f"<h3>{html.escape(heading)}</h3>")
            for title, header, rows in metric_tables(metrics or {}):
                parts.append(html_table(title, header, rows))
            parts.extend(embed_png(p) for p in pictures)
    parts.append(f'<h2 id="timing">Timing ({html.escape(timing["device"])}, {timing["total_seconds"]:.0f} s in all)</h2>')
    parts.append(html_table("", ["stage", "seconds", "images", "images/s"], timing_rows(timing)))
    parts.append(CHECK_IMAGES + "</body></html>")
    return "\n".join(parts)


def render_markdown(runs: list[DatasetRun], metas: dict, timing: dict) -> str:
    lines = ["# What has the classifier learned?", ""]
    for run in runs:
        lines += [f"## {TITLES[run.dataset]}", "", "What this run found:", ""]
        lines += [f"- {s}" for s in findings(run, metas[run.dataset])] + [""]
        for stage, metrics_name, heading in SECTIONS:
            metrics = run.metrics.get(metrics_name) if metrics_name else None
            pictures = run.pictures.get(stage, [])
            if not metrics and not pictures:
                continue
            lines += [f"### {heading}", ""]
            lines += [md_table(*table) for table in metric_tables(metrics or {})]
            lines += [f"![{caption(p)}](../{p.as_posix()})" for p in pictures] + [""]
    lines += [f"## Timing ({timing['device']}, {timing['total_seconds']:.0f} s in all)", ""]
    lines.append(md_table("", ["stage", "seconds", "images", "images/s"], timing_rows(timing)))
    return "\n".join(lines)


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
