"""How much does the known answer wobble? Train the Clever Hans classifier for several seeds.

For each seed, ``prepare@clever_hans`` and ``train_classifier@clever_hans`` run in a temporary folder
with ``params.yaml`` (everything else as committed) and the seed changed; the classifier's metrics are
collected into ``metrics/seed_study.json``: ``seeds``, ``shortcut_reliance`` and ``clean_accuracy`` (one
value per seed), ``shortcut_base_rate``, and ``shortcut_reliance_min`` / ``mean`` / ``std``. A finding that
holds for one seed only is luck; this says how far the planted shortcut's pull varies.

    python -m benchmarks.seed_study                           # seeds 0 1 2, full data, the GPU when present
    python -m benchmarks.seed_study --seeds 0 1 2 3 --device cpu
    python -m benchmarks.seed_study --set classifier.epochs=2 --set datasets.clever_hans.shortcuts.0.fraction=0.99
    python -m benchmarks.seed_study --jobs 3                  # the seeds side by side (one CPU thread each on the CPU)
    python -m benchmarks.seed_study --device cpu --threads 1 2  # every seed at 1 and at 2 CPU threads

On the CPU the number of threads changes the order of floating-point sums, and with it the training
trajectory: the same seed can land at a different reliance. ``--threads`` trains every seed at each
thread count given, so that the spread covers both; each run's count is recorded in ``threads``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
DATASET = "clever_hans"


def with_setting(params: dict, assignment: str) -> dict:
    """Apply ``a.b.0.c=value`` (YAML value; list items by index) to a params dict, as `dvc exp run -S` does."""
    key, _, raw = assignment.partition("=")
    *path, last = key.split(".")
    node = params
    for part in path:
        node = node[int(part)] if isinstance(node, list) else node[part]
    value = yaml.safe_load(raw)
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return params


def study_params(seed: int, args: argparse.Namespace) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["seed"] = seed
    params["device"] = args.device
    params["data"]["root"] = str(Path(args.data_root).resolve())
    for assignment in args.set:
        with_setting(params, assignment)
    return params


def default_threads(args: argparse.Namespace) -> int | None:
    """CPU threads per run without ``--threads``: ``OMP_NUM_THREADS`` when it is set to a number; else one when seeds
    run side by side on the CPU (they share the cores instead of fighting over them); else None (torch's default)."""
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit():
        return int(omp)
    return 1 if args.jobs > 1 and args.device == "cpu" else None


def train_one(seed: int, threads: int | None, args: argparse.Namespace) -> dict:
    """The classifier metrics of one seed (at ``threads`` CPU threads; None = the default), from a fresh temporary folder."""
    with tempfile.TemporaryDirectory(prefix=f"seed-study-{seed}-") as tmp:
        work = Path(tmp)
        (work / "params.yaml").write_text(yaml.safe_dump(study_params(seed, args), sort_keys=False))
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        for stage in ("prepare", "train_classifier"):
            subprocess.run([sys.executable, "-m", f"pipeline.stages.{stage}", DATASET], cwd=work, env=env, check=True,
                           stdout=subprocess.DEVNULL)
        return json.loads((work / "metrics" / DATASET / "classifier.json").read_text())


def torch_default_threads() -> int:
    """The CPU threads a stage gets when OMP_NUM_THREADS is not set (torch's default on this machine)."""
    import torch

    return torch.get_num_threads()


def shortcut_record(params: dict) -> dict:
    """The planted shortcut studied (the params' first one, after --set) and the share of the image it paints."""
    from pipeline.data.known_answer import PlantedShortcuts
    from pipeline.data.shortcuts import Shortcut
    from pipeline.data.sources import SOURCE_IMAGE_SIZE

    spec = params["datasets"][DATASET]["shortcuts"][0]
    shape = (SOURCE_IMAGE_SIZE, SOURCE_IMAGE_SIZE)   # the MNIST images the study trains on
    return {"shortcut": spec, "shortcut_area_fraction": round(PlantedShortcuts((Shortcut(**spec),), shape).area_fraction(0), 6)}


def summary(seeds: list[int], runs: list[dict], settings: list[str], threads: list[int | None] | None = None) -> dict:
    """One value per run (``seeds[i]`` at ``threads[i]`` CPU threads), and the spread over all runs."""
    reliance = np.array([r["shortcut_reliance"] for r in runs])
    return {
        "seeds": seeds,
        "threads": threads if threads is not None else [None] * len(seeds),
        "settings": settings,
        "shortcut_reliance": [round(float(v), 6) for v in reliance],
        "shortcut_base_rate": [round(float(r["shortcut_base_rate"]), 6) for r in runs],
        "shortcut_occlusion_rate": [round(float(r["shortcut_occlusion_rate"]), 6) if "shortcut_occlusion_rate" in r else None
                                    for r in runs],
        "clean_accuracy": [round(float(r["clean_accuracy"]), 6) for r in runs],
        "test_accuracy": [round(float(r["test_accuracy"]), 6) for r in runs],
        "shortcut_reliance_min": round(float(reliance.min()), 6),
        "shortcut_reliance_mean": round(float(reliance.mean()), 6),
        "shortcut_reliance_std": round(float(reliance.std(ddof=1)) if len(reliance) > 1 else 0.0, 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--data-root", default=str(REPO / "data" / "raw"), help="torchvision root holding MNIST/raw")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param (repeatable)")
    parser.add_argument("--out", default=str(REPO / "metrics" / "seed_study.json"))
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained side by side")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="train every seed at each of these CPU thread counts (OMP_NUM_THREADS)")
    args = parser.parse_args()
    runs_to_do = [(seed, threads) for threads in (args.threads or [default_threads(args)]) for seed in args.seeds]

    def run(job: tuple[int, int | None]) -> dict:
        seed, threads = job
        at = f" at {threads} thread{'s' if threads != 1 else ''}" if threads is not None else ""
        print(f"seed {seed}{at}: training the {DATASET} classifier ...", file=sys.stderr, flush=True)
        r = train_one(seed, threads, args)
        print(f"seed {seed}{at}: reliance {r['shortcut_reliance']:.3f} (base rate {r['shortcut_base_rate']:.3f}), "
              f"clean accuracy {r['clean_accuracy']:.4f}", file=sys.stderr, flush=True)
        return r

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        runs = list(pool.map(run, runs_to_do))
    threads = [t if t is not None else torch_default_threads() for _, t in runs_to_do]
    result = {**shortcut_record(study_params(args.seeds[0], args)),
              **summary([s for s, _ in runs_to_do], runs, args.set, threads)}
    result["occlusion_minus_base_rate"] = [round(o - b, 6) for o, b in zip(result["shortcut_occlusion_rate"],
                                                                           result["shortcut_base_rate"])]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
