"""Throughput of the explain stage's mask sweep against QuAC's own evaluator, on the CPU.

The workload is the pipeline's own: the GAN-free pairs of Clever Hans's distractor control (a clean test
image and the same image stamped with the shortcut and changed by as much elsewhere, as ``explain@clever_hans``
builds them: :func:`~pipeline.evaluation.explanations.distractor_control_pairs`), their d_ig maps (params.yaml's
``explain`` settings: attributed output, channel handling, integration steps) and the trained classifier of
``train_classifier@clever_hans``. The maps are made once; only the sweep and its scores are timed:

- ours: :func:`pipeline.attribution.discriminative.sweep` and :func:`~pipeline.attribution.discriminative.score_pairs`
  on all pairs, in each score convention (``quac``: QuAC's thresholds ``-1 + 2k/T``, mask size before the
  blur, curve anchored at sizes 0 and 1; ``pipeline``: the stage's default);
- QuAC's evaluator, imported from its sources (``--quac PATH``; never copied here): per pair what its
  ``BaseEvaluator.quantify`` does, less writing files: ``run_inference`` on the real and on the generated
  image, ``evaluate`` (one mask per threshold with its ``Processor``, every threshold's hybrid classified in
  one batch) and the QuAC score of its ``Report`` (``interpolate_score_values``, ``get_quac_score``). Its
  inputs are what its datasets hand it: images as float CHW tensors, attributions as numpy arrays. Its
  ``Processor`` closes with OpenCV's square of our ``closing_size`` and blurs with the odd kernel whose
  OpenCV sigma is nearest our ``blur_sigma`` (OpenCV derives sigma from the kernel size).

Both run on the same classifier, pairs, maps and thresholds, at each ``--threads`` count (torch's and
OpenCV's), interleaved over ``--repeats`` rounds in one process so that both see the same machine. Printed
and written to ``benchmarks/results/explain_sweep.json`` (a list ``runs``): pairs per second of each (median
over the rounds) and their ratio; the same per CPU second of the process (``cpu_ratio``: at one thread what
a quiet machine would show while other jobs share the cores; at two, time a thread spins waiting for the
other counts too); the Pearson correlation of the per-pair scores (ours in the ``quac`` convention computes
QuAC's score, so it should be near 1; the ``pipeline`` convention measures differently); the machine's load
average before and after, and QuAC's commit. Without ``--quac`` only ours is measured and nothing is written.

    python -m benchmarks.explain_sweep --quac PATH/TO/quac              # a checkout of github.com/funkelab/quac
    python -m benchmarks.explain_sweep --quac PATH --threads 1 2 --repeats 5 --pairs 128

QuAC needs OpenCV (``opencv-python-headless``), ``imageio``, ``scipy`` and ``matplotlib`` importable; they are not
the pipeline's requirements (add their folder to ``PYTHONPATH`` if they live apart).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pipeline import paths
from pipeline.attribution.discriminative import (CONVENTIONS, MaskSettings, closing, distinct_masks, score_pairs, size_grid,
                                                 sweep)
from pipeline.config import load_params
from pipeline.data.known_answer import known_answer_from_meta
from pipeline.evaluation.explanations import ExplainOptions, distractor_control_pairs, method_maps
from pipeline.models.classifiers import load_classifier
from pipeline.storage import load_arrays, read_json, write_json

REPO = Path(__file__).resolve().parents[1]
DATASET = "clever_hans"
RESULTS = REPO / "benchmarks" / "results" / "explain_sweep.json"


# --------------------------------------------------------------------------------------------
# The workload
# --------------------------------------------------------------------------------------------
def workload(args: argparse.Namespace):
    """(classifier, pairs, d_ig maps [N,C,H,W] normalised, explain params) on the CPU."""
    cfg = load_params(REPO / "params.yaml").explain
    model = load_classifier(args.classifier)
    prepared = Path(args.prepared)
    made_by = f"prepare@{DATASET}"
    test = {key: torch.from_numpy(value) for key, value in load_arrays(prepared / "test.npz", made_by=made_by).items()}
    answer = known_answer_from_meta(read_json(prepared / "meta.json", made_by=made_by))
    pairs, _, reason = distractor_control_pairs(model, answer, test, args.pairs, np.random.default_rng(args.seed))
    if reason:
        raise SystemExit(f"no GAN-free control pairs: {reason}")
    if len(pairs.target) < args.pairs:
        print(f"only {len(pairs.target)} GAN-free control pairs; benchmarking those", file=sys.stderr)
    options = ExplainOptions(methods=("d_ig",), mask_channels=cfg.mask_channels, attributed=cfg.attributed,
                             ig_steps=cfg.ig_steps, attribution_batch_size=cfg.attribution_batch_size)
    maps = method_maps("d_ig", model, pairs, options, torch.Generator().manual_seed(args.seed))
    return model, pairs, maps, cfg


def settings_for(cfg, convention: str, n_thresholds: int) -> MaskSettings:
    return MaskSettings(n_thresholds, cfg.closing_size, cfg.blur_sigma, convention)


def ours(model, pairs, maps, settings: MaskSettings) -> np.ndarray:
    """Per-pair scores of our sweep (everything :func:`~pipeline.evaluation.explanations.explain_pairs` does
    after the maps, but the optimal masks' pictures)."""
    result = sweep(model, pairs.real, pairs.counterfactual, maps, pairs.target, settings)
    return score_pairs(result, settings, size_grid()).score.numpy()


# --------------------------------------------------------------------------------------------
# QuAC's evaluator, from its sources
# --------------------------------------------------------------------------------------------
def quac_sources(path: str) -> Path:
    """The folder that holds the ``quac`` package: ``path`` itself, or its ``src`` (a checkout)."""
    root = Path(path).resolve()
    for folder in (root / "src", root):
        if (folder / "quac" / "evaluation.py").is_file():
            return folder
    raise SystemExit(f"--quac {path}: no quac/evaluation.py there or under its src/; give a checkout of "
                     "github.com/funkelab/quac")


def git_commit(folder: Path) -> str | None:
    """The commit checked out at ``folder`` (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def opencv_kernel_size(sigma: float) -> int:
    """The odd Gaussian kernel side whose OpenCV sigma (``0.3 * ((k - 1) / 2 - 1) + 0.8`` for sigma 0) is nearest
    ``sigma``."""
    sizes = range(3, 32, 2)
    return min(sizes, key=lambda k: abs(0.3 * ((k - 1) / 2 - 1) + 0.8 - sigma))


class QuacEvaluator:
    """QuAC's ``BaseEvaluator``, ``Processor`` and ``Report`` set up for the pipeline's mask settings."""

    def __init__(self, folder: Path, model, settings: MaskSettings):
        sys.path.insert(0, str(folder))
        try:
            import cv2
            from quac.evaluation import BaseEvaluator, Processor, UnblurredProcessor
            from quac.report import Report
        except ImportError as err:
            raise SystemExit(f"QuAC's evaluator could not be imported from {folder} ({err}); it needs "
                             "opencv-python-headless, imageio, scipy and matplotlib") from err
        self.cv2 = cv2
        self.evaluator = BaseEvaluator(model, num_thresholds=settings.n_thresholds, device=torch.device("cpu"))
        if settings.blur_sigma > 0:
            self.processor = Processor(gaussian_kernel_size=opencv_kernel_size(settings.blur_sigma),
                                       struct=settings.closing_size, channel_wise=True)
        else:
            self.processor = UnblurredProcessor(struct=settings.closing_size, channel_wise=True)
        # QuAC's Processor closes with an ellipse; the pipeline's closing is a square of the same side
        self.processor.kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (settings.closing_size, settings.closing_size))
        self.report = Report(name="benchmark")

    def scores(self, pairs, maps: torch.Tensor) -> np.ndarray:
        """QuAC's score of every pair, as its ``quantify`` computes it (without writing masks and hybrids)."""
        attributions = maps.numpy()
        out = np.empty(len(pairs.target))
        for i in range(len(pairs.target)):
            image, generated = pairs.real[i], pairs.counterfactual[i]
            predictions = {"original": self.evaluator.run_inference(image)[0],
                           "generated": self.evaluator.run_inference(generated)[0]}
            results = self.evaluator.evaluate(image, generated, int(pairs.source[i]), int(pairs.target[i]),
                                              attributions[i], predictions, self.processor)
            curve = self.report.interpolate_score_values(results["mask_sizes"], results["score_change"])
            out[i] = self.report.get_quac_score(curve)
        return out


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
def timed(fn):
    """(``fn()``, wall-clock seconds, CPU seconds of this process: every thread's, not counting time the
    machine's other jobs held the cores)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def measure(threads: int, runners: dict, n_pairs: int, repeats: int) -> tuple[dict, dict, dict, list[float], list[float]]:
    """Every runner ``repeats`` times at ``threads`` threads, interleaved (the order reversed every other round):
    (name -> pairs per wall-clock second per round, name -> pairs per CPU second per round, name -> scores,
    load before, load after)."""
    torch.set_num_threads(threads)
    before = load()
    rates = {name: [] for name in runners}
    cpu_rates = {name: [] for name in runners}
    scores = {}
    for name, run in runners.items():  # warm-up: allocator, kernel choice, imports
        run(slice(0, 2))
    order = list(runners)
    for round_ in range(repeats):
        for name in order if round_ % 2 == 0 else order[::-1]:
            scores[name], seconds, cpu_seconds = timed(lambda: runners[name](slice(0, n_pairs)))
            rates[name].append(n_pairs / seconds)
            cpu_rates[name].append(n_pairs / cpu_seconds)
    return rates, cpu_rates, scores, before, load()


def command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run, QuAC's folder left as ``QUAC`` (it is the user's)."""
    parts = ["python -m benchmarks.explain_sweep --quac QUAC", f"--pairs {args.pairs}", f"--threads {' '.join(map(str, args.threads))}",
             f"--repeats {args.repeats}", f"--conventions {' '.join(args.conventions)}"]
    parts += [f"--thresholds {args.thresholds}"] if args.thresholds else []
    return " ".join(parts)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quac", help="QuAC's sources: a checkout of github.com/funkelab/quac (or its src/)")
    parser.add_argument("--classifier", default=str(REPO / paths.classifier_path(DATASET)),
                        help="the trained classifier (train_classifier@clever_hans)")
    parser.add_argument("--prepared", default=str(REPO / paths.prepared_dir(DATASET)),
                        help="the prepared dataset: test.npz and meta.json (prepare@clever_hans)")
    parser.add_argument("--pairs", type=int, default=128, help="GAN-free control pairs")
    parser.add_argument("--thresholds", type=int, default=None, help="default: params.yaml's explain.n_thresholds")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per thread count")
    parser.add_argument("--conventions", nargs="+", default=list(CONVENTIONS), choices=CONVENTIONS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()

    model, pairs, maps, cfg = workload(args)
    n = len(pairs.target)
    n_thresholds = args.thresholds or cfg.n_thresholds
    settings = {c: settings_for(cfg, c, n_thresholds) for c in args.conventions}
    runners = {f"ours ({c})": (lambda p, s=s: ours(model, select(pairs, p), maps[p], s)) for c, s in settings.items()}
    reference = None
    if args.quac:
        folder = quac_sources(args.quac)
        quac = QuacEvaluator(folder, model, settings_for(cfg, "quac", n_thresholds))
        runners["QuAC"] = lambda p: quac.scores(select(pairs, p), maps[p])
        reference = {"commit": git_commit(folder), "version": __import__("quac").__version__,
                     "processor": type(quac.processor).__name__, "struct": cfg.closing_size, "structuring_element": "square",
                     "gaussian_kernel_size": getattr(quac.processor, "gaussian_kernel_size", None)}
    else:
        print("QuAC's evaluator not measured: give --quac PATH (a checkout of github.com/funkelab/quac); "
              "measuring only ours, writing nothing", file=sys.stderr)

    closed_maps = closing(maps, cfg.closing_size, -float("inf"))  # thresholded: each threshold's closed mask
    distinct = {c: distinct_masks(closed_maps, s.thresholds()).sum(dim=1).float().mean().item() for c, s in settings.items()}
    print(f"{n} GAN-free pairs of {DATASET}, d_ig maps ({cfg.mask_channels}, attributed: {cfg.attributed}), "
          f"{n_thresholds} thresholds, closing {cfg.closing_size}, blur sigma {cfg.blur_sigma}; distinct closed masks "
          f"per pair (what our sweep classifies): " + ", ".join(f"{d:.1f} ({c})" for c, d in distinct.items()))
    if reference:
        print(f"reference: QuAC's own evaluator (quac {reference['version']}, commit {reference['commit']}), "
              f"{reference['processor']}(gaussian_kernel_size={reference['gaussian_kernel_size']}, struct={cfg.closing_size}, square)")
    runs = []
    for threads in args.threads:
        if reference:
            quac.cv2.setNumThreads(threads)
        rates, cpu_rates, scores, before, after = measure(threads, runners, n, args.repeats)
        median = {name: statistics.median(r) for name, r in rates.items()}
        cpu_median = {name: statistics.median(r) for name, r in cpu_rates.items()}
        print(f"{threads} thread(s), load average before {before}, after {after}:")
        for name in runners:
            print(f"  {name:16s} {median[name]:8.2f} pairs/s  (rounds: {', '.join(f'{r:.2f}' for r in rates[name])}); "
                  f"{cpu_median[name]:8.2f} pairs per CPU second")
        for convention in settings if reference else ():
            name = f"ours ({convention})"
            ratio, cpu_ratio = median[name] / median["QuAC"], cpu_median[name] / cpu_median["QuAC"]
            agreement = pearson(scores[name], scores["QuAC"])
            difference = float(np.abs(scores[name] - scores["QuAC"]).max())
            print(f"  {name} / QuAC: {ratio:.2f}x ({cpu_ratio:.2f}x per CPU second); per-pair scores: Pearson "
                  f"{agreement:.4f}, largest difference {difference:.4f}")
            runs.append({"reference": "quac", "convention": convention, "threads": threads, "ratio": round(ratio, 3),
                         "pearson": round(agreement, 5), "max_score_difference": round(difference, 5),
                         "pairs_per_second": round(median[name], 3), "reference_pairs_per_second": round(median["QuAC"], 3),
                         "cpu_ratio": round(cpu_ratio, 3), "pairs_per_cpu_second": round(cpu_median[name], 3),
                         "reference_pairs_per_cpu_second": round(cpu_median["QuAC"], 3),
                         "rounds_pairs_per_second": [round(r, 3) for r in rates[name]],
                         "reference_rounds_pairs_per_second": [round(r, 3) for r in rates["QuAC"]],
                         "load_average_before": before, "load_average_after": after})
    if reference:
        write_json(args.output, {
            "command": command(args),
            "commit": git_commit(REPO),
            "workload": {"dataset": DATASET, "pairs": n, "pair_kind": "distractor control (GAN-free)",
                         "classifier_sha256": hashlib.sha256(Path(args.classifier).read_bytes()).hexdigest(),
                         "maps": "d_ig", "mask_channels": cfg.mask_channels, "attributed": cfg.attributed,
                         "thresholds": n_thresholds, "closing_size": cfg.closing_size, "blur_sigma": cfg.blur_sigma,
                         "distinct_closed_masks_per_pair": {c: round(d, 2) for c, d in distinct.items()},
                         "repeats": args.repeats},
            "reference": {"name": "quac", **reference},
            "machine": machine(),
            "runs": runs,
        })
        print(f"wrote {args.output}")


def select(pairs, part: slice):
    """The pairs of ``part`` (a :class:`~pipeline.evaluation.explanations.Pairs` view)."""
    from dataclasses import replace

    return replace(pairs, real=pairs.real[part], counterfactual=pairs.counterfactual[part], image_index=pairs.image_index[part],
                   source=pairs.source[part], target=pairs.target[part])


if __name__ == "__main__":
    main()
