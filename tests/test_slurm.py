"""A grid as a Slurm job array, against a real single-node Slurm (Debian's slurm-wlm and munge) started here.

Three variants of the benchmark grid run to train_classifier at the tiny params; one task is cancelled while its
stage runs, leaves nothing behind, is resubmitted alone, and all three come back as DVC experiments the benchmark's
aggregation reads.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from benchmarks.experiments import read_grid
from benchmarks.shortcut_benchmark import aggregate
from benchmarks.single_node_slurm import SingleNodeSlurm, missing_binaries
from benchmarks.slurm import Shared, main, shared_done, states, submissions, wait
from benchmarks.slurm_vs_queue import write_tiny_grid
from benchmarks.sweep import finished_experiments
from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(missing_binaries()), reason=f"no Slurm here (missing "
                                f"{', '.join(missing_binaries())}): apt-get install slurm-wlm munge (.ci/run does)")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A single-node Slurm: this machine, 3 CPUs and 6 GB for three one-CPU tasks; stopped afterwards."""
    with SingleNodeSlurm(tmp_path_factory.mktemp("slurm"), cpus=3, memory_mb=6000) as slurm:
        slurm.activate()
        yield slurm


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def test_a_grid_runs_as_a_job_array_a_killed_task_is_resubmitted_alone_and_all_come_back(
        cluster, mnist_root, tmp_path, monkeypatch, capsys):
    for key, value in {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
                       "GIT_COMMITTER_EMAIL": "t@example.com", "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    project = tmp_path / "project"       # the submitting repository: a clone of this project's last commit
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(project)], check=True)
    grid = write_tiny_grid(tmp_path / "grid.yaml", mnist_root, project)
    experiments = read_grid(grid).experiments("tiny")
    names = [e.name for e in experiments]
    shared, scratch = Shared.under(tmp_path / "shared"), tmp_path / "scratch"
    common = [str(grid), "--size", "tiny", "--repo", str(project), "--shared", str(shared.folder)]
    resources = ["--workdir", str(scratch), "--cpus-per-task", "1", "--mem", "1500M", "--time", "00:15:00"]

    assert main(["submit", *common, *resources]) == 0
    first = submissions(shared, _head(project))[-1]
    assert first.names == names and (first.folder / "job.sh").read_text().count("#SBATCH --mem=1500M") == 1

    # cancel the second task while its training stage runs: it fails, leaves nothing behind and pushes nothing
    victim = first.log(1)
    training, ended = "Running stage 'train_classifier@", ("FAILED", "done and pushed")
    wait_for(lambda: victim.exists() and any(word in victim.read_text() for word in (training, *ended)), 300,
             f"{names[1]} to start training ({victim})")
    assert not any(word in victim.read_text() for word in ended), victim.read_text()[-3000:]
    cluster.client("scancel", f"{first.job_id}_1")
    wait_for(lambda: states(experiments, shared, project, set())[names[1]].state == "failed", 60, "the cancel")
    assert "stopped by a signal" in victim.read_text()
    wait_for(lambda: not (scratch / f"xai-slurm-{first.job_id}_1").exists(), 30, "its task folder to be removed")
    assert names[1] not in shared_done(shared, _head(project))
    capsys.readouterr()
    assert main(["status", *common]) == 0
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert lines[names[1]].startswith("failed") and str(victim.relative_to(tmp_path)) in lines[names[1]]

    # resubmit runs the failed one alone (the others are running or done), with the first submission's resources
    assert main(["resubmit", *common]) == 0
    second = submissions(shared, _head(project))[-1]
    assert second.names == [names[1]] and second.resources == first.resources
    assert all(s.state == "done" for s in wait(experiments, shared, project, poll_seconds=1).values())
    assert shared_done(shared, _head(project)) == set(names)
    assert main(["resubmit", *common]) == 0 and len(submissions(shared, _head(project))) == 2   # nothing left to do
    assert not list(scratch.glob("xai-slurm-*"))

    # collect: dvc exp show lists all three here, with their params; their outputs came from the shared DVC remote
    assert main(["collect", *common]) == 0
    collected = finished_experiments(project)
    assert set(collected) == set(names)
    for experiment in experiments:
        result = collected[experiment.name]
        planted = experiment.overrides["datasets.clever_hans.shortcuts"]
        assert result.params["datasets"]["clever_hans"]["shortcuts"] == planted
        assert "metrics/clever_hans/classifier.json" in result.metrics
        lock = yaml.safe_load(_git("show", f"{result.rev}:dvc.lock", cwd=project))
        outs = {out["path"]: out["md5"] for out in lock["stages"]["train_classifier@clever_hans"]["outs"]}
        md5 = outs["data/models/clever_hans/classifier.pt"]
        assert (project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).stat().st_size > 0

    # the benchmark's aggregation reads them as it reads the queue's: truth measured, detectors not run are null
    results = aggregate(read_grid(grid), "tiny", collected, cwd=project)
    assert results["n_done"] == 3
    for row in results["variants"]:
        assert row["status"] == "done" and all(v["detected"] is None for v in row["detectors"].values())
        assert row["clean"] or all(0 <= t["reliance"] <= 1 for t in row["truth"])
    json.dumps(results)


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def _head(repo: Path) -> str:
    return _git("rev-parse", "HEAD", cwd=repo).strip()
