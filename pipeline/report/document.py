"""The report's page: per dataset the verdict, then section by section each stage's findings with their tables and
pictures; rendered as self-contained HTML and as Markdown."""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.data.known_answer import ColorRule, PlantedShortcuts, Unknown
from pipeline.report.findings import findings, verdict
from pipeline.report.results import DatasetRun
from pipeline.report.tables import Table, evidence_table, tables

SOURCE_NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "image_folder": "images"}
SECTIONS = {  # stage (its folder under plots/<D>/) -> heading, in the order of the page
    "prepare": "The data",
    "train_classifier": "The classifier",
    "attribute": "Attributions: what does it look at?",
    "architectures": "Architectures compared: trained alike, do they learn and look alike?",
    "train_gan": "The counterfactual GAN",
    "counterfactuals": "Counterfactuals judged by the classifier",
    "explain": "Discriminative attribution: which small change flips the decision?",
    "discover": "Discovery: evidence that recurs for one class, found without the answer",
    "feature_viz": "Activation maximisation",
    "dissect": "Network dissection: which units segment a known concept?",
    "prototypes": "Prototypes and criticisms (MMD-critic)",
    "influence": "Influential training images (TracIn proponents)",
    "optimize_counterfactuals": "Optimisation-based counterfactuals",
    "spectra": "Spectral detection of generated images",
}


def title(run: DatasetRun) -> str:
    """'clever_hans: Clever Hans MNIST (planted shortcuts)'."""
    source = SOURCE_NAMES.get(run.source, run.source)
    answer = run.answer
    if isinstance(answer, PlantedShortcuts):
        text = (f"Negative control: {source} with nothing planted" if answer.is_negative_control else
                f"Clever Hans {source} (planted shortcuts)")
    elif isinstance(answer, ColorRule):
        text = f"Colored {source} (the class is the colormap)"
    else:
        text = "Your images (no known answer)"
    return f"{run.dataset}: {text}"


def introduction(run: DatasetRun) -> str:
    """What the dataset is, and what it is for."""
    answer = run.answer
    if isinstance(answer, PlantedShortcuts):
        planted = "; ".join(answer.describe(k, run.class_names) for k in range(len(answer.shortcuts)))
        if answer.is_negative_control:
            return (f"What it is for: the same images and a classifier trained the same way as where a shortcut is planted, "
                    f"with nothing planted ({planted or 'no shortcut'}). Every detector is scored against that class and region exactly "
                    f"as where it is planted, and must stay at chance: a figure above chance here is a false alarm of that "
                    f"detector, and discovery must flag nothing.")
        return f"Planted: {planted}. Every explanation below is scored against it, beside its chance level."
    if isinstance(answer, ColorRule):
        return (f"The class is the colormap ({', '.join(run.class_names)}): each digit is painted with its class's colormap, "
                f"so the digit's shape says nothing about the class. Explanations are scored against the digit's pixels, "
                f"where the colour is.")
    return f"{Unknown.reason[0].upper()}{Unknown.reason[1:]}: the explanations say what the classifier does, and are not scored."


# --------------------------------------------------------------------------------------------
# The document: one list of blocks, rendered as HTML and as Markdown
# --------------------------------------------------------------------------------------------
@dataclass
class Block:
    kind: str                 # heading | verdict | findings | table | picture | note
    text: str = ""
    level: int = 2
    anchor: str = ""
    items: list[str] = field(default_factory=list)
    table: Table | None = None
    path: Path | None = None


def section(run: DatasetRun, stage: str) -> list[Block]:
    """One stage's section: its sentences, then its tables, then its pictures."""
    sentences, grids, pictures = findings(run, stage), tables(run, stage), run.pictures.get(stage, [])
    if not sentences and not grids and not pictures:
        return []
    blocks = [Block("heading", SECTIONS[stage], level=3)]
    if sentences:
        blocks.append(Block("findings", items=sentences))
    blocks += [Block("table", table=t) for t in grids]
    blocks += [Block("picture", path=p) for p in pictures]
    if run.more_pictures.get(stage):
        blocks.append(Block("note", f"{run.more_pictures[stage]} more pictures in {run.picture_dirs[stage].as_posix()}/"))
    return blocks


def document(runs: list[DatasetRun], timing: dict) -> list[Block]:
    blocks = [Block("heading", "What has the classifier learned?", level=1)]
    for run in runs:
        blocks.append(Block("heading", title(run), level=2, anchor=run.dataset))
        blocks.append(Block("note", introduction(run)))
        blocks.append(Block("verdict", "Verdict", items=verdict(run)))
        blocks += [Block("table", table=t) for t in evidence_table(run)]
        for stage in SECTIONS:
            blocks += section(run, stage)
        if run.not_run:
            blocks.append(Block("note", f"Not run yet: {', '.join(run.not_run)} (`dvc repro` runs them)."))
    blocks.append(Block("heading", f"Timing ({timing['device']}, {timing['total_seconds']:.0f} s in all)", level=2, anchor="timing"))
    blocks.append(Block("table", table=Table("", ["stage", "seconds", "images", "images/s"], timing_rows(timing))))
    return blocks


def timing_rows(timing: dict) -> list[list[str]]:
    return [[name, f"{s['seconds']:.1f}", str(s["images"]), f"{s['images_per_second']:.0f}"] for name, s in timing["stages"].items()]


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2.4em} h3{margin-top:1.6em}
table{border-collapse:collapse;margin:.2em 0 .8em;font-size:.85em} td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}
td.num{text-align:right;white-space:nowrap} td:first-child{text-align:left} th{background:#f4f4f4} .table-title{font-weight:600;font-size:.85em;margin:1em 0 .2em}
figure{margin:.8em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.85em;color:#555}
.findings{padding:0 0 0 1.2em} .findings li{margin:.3em 0}
.verdict{background:#fff7e6;border-left:4px solid #d08a1a;padding:.6em 1em} .verdict li{margin:.35em 0}
nav a{margin-right:1em} .note{color:#444} .scroll{overflow-x:auto}
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


NUMBER = re.compile(r"^(-?[0-9.]+( %| \[.*\])?|–)$")   # a cell that holds a number (or none): right-aligned


def caption(path: Path) -> str:
    return path.stem.replace("_", " ")


def html_block(block: Block) -> str:
    esc = html.escape
    if block.kind == "heading":
        anchor = f' id="{esc(block.anchor)}"' if block.anchor else ""
        return f"<h{block.level}{anchor}>{esc(block.text)}</h{block.level}>"
    if block.kind == "verdict":
        return (f'<div class="verdict"><b>{esc(block.text)}</b><ul>' + "".join(f"<li>{esc(s)}</li>" for s in block.items)
                + "</ul></div>")
    if block.kind == "findings":
        return '<ul class="findings">' + "".join(f"<li>{esc(s)}</li>" for s in block.items) + "</ul>"
    if block.kind == "table":
        t = block.table
        head = "".join(f"<th>{esc(h)}</th>" for h in t.header)
        body = "".join("<tr>" + "".join(f"<td{' class=num' if NUMBER.match(c) else ''}>{esc(c)}</td>" for c in row) + "</tr>"
                       for row in t.rows)
        title = f'<p class="table-title">{esc(t.title)}</p>' if t.title else ""
        return f'{title}<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    if block.kind == "picture":
        data = base64.b64encode(block.path.read_bytes()).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption(block.path))}">'
                f"<figcaption>{esc(caption(block.path))}</figcaption></figure>")
    return f'<p class="note">{esc(block.text)}</p>'


def markdown_block(block: Block) -> str:
    if block.kind == "heading":
        return "#" * block.level + " " + block.text + "\n"
    if block.kind == "verdict":
        return f"**{block.text}:**\n\n" + "".join(f"- {s}\n" for s in block.items)
    if block.kind == "findings":
        return "".join(f"- {s}\n" for s in block.items)
    if block.kind == "table":
        t = block.table
        lines = [f"**{t.title}**", ""] if t.title else []
        lines += ["| " + " | ".join(t.header) + " |", "|" + "---|" * len(t.header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in t.rows]
        return "\n".join(lines) + "\n"
    if block.kind == "picture":
        return f"![{caption(block.path)}](../{block.path.as_posix()})\n"
    return f"_{block.text}_\n"


def render_html(runs: list[DatasetRun], timing: dict) -> str:
    nav = "<nav>" + "".join(f'<a href="#{r.dataset}">{html.escape(r.dataset)}</a>' for r in runs) + '<a href="#timing">Timing</a></nav>'
    body = [html_block(b) for b in document(runs, timing)]
    return "\n".join([f"<!doctype html><html lang=en><head><meta charset=utf-8><title>What has the classifier learned?</title>"
                      f"<style>{CSS}</style></head><body>", body[0], nav, *body[1:], CHECK_IMAGES + "</body></html>"])


def render_markdown(runs: list[DatasetRun], timing: dict) -> str:
    return "\n".join(markdown_block(b) for b in document(runs, timing))
