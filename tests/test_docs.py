"""The user's guide and docs/ stay true to the repository: the README is a guide of at most 300 lines, every path,
script and ``python -m`` module they name exists, every stage has a page that names each of its params, and
docs/results.md is what the committed result files give."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from benchmarks import results_page
from tests.conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
GENERATED = {"results.md"}      # checked by regenerating it
NOT_OURS = {"cluster.md"}       # the Slurm runner's own page
# what a run writes: named in the docs, not part of a fresh clone
OUTPUT_PREFIXES = ("data/", "plots/", "report/", "metrics/", "benchmarks/results/", "demo/", ".venv/", ".slurm/", "dvc.lock")
PACKAGES = ("pipeline", "benchmarks", "examples", "tests")
# the params section each stage page documents (report reads only `datasets`)
STAGE_SECTIONS = {"prepare": "data", "train_classifier": "classifier", "attribute": "attribution",
                  "architectures": "architectures", "train_gan": "gan", "counterfactuals": "counterfactuals",
                  "explain": "explain", "discover": "discover", "feature_viz": "feature_viz", "dissect": "dissect",
                  "prototypes": "prototypes", "influence": "influence",
                  "optimize_counterfactuals": "optimize_counterfactuals", "spectra": "spectra", "report": None}


def tracked_files() -> set[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return set(listed.splitlines())


def exists(path: str, tracked: set[str]) -> bool:
    """Whether ``path`` (relative to the repository) is a committed file or a folder holding one."""
    path = path.rstrip("/")
    return path in tracked or any(f.startswith(path + "/") for f in tracked)


def code_of(markdown: str) -> str:
    """The text of every fenced code block and inline code span."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.S | re.M)
    inline = re.findall(r"`([^`]+)`", re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M))
    return "\n".join(fenced + inline)


def named_paths(markdown: str, top_level: set[str]) -> set[str]:
    """Repository paths named in code: words whose first part is a top-level entry of the repository (``pipeline/``,
    ``configs/...``, ``setup.sh``), outputs of a run left out."""
    found = set()
    for word in re.split(r"[\s=\"'(),;]+", code_of(markdown)):
        word = word.rstrip(".:")
        if not re.fullmatch(r"[\w.][\w./-]*", word) or word.startswith(("../", "./")) or word.startswith(OUTPUT_PREFIXES):
            continue
        if word.split("/")[0] in top_level and ("/" in word or "." in word):
            found.add(word)
    return found


def named_modules(markdown: str) -> set[str]:
    """Modules of the repository run as ``python -m <module>`` (a placeholder such as ``pipeline.stages.<stage>`` left
    out)."""
    return {m for m, placeholder in re.findall(r"python -m\s+([\w.]+)(<?)", code_of(markdown))
            if not placeholder and m.split(".")[0] in PACKAGES}


def module_exists(module: str, tracked: set[str]) -> bool:
    path = module.replace(".", "/")
    return f"{path}.py" in tracked or f"{path}/__main__.py" in tracked


def linked(markdown: str, where: Path) -> set[Path]:
    """Files a Markdown link points to, relative to the repository (web links and anchors left out)."""
    targets = re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", markdown)
    return {(where / t).resolve().relative_to(REPO) for t in targets if not re.match(r"\w+:", t)}


def checked_pages() -> list[Path]:
    return [README] + sorted(p for p in DOCS.glob("*.md") if p.name not in GENERATED | NOT_OURS)


def test_the_readme_is_a_guide_of_at_most_300_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines: move method details to docs/, measurements to results"


@pytest.mark.parametrize("page", checked_pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_path_module_and_link_a_page_names_exists(page):
    tracked = tracked_files()
    top_level = {f.split("/")[0] for f in tracked}
    text = page.read_text()
    missing = sorted(p for p in named_paths(text, top_level) if not exists(p, tracked))
    missing += sorted(f"python -m {m}" for m in named_modules(text) if not module_exists(m, tracked))
    missing += sorted(str(p) for p in linked(text, page.parent) if not exists(p.as_posix(), tracked))
    assert missing == [], f"{page.relative_to(REPO)} names what a fresh clone lacks: {missing}"


def test_the_path_checks_can_fail():
    tracked, top_level = {"pipeline/paths.py", "setup.sh"}, {"pipeline", "setup.sh"}
    text = ("Run `bash setup.sh`, then `python -m pipeline.nowhere` on `pipeline/gone.py`, or any "
            "`python -m pipeline.stages.<stage>`; see [x](docs/gone.md).")
    assert named_paths(text, top_level) == {"setup.sh", "pipeline/gone.py"}
    assert not exists("pipeline/gone.py", tracked) and exists("pipeline", tracked)
    assert named_modules(text) == {"pipeline.nowhere"} and not module_exists("pipeline.nowhere", tracked)
    assert linked(text, REPO) == {Path("docs/gone.md")}
    assert named_paths("`plots/D/explain/details.json` and `gallery/`", top_level) == set()   # outputs, not sources


def test_the_readme_links_every_docs_page():
    pages = {p.relative_to(REPO) for p in DOCS.glob("*.md")}
    assert pages - linked(README.read_text(), REPO) == set()


@pytest.mark.parametrize("stage", sorted(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]))
def test_every_stage_has_a_page_that_names_each_of_its_params(stage):
    page = DOCS / f"{stage}.md"
    assert page.is_file(), f"dvc.yaml's stage {stage} has no page docs/{stage}.md"
    section = STAGE_SECTIONS[stage]
    keys = yaml.safe_load((REPO / "params.yaml").read_text())[section] if section else {}
    text = page.read_text()
    unnamed = [k for k in keys if not re.search(rf"`(?:\w+\.)*{re.escape(k)}`", text)]
    assert unnamed == [], f"docs/{stage}.md does not name {section}'s {unnamed} (say what each does)"


# --------------------------------------------------------------------------------------------
# docs/results.md
# --------------------------------------------------------------------------------------------
def test_the_results_page_is_what_the_committed_result_files_give():
    assert (DOCS / "results.md").read_text() == results_page.render(REPO), (
        "docs/results.md is not up to date with the committed result files: commit them, then run "
        "python -m benchmarks.results_page and commit docs/results.md")


def git(folder: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "GIT_AUTHOR_DATE": "2026-01-02T03:04:05Z",
                        "GIT_COMMITTER_DATE": "2026-01-02T03:04:05Z", "PATH": "/usr/bin:/bin:/usr/local/bin"})


def write(folder: Path, path: str, record) -> None:
    (folder / path).parent.mkdir(parents=True, exist_ok=True)
    (folder / path).write_text(json.dumps(record))


def test_the_results_page_reads_committed_files_with_their_dates_and_says_what_is_not_measured(tmp_path):
    git(tmp_path, "init", "-q")
    write(tmp_path, "metrics/seed_study.json", {
        "shortcut": {"label": 7, "kind": "square", "side": 8}, "shortcut_area_fraction": 0.0816, "data": "full",
        "device": "cpu", "seeds": [0, 1], "threads": [2, 2], "settings": [], "shortcut_reliance": [0.4867, 0.594],
        "shortcut_base_rate": [0.0004, 0.0002], "shortcut_occlusion_rate": [0.0004, 0.0002],
        "occlusion_minus_base_rate": [0.0, 0.0], "clean_accuracy": [0.9909, 0.9865], "test_accuracy": [0.99, 0.99],
        "shortcut_reliance_mean": 0.5404, "shortcut_reliance_std": 0.075, "shortcut_reliance_min": 0.4867})
    verdicts = {"discover": {"detected": False, "lift": None, "interval": None, "n_flagged_classes": 0},
                "tracin": {"detected": True, "lift": 0.21, "interval": [0.1, 0.3]},
                "dissection": {"detected": None, "lift": None, "interval": None}}
    write(tmp_path, "benchmarks/results/negative_control.json", {
        "config": "configs/cpu_explain.yaml", "commit": "abc1234", "machine": "x86_64, 2 CPU cores", "run_seconds": 10.0,
        "detectors_read": {"discover": "discover: shortcut_region_iou_lift", "tracin": "influence: within_class_auc_lift"},
        "clever_hans": {"truth": [{"class": "7", "reliance": 0.5, "base_rate": 0.0, "occlusion_rate": 0.0}],
                        "n_flagged_classes": 1, "gan_shortcut_fraction": 0.9, "detectors": verdicts},
        "negative_control": {"truth": [], "n_flagged_classes": 0, "gan_shortcut_fraction": None, "detectors": verdicts,
                             "false_alarms": ["tracin"]}, "n_flagged_classes": 0})
    write(tmp_path, "benchmarks/results/something_else.json", {"figure": 1})
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "results")
    write(tmp_path, "benchmarks/results/explain_sweep.json", {"runs": []})   # measured here, not committed

    page = results_page.render(tmp_path)
    assert "`metrics/seed_study.json`, committed 2026-01-02 (" in page
    assert "| 0 | 0.4867 | 0.0004 |" in page and "mean 0.540" in page
    assert "| tracin (influence: within_class_auc_lift) | found, lift 0.210 [0.100, 0.300] |" in page
    assert "| discover (discover: shortcut_region_iou_lift) | not found |" in page and "| dissection (?) | not judged |" in page
    assert "False alarms on the negative control (a detector \"found\" what was never planted): tracin." in page
    assert "`benchmarks/results/explain_sweep.json`: **not yet measured**" in page   # not committed: not shown
    assert "`benchmarks/results/shortcut_benchmark.json`: **not yet measured**" in page
    assert "`benchmarks/results/something_else.json`, committed 2026-01-02" in page and "`figure`" in page
    assert results_page.uncommitted(tmp_path) == ["benchmarks/results/explain_sweep.json"]


def test_the_results_page_reads_the_shortcut_benchmark_and_the_other_files(tmp_path):
    from benchmarks.shortcut_benchmark import DETECTORS

    no_verdict = {"detected": None, "lift": None, "interval": None}
    row = {"name": "square-8-red-7-s0", "variant": "square-8-red-7", "seed": 0, "shortcuts": [{"label": 7}],
           "clean": False, "development": False, "status": "done", "relied_on": True,
           "truth": [{"class": "7", "reliance": 0.6, "base_rate": 0.0, "occlusion_rate": 0.0}],
           "detectors": {d: {"detected": True, "lift": 0.3, "interval": [0.2, 0.4]} if d == "tracin" else no_verdict
                         for d in DETECTORS}}
    write(tmp_path, "benchmarks/results/shortcut_benchmark.json", {
        "grid": "configs/grids/shortcut_benchmark.yaml", "size": "cpu", "commit": "abc1234", "n_variants": 1,
        "n_done": 1, "relied_on": {"reliance_minus_base_rate": 0.5, "occlusion_minus_base_rate": 0.05},
        "summary": {d: {"detection": {"rate": 1.0 if d == "tracin" else None, "k": int(d == "tracin"), "n": int(d == "tracin")},
                        "false_alarms": {"rate": None, "k": 0, "n": 0}, "development": []} for d in DETECTORS},
        "variants": [row]})
    write(tmp_path, "benchmarks/results/explain_sweep.json", {
        "command": "python -m benchmarks.explain_sweep --quac q", "commit": "abc1234", "machine": {"cpus": 2},
        "workload": {"pairs": 64, "dataset": "clever_hans"}, "reference": {"name": "quac", "commit": "def5678"},
        "runs": [{"convention": "quac", "threads": 1, "pairs_per_second": 30.0, "reference_pairs_per_second": 10.0,
                  "ratio": 3.0, "cpu_ratio": 3.1, "pearson": 0.999, "max_score_difference": 0.001,
                  "load_average_before": 1.0, "load_average_after": 1.1}]})
    write(tmp_path, "benchmarks/results/gan_time_to_evidence.json", {
        "machine": {"cpus": 2}, "targets": {"conversion": 0.95},
        "cases": [{"case": "clever_hans", "generator": "new", "seconds_to_target": 120.5, "conversion": 0.97,
                   "gan_shortcut_fraction": 0.93, "run": {"command": "python -m benchmarks.gan_time_to_evidence"}}]})
    write(tmp_path, "metrics/timing.json", {"device": "cuda (NVIDIA H200)", "total_seconds": 600.0,
                                            "stages": {"train_gan@clever_hans": {"seconds": 200.0, "images": 1000,
                                                                                 "images_per_second": 5.0}}})
    page = results_page.render(tmp_path)   # outside git: the files as they are, without dates
    assert page.count("date unknown (not in a git checkout)") == 4
    assert "| square-8-red-7 | 0.60 | 0.00 |" in page and "| tracin | 1/1 (100%) | – | 0/0 |" in page
    assert "| quac | 1 | 30.000 | 10.000 | 3.000 |" in page
    assert "| clever_hans | full | new | 120.500 | – | 0.970 | 0.930 | – |" in page
    assert "Device: cuda (NVIDIA H200); stage time in all 600 s (10.0 min)" in page
    assert "| train_gan@clever_hans | 200.000 | 1000 | 5.000 |" in page
