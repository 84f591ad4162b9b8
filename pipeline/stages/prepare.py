"""Stage ``prepare@<dataset>``: build colored MNIST or Clever Hans MNIST from the source digits."""
from __future__ import annotations

import sys

import numpy as np

from pipeline import paths
from pipeline.config import CleverHansParams, Params, fail
from pipeline.data.clever_hans import plant_shortcuts, shortcut_test_sets
from pipeline.data.colored_mnist import colorize
from pipeline.data.sources import load_source
from pipeline.data.tensors import subsample
from pipeline.plotting import image_grid
from pipeline.runtime import stage
from pipeline.storage import save_arrays, save_figure, write_json

SOURCE_CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"],
}


def load_split(params: Params, train: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split, cut to ``data.train_size`` / ``data.test_size`` (a seeded subset)."""
    gray, labels = load_source(params.data.source, params.data.root, train=train, download=params.data.download)
    key = "train_size" if train else "test_size"
    size = getattr(params.data, key)
    if size is not None and size > len(gray):
        fail(f"data.{key}", size, f"at most {len(gray)}, the number of {'training' if train else 'test'} images "
             f"under {params.data.root}, or null for all of them")
    keep = subsample(len(gray), size, rng)
    return gray[keep], labels[keep]


def check_every_shortcut_is_planted(labels: np.ndarray, cfg: CleverHansParams) -> None:
    """A shortcut with a positive ``fraction`` must land on at least one training image of its class."""
    for k, shortcut in enumerate(cfg.shortcuts):
        members = int((labels == shortcut.label).sum())
        if shortcut.fraction > 0 and int(round(shortcut.fraction * members)) == 0:
            if members == 0:
                allowed = f"0, since no training image of class {shortcut.label} is loaded (raise data.train_size)"
            else:
                allowed = (f"0 or at least {1 / members:.3g}, so that one of the {members} training images of class "
                           f"{shortcut.label} carries it (or raise data.train_size)")
            fail(f"clever_hans.shortcuts[{k}].fraction", shortcut.fraction, allowed)


def build_colored_mnist(params: Params, rng: np.random.Generator) -> tuple[dict, dict, dict]:
    cfg = params.colored_mnist
    train = colorize(*load_split(params, True, rng), cfg.colormaps, rng)
    test = colorize(*load_split(params, False, rng), cfg.colormaps, rng)
    meta = {"class_names": list(cfg.colormaps), "n_classes": len(cfg.colormaps), "class_is": "colormap"}
    return train, test, meta


def build_clever_hans(params: Params, rng: np.random.Generator) -> tuple[dict, dict, dict]:
    cfg = params.clever_hans
    train_gray, train_labels = load_split(params, True, rng)
    check_every_shortcut_is_planted(train_labels, cfg)
    train = plant_shortcuts(train_gray, train_labels, cfg.shortcuts, rng)
    test_gray, test_labels = load_split(params, False, rng)
    test = plant_shortcuts(test_gray, test_labels, cfg.shortcuts, rng)  # same distribution as training
    test.update(shortcut_test_sets(test_gray, cfg.shortcuts))
    meta = {
        "class_names": SOURCE_CLASS_NAMES[params.data.source],
        "n_classes": 10,
        "class_is": "digit",
        "shortcuts": [{"label": s.label, "kind": s.kind} for s in cfg.shortcuts],
    }
    return train, test, meta


def main(argv: list[str] | None = None) -> None:
    with stage("prepare", argv) as ctx:
        build = build_colored_mnist if ctx.dataset == "colored_mnist" else build_clever_hans
        train, test, meta = build(ctx.params, ctx.rng())
        meta.update(dataset=ctx.dataset, source=ctx.params.data.source, n_train=len(train["labels"]), n_test=len(test["labels"]))
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
        if dataset == "colored_mnist":
            title += f"\ndigit {train['digits'][i]}"
        elif train["stamped"][i].any():
            title += "\n(shortcut)"
        titles.append(title)
    fig = image_grid(train["images"][index], titles, ncols=per_class * 2 if dataset == "colored_mnist" else per_class,
                     suptitle=f"{dataset}: training examples (title = class)")
    save_figure(fig, paths.plots_dir(dataset, "prepare") / "examples.png")


if __name__ == "__main__":
    main()
