"""Experiment lists: the grid file, sets files, and the -S override grammar, checked against DVC itself."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks.experiments import Experiment, is_clean, override_value, read_grid, read_sets, seed_study
from benchmarks.sweep import finished_in, parse_queue_status, run, stale_running, states, with_data_root
from tests.conftest import REPO

GRID = REPO / "configs" / "grids" / "shortcut_benchmark.yaml"


def test_override_values_are_spelled_for_dvc_exp_run():
    shortcuts = [{"label": 7, "kind": "square", "color": [1.0, 0.0, 0.0], "text": "09:41", "fraction": 0.0}]
    assert override_value(shortcuts) == '[{label:7,kind:"square",color:[1.0,0.0,0.0],text:"09:41",fraction:0.0}]'
    assert override_value(None) == "null" and override_value(True) == "true" and override_value("cpu") == '"cpu"'
    assert Experiment("a-1", {"seed": 3, "explain.methods": ["d_ig"]}, ("discover@x",)).run_args() == \
        ["-n", "a-1", "-S", "seed=3", "-S", 'explain.methods=["d_ig"]', "discover@x"]


def test_names_must_be_safe_for_git_refs_and_slurm():
    with pytest.raises(ValueError, match="lower-case letters"):
        Experiment("Big Name", {})


def test_the_benchmark_grid_covers_every_kind_at_three_levels_two_clean_variants_and_two_shortcuts_at_once():
    grid = read_grid(GRID)
    experiments = grid.experiments("cpu")
    kinds = {}
    for experiment in experiments:
        shortcuts = experiment.info["shortcuts"]
        if len(shortcuts) == 1 and not is_clean(shortcuts):
            kinds.setdefault(shortcuts[0]["kind"], set()).add(experiment.info["variant"])
    assert set(kinds) == {"square", "text", "watermark", "gradient"}
    assert all(len(variants) >= 3 for variants in kinds.values())
    assert sum(is_clean(e.info["shortcuts"]) for e in experiments) >= 2
    assert any(len(e.info["shortcuts"]) == 2 for e in experiments)
    assert len(experiments) >= 16 and all(e.targets[0].endswith("@clever_hans") for e in experiments)
    assert [e.info["variant"] for e in experiments if e.info["development"]] == ["square-20-red-7"]


def test_every_variant_fills_its_shortcuts_from_the_defaults_and_passes_the_params_check():
    """Each variant, merged into params.yaml as `dvc exp run -S` would merge it, is a valid params file."""
    from pipeline.config import load_params

    grid = read_grid(GRID)
    committed = yaml.safe_load((REPO / "params.yaml").read_text())
    for experiment in grid.experiments("cpu"):
        assert set(experiment.info["shortcuts"][0]) >= {"label", "kind", "fraction", "position", "strength", "color"}
        params = experiment.applied_to(committed)
        path = REPO / "tests" / f".grid-{experiment.name}.yaml"
        try:
            path.write_text(yaml.safe_dump(params, sort_keys=False))
            load_params(path)
        finally:
            path.unlink(missing_ok=True)


def test_a_grid_names_what_is_wrong(tmp_path):
    bad = tmp_path / "grid.yaml"
    bad.write_text(yaml.safe_dump({"dataset": "clever_hans", "stages": ["train_classifier"], "sizes": {"cpu": {"seeds": [0]}},
                                   "variants": [{"name": "a", "shortcut": []}]}))
    with pytest.raises(ValueError, match=r"variants\[0\] \(a\) has unknown keys \['shortcut'\]"):
        read_grid(bad)
    with pytest.raises(ValueError, match="no size 'gpu2'"):
        read_grid(GRID).experiments("gpu2")


def test_sets_files_and_the_seed_study(tmp_path):
    sets = tmp_path / "sets.txt"
    sets.write_text("# a comment\nlr-small: classifier.learning_rate=0.001 seed=1\nwide: classifier.width=64\n")
    first, second = read_sets(sets, ("train_classifier@clever_hans",))
    assert first == Experiment("lr-small", {"classifier.learning_rate": 0.001, "seed": 1}, ("train_classifier@clever_hans",))
    assert second.overrides == {"classifier.width": 64}
    assert [e.name for e in seed_study([0, 1])] == ["seed-0", "seed-1"]


# --------------------------------------------------------------------------------------------
# DVC's queue, on a tiny project of its own
# --------------------------------------------------------------------------------------------
STAGE = """
import json, sys, yaml
p = yaml.safe_load(open("params.yaml"))
shortcuts = p["datasets"]["a"]["shortcuts"]
if shortcuts and shortcuts[0]["label"] == 99:
    sys.exit("label 99 fails")
json.dump({"n": len(shortcuts), "label": shortcuts[0]["label"]}, open("m.json", "w"))
"""


def git(*args: str, cwd: Path) -> None:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com")
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


@pytest.fixture
def tiny_project(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump({"data": {"root": "raw"}, "datasets": {"a": {"shortcuts": []}}}))
    (project / "raw").mkdir()
    (project / "stage.py").write_text(STAGE)
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"s": {
        "matrix": {"dataset": "${datasets}"}, "cmd": "python stage.py", "deps": ["stage.py"],
        "params": ["datasets.${item.dataset}"], "metrics": [{"m.json": {"cache": False}}]}}}))
    (project / ".gitignore").write_text("/raw\n")
    git("init", "-q", cwd=project)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=project, check=True)
    git("add", "-A", cwd=project)
    git("commit", "-qm", "tiny", cwd=project)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return project


@pytest.mark.e2e   # a real DVC queue of tiny pipeline runs: about a minute
def test_the_queue_runs_each_experiment_once_reports_a_failure_and_retries_it(tiny_project):
    experiments = [Experiment(f"e{label}", {"datasets.a.shortcuts": [{"label": label, "kind": "square"}]}, ("s@a",))
                   for label in (1, 2, 99)]
    assert run(experiments, jobs=1, poll_seconds=1, cwd=tiny_project) == 1
    assert states(experiments, tiny_project) == {"e1": "done", "e2": "done", "e99": "failed"}
    shown = json.loads(subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=tiny_project,
                                      capture_output=True, text=True, check=True).stdout)
    labels = {rev["name"]: rev["data"]["metrics"]["m.json"].get("data", {}).get("label")
              for baseline in shown for exp in baseline.get("experiments") or [] for rev in exp["revs"]}
    assert labels == {"e1": 1, "e2": 2, "e99": None}    # each ran with its own shortcuts; the failure has no result
    fixed = experiments[:2] + [Experiment("e99", {"datasets.a.shortcuts": [{"label": 3, "kind": "square"}]}, ("s@a",))]
    assert run(fixed, jobs=1, poll_seconds=1, cwd=tiny_project) == 0     # e1 and e2 are not redone
    assert states(fixed, tiny_project) == {"e1": "done", "e2": "done", "e99": "done"}


def test_a_relative_data_root_is_passed_on_absolute(tiny_project):
    moved = with_data_root(Experiment("x", {}), tiny_project)
    assert moved.overrides["data.root"] == str((tiny_project / "raw").resolve())


QUEUE_TABLE = """Task     Name                      Created    Status
9279720  two-square-7-text-2-s0    10:57 AM   Running
e2b71cc  square-8-red-7-s0         11:16 AM   Queued
3e20a77  gradient-60-white-8-s0    11:16 AM   Queued
eded052  gradient-60-white-8-s0    10:57 AM   Failed
4a1b2c3  clean-text-0-s0           10:50 AM   Success

Worker status: 2 active, 0 idle
"""


def test_a_name_queued_again_after_a_failure_is_queued_not_failed():
    assert parse_queue_status(QUEUE_TABLE) == {"two-square-7-text-2-s0": "running", "square-8-red-7-s0": "queued",
                                               "gradient-60-white-8-s0": "queued", "clean-text-0-s0": "done"}


def test_running_experiments_without_a_worker_are_stale():
    assert stale_running(QUEUE_TABLE) == []    # two workers are active: the running row is under way
    orphaned = QUEUE_TABLE.replace("2 active", "0 active").replace("Queued\n", "Running\n", 1)
    assert stale_running(orphaned) == ["square-8-red-7-s0", "two-square-7-text-2-s0"]
    assert stale_running(orphaned.replace("Worker status: 0 active, 0 idle", "")) == []   # no worker line: unknown


def test_queued_running_and_failed_experiments_are_not_finished():
    def experiment(name, executor, error=None):
        rev = {"rev": name * 4, "name": name, "error": error,
               "data": {"params": {"params.yaml": {"data": {"seed": 0}}}, "metrics": {"m.json": {"data": {"x": 1}}}}}
        return {"name": name, "executor": executor, "revs": [rev]}

    shown = [{"rev": "workspace", "experiments": None},
             {"rev": "abc", "name": "main", "experiments": [
                 experiment("done", None), experiment("also-done", {"state": "success"}),
                 experiment("running", {"state": "running"}), experiment("queued", {"state": "queued"}),
                 experiment("failed", {"state": "failed"}, {"msg": "Experiment run failed"})]}]
    finished = finished_in(shown)
    assert sorted(finished) == ["also-done", "done"]
    assert finished["done"].metrics == {"m.json": {"x": 1}} and finished["done"].params == {"seed": 0}
