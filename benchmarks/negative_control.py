"""The negative control, measured: every detector on a classifier trained with nothing planted, beside Clever Hans.

Runs the detector stages of ``negative_control`` (clever_hans's shortcut on no training image) and of
``clever_hans`` as one DVC experiment with the overrides of a config file, then writes
``benchmarks/results/negative_control.json``: for each dataset the truth (what stamping the shortcut does to its
classifier) and every detector's verdict with its lift over chance and interval (as the shortcut benchmark reads
them), ``n_flagged_classes`` of discover, the config and the commit. On the negative control every detector must
stay at chance and discover must flag nothing; a detector found there is a false alarm.

    python -m benchmarks.negative_control --config configs/cpu_explain.yaml          # run, then write the file
    python -m benchmarks.negative_control --config configs/cpu_explain.yaml --collect # the workspace's last run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.experiments import REPO, Experiment, read_config, repo_relative
from benchmarks.shortcut_benchmark import DETECTORS, WorkspaceOutputs, detector_verdicts
from benchmarks.sweep import with_data_root

DATASETS = ("negative_control", "clever_hans")
STAGES = ("train_classifier", "attribute", "explain", "discover", "influence", "dissect", "prototypes")
OUT = REPO / "benchmarks" / "results" / "negative_control.json"


def experiment(config: Path) -> Experiment:
    targets = tuple(f"{stage}@{dataset}" for dataset in DATASETS for stage in STAGES)
    from_file = read_config(config, targets=targets)
    return with_data_root(replace(from_file, name=f"negative-control-{from_file.name}"))


def run(config: Path) -> float:
    """``dvc exp run`` of the experiment in this workspace (its results applied here); wall seconds."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "dvc", "exp", "run", *experiment(config).run_args()], cwd=REPO, env=env,
                   check=True)
    return time.monotonic() - started


def collect(config: Path, seconds: float | None, root: Path = REPO) -> dict:
    outputs = WorkspaceOutputs(root)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    record = {"config": repo_relative(config),
              "commit": commit, "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
              "run_seconds": seconds, "detectors_read": {d: f"{stage}: {figure}_lift" for d, (stage, figure) in DETECTORS.items()}}
    for dataset in DATASETS:
        truth, detectors = detector_verdicts(outputs, dataset, clean=dataset == "negative_control")
        flagged = outputs.metrics(dataset, "discover").get("n_flagged_classes")
        record[dataset] = {"truth": truth, "n_flagged_classes": flagged,
                           "gan_shortcut_fraction": outputs.metrics(dataset, "explain").get("gan_shortcut_fraction"),
                           "detectors": detectors}
    control = record["negative_control"]
    control["false_alarms"] = sorted(d for d, v in control["detectors"].items() if v["detected"])
    record["n_flagged_classes"] = control["n_flagged_classes"]   # the headline: discover flags nothing here
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "cpu_explain.yaml")
    parser.add_argument("--collect", action="store_true", help="only read the workspace's outputs of the last run")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    config = args.config.resolve()
    seconds = None if args.collect else run(config)
    record = collect(config, seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    control = record["negative_control"]
    print(f"negative control: discover flags {control['n_flagged_classes']} classes; false alarms: "
          f"{', '.join(control['false_alarms']) or 'none'}; written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
