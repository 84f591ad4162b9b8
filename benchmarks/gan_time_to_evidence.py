"""How long until the GAN's counterfactuals carry a class's evidence? Wall time to target, per case and generator.

For each case (a dataset of the benchmark grid) the classifier that judges is trained once, by ``prepare`` and
``train_classifier`` in a scratch folder with its own ``params.yaml`` (as committed, the case's dataset entry,
``device: cpu``), on one CPU thread, and cached there: it is not part of the GAN's time. Then the GAN trains from scratch, in this
process, exactly as ``train_gan@<case>`` would (same seeds and streams), once per generator:

- ``new``: the committed ``gan`` params with the CPU configuration's overrides (``configs/cpu_explain.yaml``);
- ``current``: the same settings with ``generator: stargan``, the generator before the edit generator.

Every ``--eval-seconds`` of training (checked at each log point, every ``log_every`` iterations) the EMA
translator is judged on a fixed seeded sample of test images, each translated into every other class with
reference-guided (mean) styles, as ``counterfactuals@<case>`` does: ``conversion`` (share the classifier assigns to
the target); Clever Hans: ``gan_shortcut_fraction``, the share of counterfactuals into a shortcut's class that carry
the shortcut (the known answer's rule, :meth:`pipeline.data.known_answer.PlantedShortcuts.carries`; here over all
counterfactuals into the class, converted or not); colored MNIST: ``exact_counterfactual_error`` (mean absolute
error against the exact counterfactual). The clock stops while judging. A run ends when its target held at
``--confirm`` evaluations in a row (``seconds_to_target``: the first of them) or at ``--time-cap`` seconds of
training (``seconds_to_target``: null). Targets: conversion >= 0.95 and gan_shortcut_fraction >= 0.9 (Clever Hans);
conversion >= 0.95 and exact_counterfactual_error <= 0.03 (colored MNIST).

The GAN's own targets above are the only figures its defaults were tuned on; no explanation or discovery figure
(explain, discover) was looked at to choose them.

The cores may be shared: each run records the 1-minute load average at every evaluation, the CPU seconds of
training beside the wall seconds (``cpu_seconds_to_target``; judging left out of both), and the CPU seconds the
process got per wall second (2.0 = both cores to itself at ``--threads 2``). On a busy machine ``--clock cpu``
caps each run at ``--time-cap`` CPU seconds per thread instead of wall seconds; wall figures are then not what a
quiet machine gives, and the result says which clock capped.

    python -m benchmarks.gan_time_to_evidence                       # every case, both generators, 2 threads
    python -m benchmarks.gan_time_to_evidence --cases clever_hans --generators new --time-cap 120
    python -m benchmarks.gan_time_to_evidence --set width=24 --set learning_rate=0.001   # other new settings
    python -m benchmarks.gan_time_to_evidence --cases clever_hans --data-config configs/laptop.yaml   # laptop's data

``--data-config`` takes the ``data`` and ``classifier`` sections of a config file (the laptop's 12 000 training images
and its smaller judging classifier); each result records it under ``run`` (null: full data as committed).

Writes ``benchmarks/results/gan_time_to_evidence.json``: ``cases`` (one entry per case and generator: ``case``,
``generator``, ``seconds_to_target``, the end figures, ``curve``, ``settings``, ``load_average``), the command
and the machine.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.experiments import repo_relative
from pipeline.counterfactuals.gan_training import GanStreams, GanTrainingOptions, net_config, train
from pipeline.counterfactuals.quality import conversion, mean_abs_error
from pipeline.counterfactuals.translation import all_other_targets, class_reference_styles, translate
from pipeline.data.known_answer import ColorRule, PlantedShortcuts, known_answer_from_meta
from pipeline.data.tensors import to_float
from pipeline.models.classifiers import load_classifier
from pipeline.models.gan import GanNets
from pipeline.models.inference import predict_probabilities
from pipeline.runtime import stage_seed, torch_generator
from pipeline.storage import load_arrays, read_json

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIG = REPO / "configs" / "cpu_explain.yaml"
TARGET_CONVERSION = 0.95
TARGET_SHORTCUT_FRACTION = 0.9
TARGET_EXACT_ERROR = 0.03
# Other shortcut kinds and sizes of the benchmark grid, each on its own class: (case name, changes to the default
# Clever Hans shortcut). The default case and colored MNIST come from params.yaml as committed.
SHORTCUT_VARIANTS = {
    "clever_hans_text": {"label": 3, "kind": "text", "text": "09:41", "side": 1, "position": [22, 8],
                         "color": [1.0, 0.75, 0.0]},       # an amber time stamp in the bottom-right corner
    "clever_hans_gradient": {"label": 4, "kind": "gradient", "side": 10, "position": [18, 0],
                             "color": [0.0, 1.0, 1.0]},    # a cyan gradient patch in the bottom-left corner
    "clever_hans_small_square": {"label": 1, "kind": "square", "side": 4, "position": [0, 24],
                                 "color": [0.0, 0.0, 1.0]},  # a 4x4 blue square in the top-right corner
}
# The params sections that prepared data and the classifier depend on (the cache key of a case's folder).
CLASSIFIER_PARAMS = ("seed", "deterministic", "device", "data", "datasets", "classifier")
DEFAULT_CASES = ["clever_hans", "clever_hans_text", "clever_hans_gradient", "colored_mnist"]


LOCAL_OPTIONS = ("--work", "--data-root", "--out")   # where this machine keeps things, not what was measured


def reproducing_command(argv: list[str]) -> str:
    """The command line of this run less :data:`LOCAL_OPTIONS` and their values."""
    kept, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word in LOCAL_OPTIONS:
            skip = True
        elif not word.startswith(tuple(f"{option}=" for option in LOCAL_OPTIONS)):
            kept.append(word)
    return " ".join(["python -m benchmarks.gan_time_to_evidence", *kept])


class Stop(Exception):
    """Raised from the training loop's log hook to end a run (target held, or time cap)."""


def dataset_entry(params: dict, case: str) -> dict:
    """The ``datasets`` entry of ``case``: params.yaml's own, or its Clever Hans entry with a variant shortcut."""
    if case in params["datasets"]:
        return copy.deepcopy(params["datasets"][case])
    if case not in SHORTCUT_VARIANTS:
        raise SystemExit(f"unknown case {case!r}; cases: {', '.join(list(params['datasets']) + list(SHORTCUT_VARIANTS))}")
    entry = copy.deepcopy(params["datasets"]["clever_hans"])
    entry["shortcuts"] = [{**entry["shortcuts"][0], **SHORTCUT_VARIANTS[case]}]
    return entry


# The sections of a ``--data-config`` file that shape the data and the judging classifier (its GAN section is not read).
DATA_SECTIONS = ("data", "classifier")


def case_params(case: str, data_root: str, data_config: Path | None = None) -> dict:
    """params.yaml for the case's scratch folder: as committed (with ``data_config``'s :data:`DATA_SECTIONS`), one
    dataset, on the CPU."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    overrides = (yaml.safe_load(data_config.read_text()) or {}) if data_config else {}
    for section in DATA_SECTIONS:
        params[section].update(overrides.get(section, {}))
    params["datasets"] = {case: dataset_entry(params, case)}
    params["device"] = "cpu"
    params["data"]["root"] = str(Path(data_root).resolve())
    return params


def prepared_case(case: str, work: Path, data_root: str, data_config: Path | None = None) -> Path:
    """The case's scratch folder with prepared data and a trained classifier; reused when its params are unchanged."""
    params = case_params(case, data_root, data_config)
    text = yaml.safe_dump(params, sort_keys=False)
    made_by = json.dumps({key: params[key] for key in CLASSIFIER_PARAMS}, sort_keys=True)
    folder = work / f"{case}-{hashlib.sha256(made_by.encode()).hexdigest()[:10]}"
    done = folder / "data" / "models" / case / "classifier.pt"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(text)
    # one thread: the classifier does not depend on how many cores were free when it was trained
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    for stage in ("prepare", "train_classifier"):
        print(f"[{case}] {stage} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", f"pipeline.stages.{stage}", case], cwd=folder, env=env, check=True,
                       stdout=subprocess.DEVNULL)
    return folder


def gan_options(generator: str, overrides: list[str]) -> GanTrainingOptions:
    """The committed ``gan`` params with the CPU configuration's and ``overrides`` (``name=value``); the ``current``
    generator runs the same settings with ``generator: stargan`` (the mask weight is then moot: it has no mask)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())["gan"]
    params.update((yaml.safe_load(CPU_CONFIG.read_text()) or {}).get("gan", {}))
    for assignment in overrides:
        name, _, raw = assignment.partition("=")
        params[name] = yaml.safe_load(raw)
    names = {f.name for f in dataclasses.fields(GanTrainingOptions)}
    options = GanTrainingOptions(**{k: v for k, v in params.items() if k in names})
    return dataclasses.replace(options, generator="stargan") if generator == "current" else options


class Judge:
    """The classifier's verdict on the EMA translator's counterfactuals of a fixed sample of test images."""

    def __init__(self, folder: Path, case: str, n_images: int, seed: int):
        prepared = folder / "data" / "prepared" / case
        self.test = {k: torch.from_numpy(v) for k, v in load_arrays(prepared / "test.npz").items()}
        train_split = load_arrays(prepared / "train.npz")
        self.references = torch.from_numpy(train_split["images"]), torch.from_numpy(train_split["labels"])
        meta = read_json(prepared / "meta.json")
        self.n_classes, self.class_names = meta["n_classes"], meta["class_names"]
        self.classifier = load_classifier(folder / "data" / "models" / case / "classifier.pt")
        self.classifier_metrics = read_json(folder / "metrics" / case / "classifier.json")
        self.seed = stage_seed(seed, "gan_time_to_evidence", case)
        pick = torch.randperm(len(self.test["labels"]), generator=torch_generator(self.seed))[:n_images].sort().values
        rows, self.targets = all_other_targets(self.test["labels"][pick], self.n_classes)
        self.image_index = pick[rows]
        self.real = self.test["images"][self.image_index]
        self.answer = known_answer_from_meta(meta)
        if isinstance(self.answer, PlantedShortcuts):
            self.clean = to_float(self.test["clean_images"][self.image_index])
            self.into = torch.isin(self.targets, torch.tensor(self.answer.labels))
        elif isinstance(self.answer, ColorRule):
            self.exact = torch.from_numpy(self.answer.exact_counterfactuals(
                self.test["gray"].numpy()[self.image_index], self.test["positions"].numpy()[self.image_index],
                self.targets.numpy()))
        else:
            raise SystemExit(f"case {case}: no known answer to judge the GAN by ({self.answer.kind})")

    @torch.no_grad()
    def __call__(self, translator) -> dict:
        translator.eval()
        styles = class_reference_styles(translator, *self.references, self.n_classes, "mean_style", 64,
                                        torch_generator(self.seed + 1))
        counterfactual = translate(translator, self.real, styles[self.targets], 1024)
        predicted = predict_probabilities(self.classifier, counterfactual, 1024).argmax(1)
        source = self.test["labels"][self.image_index]
        figures = {"conversion": conversion(predicted, source, self.targets)[0]}
        if isinstance(self.answer, PlantedShortcuts):
            carried = self.answer.carries(to_float(counterfactual), self.clean, self.targets)
            figures["gan_shortcut_fraction"] = carried[self.into].float().mean().item()
        else:
            figures["exact_counterfactual_error"] = mean_abs_error(counterfactual, self.exact)
        return figures

    def reached(self, figures: dict) -> bool:
        if figures["conversion"] < TARGET_CONVERSION:
            return False
        if isinstance(self.answer, PlantedShortcuts):
            return figures["gan_shortcut_fraction"] >= TARGET_SHORTCUT_FRACTION
        return figures["exact_counterfactual_error"] <= TARGET_EXACT_ERROR


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class TrainingClock:
    """Seconds of training so far, wall and CPU (this process, all threads), with the time spent judging left out."""

    def __init__(self):
        self.wall_start, self.cpu_start = time.perf_counter(), cpu_seconds()
        self.wall_paused = self.cpu_paused = 0.0

    def now(self) -> tuple[float, float]:
        return (time.perf_counter() - self.wall_start - self.wall_paused,
                cpu_seconds() - self.cpu_start - self.cpu_paused)

    def pause(self):
        clock = self

        class Paused:
            def __enter__(self):
                self.wall, self.cpu = time.perf_counter(), cpu_seconds()

            def __exit__(self, *exc):
                clock.wall_paused += time.perf_counter() - self.wall
                clock.cpu_paused += cpu_seconds() - self.cpu
        return Paused()


def run_case(case: str, generator: str, folder: Path, judge: Judge, options: GanTrainingOptions, seed: int,
             args: argparse.Namespace) -> dict:
    """Train one GAN from scratch until its target held ``args.confirm`` times or the time cap."""
    prepared = folder / "data" / "prepared" / case
    train_split = load_arrays(prepared / "train.npz")
    images, labels = torch.from_numpy(train_split["images"]), torch.from_numpy(train_split["labels"])
    options = dataclasses.replace(options, iterations=10**7, checkpoint_every=10**7, log_every=args.log_every)
    config = net_config(options, judge.n_classes, tuple(images.shape[1:]))
    torch.manual_seed(seed)  # as train_gan@<case> seeds and streams its run
    nets = GanNets(config)
    streams = GanStreams.create(lambda name, on: torch_generator(stage_seed(seed, f"train_gan/{name}", case), on), "cpu")
    curve, state = [], {"last_eval": -float("inf"), "held": 0, "first": None}
    clock = TrainingClock()

    def on_log(record: dict, ema) -> None:
        with clock.pause():
            wall, cpu = clock.now()
            capped = (wall if args.clock == "wall" else cpu / args.threads) >= args.time_cap
            if wall - state["last_eval"] < args.eval_seconds and not capped:
                return
            state["last_eval"] = wall
            figures = judge(ema)
            state["held"] = state["held"] + 1 if judge.reached(figures) else 0
            if state["held"] == 1:
                state["first"] = len(curve)
            curve.append({"iteration": record["iteration"], "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
                          **{k: round(v, 4) for k, v in figures.items()}, "load_1min": os.getloadavg()[0]})
            print(f"[{case}/{generator}] {record['iteration']:5d} it {wall:6.0f} s (CPU {cpu:6.0f} s)  " +
                  "  ".join(f"{k} {v:.3f}" for k, v in figures.items()), file=sys.stderr, flush=True)
        if state["held"] >= args.confirm or capped:
            raise Stop

    try:
        with tempfile.TemporaryDirectory(prefix="gan-tte-") as tmp:
            train(nets, images, labels, options, streams, Path(tmp) / "last.pt", stamp="benchmark", on_log=on_log)
    except Stop:
        pass
    end = curve[-1]
    reached = curve[state["first"]] if state["held"] >= args.confirm else None
    loads = [point["load_1min"] for point in curve]
    return {
        "case": case, "generator": generator,
        "seconds_to_target": reached["seconds"] if reached else None,
        "cpu_seconds_to_target": reached["cpu_seconds"] if reached else None,
        "iterations_to_target": reached["iteration"] if reached else None,
        "conversion": end["conversion"],
        "gan_shortcut_fraction": end.get("gan_shortcut_fraction"),
        "exact_counterfactual_error": end.get("exact_counterfactual_error"),
        "iterations": end["iteration"], "training_seconds": end["seconds"], "training_cpu_seconds": end["cpu_seconds"],
        "iterations_per_second": round(end["iteration"] / end["seconds"], 3),
        "load_average": {"mean_1min": round(float(np.mean(loads)), 2), "max_1min": round(float(np.max(loads)), 2)},
        "cpu_seconds_per_wall_second": round(end["cpu_seconds"] / end["seconds"], 2),
        "settings": dataclasses.asdict(dataclasses.replace(options, iterations=end["iteration"])),
        "classifier": {k: judge.classifier_metrics.get(k) for k in ("test_accuracy", "clean_accuracy", "shortcut_reliance")
                       if k in judge.classifier_metrics},
        "curve": curve,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES)
    parser.add_argument("--generators", nargs="+", default=["new", "current"], choices=["new", "current"])
    parser.add_argument("--time-cap", type=float, default=600.0, help="seconds of training per run, at most")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="what the time cap counts: wall seconds, or CPU seconds / --threads (on shared cores)")
    parser.add_argument("--eval-seconds", type=float, default=20.0, help="seconds of training between evaluations")
    parser.add_argument("--eval-images", type=int, default=300, help="test images, each into every other class")
    parser.add_argument("--confirm", type=int, default=2, help="evaluations in a row the target must hold")
    parser.add_argument("--log-every", type=int, default=10, help="iterations between log points (where runs are judged)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of GAN training")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a GAN option of the new runs")
    parser.add_argument("--work", default="/tmp/gan_time_to_evidence", help="scratch folder (data, classifiers)")
    parser.add_argument("--data-root", default=str(REPO / "data" / "raw"), help="torchvision root holding MNIST/raw")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gan_time_to_evidence.json"))
    parser.add_argument("--data-config", type=Path, default=None,
                        help="a config file whose data and classifier sections replace the committed ones (e.g. "
                             "configs/laptop.yaml: its fewer training images and smaller judging classifier)")
    parser.add_argument("--append", action="store_true",
                        help="keep the entries of --out for the cases and generators not run now")
    args = parser.parse_args()
    seed = yaml.safe_load((REPO / "params.yaml").read_text())["seed"]
    torch.set_num_threads(args.threads)

    out_path = Path(args.out)
    data_config = repo_relative(args.data_config.resolve()) if args.data_config else None
    kept = []
    if args.append and out_path.exists():  # entries of other cases and generators stay as they were measured
        kept = [r for r in json.loads(out_path.read_text())["cases"]
                if (r["case"], r["generator"], r["run"].get("data_config")) not in
                {(c, g, data_config) for c in args.cases for g in args.generators}]
    run = {"command": reproducing_command(sys.argv[1:]),
           "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": args.threads,
           "time_cap_seconds": args.time_cap, "time_cap_clock": args.clock, "eval_images": args.eval_images,
           "confirm": args.confirm, "data_config": data_config}
    results = []
    for case in args.cases:
        folder = prepared_case(case, Path(args.work), args.data_root, args.data_config)
        judge = Judge(folder, case, args.eval_images, seed)
        for generator in args.generators:
            results.append({**run_case(case, generator, folder, judge, gan_options(generator, args.set), seed, args),
                            "run": run})
            r = results[-1]
            print(f"[{case}/{generator}] seconds to target: {r['seconds_to_target']}; load {r['load_average']}",
                  file=sys.stderr, flush=True)
            write_results(out_path, kept + results)  # after every run, so a long benchmark keeps what it measured
    print(json.dumps([{k: r[k] for k in ("case", "generator", "seconds_to_target", "conversion")} for r in results]))


def write_results(path: Path, entries: list[dict]) -> None:
    out = {"machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                       "torch": torch.__version__},
           "targets": {"conversion": TARGET_CONVERSION, "gan_shortcut_fraction": TARGET_SHORTCUT_FRACTION,
                       "exact_counterfactual_error": TARGET_EXACT_ERROR},
           "cases": entries}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
