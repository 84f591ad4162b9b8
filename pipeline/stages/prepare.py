"""Stage ``prepare@<dataset>``: build colored MNIST or Clever Hans MNIST from the source digits, or read your
own image folder as it is (kind ``image_folder``: no known answer)."""
from __future__ import annotations

import sys

import numpy as np

from pipeline import paths
from pipeline.config import DatasetParams, Params, ShortcutParams, fail
from pipeline.data.clever_hans import as_rgb, plant_shortcuts
from pipeline.data.colored_mnist import colorize
from pipeline.data.known_answer import ColorRule, PlantedShortcuts, Unknown
from pipeline.data.sources import load_image_folder, load_source
from pipeline.data.tensors import subsample
from pipeline.plotting import image_grid
from pipeline.runtime import stage
from pipeline.storage import save_arrays, save_figure, write_json

SOURCE_CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"],
}


def load_split(params: Params, entry: DatasetParams, train: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images, labels and class names of one split of the entry's source, cut to ``data.train_size`` /
    ``data.test_size`` (a seeded subset). MNIST-like sources: gray N x H x W; an image folder: N x C x H x W
    (RGB, or gray for an image_folder dataset of 1 channel)."""
    if entry.source == "image_folder":
        images, labels, class_names = load_image_folder(entry.root, train, entry.image_size, entry.n_channels)
        root = entry.root
    else:
        images, labels = load_source(entry.source, params.data.root, train=train, download=params.data.download)
        class_names, root = SOURCE_CLASS_NAMES[entry.source], params.data.root
    key = "train_size" if train else "test_size"
    size = getattr(params.data, key)
    if size is not None and size > len(images):
        fail(f"data.{key}", size, f"at most {len(images)}, the number of {'training' if train else 'test'} images "
             f"under {root}, or null for all of them")
    keep = subsample(len(images), size, rng)
    return images[keep], labels[keep], class_names


def check_every_shortcut_is_planted(labels: np.ndarray, class_names: list[str], shortcuts: list[ShortcutParams],
                                    where: str) -> None:
    """A shortcut must name a class, and with a positive ``fraction`` land on at least one training image of it."""
    for k, shortcut in enumerate(shortcuts):
        if shortcut.label >= len(class_names):
            fail(f"{where}[{k}].label", shortcut.label, f"a class index in 0..{len(class_names) - 1} ({', '.join(class_names)})")
        members = int((labels == shortcut.label).sum())
        if shortcut.fraction > 0 and int(round(shortcut.fraction * members)) == 0:
            if members == 0:
                allowed = f"0, since no training image of class {shortcut.label} is loaded (raise data.train_size)"
            else:
                allowed = (f"0 or at least {1 / members:.3g}, so that one of the {members} training images of class "
                           f"{shortcut.label} carries it (or raise data.train_size)")
            fail(f"{where}[{k}].fraction", shortcut.fraction, allowed)


def build_colored_mnist(params: Params, name: str, rng: np.random.Generator) -> tuple[dict, dict, dict]:
    entry = params.datasets[name]
    train = colorize(*load_split(params, entry, True, rng)[:2], entry.colormaps, rng)
    test = colorize(*load_split(params, entry, False, rng)[:2], entry.colormaps, rng)
    meta = {"class_names": list(entry.colormaps), "n_classes": len(entry.colormaps), "class_is": "colormap",
            "known_answer": ColorRule(tuple(entry.colormaps)).to_meta()}
    return train, test, meta


def build_clever_hans(params: Params, name: str, rng: np.random.Generator) -> tuple[dict, dict, dict]:
    entry = params.datasets[name]
    train_images, train_labels, class_names = load_split(params, entry, True, rng)
    check_every_shortcut_is_planted(train_labels, class_names, entry.shortcuts, f"datasets.{name}.shortcuts")
    train = plant_shortcuts(train_images, train_labels, entry.shortcuts, rng)
    test_images, test_labels, _ = load_split(params, entry, False, rng)
    test = plant_shortcuts(test_images, test_labels, entry.shortcuts, rng)  # same distribution as training
    test["clean_images"] = as_rgb(test_images)   # stages stamp these with the known answer to see what a stamp does
    meta = {
        "class_names": list(class_names),
        "n_classes": len(class_names),
        "class_is": "digit" if entry.source == "mnist" else "class",
        "known_answer": PlantedShortcuts(tuple(entry.shortcuts), train["images"].shape[-2:]).to_meta(),
    }
    return train, test, meta


def build_image_folder(params: Params, name: str, rng: np.random.Generator) -> tuple[dict, dict, dict]:
    entry = params.datasets[name]
    train_images, train_labels, class_names = load_split(params, entry, True, rng)
    test_images, test_labels, _ = load_split(params, entry, False, rng)
    meta = {"class_names": list(class_names), "n_classes": len(class_names), "class_is": "class",
            "known_answer": Unknown().to_meta()}
    return {"images": train_images, "labels": train_labels}, {"images": test_images, "labels": test_labels}, meta


def main(argv: list[str] | None = None) -> None:
    with stage("prepare", argv) as ctx:
        build = {"colored_mnist": build_colored_mnist, "clever_hans": build_clever_hans,
                 "image_folder": build_image_folder}[ctx.kind]
        train, test, meta = build(ctx.params, ctx.dataset, ctx.rng())
        meta.update(dataset=ctx.dataset, kind=ctx.kind, source=ctx.entry.source, n_train=len(train["labels"]), n_test=len(test["labels"]))
        out = paths.prepared_dir(ctx.dataset)
        save_arrays(out / "train.npz", **train)
        save_arrays(out / "test.npz", **test)
        write_json(out / "meta.json", meta)
        save_examples(ctx.dataset, train, meta)
        ctx.timer.images = meta["n_train"] + meta["n_test"]
        print(f"[prepare@{ctx.dataset}] {meta['n_train']} train / {meta['n_test']} test images, "
              f"{meta['n_classes']} classes ({meta['class_is']})", file=sys.stderr)


def save_examples(dataset: str, train: dict, meta: dict, per_class: int = 6) -> None:
    """A grid of training images, ``per_class`` of each class, titled with the class (and digit)."""
    picks = [np.flatnonzero(train["labels"] == c)[:per_class] for c in range(meta["n_classes"])]
    index = np.concatenate(picks)
    names = meta["class_names"]
    titles = []
    for i in index:
        title = names[train["labels"][i]]
        if meta["kind"] == "colored_mnist":
            title += f"\ndigit {train['digits'][i]}"
        elif meta["known_answer"]["kind"] == PlantedShortcuts.kind and train["stamped"][i].any():
            title += "\n(shortcut)"
        titles.append(title)
    fig = image_grid(train["images"][index], titles, ncols=per_class * 2 if meta["kind"] == "colored_mnist" else per_class,
                     suptitle=f"{dataset}: training examples (title = class)")
    save_figure(fig, paths.pictures_dir(dataset, "prepare") / "examples.png")


if __name__ == "__main__":
    main()
