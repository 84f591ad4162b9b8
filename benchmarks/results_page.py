"""docs/results.md, written from the committed result files: every measurement with its date, commit and configuration.

    python -m benchmarks.results_page            # write docs/results.md
    python -m benchmarks.results_page --check    # exit 1 when docs/results.md is not what the result files give

Each section reads one result file as committed (``metrics/seed_study.json``, ``benchmarks/results/*.json``, a full
run's ``metrics/timing.json``; the version at ``HEAD``, so a local run that is not committed changes nothing) and gives
its figures with the date and commit of the file's last change and the configuration the file records. A file that is
not committed is listed as not yet measured, with the command that writes it; nothing is invented. A committed result
file in ``benchmarks/results/`` that no section knows is listed with its top-level entries. Outside a git checkout the
files are read as they are, without dates.

So: commit a result file first, then run this and commit ``docs/results.md``; ``tests/test_docs.py`` checks that the
page is what the committed files give.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
PAGE = Path("docs") / "results.md"
RESULTS = Path("benchmarks") / "results"


# --------------------------------------------------------------------------------------------
# Where a file stands in git
# --------------------------------------------------------------------------------------------
def git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def in_git(root: Path) -> bool:
    return git(root, "rev-parse", "--is-inside-work-tree") == "true"


def committed(root: Path, path: Path) -> str | None:
    """The file's text at HEAD (outside git: in the working tree), or None where there is none."""
    if not in_git(root):
        return (root / path).read_text() if (root / path).is_file() else None
    return git(root, "show", f"HEAD:{path.as_posix()}")


def provenance(root: Path, path: Path) -> str:
    """'committed 2026-12-05 (c794e85)': the date and commit of the file's last change."""
    last = git(root, "log", "-1", "--format=%H %cs", "HEAD", "--", path.as_posix()) if in_git(root) else None
    if not last:
        return "date unknown (not in a git checkout)"
    commit, date = last.split()
    return f"committed {date} ({commit[:7]})"


def tracked(root: Path, path: Path) -> bool:
    """Whether ``path`` is part of HEAD (outside git: whether it exists)."""
    if not in_git(root):
        return (root / path).exists()
    return bool(git(root, "ls-tree", "--name-only", "HEAD", "--", path.as_posix()))


def result_files(root: Path) -> list[Path]:
    """The JSON files in benchmarks/results/ at HEAD (outside git: in the working tree)."""
    if not in_git(root):
        return sorted(p.relative_to(root) for p in (root / RESULTS).glob("*.json"))
    listed = git(root, "ls-tree", "--name-only", "HEAD", f"{RESULTS.as_posix()}/") or ""
    return sorted(Path(name) for name in listed.splitlines() if name.endswith(".json"))


def uncommitted(root: Path) -> list[str]:
    """Result files whose working copy differs from HEAD (or is not committed): the page does not show them."""
    if not in_git(root):
        return []
    paths = [s.path.as_posix() for s in SECTIONS] + [f"{RESULTS.as_posix()}/"]
    return sorted(line[3:] for line in (git(root, "status", "--porcelain", "--untracked-files=all", "--", *paths) or "").splitlines()
                  if line[3:].endswith(".json"))


# --------------------------------------------------------------------------------------------
# Numbers as text
# --------------------------------------------------------------------------------------------
def number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def interval(low, high, digits: int = 3) -> str:
    return f"[{number(low, digits)}, {number(high, digits)}]"


def table(head: list[str], rows: list[list], digits: int = 3) -> list[str]:
    """Markdown table lines; cells are written with :func:`number`."""
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(number(cell, digits) if not isinstance(cell, str) else cell for cell in row) + " |"
              for row in rows]
    return lines


def shortcut_words(spec: dict) -> str:
    """The shortcut as the file records it, compact: `{"label": 7, "kind": "square", ...}`."""
    return f"`{json.dumps(spec)}`"


def verdict(record: dict) -> str:
    """A detector's verdict from {detected, lift, interval}: 'found 0.31 [0.20, 0.42]', 'not found ...', 'not judged'."""
    detected = record.get("detected")
    if detected is None:
        return "not judged"
    said = "found" if detected else "not found"
    if record.get("lift") is None:
        return said
    low, high = record.get("interval") or (None, None)
    return f"{said}, lift {number(record.get('lift'))} {interval(low, high)}"


def mean(values: list) -> float | None:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


# --------------------------------------------------------------------------------------------
# One section per result file
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Section:
    title: str
    path: Path
    command: str                          # what writes the file
    about: str                            # what it measures, one sentence
    render: Callable[[dict, Path], list[str]]


def seed_study(record: dict, root: Path) -> list[str]:
    seeds = record.get("seeds", [])
    column = lambda key: record.get(key) or [None] * len(seeds)  # noqa: E731
    area = record.get("shortcut_area_fraction")
    lines = [f"Shortcut: {shortcut_words(record.get('shortcut', {}))}, "
             f"{number(100 * area if isinstance(area, (int, float)) else None, 1)} % of the image. Data: {record.get('data', '?')}. "
             f"Device: {record.get('device', '?')}; threads per run: {record.get('threads')}. "
             f"Settings changed from params.yaml: {record.get('settings') or 'none'}.", ""]
    lines += table(["seed", "shortcut reliance", "base rate", "blacked out (occlusion rate)", "blacked out − base rate",
                    "clean accuracy", "test accuracy"],
                   [list(row) for row in zip(seeds, column("shortcut_reliance"), column("shortcut_base_rate"),
                                             column("shortcut_occlusion_rate"), column("occlusion_minus_base_rate"),
                                             column("clean_accuracy"), column("test_accuracy"))], digits=4)
    lines += ["", f"Reliance: mean {number(record.get('shortcut_reliance_mean'))}, standard deviation "
                  f"{number(record.get('shortcut_reliance_std'))}, minimum {number(record.get('shortcut_reliance_min'))}."]
    return lines


def negative_control(record: dict, root: Path) -> list[str]:
    datasets = [d for d in ("clever_hans", "negative_control") if isinstance(record.get(d), dict)]
    lines = [f"Configuration: `{record.get('config', '?')}`; code at commit {record.get('commit', '?')}; "
             f"machine: {record.get('machine', '?')}; run time {number(record.get('run_seconds'), 0)} s.", ""]
    for dataset in datasets:
        truth = record[dataset].get("truth") or []
        said = "; ".join(f"class {t.get('class')}: reliance {number(t.get('reliance'))}, base rate "
                         f"{number(t.get('base_rate'))}, blacked out {number(t.get('occlusion_rate'))}" for t in truth)
        lines.append(f"- `{dataset}`: {said or 'no shortcut measured'}; classes flagged by discover: "
                     f"{number(record[dataset].get('n_flagged_classes'))}; GAN pairs into the shortcut's class "
                     f"that carry it: {number(record[dataset].get('gan_shortcut_fraction'))}.")
    detectors = sorted({d for dataset in datasets for d in record[dataset].get("detectors", {})})
    read = record.get("detectors_read", {})
    lines += [""] + table(["detector (headline it is read from)", *[f"`{d}`" for d in datasets]],
                          [[f"{d} ({read.get(d, '?')})", *[verdict(record[dataset].get("detectors", {}).get(d, {}))
                                                           for dataset in datasets]] for d in detectors])
    alarms = record.get("negative_control", {}).get("false_alarms")
    if alarms is not None:
        lines += ["", f"False alarms on the negative control (a detector \"found\" what was never planted): "
                      f"{', '.join(alarms) or 'none'}."]
    return lines


def shortcut_benchmark(record: dict, root: Path) -> list[str]:
    from benchmarks.shortcut_benchmark import table as benchmark_table

    relied = record.get("relied_on", {})
    lines = [f"Grid `{record.get('grid', '?')}` at size `{record.get('size', '?')}`; code at commit "
             f"{record.get('commit', '?')}; {record.get('n_done', '?')} of {record.get('n_variants', '?')} experiments done. "
             f"A variant counts as relied on when reliance − base rate ≥ {relied.get('reliance_minus_base_rate', '?')} "
             f"and blacked out − base rate ≤ {relied.get('occlusion_minus_base_rate', '?')}; a second rate counts every "
             f"planted variant; the development variant is counted in none. Cells: ✔ found, ✘ not found, with the lift over chance; – not judged. "
             f"discover's strongest trigger: the share of other classes' images that the planted class's best region, found "
             f"without the answer, moves into the class when pasted alone (not a lift; discover flags at discover.min_trigger_rate)."]
    seconds = record.get("stage_seconds") or {}
    if seconds.get("median_per_variant") is not None:
        lines[0] += (f" Stage time: {number(seconds['median_per_variant'], 0)} s per variant (median), "
                     f"{number(seconds['total'], 0)} s in all.")
    lines += [""] + benchmark_table(record).rstrip("\n").split("\n")
    picture = RESULTS / "shortcut_benchmark.png"
    if tracked(root, picture):
        lines += ["", f"![lift over chance per detector and variant](../{picture.as_posix()})"]
    return lines


def explain_sweep(record: dict, root: Path) -> list[str]:
    workload, reference = record.get("workload", {}), record.get("reference", {})
    lines = [f"Command: `{record.get('command', '?')}`; code at commit {number(record.get('commit'))}; machine: "
             f"{record.get('machine', '?')}.",
             f"Workload: {workload.get('pairs', '?')} {workload.get('pair_kind', 'pairs')} of `{workload.get('dataset', '?')}`, "
             f"{workload.get('maps', '?')} maps ({workload.get('mask_channels', '?')}, attributed: "
             f"{workload.get('attributed', '?')}), {workload.get('thresholds', '?')} thresholds, closing "
             f"{workload.get('closing_size', '?')}, blur sigma {workload.get('blur_sigma', '?')}, "
             f"{workload.get('repeats', '?')} interleaved rounds; classifier sha256 "
             f"{str(workload.get('classifier_sha256', '?'))[:12]}. Reference: {reference.get('name', '?')} "
             f"{reference.get('version', '')} at commit {reference.get('commit', '?')}.", ""]
    runs = record.get("runs", [])
    lines += table(["convention", "threads", "ours, pairs/s", "QuAC, pairs/s", "ours / QuAC", "per CPU second",
                    "Pearson of scores", "largest score difference", "load average before / after"],
                   [[r.get("convention"), r.get("threads"), r.get("pairs_per_second"), r.get("reference_pairs_per_second"),
                     r.get("ratio"), r.get("cpu_ratio"), r.get("pearson"), r.get("max_score_difference"),
                     f"{r.get('load_average_before')} / {r.get('load_average_after')}"] for r in runs])
    return lines


def gan_time_to_evidence(record: dict, root: Path) -> list[str]:
    cases = record.get("cases", [])
    runs = sorted({json.dumps(c.get("run", {}), sort_keys=True) for c in cases})
    lines = [f"Machine: {record.get('machine', '?')}; targets: {record.get('targets', '?')}."]
    lines += [f"Run: {run}." for run in runs] + [""]
    lines += table(["case", "data", "generator", "seconds to target", "iterations to target", "conversion",
                    "GAN pairs carrying the shortcut", "exact counterfactual error"],
                   [[c.get("case"), c.get("run", {}).get("data_config") or "full", c.get("generator"),
                     c.get("seconds_to_target"), c.get("iterations_to_target"), c.get("conversion"),
                     c.get("gan_shortcut_fraction"), c.get("exact_counterfactual_error")] for c in cases])
    return lines


def full_run(record: dict, root: Path) -> list[str]:
    stages = record.get("stages", {})
    lines = [f"Device: {record.get('device', '?')}; stage time in all {number(record.get('total_seconds'), 0)} s "
             f"({number((record.get('total_seconds') or 0) / 60, 1)} min). Its params are the committed `params.yaml` "
             f"and `dvc.lock` of the same commit; its figures are the `metrics/<dataset>/` files "
             f"(`dvc metrics show`).", ""]
    lines += table(["stage", "seconds", "images", "images/s"],
                   [[name, s.get("seconds"), s.get("images"), s.get("images_per_second")] for name, s in sorted(stages.items())])
    return lines


SECTIONS = (
    Section("Seed study: the default shortcut's pull on the classifier", Path("metrics") / "seed_study.json",
            "python -m benchmarks.seed_study --seeds 0 1 2 --device cpu",
            "The Clever Hans classifier trained for several seeds at full data: how much it relies on the planted "
            "shortcut, beside the base rate and the same pixels blacked out.", seed_study),
    Section("The negative control", RESULTS / "negative_control.json",
            "python -m benchmarks.negative_control --config configs/cpu_explain.yaml",
            "Every detector on a classifier trained with nothing planted, beside Clever Hans: there every detector "
            "must stay at chance and discover must flag nothing.", negative_control),
    Section("The shortcut-detection benchmark", RESULTS / "shortcut_benchmark.json",
            "python -m benchmarks.shortcut_benchmark configs/grids/shortcut_benchmark.yaml --size cpu",
            "Which planted shortcut (kind, subtlety, class) each detector finds, and how often it flags one on clean "
            "variants; the experiments run by `python -m benchmarks.sweep` or `python -m benchmarks.slurm`.",
            shortcut_benchmark),
    Section("The explanation sweep against QuAC's own evaluator", RESULTS / "explain_sweep.json",
            "python -m benchmarks.explain_sweep --quac PATH/TO/quac --threads 1 2",
            "Pairs per second of explain's mask sweep and of QuAC's evaluator on the same pairs, maps and classifier, "
            "and how well their scores agree.", explain_sweep),
    Section("Time until the GAN's counterfactuals carry the evidence", RESULTS / "gan_time_to_evidence.json",
            "python -m benchmarks.gan_time_to_evidence",
            "Wall time, per case and generator, until the counterfactuals convert and carry the class's evidence "
            "(the planted shortcut; colored MNIST's exact colour).", gan_time_to_evidence),
    Section("A full default run", Path("metrics") / "timing.json",
            "dvc repro",
            "Every stage of every dataset at the committed defaults (`dvc repro`, or `bash benchmarks/gpu_run.sh OUT_DIR` "
            "on a GPU machine, which collects `metrics/` and `dvc.lock` to commit): the wall time of each stage.", full_run),
)


def section_lines(section: Section, root: Path) -> list[str]:
    lines = [f"## {section.title}", "", section.about, ""]
    text = committed(root, section.path)
    if text is None:
        return lines + [f"`{section.path.as_posix()}`: **not yet measured** (to be written by `{section.command}`)."]
    lines += [f"`{section.path.as_posix()}`, {provenance(root, section.path)}; written by `{section.command}`.", ""]
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return lines + [f"The file cannot be read as JSON ({err}): re-run the command."]
    return lines + section.render(record, root)


def other_results(root: Path) -> list[str]:
    known = {s.path for s in SECTIONS}
    lines = []
    for path in (p for p in result_files(root) if p not in known):
        try:
            record = json.loads(committed(root, path) or "")
            keys = ", ".join(f"`{k}`" for k in record) if isinstance(record, dict) else "a list"
        except json.JSONDecodeError:
            keys = "not readable as JSON"
        lines += [f"- `{path.as_posix()}`, {provenance(root, path)}: {keys}."]
    return ["## Other result files", "", *lines] if lines else []


def render(root: Path = REPO) -> str:
    lines = ["# Results: dated measurements", "",
             "Generated by `python -m benchmarks.results_page` from the result files in the repository; do not edit "
             "by hand. Each section names its file, the date and commit of the file's last change in git, the command "
             "that writes it and the configuration the file records; a file that does not exist yet is listed as not "
             "yet measured. How each figure is scored: [scoring.md](scoring.md). Measurements of earlier code and "
             "defaults, from before these files: [earlier_results.md](earlier_results.md). The tiny grid's wall time "
             "through Slurm and through DVC's queue (`python -m benchmarks.slurm_vs_queue`, which prints it): "
             "[cluster.md](cluster.md).", ""]
    for section in SECTIONS:
        lines += section_lines(section, root) + [""]
    lines += other_results(root)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/results.md differs from what the files give")
    args = parser.parse_args(argv)
    text, page = render(), REPO / PAGE
    if args.check:
        if not page.is_file() or page.read_text() != text:
            print(f"{PAGE} is not up to date with the result files: run python -m benchmarks.results_page", file=sys.stderr)
            return 1
        print(f"{PAGE} is up to date", file=sys.stderr)
        return 0
    page.write_text(text)
    print(f"wrote {PAGE}", file=sys.stderr)
    for path in uncommitted(REPO):
        print(f"{path} is not committed as it is: the page shows its committed version (or none); commit it and run "
              f"this again", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
