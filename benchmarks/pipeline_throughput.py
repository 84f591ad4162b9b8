"""Per-stage throughput of the whole pipeline on a fixed workload.

Runs every stage of both datasets, in DAG order, in a temporary folder with ``params.yaml`` overridden
to a fixed size (default: 10 000 training and 2 000 test images, the GAN for 300 iterations), then
prints each stage's wall time, images processed and images/second as the stages record them in
``metrics/<dataset>/timing``. Not a test: nothing is asserted.

    python -m benchmarks.pipeline_throughput                   # the GPU when present
    python -m benchmarks.pipeline_throughput --train-size 60000 --test-size 10000 --gan-iterations 3000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STAGE_ORDER = ["prepare", "train_classifier", "attribute", "feature_viz", "train_gan", "counterfactuals",
               "explain", "discover", "optimize_counterfactuals", "spectra"]


def workload(args: argparse.Namespace) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(root=str(Path(args.data_root).resolve()), train_size=args.train_size, test_size=args.test_size)
    params["gan"]["iterations"] = args.gan_iterations
    params["device"] = args.device
    return params


def run_stages(work: Path, params: dict, stages: list[str]) -> None:
    """Run ``stages`` (in DAG order) for both datasets in folder ``work`` with ``params``."""
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for stage in [s for s in STAGE_ORDER if s in stages]:
        for dataset in params["datasets"]:
            print(f"running {stage}@{dataset} ...", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", f"pipeline.stages.{stage}", dataset], cwd=work, env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--test-size", type=int, default=2_000)
    parser.add_argument("--gan-iterations", type=int, default=300)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--data-root", default=str(REPO / "data" / "raw"), help="torchvision root holding MNIST/raw")
    parser.add_argument("--stages", nargs="*", default=STAGE_ORDER)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pipeline-benchmark-") as tmp:
        work = Path(tmp)
        run_stages(work, workload(args), args.stages)
        records = [json.loads(p.read_text()) for p in sorted((work / "metrics").glob("*/timing/*.json"))]
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    records.sort(key=lambda r: (order.get(r["stage"].split("@")[0], 99), r["stage"]))
    print(f"{'stage':40s} {'seconds':>9s} {'images':>10s} {'images/s':>10s}   ({records[0]['device'] if records else '?'})")
    for r in records:
        print(f"{r['stage']:40s} {r['seconds']:9.2f} {r['images']:10d} {r['images_per_second']:10.0f}")
    print(f"{'total':40s} {sum(r['seconds'] for r in records):9.2f}")


if __name__ == "__main__":
    main()
