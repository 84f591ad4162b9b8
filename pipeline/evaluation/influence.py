"""Known-answer scoring of TracIn proponents (``pipeline.attribution.tracin``): the query images, one table
row per (query, rank), and the figures that set the proponents against what the data say they should be.

- Planted shortcuts: the *stamped* queries are test images of other classes that the stamp alone moves into the
  shortcut's class; the *clean* queries are clean test images of the shortcut's class that the classifier assigns
  to it. Both are explained for that class. Two figures, each beside its chance level:

  - precision at 10: the share of a query's 10 strongest proponents that carry a shortcut, against the share of
    shortcut-carrying images among the searched training images *of the class the query is assigned to* (the
    class's own base rate: 0.95 when 95 % of a class is stamped), not among all training images: proponents that are
    merely images of the class score the base rate, lift 0;
  - the within-class ranking: per query, the probability that a stamped training image of its class outranks an
    unstamped one of the same class (an AUC over that class's searched training images; chance 0.5, ties count
    half). If the decisions the stamp causes rest on the stamped images, stamped queries rank them higher than
    clean queries of the same class do: the headline is the lift of the stamped queries' mean AUC over the clean
    queries', two independent groups each resampled.

  Where the class has no searched training image with the shortcut (the negative control) or no image without
  it, neither figure can say anything: not judged, with the reason.
- Colored MNIST: the class is the colormap and an image's color its position along it, so a proponent should
  sit near the query on its colormap. Per query, the closeness ``1 - |position difference|`` of its 10 strongest
  proponents against the same for every searched training image of the predicted class.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

from pipeline.attribution.scores import average_ranks
from pipeline.attribution.tracin import Proponents, TracIn
from pipeline.data.tensors import subsample
from pipeline.models.inference import moved_by_stamp, predict_probabilities
from pipeline.plotting import image_grid
from pipeline.scoring.chance import Lift, lift_between, lift_over_chance
from pipeline.scoring.proportions import class_base_rates, share_over_class_rate

CLASS_BASE_RATE = "the share of shortcut-carrying images among the searched training images of the query's class"
COIN = "0.5: the class's stamped and unstamped images in random order"
CLASS_CLOSENESS = "every searched training image of the predicted class"
NO_BASE_RATE = ("no searched training image of the query's class carries a shortcut, or every one does: a stamped "
                "proponent says nothing beyond its class")
NO_RANKING = "the query's class has no stamped or no unstamped training image among those searched"


def planted_queries(model, test: dict, answer, n_test: int, rng: np.random.Generator) -> dict:
    """{"stamped": ..., "clean": ...} query groups, each {"test_index", "images", "targets", "true"}: up to ``n_test``
    test images of other classes that the stamp alone moves into its shortcut's class (stamped, for that class), and
    up to ``n_test`` clean test images of a shortcut's class that the classifier assigns to it (for that class).
    ``answer``: the :class:`~pipeline.data.known_answer.PlantedShortcuts`."""
    clean, labels = test["clean_images"], test["labels"]
    shortcut, index, _ = moved_by_stamp(model, test, answer)
    keep = torch.as_tensor(subsample(len(index), n_test, rng), device=index.device)
    shortcut, index = shortcut[keep], index[keep]
    images = clean[index].clone()
    for k in range(len(answer.shortcuts)):
        rows = shortcut == k
        images[rows] = answer.stamp_tensor(images[rows], k)
    shortcut_labels = torch.as_tensor(answer.labels, dtype=labels.dtype, device=labels.device)
    stamped = {"test_index": index, "images": images, "targets": shortcut_labels[shortcut], "true": labels[index]}
    own = torch.isin(labels, shortcut_labels) & (predict_probabilities(model, clean).argmax(1).to(labels.device) == labels)
    candidates = torch.nonzero(own).flatten()
    chosen = candidates[torch.as_tensor(subsample(len(candidates), n_test, rng), device=candidates.device)]
    return {"stamped": stamped,
            "clean": {"test_index": chosen, "images": clean[chosen], "targets": labels[chosen], "true": labels[chosen]}}


def colored_mnist_queries(model, test: dict, n_test: int, rng: np.random.Generator) -> dict:
    """Seeded test images, each for the class the classifier predicts."""
    index = torch.as_tensor(subsample(len(test["labels"]), n_test, rng), device=test["labels"].device)
    images = test["images"][index]
    return {"test_index": index, "images": images, "targets": predict_probabilities(model, images).argmax(1),
            "true": test["labels"][index]}


def trace(tracin: TracIn, query: dict, top_k: int, normalize: bool) -> tuple[Proponents, torch.Tensor]:
    """The ``top_k`` proponents of each query image for its target, and the TracIn scores [Q, N] of every searched
    training image; empty (0 rows) for a group without any query."""
    if len(query["images"]) == 0:
        return Proponents(torch.zeros(0, top_k, dtype=torch.long), torch.zeros(0, top_k)), torch.zeros(0, tracin.n_train)
    return (tracin.proponents(query["images"], query["targets"], top_k, normalize),
            tracin.scores(query["images"], query["targets"], normalize))


def proponent_table(found: Proponents, queries: dict, candidates: np.ndarray, train_labels: np.ndarray,
                    carries: np.ndarray | None = None, positions: tuple[np.ndarray, np.ndarray] | None = None) -> pd.DataFrame:
    """One row per (query, rank): the query's test index and class, the proponent's training index, class, score and
    known answer: ``stamped`` (``carries``: per training image, whether it carries a shortcut) or ``position`` beside
    the query's (``positions``: the colormap positions of the training and of the test images)."""
    n_queries, k = found.indices.shape
    chosen = candidates[found.indices.numpy()]
    test_index = queries["test_index"].cpu().numpy()
    table = pd.DataFrame({"query": np.repeat(np.arange(n_queries), k), "rank": np.tile(np.arange(1, k + 1), n_queries),
                          "test_index": np.repeat(test_index, k),
                          "query_class": np.repeat(queries["targets"].cpu().numpy(), k),
                          "train_index": chosen.ravel(), "train_class": train_labels[chosen].ravel(),
                          "score": found.scores.numpy().ravel()})
    if carries is not None:
        table["stamped"] = carries[chosen].ravel()
    if positions is not None:
        table["position"] = positions[0][chosen].ravel()
        table["query_position"] = np.repeat(positions[1][test_index], k)
    return table


# ----------------------------------------------------------------------------------------------
# Planted shortcuts
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Traced:
    """One query group traced: its proponent table, the TracIn scores [Q, N] of every searched training image, and
    the class each query is explained for [Q]."""

    table: pd.DataFrame
    scores: torch.Tensor
    targets: np.ndarray


def per_query_share(table: pd.DataFrame, at: int, column: str = "stamped") -> np.ndarray:
    """[Q] per query (in query order): the share of its first ``at`` proponents for which ``column`` holds."""
    top = table[table["rank"] <= at]
    return top[column].astype(float).groupby(top["query"]).mean().sort_index().to_numpy(copy=True)


def within_class_auc(scores: torch.Tensor, targets: np.ndarray, labels: np.ndarray, carries: np.ndarray) -> torch.Tensor:
    """[Q]: per query, the probability that a shortcut-carrying training image of its class scores above one of the
    same class without (ties count half): a Mann-Whitney AUC over that class's columns of ``scores`` [Q, N]. NaN
    where the class has no image with, or none without, the shortcut."""
    scores = scores.cpu()
    auc = torch.full((len(targets),), float("nan"), dtype=torch.float64)
    for c in np.unique(targets):
        columns = labels == c
        positive = torch.from_numpy(carries[columns])
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        rows = torch.from_numpy(np.flatnonzero(targets == c))
        ranks = average_ranks(scores[rows][:, torch.from_numpy(np.flatnonzero(columns))]).double()
        auc[rows] = (ranks[:, positive].sum(1) - n_pos * (n_pos - 1) / 2) / (n_pos * n_neg)
    return auc


def precision_lift(table: pd.DataFrame, targets: np.ndarray, labels: np.ndarray, carries: np.ndarray, at: int,
                   generator: torch.Generator) -> Lift:
    """Per query, the share of its first ``at`` proponents that carry a shortcut, over its class's own base rate among
    the searched training images ``labels``, ``carries`` (:func:`pipeline.scoring.proportions.class_base_rates`)."""
    return share_over_class_rate(per_query_share(table, at), targets, labels, carries, generator, CLASS_BASE_RATE,
                                 NO_BASE_RATE)


def planted_lifts(groups: dict[str, Traced], labels: np.ndarray, carries: np.ndarray, at: int,
                  streams: Callable[[str], torch.Generator]) -> dict[str, Lift]:
    """The figures of ``groups`` {"stamped", "clean"} against the known answer, each beside its chance level."""
    auc = {g: within_class_auc(t.scores, t.targets, labels, carries) for g, t in groups.items()}
    lifts = {f"{'proponent' if g == 'stamped' else 'clean_query'}_precision_at_{at}":
             precision_lift(t.table, t.targets, labels, carries, at, streams(f"precision_{g}")) for g, t in groups.items()}
    for g in groups:
        lifts[f"within_class_auc_{g}"] = lift_over_chance(auc[g], {COIN: 0.5}, streams(f"auc_{g}"), reason_if_empty=NO_RANKING)
    lifts["within_class_auc"] = lift_between(auc["stamped"], auc["clean"], "the clean queries of the same class",
                                             streams("auc_between"), reason_if_empty=NO_RANKING)
    return lifts


def planted_figures(stamped: Traced, labels: np.ndarray, carries: np.ndarray, at: int) -> dict:
    """Raw figures of the stamped queries beside the lifts: precision at every rank, the mean class base rate and the
    share of the first ``at`` proponents that are of the query's class."""
    table = stamped.table
    top = table[table["rank"] <= at]
    precision = table["stamped"].astype(float).groupby(table["rank"]).mean()
    base = class_base_rates(stamped.targets, labels, carries)
    return {"precision_at_k": {int(k): float(v) for k, v in precision.items()},
            "class_base_rate": float(np.nanmean(base)) if np.isfinite(base).any() else float("nan"),
            "proponent_shortcut_class_share": float((top["train_class"] == top["query_class"]).mean()),
            "n_queries": int(table["query"].nunique())}


# ----------------------------------------------------------------------------------------------
# Colored MNIST
# ----------------------------------------------------------------------------------------------
def colored_mnist_figures(table: pd.DataFrame, labels: np.ndarray, positions: np.ndarray, query_positions: np.ndarray,
                          at: int, generator: torch.Generator) -> tuple[dict, Lift]:
    """The raw figures (the mean colormap-position gap between each query and its first ``at`` proponents, the same
    to every searched training image of the predicted class, the share of proponents of the query's class) and the
    proponents' closeness ``1 - gap`` per query as a lift over the class's own."""
    top = table[table["rank"] <= at]
    gap = (top["position"] - top["query_position"]).abs().groupby(top["query"]).mean().sort_index().to_numpy()
    targets = top.groupby("query")["query_class"].first().sort_index().to_numpy()
    class_gap = np.array([np.abs(positions[labels == c] - p).mean() if (labels == c).any() else np.nan
                          for c, p in zip(targets, query_positions)])
    lift = lift_over_chance(torch.from_numpy(1.0 - gap), {CLASS_CLOSENESS: torch.from_numpy(1.0 - class_gap)}, generator,
                            reason_if_empty="no query with a searched training image of its predicted class")
    return {"proponent_position_gap": float(gap.mean()) if len(gap) else float("nan"),
            "class_position_gap": float(np.nanmean(class_gap)) if np.isfinite(class_gap).any() else float("nan"),
            "proponent_same_class_share": float((top["train_class"] == top["query_class"]).mean()),
            "n_queries": int(table["query"].nunique())}, lift


def by_rank(table: pd.DataFrame, figures: dict) -> pd.DataFrame:
    """Per proponent rank, over all queries: planted shortcuts the share of proponents that carry one (beside the mean
    class base rate), colored MNIST the mean colormap-position gap to the query (beside the class's); without a
    known answer, the share of proponents of the query's class and the mean score."""
    ranks = sorted(table["rank"].unique())
    if "stamped" in table:
        return pd.DataFrame({"rank": ranks, "stamped_share": table["stamped"].astype(float).groupby(table["rank"]).mean().to_numpy(),
                             "base_rate": figures["class_base_rate"]})
    if "position" in table:
        gap = (table["position"] - table["query_position"]).abs()
        return pd.DataFrame({"rank": ranks, "position_gap": gap.groupby(table["rank"]).mean().to_numpy(),
                             "class_position_gap": figures["class_position_gap"]})
    same = (table["train_class"] == table["query_class"]).groupby(table["rank"]).mean()
    return pd.DataFrame({"rank": ranks, "same_class_share": same.to_numpy(),
                         "mean_score": table["score"].groupby(table["rank"]).mean().to_numpy()})


def proponents_figure(table: pd.DataFrame, queries: dict, train_images: np.ndarray, class_names: list[str], n_show: int,
                      dataset: str):
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
            images.append(train_images[int(p["train_index"])])
            titles.append(f"#{int(p['rank'])} {class_names[int(p['train_class'])]} {note}\nscore {p['score']:.3g}")
    return image_grid(np.stack(images), titles, ncols=k + 1,
                      suptitle=f"{dataset}: test images (left) and their TracIn proponents among the training images")
