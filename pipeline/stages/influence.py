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
"""
from __future__ import annotations

import copy
import sys

import numpy as np
import pandas as pd
import torch

from pipeline import paths
from pipeline.config import PRECISION_AT, InfluenceParams
from pipeline.data.tensors import subsample
from pipeline.prepared import load_meta, load_prepared
from pipeline.models.inference import moved_by_stamp, predict_probabilities
from pipeline.models.classifiers import load_classifier
from pipeline.plotting import image_grid, placeholder_figure
from pipeline.runtime import stage
from pipeline.storage import InputError, load_checkpoint, save_figure, write_csv, write_json
from pipeline.attribution.tracin import Checkpoint, Proponents, TracIn

STAGE = "influence"
HEADLINE = ("proponent_precision_at_10", "proponent_base_rate",    # clever_hans
            "proponent_position_gap", "class_position_gap")        # colored_mnist


def log(dataset: str, message: str) -> None:
    print(f"[{STAGE}@{dataset}] {message}", file=sys.stderr)


def load_checkpoints(dataset: str) -> list[Checkpoint]:
    """Every epoch's weights and mean learning rate, in epoch order."""
    files = sorted(paths.classifier_checkpoint_dir(dataset).glob("epoch_*.pt"), key=lambda f: int(f.stem.split("_")[1]))
    if not files:
        raise InputError(f"{paths.classifier_checkpoint_dir(dataset)} holds no epoch_<k>.pt; run `dvc repro train_classifier@{dataset}`")
    loaded = [load_checkpoint(f, made_by=f"train_classifier@{dataset}") for f in files]
    return [Checkpoint(c["state_dict"], float(c["learning_rate"])) for c in loaded]


def clever_hans_queries(model, test: dict, n_test: int, rng: np.random.Generator) -> dict:
    """Stamped test images of other classes that the stamp moves into the shortcut's class (``images``, their
    ``targets``), and the same images clean with the class predicted for them (``control``)."""
    shortcut, index, _ = moved_by_stamp(model, test)
    keep = torch.as_tensor(subsample(len(index), n_test, rng), device=index.device)
    shortcut, index = shortcut[keep], index[keep]
    clean = test["clean_images"][index]
    return {"test_index": index, "shortcut": shortcut, "images": test["shortcut_images"][shortcut, index],
            "targets": test["shortcut_labels"][shortcut], "true": test["labels"][index],
            "control": {"images": clean, "targets": predict_probabilities(model, clean).argmax(1)}}


def colored_mnist_queries(model, test: dict, n_test: int, rng: np.random.Generator) -> dict:
    """Seeded test images, each for the class the classifier predicts."""
    index = torch.as_tensor(subsample(len(test["labels"]), n_test, rng), device=test["labels"].device)
    images = test["images"][index]
    return {"test_index": index, "images": images, "targets": predict_probabilities(model, images).argmax(1),
            "true": test["labels"][index]}


def proponent_table(found: Proponents, queries: dict, candidates: np.ndarray, train: dict, test: dict) -> pd.DataFrame:
    """One row per (query, rank): the query's test index and class, the proponent's training index, class, score and
    known answer (``stamped``: carries a shortcut; ``position``: colormap position, beside the query's)."""
    n_queries, k = found.indices.shape
    chosen = candidates[found.indices.numpy()]
    test_index = queries["test_index"].cpu().numpy()
    table = pd.DataFrame({"query": np.repeat(np.arange(n_queries), k), "rank": np.tile(np.arange(1, k + 1), n_queries),
                          "test_index": np.repeat(test_index, k),
                          "query_class": np.repeat(queries["targets"].cpu().numpy(), k),
                          "train_index": chosen.ravel(), "train_class": train["labels"][chosen].ravel(),
                          "score": found.scores.numpy().ravel()})
    if "stamped" in train:
        table["stamped"] = train["stamped"][chosen].any(-1).ravel()
    if "positions" in train:
        table["position"] = train["positions"][chosen].ravel()
        table["query_position"] = np.repeat(test["positions"][test_index], k)
    return table


def stamped_shortcut(table: pd.DataFrame, shortcut_labels: list[int]) -> pd.Series:
    """Whether each proponent is a stamped training image of a shortcut's class (the known answer)."""
    return table["stamped"].astype(bool) & table["train_class"].isin(shortcut_labels)


def precision_at(table: pd.DataFrame, k: int, shortcut_labels: list[int]) -> float:
    """Share of the first ``k`` proponents of every query that are stamped training images of a shortcut's class."""
    return float(stamped_shortcut(table[table["rank"] <= k], shortcut_labels).mean())


def clever_hans_metrics(table: pd.DataFrame, control: pd.DataFrame, candidates: np.ndarray, train: dict,
                        shortcut_labels: list[int]) -> dict:
    in_sample = train["stamped"][candidates].any(1) & np.isin(train["labels"][candidates], shortcut_labels)
    top = table[table["rank"] <= PRECISION_AT]
    return {"proponent_precision_at_10": precision_at(table, PRECISION_AT, shortcut_labels),
            "proponent_base_rate": float(in_sample.mean()),
            "clean_control_precision_at_10": precision_at(control, PRECISION_AT, shortcut_labels),
            "proponent_shortcut_class_share": float((top["train_class"] == top["query_class"]).mean()),
            "precision_at_k": {int(k): precision_at(table, k, shortcut_labels) for k in sorted(table["rank"].unique())},
            "n_queries": int(table["query"].nunique())}


def colored_mnist_metrics(table: pd.DataFrame, candidates: np.ndarray, train: dict, queries: dict, test: dict) -> dict:
    top = table[table["rank"] <= PRECISION_AT]
    labels, positions = train["labels"][candidates], train["positions"][candidates]
    query_positions = test["positions"][queries["test_index"].cpu().numpy()]
    class_gaps = [np.abs(positions[labels == c] - p).mean() for c, p in zip(queries["targets"].tolist(), query_positions)]
    return {"proponent_position_gap": float((top["position"] - top["query_position"]).abs().mean()),
            "class_position_gap": float(np.mean(class_gaps)),
            "proponent_same_class_share": float((top["train_class"] == top["query_class"]).mean()),
            "n_queries": int(table["query"].nunique())}


def by_rank(table: pd.DataFrame, figures: dict, meta: dict) -> pd.DataFrame:
    """Per proponent rank, over all queries: Clever Hans the share of stamped shortcut-class images (beside the base
    rate), colored MNIST the mean colormap-position gap to the query (beside the class's)."""
    if "stamped" in table:
        shortcut_labels = sorted({s["label"] for s in meta["shortcuts"]})
        hits = stamped_shortcut(table, shortcut_labels)
        return pd.DataFrame({"rank": sorted(table["rank"].unique()), "stamped_share": hits.groupby(table["rank"]).mean().to_numpy(),
                             "base_rate": figures["proponent_base_rate"]})
    gap = (table["position"] - table["query_position"]).abs()
    return pd.DataFrame({"rank": sorted(table["rank"].unique()), "position_gap": gap.groupby(table["rank"]).mean().to_numpy(),
                         "class_position_gap": figures["class_position_gap"]})


def save_picture(dataset: str, table: pd.DataFrame, queries: dict, train: dict, class_names: list[str], n_show: int) -> None:
    """One row per query (the first ``n_show``): the query (its true class and the one explained), then its
    proponents, strongest first."""
    k = int(table["rank"].max())
    rows = table[table["query"] < n_show]
    images, titles = [], []
    for q, group in rows.groupby("query"):
        first = group.iloc[0]
        images.append(queries["images"][q].cpu().numpy())
        truth = class_names[int(queries["true"][q])] + (f" s={first['query_position']:.2f}" if "query_position" in first else "")
        titles.append(f"test {int(first['test_index'])}: {truth}\nexplained as {class_names[int(first['query_class'])]}")
        for _, p in group.iterrows():
            note = f"s={p['position']:.2f}" if "position" in p else ("stamped" if p["stamped"] else "clean")
            images.append(train["images"][int(p["train_index"])])
            titles.append(f"#{int(p['rank'])} {class_names[int(p['train_class'])]} {note}\nscore {p['score']:.3g}")
    fig = image_grid(np.stack(images), titles, ncols=k + 1,
                     suptitle=f"{dataset}: test images (left) and their TracIn proponents among the training images")
    save_figure(fig, paths.plots_dir(dataset, STAGE) / "proponents.png")


def no_queries(ctx, is_clever_hans: bool, n_train: int) -> None:
    """Every output, saying that no test image qualified (the stamp moves none into its class)."""
    reason = "the stamp moves no test image of another class into the shortcut's class"
    keys = HEADLINE[:2] if is_clever_hans else HEADLINE[2:]
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
    checkpoints = load_checkpoints(ctx.dataset)
    rng = ctx.rng("sample")
    candidates = subsample(len(train["labels"]), cfg.n_train, rng)
    is_clever_hans = "shortcut_images" in test
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
    if is_clever_hans:
        shortcut_labels = sorted({s["label"] for s in meta["shortcuts"]})
        figures = clever_hans_metrics(table, traced(queries["control"]), candidates, train, shortcut_labels)
        figures[f"{scoring[not cfg.normalize]}_precision_at_10"] = precision_at(other, PRECISION_AT, shortcut_labels)
    else:
        figures = colored_mnist_metrics(table, candidates, train, queries, test_positions)
        figures[f"{scoring[not cfg.normalize]}_position_gap"] = colored_mnist_metrics(other, candidates, train, queries,
                                                                                    test_positions)["proponent_position_gap"]
    figures |= {"scoring": scoring[cfg.normalize], "n_train": len(candidates), "n_checkpoints": len(checkpoints)}

    write_json(paths.metrics_path(ctx.dataset, STAGE), {key: figures[key] for key in HEADLINE if key in figures})
    write_json(paths.plots_dir(ctx.dataset, STAGE) / "details.json", figures)
    write_csv(paths.plots_dir(ctx.dataset, STAGE) / "proponents.csv", table)
    write_csv(paths.plots_dir(ctx.dataset, STAGE) / "by_rank.csv", by_rank(table, figures, meta))
    save_picture(ctx.dataset, table, queries, train, meta["class_names"], cfg.n_show)
    ctx.timer.images = len(candidates) * len(checkpoints)   # one forward pass per training image and checkpoint
    log(ctx.dataset, f"{len(queries['images'])} queries, {len(candidates)} training images, {len(checkpoints)} checkpoints: "
        + ", ".join(f"{k} {v:.3f}" for k, v in figures.items() if isinstance(v, float)))


def main(argv: list[str] | None = None) -> None:
    with stage(STAGE, argv) as ctx:
        run(ctx, ctx.params.influence)


if __name__ == "__main__":
    main()
