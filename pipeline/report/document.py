"""The report's page: tables of metrics, one list of blocks per run, rendered as self-contained HTML and as Markdown."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.report.findings import findings, verdict
from pipeline.report.run import SECTIONS, DatasetRun

SOURCE_NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "image_folder": "images"}


def title(run: DatasetRun, meta: dict) -> str:
    """"Clever Hans MNIST (a planted shortcut)"; a dataset named other than its kind adds its name."""
    source = SOURCE_NAMES.get(meta.get("source"), meta.get("source", ""))
    text = {"colored_mnist": f"Colored {source} (the class is the colormap)",
            "clever_hans": f"Clever Hans {source} (a planted shortcut)",
            "image_folder": "Your images (no known answer)"}[run.kind]
    return text if run.dataset == run.kind else f"{text}: {run.dataset}"


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
        blocks.append(Block("heading", title(run, meta), level=2, anchor=run.dataset))
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
                                            f"{run.picture_dirs[stage].as_posix()}/"))
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
    nav = "<nav>" + "".join(f'<a href="#{r.dataset}">{html.escape(title(r, metas[r.dataset]))}</a>' for r in runs) + '<a href="#timing">Timing</a></nav>'
    body = [html_block(b) for b in document(runs, metas, timing)]
    return "\n".join([f"<!doctype html><html lang=en><head><meta charset=utf-8><title>What has the classifier learned?</title>"
                      f"<style>{CSS}</style></head><body>", body[0], nav, *body[1:], CHECK_IMAGES + "</body></html>"])


def render_markdown(runs: list[DatasetRun], metas: dict, timing: dict) -> str:
    return "\n".join(markdown_block(b) for b in document(runs, metas, timing))
