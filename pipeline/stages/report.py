"""Stage ``report``: one readable page per run, built only from the metrics and pictures of the stages.

Writes ``report/index.html`` (self-contained: every picture embedded, no network), ``report/README.md``
(the same text, pictures linked) and ``metrics/timing.json`` (wall time of every stage).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline import paths
from pipeline.config import ConfigError, load_params
from pipeline.report.document import render_html, render_markdown
from pipeline.report.run import SECTIONS, DatasetRun
from pipeline.storage import InputError, atomic_path, read_json, write_json

REPORT_DIR = Path("report")
MAX_PICTURES = 12  # per stage; the rest stay in plots/<D>/<stage>/


# --------------------------------------------------------------------------------------------
# Reading the run
# --------------------------------------------------------------------------------------------
def stage_pictures(folder: Path) -> list[Path]:
    """Every PNG under a stage's plot folder, subfolders included (grids, galleries, DVCLive images)."""
    return sorted(folder.rglob("*.png"), key=lambda p: (len(p.relative_to(folder).parts), p.as_posix()))


def read_run(dataset: str, kind: str) -> DatasetRun:
    run = DatasetRun(dataset, kind)
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
        run.picture_dirs[stage] = paths.plots_dir(dataset, stage)
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


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.stages.report")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        datasets = load_params(args.params).datasets
        runs = [read_run(name, entry.kind) for name, entry in datasets.items()]
        metas = {d: read_json(paths.prepared_dir(d) / "meta.json", made_by=f"prepare@{d}") for d in datasets}
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
