"""Bad inputs stop a stage at once: exit code 2, one sentence on stderr that names the key or the file and what
to do, no traceback, and nothing written or deleted under data/, metrics/ or plots/.

Params and raw files: each case runs ``prepare`` on a tiny fake MNIST (idx files written here, 60 training and
20 test images, labels 0..9 in turn) so that only the one bad input can stop it. A classifier of your own and the
pipeline's ``classifier.pt``: each case runs the real entry point in its own process on a tiny image folder
(three classes of shapes, as ``examples/own_images.py`` makes them).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml

from pipeline.stages import prepare
from tests.conftest import REPO, merged, repo_params

N_TRAIN, N_TEST, SIDE = 60, 20, 28
OUTPUT_FOLDERS = ("data", "metrics", "plots")


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file of unsigned bytes: 0, 0, type 0x08, number of dimensions, big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fake_mnist(raw_dir: Path, image_side: int = SIDE) -> None:
    raw_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        write_idx(raw_dir / f"{split}-images-idx3-ubyte", rng.integers(0, 256, size=(n, image_side, image_side)))
        write_idx(raw_dir / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)


# --------------------------------------------------------------------------------------------
# Ways to break the raw files (each takes the MNIST/raw folder)
# --------------------------------------------------------------------------------------------
def truncate(name: str, n_bytes: int) -> Callable[[Path], None]:
    def apply(raw_dir: Path) -> None:
        path = raw_dir / name
        path.write_bytes(path.read_bytes()[:n_bytes])
    return apply


def replace_with(name: str, content: bytes) -> Callable[[Path], None]:
    def apply(raw_dir: Path) -> None:
        (raw_dir / name).write_bytes(content)
    return apply


def write_array(name: str, array: np.ndarray) -> Callable[[Path], None]:
    return lambda raw_dir: write_idx(raw_dir / name, array)


def archive_only(name: str, content: bytes) -> Callable[[Path], None]:
    """The raw file gone, a broken .gz archive in its place."""
    def apply(raw_dir: Path) -> None:
        (raw_dir / name).unlink()
        (raw_dir / f"{name}.gz").write_bytes(content)
    return apply


def delete(name: str) -> Callable[[Path], None]:
    return lambda raw_dir: (raw_dir / name).unlink()


def shortcut(**fields) -> dict:
    base = {"label": 7, "kind": "square", "fraction": 0.95, "position": [1, 1], "side": 10, "strength": 1.0,
            "color": [1.0, 0.0, 0.0], "text": "09:41"}
    return dict(base, **fields)


TEXT_THAT_IS_NOT_YAML = "seed: 0\ndata:\n  download: false\n   source: mnist\n"
TWO_DATA_SECTIONS = "seed: 0\ndata:\n  download: false\ndata:\n  source: mnist\n"
TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
FULL_TRAIN_IMAGES = 16 + N_TRAIN * SIDE * SIDE

# id: (dataset, params overrides or the params file's whole text or None for no file, raw-file damage, names)
CASES = {
    "yaml syntax error": ("clever_hans", TEXT_THAT_IS_NOT_YAML, None, ["params.yaml", "line 4"]),
    "a section given twice": ("clever_hans", TWO_DATA_SECTIONS, None, ["params.yaml", "line 4", "'data'"]),
    "params file missing": ("colored_mnist", None, None, ["params.yaml", "not found"]),
    "params file is a list": ("colored_mnist", "- seed: 0\n", None, ["params.yaml = [{'seed': 0}]", "a mapping of sections"]),
    "misspelt key": ("colored_mnist", {"data": {"trian_size": 10}}, None, ["data.trian_size"]),
    "a learning rate of inf": ("colored_mnist", {"classifier": {"learning_rate": float("inf")}}, None,
                               ["classifier.learning_rate = inf", "a positive number"]),
    "square larger than the image": (
        "clever_hans", {"datasets": {"clever_hans": {"kind": "clever_hans", "shortcuts": [shortcut(side=40)]}}}, None,
        ["clever_hans.shortcuts[0].side = 40", "1..28"]),
    "square over the edge": (
        "clever_hans", {"datasets": {"clever_hans": {"kind": "clever_hans", "shortcuts": [shortcut(position=[25, 25], side=4)]}}}, None,
        ["clever_hans.shortcuts[0].position = [25, 25]", "0..24"]),
    "text too long": (
        "clever_hans", {"datasets": {"clever_hans": {"kind": "clever_hans", "shortcuts": [shortcut(kind="text", text="09:41:00:00", side=1)]}}}, None,
        ["clever_hans.shortcuts[0].text = '09:41:00:00'", "at most 7 characters"]),
    "text glyphs too large": (
        "clever_hans", {"datasets": {"clever_hans": {"kind": "clever_hans", "shortcuts": [shortcut(kind="text", text="09:41", side=2)]}}}, None,
        ["clever_hans.shortcuts[0].side = 2", "10x38"]),
    "watermark over the edge": (
        "clever_hans", {"datasets": {"clever_hans": {"kind": "clever_hans", "shortcuts": [shortcut(kind="watermark", position=[20, 0], side=10)]}}}, None,
        ["clever_hans.shortcuts[0].position = [20, 0]", "0..18"]),
    "gradient larger than the image": (
        "clever_hans", {"datasets": {"clever_hans": {"kind": "clever_hans", "shortcuts": [shortcut(kind="gradient", position=[0, 0], side=29)]}}}, None,
        ["clever_hans.shortcuts[0].side = 29"]),
    "two shortcuts in one class": (
        "clever_hans", {"datasets": {"clever_hans": {"kind": "clever_hans", "shortcuts": [shortcut(), shortcut(kind="gradient", position=[20, 20], side=6)]}}},
        None, ["clever_hans.shortcuts[1].label = 7", "one shortcut per class"]),
    "no colormap": ("colored_mnist", {"datasets": {"colored_mnist": {"kind": "colored_mnist", "colormaps": []}}}, None,
                    ["datasets.colored_mnist.colormaps = []"]),
    "an unknown dataset": ("fashion", {}, None, ["dataset = 'fashion'", "a dataset named under `datasets`", "colored_mnist", "clever_hans"]),
    "a dataset without its kind's settings": ("clever_hans", {"datasets": {"clever_hans": {"kind": "clever_hans", "shortcuts": None}}}, None,
                                              ["datasets.clever_hans.shortcuts = None", "a clever_hans dataset needs its shortcuts"]),
    "settings of another kind": ("clever_hans", {"datasets": {"clever_hans": {"kind": "clever_hans", "colormaps": ["spring"],
                                                                          "shortcuts": [shortcut()]}}}, None,
                                 ["datasets.clever_hans.colormaps", "only a colored_mnist dataset has colormaps"]),
    "a dataset name that is no folder name": ("clever_hans", {"datasets": {"Clever Hans": {"kind": "colored_mnist",
                                                                                          "colormaps": ["spring", "summer"]}}},
                                              None, ["datasets = 'Clever Hans'", "lower-case letters"]),
    "train_size above the split": ("colored_mnist", {"data": {"train_size": 60_001}}, None,
                                   ["data.train_size = 60001", "60000"]),
    "test sample above test_size": (
        "colored_mnist", {"data": {"test_size": 10}, "counterfactuals": {"n_images": 10}, "attribution": {"n_images": 11}},
        None, ["attribution.n_images = 11", "at most 10"]),
    "train_size above the files": ("colored_mnist", {"data": {"train_size": N_TRAIN + 1}}, None,
                                   [f"data.train_size = {N_TRAIN + 1}", f"at most {N_TRAIN}"]),
    "test_size above the files": ("clever_hans", {"data": {"test_size": N_TEST + 1}}, None,
                                  [f"data.test_size = {N_TEST + 1}", f"at most {N_TEST}"]),
    "fraction that stamps no image": (
        "clever_hans", {"datasets": {"clever_hans": {"kind": "clever_hans", "shortcuts": [shortcut(fraction=0.05)]}}}, None,
        ["clever_hans.shortcuts[0].fraction = 0.05", "6 training images of class 7"]),
    "truncated training images": (
        "colored_mnist", {}, truncate(TRAIN_IMAGES, 16 + 10 * SIDE * SIDE),
        [TRAIN_IMAGES, f"{N_TRAIN} items of 28 x 28 bytes", f"{FULL_TRAIN_IMAGES} bytes", f"{16 + 10 * SIDE * SIDE} bytes",
         "re-copy it", "delete it"]),
    "truncated, download allowed": (
        "clever_hans", {"data": {"download": True}}, truncate(TEST_LABELS, 15), [TEST_LABELS, "28 bytes", "15 bytes"]),
    "one extra byte": ("colored_mnist", {}, replace_with(TEST_LABELS, bytes([0, 0, 8, 1, 0, 0, 0, 2, 3, 4, 5])),
                       [TEST_LABELS, "2 items of one byte", "10 bytes", "11 bytes"]),
    "header cut short": ("clever_hans", {}, truncate(TRAIN_LABELS, 6), [TRAIN_LABELS, "6 bytes", "header"]),
    "not an idx file": ("clever_hans", {}, replace_with(TEST_IMAGES, b"<html>not found</html>"),
                        [TEST_IMAGES, "not an idx file"]),
    "fewer labels than images": ("clever_hans", {}, write_array(TRAIN_LABELS, np.arange(N_TRAIN - 1) % 10),
                                 [TRAIN_IMAGES, TRAIN_LABELS, f"{N_TRAIN - 1} labels"]),
    "images of another size": ("colored_mnist", {}, write_array(TEST_IMAGES, np.zeros((N_TEST, 32, 32))),
                               [TEST_IMAGES, "32 x 32"]),
    "label outside 0..9": ("clever_hans", {}, write_array(TRAIN_LABELS, np.arange(N_TRAIN) % 10 + 3),
                           [TRAIN_LABELS, "outside 0..9", "e.g. 10"]),
    "raw file missing, no download": ("colored_mnist", {}, delete(TRAIN_IMAGES), [f"MNIST/raw: {TRAIN_IMAGES} (data.download is false)"]),
    "broken archive": ("colored_mnist", {}, archive_only(TEST_IMAGES, b"\x1f\x8b garbage"),
                       [f"{TEST_IMAGES}.gz", "MD5"]),
}


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A working folder to run in and a fake MNIST outside it; yields (work, raw_dir, base params)."""
    root = tmp_path / "datasets"
    raw_dir = root / "MNIST" / "raw"
    write_fake_mnist(raw_dir)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    base = repo_params({"device": "cpu", "data": {"root": str(root), "download": False},
                        "attribution": {"n_images": 8}, "counterfactuals": {"n_images": 8}})  # below the fake test split
    return work, raw_dir, base


def write_params(work: Path, base: dict, params) -> None:
    if params is None:
        return
    text = params if isinstance(params, str) else yaml.safe_dump(merged(base, params))
    (work / "params.yaml").write_text(text)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_one_sentence(message: str) -> None:
    assert "Traceback" not in message, message
    assert len(message.strip().splitlines()) == 1, message
    assert message.startswith("error: "), message
    assert not re.search(r"[.!?]\s+[A-Z]", message), f"more than one sentence: {message}"


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_stops_with_one_sentence_and_writes_nothing(case, workspace, capsys):
    dataset, params, damage, names = CASES[case]
    work, raw_dir, base = workspace
    write_params(work, base, params)
    if damage is not None:
        damage(raw_dir)
    raw_before = files_under(raw_dir)
    with pytest.raises(SystemExit) as exit_info:
        prepare.main([dataset, "--params", "params.yaml"])
    message = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert_one_sentence(message)
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    assert not [folder for folder in OUTPUT_FOLDERS if (work / folder).exists()]
    assert files_under(raw_dir) == raw_before


@pytest.mark.parametrize("dataset", ["colored_mnist", "clever_hans"])
def test_the_fake_mnist_prepares_when_nothing_is_broken(dataset, workspace, capsys):
    """The control: the same files and params, with sizes at their limits, run through."""
    work, _, base = workspace
    write_params(work, base, {"data": {"train_size": N_TRAIN, "test_size": N_TEST}})
    prepare.main([dataset, "--params", "params.yaml"])
    assert "error" not in capsys.readouterr().err
    arrays = np.load(work / "data" / "prepared" / dataset / "train.npz")
    assert len(arrays["labels"]) == N_TRAIN


def test_command_line_names_the_truncated_file_without_traceback(workspace):
    """The same through ``python -m pipeline.stages.prepare`` in its own process."""
    work, raw_dir, base = workspace
    write_params(work, base, {})
    truncate(TRAIN_IMAGES, 1000)(raw_dir)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "pipeline.stages.prepare", "clever_hans", "--params", "params.yaml"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert_one_sentence(done.stderr)
    assert str(raw_dir / TRAIN_IMAGES) in done.stderr and "1000 bytes" in done.stderr
    assert not [folder for folder in OUTPUT_FOLDERS if (work / folder).exists()]


# --------------------------------------------------------------------------------------------
# A classifier of your own, and the pipeline's classifier.pt
# --------------------------------------------------------------------------------------------
class RunsCode:
    """Unpickled, it would open (and so create) ``marker``: a weights file that carries code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def state_dict_halved(path: Path) -> None:
    """A real ``torch.save`` file cut in half, as an interrupted copy leaves it."""
    torch.save({"weight": torch.zeros(64, 64)}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def run_stage(stage: str, work: Path) -> subprocess.CompletedProcess:
    """``python -m pipeline.stages.<stage> mine`` in its own process: its whole stderr, torch's warnings included."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", f"pipeline.stages.{stage}", "mine", "--params", "params.yaml"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)


def run_in_process(stage: str, capsys) -> subprocess.CompletedProcess:
    """The same stage's ``main`` in this process (quicker; torch's warnings are pytest's here)."""
    import importlib

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"pipeline.stages.{stage}").main(["mine", "--params", "params.yaml"])
    return subprocess.CompletedProcess(stage, exit_info.value.code, "", capsys.readouterr().err)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def own_images(tmp_path, monkeypatch):
    """A prepared image folder ``mine`` whose classifier is a torchvision ResNet-18 with weights at ``weights.pt``
    (not written yet), and what an earlier run left: an epoch checkpoint and a ``classifier.pt``."""
    from tests.synthetic_images import write_image_folder

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    images = write_image_folder(tmp_path / "images", n_train=4, n_test=2, size=32)
    entry = {"kind": "image_folder", "root": str(images), "image_size": 32,
             "classifier": {"torchvision": "resnet18", "weights": str(work / "weights.pt")}}
    params = repo_params({"device": "cpu", "attribution": {"n_images": 6}, "counterfactuals": {"n_images": 6}})
    (work / "params.yaml").write_text(yaml.safe_dump(dict(params, datasets={"mine": entry})))
    prepare.main(["mine", "--params", "params.yaml"])
    earlier = work / "data" / "models" / "mine"
    (earlier / "classifier_checkpoints").mkdir(parents=True)
    (earlier / "classifier_checkpoints" / "epoch_1.pt").write_bytes(b"an earlier run's epoch")
    (earlier / "classifier.pt").write_bytes(b"an earlier run's classifier")
    return work


def assert_stopped_cleanly(done: subprocess.CompletedProcess, work: Path, before: dict, *names: str) -> None:
    assert done.returncode == 2, done.stderr
    assert_one_sentence(done.stderr)
    assert "\x1b" not in done.stderr and "weights_only" not in done.stderr, done.stderr  # no colour codes, no unsafe advice
    for name in names:
        assert name in done.stderr, f"{name!r} not in {done.stderr!r}"
    assert snapshot(work) == before  # nothing written, nothing deleted (epoch checkpoints and DVCLive files included)


WEIGHTS = {
    "garbage bytes": (lambda path: path.write_bytes(np.random.default_rng(0).bytes(4096)),
                      ["is not a file that torch.save wrote"]),
    "cut short": (state_dict_halved, ["is not a file that torch.save wrote, or it is cut short"]),
    "a pickle that runs code": (lambda path: torch.save({"weight": RunsCode(path.with_name("ran"))}, path),
                                ["io.open", "would run code"]),
    "a whole pickled module": (lambda path: torch.save(torch.nn.Linear(2, 3), path), ["torch.nn.modules.linear.Linear"]),
}
CLASSIFIER_PT = {
    "a bare state dict": (lambda path: torch.save({"conv.weight": torch.zeros(2, 3, 3, 3)}, path),
                          ["is not a classifier saved by this pipeline"]),
    "cut short": (state_dict_halved, ["is not a file that torch.save wrote, or it is cut short"]),
    "weights of another network": (lambda path: torch.save({"config": {"architecture": "cnn", "n_classes": 3, "width": 4},
                                                            "state_dict": {"conv.weight": torch.zeros(1)}}, path),
                                   ["do not make a classifier"]),
    "a whole pickled module": (lambda path: torch.save(torch.nn.Linear(2, 3), path), ["torch.nn.modules.linear.Linear"]),
}
WEIGHTS_NAMED = ("datasets.mine.classifier", "torch.save(model.state_dict(), path)")
CLASSIFIER_PT_NAMED = (str(Path("data/models/mine/classifier.pt")), "re-run `dvc repro train_classifier")


@pytest.mark.parametrize("case", list(WEIGHTS))
def test_weights_that_do_not_load_stop_train_classifier_before_it_touches_anything(case, own_images, capsys):
    work, (write, names) = own_images, WEIGHTS[case]
    write(work / "weights.pt")
    before = snapshot(work)
    done = run_in_process("train_classifier", capsys)
    assert_stopped_cleanly(done, work, before, *WEIGHTS_NAMED, str(work / "weights.pt"), *names)
    assert not (work / "ran").exists()  # the pickle's code never ran


@pytest.mark.parametrize("case", list(CLASSIFIER_PT))
def test_a_broken_classifier_pt_is_named_in_one_sentence_by_the_stages_that_read_it(case, own_images, capsys):
    work, (write, names) = own_images, CLASSIFIER_PT[case]
    write(work / "data" / "models" / "mine" / "classifier.pt")
    before = snapshot(work)
    done = run_in_process("feature_viz", capsys)
    assert_stopped_cleanly(done, work, before, *CLASSIFIER_PT_NAMED, *names)


def test_from_the_command_line_a_pickled_classifier_pt_is_one_line_without_colour_codes_or_unsafe_advice(own_images):
    """torch refuses a pickled module in several lines with terminal colour codes, the advice to load it unsafely
    and a warning on the pickle protocol; the process's whole stderr is one sentence."""
    work = own_images
    torch.save(torch.nn.Linear(2, 3), work / "data" / "models" / "mine" / "classifier.pt")
    before = snapshot(work)
    assert_stopped_cleanly(run_stage("feature_viz", work), work, before, *CLASSIFIER_PT_NAMED,
                           "torch.nn.modules.linear.Linear")


def test_the_own_images_control_evaluates_a_classifier_whose_weights_load(own_images, capsys):
    """The same folder and params with a real state dict: train_classifier runs through and replaces the old outputs."""
    from torchvision.models import resnet18

    from pipeline.stages import train_classifier

    work = own_images
    torch.save(resnet18(num_classes=3).state_dict(), work / "weights.pt")
    train_classifier.main(["mine", "--params", "params.yaml"])
    assert "error" not in capsys.readouterr().err
    assert not (work / "data" / "models" / "mine" / "classifier_checkpoints" / "epoch_1.pt").exists()
    assert (work / "plots" / "mine" / "train_classifier" / "live").is_dir()
