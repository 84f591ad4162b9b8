import hashlib

import matplotlib
import numpy as np
import pytest
import yaml

from pipeline.data.shortcuts import Shortcut
from pipeline.data.clever_hans import plant_shortcuts
from pipeline.data.colored_mnist import colorize
from pipeline.data.sources import DatasetUnavailable, check_raw_files, load_source
from pipeline.data.tensors import subsample
from tests.conftest import repo_params

COLORMAPS = ["spring", "summer", "autumn", "winter"]   # colored MNIST: one class per colormap


def gray_digits(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n)


def test_colorize_is_intensity_times_colormap_color():
    gray, digits = gray_digits()
    colormaps = COLORMAPS
    out = colorize(gray, digits, colormaps, np.random.default_rng(1))
    for i in range(len(gray)):
        rgb = matplotlib.colormaps[colormaps[out["labels"][i]]](out["positions"][i])[:3]
        np.testing.assert_allclose(out["colors"][i], rgb, rtol=1e-6)
        expected = np.rint(gray[i][None].astype(np.float32) * np.asarray(rgb, dtype=np.float32)[:, None, None])
        np.testing.assert_array_equal(out["images"][i], expected.astype(np.uint8))
    assert set(out["labels"]) <= set(range(4)) and (out["digits"] == digits).all()


def test_plant_shortcuts_stamps_the_requested_fraction_of_the_class_only():
    gray = np.zeros((200, 28, 28), dtype=np.uint8)
    labels = np.repeat(np.arange(10), 20)
    shortcuts = [Shortcut(label=3, kind="square", fraction=0.5, position=[0, 0], side=3)]
    out = plant_shortcuts(gray, labels, shortcuts, np.random.default_rng(0))
    stamped = out["stamped"][:, 0]
    assert stamped.sum() == 10 and (labels[stamped] == 3).all()
    assert (out["images"][stamped][:, :, :3, :3] == 255).all() and out["images"][~stamped].max() == 0


def test_subsample_is_seeded_and_sorted():
    a = subsample(1000, 50, np.random.default_rng(3))
    b = subsample(1000, 50, np.random.default_rng(3))
    assert (a == b).all() and (np.diff(a) > 0).all() and len(a) == 50
    assert len(subsample(10, None, np.random.default_rng(0))) == 10


def test_missing_source_files_give_a_clear_error(tmp_path):
    with pytest.raises(DatasetUnavailable) as err:
        load_source("mnist", tmp_path, train=True, download=False)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "train-images-idx3-ubyte" in message


def test_real_mnist_files_match_their_idx_headers(mnist_root):
    from torchvision.datasets import MNIST

    from pipeline.data.sources import read_idx_shape

    raw_dir = mnist_root / "MNIST" / "raw"
    check_raw_files(raw_dir, MNIST)
    assert read_idx_shape(raw_dir / "train-images-idx3-ubyte") == (60_000, 28, 28)
    assert read_idx_shape(raw_dir / "t10k-labels-idx1-ubyte") == (10_000,)


def _prepare_hashes(workdir, params_file):
    import os

    from pipeline.stages import prepare

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        hashes = {}
        for dataset in ("colored_mnist", "clever_hans"):
            prepare.main([dataset, "--params", str(params_file)])
            for split in ("train", "test"):
                path = workdir / "data" / "prepared" / dataset / f"{split}.npz"
                hashes[f"{dataset}/{split}"] = hashlib.sha256(path.read_bytes()).hexdigest()
        return hashes
    finally:
        os.chdir(cwd)


def test_generation_is_bit_identical_for_the_same_params(tmp_path, mnist_root):
    params = repo_params({"seed": 5, "device": "cpu", "data": {"root": str(mnist_root), "train_size": 300, "test_size": 100},
                          "attribution": {"n_images": 100}, "counterfactuals": {"n_images": 100}})
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    first = _prepare_hashes(tmp_path / "a", params_file)
    assert first == _prepare_hashes(tmp_path / "b", params_file)
    params["seed"] = 6
    params_file.write_text(yaml.safe_dump(params))
    assert first != _prepare_hashes(tmp_path / "c", params_file)


def test_an_image_is_its_own_exact_counterfactual_and_recoloring_keeps_the_digit():
    import matplotlib

    from pipeline.data.colored_mnist import colorize, exact_counterfactuals

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(6, 28, 28)).astype(np.uint8)
    colormaps = COLORMAPS
    colored = colorize(gray, np.arange(6), colormaps, rng)
    same = exact_counterfactuals(colored["gray"], colored["positions"], colored["labels"], colormaps)
    assert np.array_equal(same, colored["images"])          # into its own class: error 0 against itself
    targets = (colored["labels"] + 1) % len(colormaps)
    moved = exact_counterfactuals(colored["gray"], colored["positions"], targets, colormaps)
    color = matplotlib.colormaps[colormaps[targets[0]]](colored["positions"][0])[:3]
    expected = np.clip(np.rint(gray[0].astype(np.float32)[None] * np.float32(color)[:, None, None]), 0, 255)
    assert np.array_equal(moved[0], expected.astype(np.uint8))   # the same digit, the target colormap, the same position


# --------------------------------------------------------------------------------------------
# an image folder as the source (a user's own images)
# --------------------------------------------------------------------------------------------
def test_an_image_folder_loads_resized_rgb_with_its_folder_names_as_classes(tmp_path):
    from PIL import Image

    from pipeline.data.sources import load_image_folder
    from tests.synthetic_images import CLASSES, write_image_folder

    root = write_image_folder(tmp_path / "shapes", n_train=4, n_test=2, size=40)
    Image.new("L", (10, 20), color=200).save(root / "train" / "plus" / "gray_and_small.png")   # converted and resized
    images, labels, names = load_image_folder(root, train=True, size=32)
    assert names == sorted(CLASSES) and images.shape == (13, 3, 32, 32) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [4, 5, 4]
    small = images[labels == 1][-1]
    assert (small == 200).all()                 # the gray image: three equal channels, resized
    test_images, test_labels, _ = load_image_folder(root, train=False, size=32)
    assert test_images.shape == (6, 3, 32, 32) and np.bincount(test_labels).tolist() == [2, 2, 2]
    gray, gray_labels, _ = load_image_folder(root, train=True, size=32, channels=1)   # channels: 1
    assert gray.shape == (13, 1, 32, 32) and (gray_labels == labels).all() and (gray[labels == 1][-1] == 200).all()


@pytest.mark.parametrize("damage, message", [
    ("no test split", "is not a folder"),
    ("other classes in test", "both splits need the same class folders"),
    ("not an image", "cannot be read as an image"),
    ("empty split", "holds no class folder with images"),
])
def test_a_broken_image_folder_is_named_in_one_sentence(tmp_path, damage, message):
    import shutil

    from pipeline.data.sources import load_image_folder
    from pipeline.storage import InputError
    from tests.synthetic_images import write_image_folder

    root = write_image_folder(tmp_path / "shapes", n_train=2, n_test=1, size=32)
    train = damage not in ("other classes in test", "no test split")
    if damage == "no test split":
        shutil.rmtree(root / "test")
    elif damage == "other classes in test":
        (root / "test" / "ring").rename(root / "test" / "donut")
    elif damage == "not an image":
        (root / "train" / "disk" / "0000.png").write_bytes(b"<html>not found</html>")
    else:
        for folder in (root / "train").iterdir():
            shutil.rmtree(folder)
            folder.mkdir()
    with pytest.raises(InputError, match=message):
        load_image_folder(root, train=train, size=32)


def test_shortcuts_are_planted_on_rgb_images_of_any_size():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 100, size=(30, 3, 64, 48), dtype=np.uint8)
    labels = np.repeat(np.arange(3), 10)
    shortcuts = [Shortcut(label=2, kind="square", fraction=1.0, position=[40, 30], side=16, color=[1.0, 0.0, 0.0])]
    out = plant_shortcuts(images, labels, shortcuts, np.random.default_rng(1))
    assert out["images"].shape == images.shape
    assert out["stamped"][:, 0].tolist() == [False] * 20 + [True] * 10
    assert (out["images"][20:, 0, 40:56, 30:46] == 255).all() and (out["images"][20:, 1:, 40:56, 30:46] == 0).all()
    assert np.array_equal(out["images"][:20], images[:20])
