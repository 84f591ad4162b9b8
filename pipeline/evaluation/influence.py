"""Known-answer scoring of TracIn proponents (``pipeline.attribution.tracin``): the query images, one table
row per (query, rank), and the figures that set the proponents against what the data say they should be.

- Clever Hans: the queries are test images of other classes that the stamp alone moves into the shortcut's
  class. What supports "7" there should be the *stamped* 7s of the training set, so the precision (share of
  the first proponents that are stamped images of the shortcut's class) is set against the base rate (their
  share of the training sample). The same images without the stamp, explained for what the classifier
  predicts then, are the control.
- Colored MNIST: the class is the colormap and an image's color its position along it, so a proponent should
  sit near the query on its colormap: the proponents' mean |position difference| to the query against the
  same to every sampled training image of the predicted class.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from pipeline.attribution.tracin import Proponents
from pipeline.data.tensors import subsample
from pipeline.models.inference import moved_by_stamp, predict_probabilities
from pipeline.plotting import image_grid


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
                        shortcut_labels: list[int], at: int) -> dict:
    """Precision at ``at`` of the proponents and of the clean control's, the base rate of the training sample,
    the share of proponents of the query's class and the precision at every rank."""
    in_sample = train["stamped"][candidates].any(1) & np.isin(train["labels"][candidates], shortcut_labels)
    top = table[table["rank"] <= at]
    return {f"proponent_precision_at_{at}": precision_at(table, at, shortcut_labels),
            "proponent_base_rate": float(in_sample.mean()),
            f"clean_control_precision_at_{at}": precision_at(control, at, shortcut_labels),
            "proponent_shortcut_class_share": float((top["train_class"] == top["query_class"]).mean()),
            "precision_at_k": {int(k): precision_at(table, k, shortcut_labels) for k in sorted(table["rank"].unique())},
            "n_queries": int(table["query"].nunique())}


def colored_mnist_metrics(table: pd.DataFrame, candidates: np.ndarray, train: dict, queries: dict, test: dict,
                          at: int) -> dict:
    """The mean colormap-position gap between each query and its first ``at`` proponents, the same to every sampled
    training image of the predicted class, and the share of proponents of the query's class."""
    top = table[table["rank"] <= at]
    labels, positions = train["labels"][candidates], train["positions"][candidates]
    query_positions = test["positions"][queries["test_index"].cpu().numpy()]
    class_gaps = [np.abs(positions[labels == c] - p).mean() for c, p in zip(queries["targets"].tolist(), query_positions)]
    return {"proponent_position_gap": float((top["position"] - top["query_position"]).abs().mean()),
            "class_position_gap": float(np.mean(class_gaps)),
            "proponent_same_class_share": float((top["train_class"] == top["query_class"]).mean()),
            "n_queries": int(table["query"].nunique())}


def by_rank(table: pd.DataFrame, figures: dict, shortcut_labels: list[int]) -> pd.DataFrame:
    """Per proponent rank, over all queries: Clever Hans the share of stamped shortcut-class images (beside the base
    rate), colored MNIST the mean colormap-position gap to the query (beside the class's); without a known answer,
    the share of proponents of the query's class and the mean score."""
    if "stamped" not in table and "position" not in table:
        same = (table["train_class"] == table["query_class"]).groupby(table["rank"]).mean()
        return pd.DataFrame({"rank": same.index.to_numpy(), "same_class_share": same.to_numpy(),
                             "mean_score": table["score"].groupby(table["rank"]).mean().to_numpy()})
    if "stamped" in table:
        hits = stamped_shortcut(table, shortcut_labels)
        return pd.DataFrame({"rank": sorted(table["rank"].unique()), "stamped_share": hits.groupby(table["rank"]).mean().to_numpy(),
                             "base_rate": figures["proponent_base_rate"]})
    gap = (table["position"] - table["query_position"]).abs()
    return pd.DataFrame({"rank": sorted(table["rank"].unique()), "position_gap": gap.groupby(table["rank"]).mean().to_numpy(),
                         "class_position_gap": figures["class_position_gap"]})


def proponents_figure(table: pd.DataFrame, queries: dict, train: dict, class_names: list[str], n_show: int, dataset: str):
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
            note = f"s={p['position']:.2f}" if "position" in p else \
                ("stamped" if p["stamped"] else "clean") if "stamped" in p else ""
            images.append(train["images"][int(p["train_index"])])
            titles.append(f"#{int(p['rank'])} {class_names[int(p['train_class'])]} {note}\nscore {p['score']:.3g}")
    return image_grid(np.stack(images), titles, ncols=k + 1,
                      suptitle=f"{dataset}: test images (left) and their TracIn proponents among the training images")
