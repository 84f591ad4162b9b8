"""benchmarks/gpu_run.sh and its helper benchmarks/collect_run.py, without running the pipeline: the script
parses and refuses bad arguments before any work, what it collects is what dvc.yaml declares, and the
helper's copy, merge, tarball and summary behave on constructed cases."""
from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from benchmarks import collect_run
from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_run.sh"


def run_script(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_script_parses():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_bad_arguments_stop_before_any_work(tmp_path):
    missing_out = run_script()
    assert missing_out.returncode == 2 and "OUT_DIR is missing" in missing_out.stderr
    unknown = run_script(str(tmp_path / "out"), "--bogus")
    assert unknown.returncode == 2 and "unknown option --bogus" in unknown.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("an earlier run\n")
    not_empty = run_script(str(tmp_path / "full"))
    assert not_empty.returncode == 1 and "is not empty" in not_empty.stderr
    no_overrides = run_script(str(tmp_path / "out"), "--overrides", str(tmp_path / "absent.yaml"))
    assert no_overrides.returncode == 1 and "absent.yaml: no such file" in no_overrides.stderr
    empty_wheels = tmp_path / "wheels"
    empty_wheels.mkdir()
    no_wheels = run_script(str(tmp_path / "out"), "--wheels", str(empty_wheels))
    assert no_wheels.returncode == 1 and "holds no .whl files" in no_wheels.stderr
    assert not (tmp_path / "out").exists()   # nothing was created for a run that could not start


def test_missing_mnist_files_are_named(tmp_path):
    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("needs the project's .venv (the script checks the Python packages first)")
    mnist = tmp_path / "raw"
    mnist.mkdir()
    (mnist / "train-images-idx3-ubyte.gz").write_bytes(b"x")
    (mnist / "train-labels-idx1-ubyte").write_bytes(b"x")
    result = run_script(str(tmp_path / "out"), "--mnist", str(mnist))
    assert result.returncode == 1
    assert "t10k-images-idx3-ubyte t10k-labels-idx1-ubyte" in result.stderr and "train-images" not in result.stderr


def declared():
    return collect_run.declared_outputs(REPO)


def test_everything_collected_is_a_declared_output_and_every_small_output_is_collected():
    outputs = declared()
    for folder in collect_run.COLLECTED_DIRS:   # the tarball's folders hold what the stages write
        assert any(path == folder or path.startswith(folder + "/") for path in outputs), folder
    assert collect_run.TIMING in outputs
    for path in outputs:   # ... and everything the stages write outside data/ goes into it
        if not path.startswith("data/"):
            assert path.split("/")[0] in collect_run.COLLECTED_DIRS, f"{path} would not be collected"
            assert not path.endswith(collect_run.EXCLUDED_SUFFIXES), f"{path} is declared but left out of run.tar.gz"
    assert "params.yaml" in collect_run.RUN_FILES and (REPO / "params.yaml").exists()


def test_every_stage_but_the_report_writes_a_timing_file():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    datasets = list(yaml.safe_load((REPO / "params.yaml").read_text())["datasets"])
    assert all(stage["matrix"]["dataset"] == "${datasets}" for stage in stages.values() if "matrix" in stage)
    expected = [f"{name}@{d}" for name, stage in stages.items() if "matrix" in stage for d in datasets]
    assert collect_run.timed_stages(REPO) == expected
    metrics = collect_run.declared_metrics(REPO)
    assert "metrics/clever_hans/classifier.json" in metrics and all(m.startswith("metrics/") for m in metrics)


def make_run(work: Path, with_report: bool = True) -> None:
    """A constructed workspace after a run: two timed stages of two datasets, one of which never ran."""
    dvc_yaml = {"stages": {
        "prepare": {"matrix": {"dataset": ["a", "b"]}, "cmd": "x",
                    "outs": ["data/prepared/${item.dataset}", {"metrics/${item.dataset}/timing/prepare.json": {"cache": False}},
                             {"plots/${item.dataset}/prepare/examples.png": {"cache": False}}],
                    "metrics": [{"metrics/${item.dataset}/prepare.json": {"cache": False}}]},
        "train": {"matrix": {"dataset": ["a", "b"]}, "cmd": "x",
                  "outs": [{"metrics/${item.dataset}/timing/train.json": {"cache": False}}]},
        "report": {"cmd": "x", "outs": ["report", {"metrics/timing.json": {"cache": False}}]},
    }}
    (work / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml))
    (work / "params.yaml").write_text("seed: 0\n")
    (work / "dvc.lock").write_text("schema: '2.0'\n")
    seconds = {"prepare@a": 1.5, "prepare@b": 2.0, "train@a": 30.0}   # train@b never ran
    for name, s in seconds.items():
        stage, dataset = name.split("@")
        path = work / "metrics" / dataset / "timing" / f"{stage}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"stage": name, "device": "cpu", "seconds": s, "images": 10, "images_per_second": 10 / s}))
    (work / "metrics" / "a" / "prepare.json").write_text(json.dumps({"accuracy": 0.25, "nested": {"iou": None}}))
    plots = work / "plots" / "a" / "prepare"
    plots.mkdir(parents=True)
    (plots / "examples.png").write_bytes(os.urandom(3000))
    (plots / "curve.csv").write_text("step,value\n0,1\n")
    (plots / "arrays.npz").write_bytes(b"0" * 1000)
    (work / "data" / "prepared").mkdir(parents=True)
    (work / "data" / "prepared" / "train.npz").write_bytes(b"0" * 1000)
    if with_report:
        (work / "report").mkdir()
        (work / "report" / "index.html").write_text("<html>report</html>")


def test_collect_summarises_a_partial_run(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    make_run(work)
    out.mkdir()
    (out / "repro.log").write_text("Running stage 'prepare@a'\n")
    (out / "machine.txt").write_text("cpus: 2\n")
    text = collect_run.collect(work, out, commit="abc123", exit_code=1, wall_seconds=40.0, params_note="as committed")
    assert sorted(p.name for p in out.iterdir()) == ["machine.txt", "repro.log", "run.tar.gz", "summary.txt", "timing.json"]
    assert (out / "summary.txt").read_text() == text
    lines = text.splitlines()
    assert "commit: abc123" in lines and "dvc repro exit code: 1" in lines and "device: cpu" in lines
    assert "total wall seconds (dvc repro): 40.0" in lines
    assert "stages without a timing file (not run or failed): train@b" in lines
    timed = [line.split() for line in lines if line.startswith("  ") and "@" in line]
    assert [name for name, _ in timed] == ["train@a", "prepare@b", "prepare@a"]   # longest first
    assert "  a/prepare.json:accuracy = 0.25" in lines and "  a/prepare.json:nested.iou = null" in lines
    assert "  metrics/b/prepare.json: missing" in lines
    timing = json.loads((out / "timing.json").read_text())   # no metrics/timing.json: merged from the stages' files
    assert set(timing["stages"]) == set(["prepare@a", "prepare@b", "train@a"]) and timing["total_seconds"] == 33.5
    assert "note" in timing
    with tarfile.open(out / "run.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"dvc.lock", "params.yaml", "report/index.html", "plots/a/prepare/examples.png", "plots/a/prepare/curve.csv",
            "metrics/a/prepare.json", "metrics/a/timing/train.json", "MANIFEST.txt"} <= names
    assert not any(name.endswith(".npz") or name.startswith("data/") for name in names), names


def test_collect_copies_the_report_timing_file_when_there_is_one(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    make_run(work)
    report_timing = {"device": "NVIDIA H200", "total_seconds": 3.5, "stages": {"prepare@a": {"seconds": 3.5}}}
    (work / "metrics" / "timing.json").write_text(json.dumps(report_timing))
    text = collect_run.collect(work, out, commit="abc", exit_code=0, wall_seconds=5.0, params_note="-")
    assert json.loads((out / "timing.json").read_text()) == report_timing
    assert "device: NVIDIA H200" in text.splitlines()


def test_pack_leaves_out_what_exceeds_the_budget_and_says_so(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    make_run(work)
    big = work / "plots" / "a" / "prepare" / "big.png"
    big.write_bytes(os.urandom(2 * 2**20))   # incompressible, like a PNG
    tarball = tmp_path / "run.tar.gz"
    packed, left_out = collect_run.pack(work, tarball, budget_bytes=2**20)
    assert [rel for rel, _ in left_out] == ["plots/a/prepare/big.png"]
    assert "report/index.html" in packed and "plots/a/prepare/examples.png" in packed   # smaller files still fit
    assert tarball.stat().st_size < 2**20
    with tarfile.open(tarball) as tar:
        manifest = tar.extractfile("MANIFEST.txt").read().decode()
    assert "plots/a/prepare/big.png" in manifest and "left out" in manifest


def test_merge_is_deep_and_replaces_lists(tmp_path):
    params, overrides = tmp_path / "params.yaml", tmp_path / "tiny.yaml"
    params.write_text(yaml.safe_dump({"seed": 0, "data": {"root": "data/raw", "train_size": None}, "attribution": {"methods": ["a", "b"]}}))
    overrides.write_text(yaml.safe_dump({"device": "cpu", "data": {"train_size": 600}, "attribution": {"methods": ["c"]}}))
    collect_run.merge_params(params, overrides)
    assert yaml.safe_load(params.read_text()) == {"seed": 0, "data": {"root": "data/raw", "train_size": 600},
                                                  "attribution": {"methods": ["c"]}, "device": "cpu"}
    overrides.write_text("- not a mapping\n")
    with pytest.raises(SystemExit, match="must hold a params tree"):
        collect_run.merge_params(params, overrides)


def test_copy_tree_leaves_out_environments_data_and_earlier_outputs(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for rel in ("pipeline/stage.py", "pipeline/__pycache__/stage.pyc", ".venv/bin/python", "data/prepared/a/train.npz",
                "metrics/seed_study.json", "metrics/a/classifier.json", "plots/a/x.png", "report/index.html",
                ".dvc/config", ".dvc/cache/ab/cdef", ".dvc/tmp/lock", ".whl/x.whl", ".gpu-data/MNIST/raw/f",
                "dvc.yaml", "tests/tiny_params.yaml"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x")
    collect_run.copy_tree(src, dst)
    copied = {p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()}
    assert copied == {"pipeline/stage.py", "metrics/seed_study.json", ".dvc/config", "dvc.yaml", "tests/tiny_params.yaml"}


def test_long_log_keeps_head_and_tail(tmp_path):
    log = tmp_path / "repro.log"
    log.write_bytes(b"FIRST\n" + b"x" * 100_000 + b"\nLAST\n")
    assert collect_run.limit_log(log, 10_000)
    text = log.read_bytes()
    assert len(text) <= 10_000 and text.startswith(b"FIRST") and text.endswith(b"LAST\n") and b"left out" in text
    assert not collect_run.limit_log(log, 10_000)
