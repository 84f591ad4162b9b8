"""Stage ``report``: one readable page per run, built only from the stages' results and pictures.

Per dataset of params.yaml it reads prepare's meta.json (the known answer, the class names) and every stage's
metrics file and details.json as typed results (:mod:`pipeline.report.results`); a stage with none of its files has
not run and is named as such, a missing or malformed file of a stage that ran ends in one error that names it.
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
from pipeline.report.results import DatasetRun, read_run
from pipeline.storage import InputError, atomic_path, read_json, write_json

REPORT_DIR = Path("report")


def read_dataset(dataset: str) -> DatasetRun:
    """One dataset's typed results: its known answer from prepare's meta.json, each stage's metrics and details."""
    meta_file = paths.prepared_dir(dataset) / "meta.json"
    return read_run(dataset, read_json(meta_file, made_by=f"prepare@{dataset}"), meta_file,
                    lambda name: paths.metrics_path(dataset, name), lambda stage: paths.plots_dir(dataset, stage))


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
        runs = [read_dataset(name) for name in load_params(args.params).datasets]
        timing = collect_timing()
        write_json(paths.METRICS / "timing.json", timing)
        write_text(REPORT_DIR / "index.html", render_html(runs, timing))
        write_text(REPORT_DIR / "README.md", render_markdown(runs, timing))
    except (ConfigError, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    print(f"[report] {REPORT_DIR / 'index.html'}: {len(runs)} datasets, pipeline time {timing['total_seconds']:.0f} s on {timing['device']}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
