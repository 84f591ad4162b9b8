"""Stage ``influence@<dataset>``: the training images that most supported a decision (TracIn proponents).

The classifier's checkpoints after every epoch (kept by ``train_classifier@<D>``) feed TracIn on the final
layer (``pipeline.attribution.tracin``; gradient cosines when ``normalize``); each query image gets its ``top_k``
proponents among a seeded sample of ``n_train`` training images, for the class the classifier predicts. The
known answer:

- Clever Hans: the queries are test images of other classes that the stamp alone moves into the shortcut's
  class. What supports "7" there should be the *stamped* 7s of the training set, so
  ``proponent_precision_at_10`` (share of the first 10 proponents that are stamped images of the shortcut's
  class) is set against ``proponent_base_rate`` (their share of the training sample). The same images without
  the stamp, explained for what the classifier predicts then, are the control.
- Colored MNIST: the class is the colormap and an image's color its position along it, so a proponent should
  sit near the query on its colormap: ``proponent_position_gap`` (mean |position difference| to the first 10
  proponents) against ``class_position_gap`` (the same to every sampled training image of the predicted class).
- Your own images (no known answer): seeded test images for their predicted class; nothing is scored, the
  proponents are shown. A classifier trained elsewhere has no per-epoch weights: the stage says so and skips.
"""
from __future__ import annotations

import copy
import sys

import pandas as pd
import torch

from pipeline import paths
from pipeline.attribution.tracin import Checkpoint, TracIn
from pipeline.config import PRECISION_AT, InfluenceParams
from pipeline.data.tensors import subsample
from pipeline.evaluation.influence import (by_rank, clever_hans_metrics, clever_hans_queries, colored_mnist_metrics,
                                           colored_mnist_queries, precision_at, proponent_table, proponents_figure)
from pipeline.models.classifiers import load_classifier, missing_parts
from pipeline.plotting import placeholder_figure
from pipeline.prepared import load_meta, load_prepared
from pipeline.runtime import stage
from pipeline.storage import InputError, load_checkpoint, save_figure, write_csv, write_json

STAGE = "influence"
HEADLINE = ("proponent_precision_at_10", "proponent_base_rate",    # clever_hans
            "proponent_position_gap", "class_position_gap")        # colored_mnist


def log(dataset: str, message: str) -> None:
    print(f"[{STAGE}@{dataset}] {message}", file=sys.stderr)


def load_checkpoints(dataset: str, trained_here: bool) -> list[Checkpoint]:
    """Every epoch's weights and mean learning rate, in epoch order (none for a classifier trained elsewhere)."""
    files = sorted(paths.classifier_checkpoint_dir(dataset).glob("epoch_*.pt"), key=lambda f: int(f.stem.split("_")[1]))
    if not files and trained_here:
        raise InputError(f"{paths.classifier_checkpoint_dir(dataset)} holds no epoch_<k>.pt; run `dvc repro train_classifier@{dataset}`")
    loaded = [load_checkpoint(f, made_by=f"train_classifier@{dataset}") for f in files]
    return [Checkpoint(c["state_dict"], float(c["learning_rate"])) for c in loaded]


def no_queries(ctx, is_clever_hans: bool, n_train: int,
               reason: str = "the stamp moves no test image of another class into the shortcut's class") -> None:
    """Every output, saying that no test image qualified (the stamp moves none into its class), or why none was traced."""
    keys = HEADLINE[:2] if is_clever_hans else HEADLINE[2:] if ctx.entry.known_answer else ()
    write_json(paths.metrics_path(ctx.dataset, STAGE), dict.fromkeys(keys))
    write_json(paths.plots_dir(ctx.dataset, STAGE) / "details.json", {"n_queries": 0, "n_train": n_train, "reason": reason})
    write_csv(paths.plots_dir(ctx.dataset, STAGE) / "proponents.csv", pd.DataFrame(columns=["query", "rank", "score"]))
    write_csv(paths.plots_dir(ctx.dataset, STAGE) / "by_rank.csv", pd.DataFrame(columns=["rank"]))
    save_figure(placeholder_figure(f"No query: {reason}."), paths.plots_dir(ctx.dataset, STAGE) / "proponents.png")
    log(ctx.dataset, f"no query: {reason}")


def run(ctx, cfg: InfluenceParams) -> None:
    meta = load_meta(ctx.dataset)
    train = {k: v.numpy() for k, v in load_prepared(ctx.dataset, "train").items()}
    test = load_prepared(ctx.dataset, "test", ctx.device)
    test_positions = {"positions": test["positions"].cpu().numpy()} if "positions" in test else {}
    classifier = load_classifier(paths.classifier_path(ctx.dataset), ctx.device)
    checkpoints = load_checkpoints(ctx.dataset, ctx.entry.trains_classifier)
    rng = ctx.rng("sample")
    candidates = subsample(len(train["labels"]), cfg.n_train, rng)
    is_clever_hans = "shortcut_images" in test
    missing = missing_parts(classifier)
    if not checkpoints or "head" in missing:
        reason = missing.get("head", "TracIn needs the weights after every training epoch, and a "
                                               "classifier trained elsewhere comes without them")
        return no_queries(ctx, is_clever_hans, len(candidates), reason)
    shortcut_labels = sorted({s["label"] for s in meta["shortcuts"]}) if is_clever_hans else []
    queries = (clever_hans_queries if is_clever_hans else colored_mnist_queries)(classifier, test, cfg.n_test, rng)
    if len(queries["images"]) == 0:
        return no_queries(ctx, is_clever_hans, len(candidates))

    train_images, train_labels = torch.from_numpy(train["images"][candidates]), torch.from_numpy(train["labels"][candidates])
    model = copy.deepcopy(classifier)   # TracIn loads each checkpoint into it
    tracin = TracIn(model, model.head, checkpoints, train_images, train_labels, cfg.batch_size)

    def traced(query: dict, normalize: bool = cfg.normalize) -> pd.DataFrame:
        found = tracin.proponents(query["images"], query["targets"], cfg.top_k, normalize)
        return proponent_table(found, queries | query, candidates, train, test_positions)

    table, other = traced(queries), traced(queries, not cfg.normalize)   # the other scoring, for comparison
    scoring = {True: "normalized", False: "unnormalized"}
    if ctx.entry.known_answer is None:
        figures = {"skipped_scores": ctx.entry.NO_ANSWER}
    elif is_clever_hans:
        figures = clever_hans_metrics(table, traced(queries["control"]), candidates, train, shortcut_labels, PRECISION_AT)
        figures[f"{scoring[not cfg.normalize]}_precision_at_10"] = precision_at(other, PRECISION_AT, shortcut_labels)
    else:
        figures = colored_mnist_metrics(table, candidates, train, queries, test_positions, PRECISION_AT)
        figures[f"{scoring[not cfg.normalize]}_position_gap"] = colored_mnist_metrics(
            other, candidates, train, queries, test_positions, PRECISION_AT)["proponent_position_gap"]
    figures |= {"scoring": scoring[cfg.normalize], "n_train": len(candidates), "n_checkpoints": len(checkpoints)}

    write_json(paths.metrics_path(ctx.dataset, STAGE), {key: figures[key] for key in HEADLINE if key in figures})
    write_json(paths.plots_dir(ctx.dataset, STAGE) / "details.json", figures)
    write_csv(paths.plots_dir(ctx.dataset, STAGE) / "proponents.csv", table)
    write_csv(paths.plots_dir(ctx.dataset, STAGE) / "by_rank.csv", by_rank(table, figures, shortcut_labels))
    save_figure(proponents_figure(table, queries, train, meta["class_names"], cfg.n_show, ctx.dataset),
                paths.plots_dir(ctx.dataset, STAGE) / "proponents.png")
    ctx.timer.images = len(candidates) * len(checkpoints)   # one forward pass per training image and checkpoint
    log(ctx.dataset, f"{len(queries['images'])} queries, {len(candidates)} training images, {len(checkpoints)} checkpoints: "
        + ", ".join(f"{k} {v:.3f}" for k, v in figures.items() if isinstance(v, float)))


def main(argv: list[str] | None = None) -> None:
    with stage(STAGE, argv) as ctx:
        run(ctx, ctx.params.influence)


if __name__ == "__main__":
    main()
