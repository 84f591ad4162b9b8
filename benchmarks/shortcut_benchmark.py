"""The shortcut-detection benchmark's aggregation: which planted shortcut each detector finds, and its false alarms.

Reads the finished DVC experiments of a grid (``configs/grids/shortcut_benchmark.yaml``, run by
``python -m benchmarks.sweep`` or ``python -m benchmarks.slurm``) and writes

- ``benchmarks/results/shortcut_benchmark.json``: per variant its spec, the truth per planted shortcut (reliance,
  base rate, occlusion rate: what the classifier does with the stamp, blacked out, and without it) and per
  detector whether it found the shortcut (``detected``: true / false / null when not judged), the lift over chance
  that decided it and the lift's 95 % interval; a ``summary`` per detector (declared as DVC metrics, so
  ``dvc metrics diff`` follows it across commits);
- ``benchmarks/results/shortcut_benchmark.md``: the same as a table;
- ``benchmarks/results/shortcut_benchmark.png``: each detector's lift against the shortcut's subtlety and against
  the measured reliance.

A detector *finds* a planted shortcut when its headline lift is above chance (the lower end of the interval above
0); discover must also flag the shortcut's class with a region that overlaps the truth above chance. On a clean
variant (nothing planted) the same verdict is a **false alarm**. The detection rate counts the variants whose
classifier relies on every planted shortcut (reliance - base rate >= 0.5) because of its content, not because it
hides part of the digit (occlusion rate - base rate <= 0.05); the development variant (the one the detector settings
were developed on) is reported apart and counted in neither. Beside its verdict, discover's entry holds its strongest
trigger per planted class: how many images of other classes the class's best region, found without the answer,
moves into the class when pasted alone; discover flags a class only when that rate reaches ``discover.min_trigger_rate``,
so a miss can be read against the truth's reliance.

    python -m benchmarks.shortcut_benchmark configs/grids/shortcut_benchmark.yaml --size cpu
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

from benchmarks.experiments import REPO, Grid, is_clean, read_grid, repo_relative
from benchmarks.sweep import ExperimentResult, finished_experiments
from pipeline import paths

RESULTS = REPO / "benchmarks" / "results"
RELIED_ON = 0.5          # reliance - base rate at which a classifier relies on a shortcut
OCCLUSION_MARGIN = 0.05  # occlusion rate - base rate at most this: the stamp's content moves decisions, not what it hides

# detector: (its metrics file (pipeline.paths.metrics_path name), its headline figure), decided by the figure's lift
DETECTORS = {
    "discover": ("discover", "shortcut_region_iou"),                    # flagged class and region IoU
    "attribution": ("attribution", "shortcut_relevance_mass_flipped"),  # the best captum method's relevance mass
    "explain_masks": ("explain", "shortcut_iou"),                       # d_ig's optimal masks on GAN pairs
    "tracin": ("influence", "within_class_auc"),                        # stamped over unstamped proponents of a class
    "dissection": ("dissect", "shortcut_unit_iou"),                     # the best unit, chosen on held-out images
    "mmd_critic": ("prototypes", "criticism_unstamped_share"),          # criticisms that lack the shortcut
}


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class ExperimentOutputs:
    """What a finished DVC experiment wrote: its metrics (from ``dvc exp show``) and its other JSON outputs (plot data
    and details are not cached by DVC, so they live in the experiment's git commit)."""

    def __init__(self, result: ExperimentResult, cwd: Path = REPO):
        self.result, self.cwd = result, cwd

    def metrics(self, dataset: str, name: str) -> dict:
        return self.result.metrics.get(paths.metrics_path(dataset, name).as_posix(), {})

    def stage_seconds(self, dataset: str) -> float | None:
        """The seconds its stages of ``dataset`` took, added up from their timing files (None: none found)."""
        folder = paths.timing_path(dataset, "stage").parent.as_posix()
        listed = self._git("ls-tree", "--name-only", f"{self.result.rev}:{folder}")
        seconds = [json.loads(self._git("show", f"{self.result.rev}:{folder}/{name}") or "{}").get("seconds")
                   for name in (listed or "").split()]
        return sum(s for s in seconds if finite(s)) if any(finite(s) for s in seconds) else None

    def _git(self, *args: str) -> str | None:
        shown = subprocess.run(["git", *args], cwd=self.cwd, capture_output=True, text=True)
        return shown.stdout if shown.returncode == 0 else None

    def details(self, dataset: str, stage: str) -> dict:
        shown = self._git("show", f"{self.result.rev}:{(paths.plots_dir(dataset, stage) / 'details.json').as_posix()}")
        return json.loads(shown) if shown is not None else {}


class WorkspaceOutputs:
    """What a run wrote into a workspace (``dvc repro`` or ``dvc exp run`` applied to it)."""

    def __init__(self, root: Path = REPO):
        self.root = root

    def _read(self, path: Path) -> dict:
        path = self.root / path
        return json.loads(path.read_text()) if path.is_file() else {}

    def metrics(self, dataset: str, name: str) -> dict:
        return self._read(paths.metrics_path(dataset, name))

    def details(self, dataset: str, stage: str) -> dict:
        return self._read(paths.plots_dir(dataset, stage) / "details.json")


def detector_verdict(metrics: dict, figure: str) -> dict:
    """{detected, lift, interval} from a metrics file's ``<figure>_lift``, ``_lift_low``, ``_lift_high``."""
    lift, low, high = (metrics.get(f"{figure}_lift{end}") for end in ("", "_low", "_high"))
    if not (finite(lift) and finite(low)):
        return {"detected": None, "lift": None, "interval": None}
    return {"detected": low > 0, "lift": lift, "interval": [low, high]}


def discover_verdict(outputs, dataset: str, planted_classes: list[str], clean: bool) -> dict:
    """discover: on a planted variant, found = every planted class flagged with a region above chance (details'
    ``found_without_being_told``); on a clean variant a false alarm = any class flagged."""
    metrics = outputs.metrics(dataset, "discover")
    verdict = detector_verdict(metrics, DETECTORS["discover"][1])
    flagged = metrics.get("n_flagged_classes")
    verdict["n_flagged_classes"] = flagged
    if clean:
        verdict["detected"] = None if flagged is None else flagged > 0
        return verdict
    details = outputs.details(dataset, "discover")
    found = details.get("found_without_being_told")
    verdict["detected"] = None if found is None or flagged is None else all(c in found for c in planted_classes)
    verdict["false_alarms"] = metrics.get("false_alarms")
    verdict["strongest_trigger"] = [strongest_trigger(details, c) for c in planted_classes]
    return verdict


def strongest_trigger(details: dict, label: str) -> dict | None:
    """The region of class ``label`` that discover found (without the answer) moving the most images of other
    classes into it when pasted alone: its trigger rate, discover's verdict on that rate against its controls, and
    its box. Not a detection score: what discover measured of the class, to set beside the truth's reliance."""
    regions = [r for r in (details.get("classes", {}).get(label) or {}).get("regions") or []
               if finite(r.get("trigger_rate"))]
    if not regions:
        return None
    best = max(regions, key=lambda r: r["trigger_rate"])
    return {"class": label, "trigger_rate": best["trigger_rate"], "verdict": best.get("trigger_verdict"),
            "box": [best.get(key) for key in ("top", "left", "height", "width")]}


def truth_of(outputs, dataset: str) -> list[dict]:
    """Per planted shortcut: class, kind, reliance, base rate, occlusion rate, area (the classifier's details)."""
    return [{key: row.get(key) for key in ("class", "kind", "reliance", "base_rate", "occlusion_rate", "area_fraction")}
            for row in outputs.details(dataset, "train_classifier").get("shortcuts", [])]


def detector_verdicts(outputs, dataset: str, clean: bool) -> tuple[list[dict], dict]:
    """(the truth per planted shortcut, {detector: verdict}) of one run of ``dataset``."""
    truth = truth_of(outputs, dataset)
    planted = [t["class"] for t in truth]
    return truth, {detector: (discover_verdict(outputs, dataset, planted, clean) if detector == "discover"
                              else detector_verdict(outputs.metrics(dataset, stage), figure))
                   for detector, (stage, figure) in DETECTORS.items()}


def relied_on(truth: list[dict]) -> bool | None:
    """Whether the classifier relies on every planted shortcut for its content (None when not measured)."""
    if not truth or not all(finite(t.get(k)) for t in truth for k in ("reliance", "base_rate", "occlusion_rate")):
        return None
    return all(t["reliance"] - t["base_rate"] >= RELIED_ON and t["occlusion_rate"] - t["base_rate"] <= OCCLUSION_MARGIN
               for t in truth)


def variant_row(experiment, result: ExperimentResult | None, grid: Grid, cwd: Path) -> dict:
    info = experiment.info
    clean = is_clean(info["shortcuts"])
    row = {"name": experiment.name, "variant": info["variant"], "seed": info["seed"], "shortcuts": info["shortcuts"],
           "clean": clean, "development": info["development"]}
    if result is None:
        return {**row, "status": "not run", "truth": [], "relied_on": None,
                "detectors": {d: {"detected": None, "lift": None, "interval": None} for d in DETECTORS}}
    outputs = ExperimentOutputs(result, cwd)
    truth, detectors = detector_verdicts(outputs, grid.dataset, clean)
    detectors["discover"]["min_trigger_rate"] = (result.params.get("discover") or {}).get("min_trigger_rate")
    return {**row, "status": "done", "truth": truth, "relied_on": None if clean else relied_on(truth),
            "gan_shortcut_fraction": outputs.metrics(grid.dataset, "explain").get("gan_shortcut_fraction"),
            "stage_seconds": outputs.stage_seconds(grid.dataset), "detectors": detectors}


def rate(verdicts: list) -> dict:
    """{rate, k, n}: the share of True among the judged verdicts (None and not run left out)."""
    judged = [v for v in verdicts if v is not None]
    return {"rate": sum(judged) / len(judged) if judged else None, "k": sum(judged), "n": len(judged)}


def summary(rows: list[dict]) -> dict:
    """Per detector: its detection rate over the relied-on planted variants and over every planted one (a small
    classifier may use a shortcut less than the relied-on bar), its false-alarm rate on the clean ones, the most subtle
    shortcut of each kind it found, and the development variant's verdicts apart."""
    counted = [r for r in rows if r["status"] == "done" and not r["development"]]
    planted = [r for r in counted if not r["clean"]]
    relied = [r for r in planted if r["relied_on"]]
    clean = [r for r in counted if r["clean"]]
    development = [r for r in rows if r["development"] and r["status"] == "done"]
    return {detector: {"detection": rate([r["detectors"][detector]["detected"] for r in relied]),
                       "detection_planted": rate([r["detectors"][detector]["detected"] for r in planted]),
                       "false_alarms": rate([r["detectors"][detector]["detected"] for r in clean]),
                       "most_subtle_found": most_subtle_found(planted, detector),
                       "development": [r["detectors"][detector]["detected"] for r in development]}
            for detector in DETECTORS}


def most_subtle_found(planted: list[dict], detector: str) -> dict[str, str | None]:
    """{kind: the last variant in the grid's order (which lists each kind from obvious to subtle) of the planted
    variants with that one shortcut that ``detector`` found; None when it found none of them}."""
    found: dict[str, str | None] = {}
    for row in planted:
        if len(row["shortcuts"]) == 1:
            kind = row["shortcuts"][0]["kind"]
            found[kind] = row["variant"] if row["detectors"][detector]["detected"] else found.get(kind)
    return found


def aggregate(grid: Grid, size: str, results: dict[str, ExperimentResult], cwd: Path = REPO) -> dict:
    """The results file's content from the finished experiments ``results`` ({name: result}) of ``grid`` at ``size``."""
    experiments = grid.experiments(size)
    rows = [variant_row(e, results.get(e.name), grid, cwd) for e in experiments]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True).stdout.strip()
    seconds = sorted(r["stage_seconds"] for r in rows if finite(r.get("stage_seconds")))
    return {"grid": repo_relative(grid.path), "size": size,
            "commit": commit, "relied_on": {"reliance_minus_base_rate": RELIED_ON, "occlusion_minus_base_rate": OCCLUSION_MARGIN},
            "n_variants": len(rows), "n_done": sum(r["status"] == "done" for r in rows),
            "stage_seconds": {"median_per_variant": seconds[len(seconds) // 2] if seconds else None,
                              "total": sum(seconds) if seconds else None},
            "summary": summary(rows), "variants": rows}


# --------------------------------------------------------------------------------------------
# The table and the picture
# --------------------------------------------------------------------------------------------
def mark(verdict: dict) -> str:
    if verdict["detected"] is None:
        return "–"
    lift = f" {verdict['lift']:+.2f}" if finite(verdict.get("lift")) else ""
    return ("✔" if verdict["detected"] else "✘") + lift


def table(results: dict) -> str:
    """Markdown: a row per variant (truth and each detector's verdict with its lift), then the summary."""
    head = ("| variant | reliance − base | occlusion − base | discover's strongest trigger | "
            + " | ".join(DETECTORS) + " |")
    lines = [head, "|" + " --- |" * (4 + len(DETECTORS))]
    for row in results["variants"]:
        truth = row["truth"]
        gap = lambda key: ", ".join(f"{t[key] - t['base_rate']:.2f}" if finite(t.get(key)) and finite(t.get("base_rate"))  # noqa: E731
                                    else "–" for t in truth) or "–"
        name = row["variant"] + (" (clean)" if row["clean"] else "") + (" (development)" if row["development"] else "")
        triggers = ", ".join(f"{t['trigger_rate']:.2f}" if t else "–"
                             for t in row["detectors"]["discover"].get("strongest_trigger") or []) or "–"
        lines.append(f"| {name} | {gap('reliance')} | {gap('occlusion_rate')} | {triggers} | "
                     + " | ".join(mark(row["detectors"][d]) for d in DETECTORS) + " |")
    lines += ["", "| detector | detection rate (relied-on variants) | detection rate (every planted variant) | "
              "false alarms (clean variants) |", "| --- | --- | --- | --- |"]
    for detector, figures in results["summary"].items():
        cell = lambda r: f"{r['k']}/{r['n']}" + (f" ({r['rate']:.0%})" if r["rate"] is not None else "")  # noqa: E731
        planted = cell(figures["detection_planted"]) if "detection_planted" in figures else "–"
        lines.append(f"| {detector} | {cell(figures['detection'])} | {planted} | {cell(figures['false_alarms'])} |")
    subtlest = {detector: figures.get("most_subtle_found", {}) for detector, figures in results["summary"].items()}
    kinds = list(dict.fromkeys(kind for found in subtlest.values() for kind in found))
    if kinds:
        lines += ["", "| detector | " + " | ".join(f"most subtle {kind} found" for kind in kinds) + " |",
                  "|" + " --- |" * (1 + len(kinds))]
        for detector, found in subtlest.items():
            lines.append(f"| {detector} | " + " | ".join(found.get(kind) or "none" for kind in kinds) + " |")
    return "\n".join(lines) + "\n"


def picture(results: dict, path: Path) -> None:
    """Each detector's lift (with its interval) per variant, grouped by kind in order of subtlety, and against the
    measured reliance - base rate; filled markers: found (or, on clean variants, a false alarm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["variants"] if r["status"] == "done"]
    triggers = any(t for r in rows for t in r["detectors"]["discover"].get("strongest_trigger") or [])
    columns = len(DETECTORS) + triggers
    fig, axes = plt.subplots(2, columns, figsize=(3.2 * columns, 6.4), squeeze=False)
    labels = [r["variant"] for r in rows]
    for j, detector in enumerate(DETECTORS):
        by_variant, by_reliance = axes[0][j], axes[1][j]
        for i, row in enumerate(rows):
            verdict = row["detectors"][detector]
            if not finite(verdict.get("lift")):
                continue
            low, high = verdict["interval"]
            color = "tab:gray" if row["clean"] else "tab:orange" if row["development"] else "tab:blue"
            style = dict(color=color, marker="o", markerfacecolor=color if verdict["detected"] else "white")
            by_variant.errorbar([verdict["lift"]], [i], xerr=[[verdict["lift"] - low], [high - verdict["lift"]]], **style)
            gaps = [t["reliance"] - t["base_rate"] for t in row["truth"] if finite(t.get("reliance")) and finite(t.get("base_rate"))]
            if gaps:
                by_reliance.errorbar([min(gaps)], [verdict["lift"]], yerr=[[verdict["lift"] - low], [high - verdict["lift"]]], **style)
        by_variant.axvline(0, color="black", linewidth=0.6)
        by_variant.set_yticks(range(len(rows)), labels if j == 0 else [""] * len(rows), fontsize=6)
        by_variant.invert_yaxis()
        by_variant.set_title(detector, fontsize=8)
        by_variant.set_xlabel("lift over chance", fontsize=7)
        by_reliance.axhline(0, color="black", linewidth=0.6)
        by_reliance.axvline(RELIED_ON, color="gray", linestyle=":", linewidth=0.8)
        by_reliance.set_xlabel("reliance − base rate", fontsize=7)
        by_reliance.set_ylabel("lift over chance" if j == 0 else "", fontsize=7)
    if triggers:
        trigger_panels(rows, axes[0][-1], axes[1][-1])
    fig.suptitle(f"Shortcut detection ({results['grid']}, size {results['size']}, commit {results['commit']}): filled = found "
                 f"(gray, clean variants: a false alarm), open = not found; orange: the development variant", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def trigger_panels(rows: list[dict], by_variant, by_reliance) -> None:
    """discover's strongest trigger per planted shortcut (filled: above its controls), per variant and against the
    truth's reliance, with the diagonal (the trigger moves as many images as the stamp) and discover's flag bar."""
    bars = set()
    for i, row in enumerate(rows):
        discover = row["detectors"]["discover"]
        bars.add(discover.get("min_trigger_rate"))
        for shortcut, trigger in zip(row["truth"], discover.get("strongest_trigger") or []):
            if not trigger:
                continue
            style = dict(color="tab:green", marker="s", linestyle="",
                         markerfacecolor="tab:green" if trigger["verdict"] == "above chance" else "white")
            by_variant.plot([trigger["trigger_rate"]], [i], **style)
            if finite(shortcut.get("reliance")) and finite(shortcut.get("base_rate")):
                by_reliance.plot([shortcut["reliance"] - shortcut["base_rate"]], [trigger["trigger_rate"]], **style)
    by_variant.set_yticks(range(len(rows)), [""] * len(rows))
    by_variant.invert_yaxis()
    by_variant.set_title("discover's strongest trigger (red: flag bar)", fontsize=8)
    by_variant.set_xlabel("share of other images moved into the class", fontsize=7)
    by_reliance.plot([0, 1], [0, 1], color="gray", linewidth=0.6)
    for bar in bars - {None}:
        by_variant.axvline(bar, color="tab:red", linestyle=":", linewidth=0.8)
        by_reliance.axhline(bar, color="tab:red", linestyle=":", linewidth=0.8)
    by_reliance.set_xlabel("reliance − base rate", fontsize=7)
    by_reliance.set_ylabel("trigger rate", fontsize=7)


def write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, allow_nan=False, default=str) + "\n")
    out.with_suffix(".md").write_text(table(results))
    picture(results, out.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", help="a grid file, e.g. configs/grids/shortcut_benchmark.yaml")
    parser.add_argument("--size", required=True, help="the size the experiments ran at (cpu, gpu)")
    parser.add_argument("--out", default=str(RESULTS / "shortcut_benchmark.json"))
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="the repository whose experiments to read (a clone that ran the grid; default: this one)")
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    results = aggregate(read_grid(args.grid), args.size, finished_experiments(repo), repo)
    write(results, Path(args.out))
    print(table(results))
    print(f"{results['n_done']} of {results['n_variants']} experiments aggregated into {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
