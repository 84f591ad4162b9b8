"""Stage ``prototypes@<dataset>``: MMD-critic prototypes and criticisms of every class, in the classifier's features.

A seeded sample of ``n_per_class`` training images per class goes through the classifier's ``embed``; within each class,
``pipeline.evaluation.mmd_critic`` picks the images that together look like the class (prototypes) and those they represent worst
(criticisms), scored against the known answer (:func:`clever_hans_metrics`, :func:`colored_mnist_metrics`).
"""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch

from pipeline import paths
from pipeline.config import PrototypesParams
from pipeline.prepared import load_meta, load_prepared
from pipeline.models.inference import embed_images
from pipeline.models.classifiers import load_classifier, missing_parts
from pipeline.plotting import image_grid, placeholder_figure
from pipeline.evaluation.mmd_critic import CriticOptions, sample_per_class, select_per_class
from pipeline.runtime import stage
from pipeline.storage import save_figure, write_csv, write_json

STAGE = "prototypes"
KINDS = ("prototype", "criticism")
HEADLINE = ("criticism_unstamped_share", "unstamped_base_rate",            # clever_hans
            "criticism_colormap_end_share", "colormap_end_base_rate")      # colored_mnist
COLORMAP_END = 0.1  # colored MNIST: a position within this of 0 or 1 is at an end of its colormap (a fifth of uniform draws)


def selection_table(selections: dict, sample: np.ndarray, train: dict, class_names: list[str]) -> pd.DataFrame:
    """One row per pick: class, kind, rank (pick order), index into the training split, witness, and the known answer."""
    rows = [{"class": class_names[label], "label": label, "kind": kind, "rank": rank, "index": int(sample[row]), "witness": w}
            for label, sel in selections.items()
            for kind, picks, witness in zip(KINDS, (sel.prototypes, sel.criticisms), (sel.prototype_witness, sel.criticism_witness))
            for rank, (row, w) in enumerate(zip(picks.tolist(), witness.tolist()))]
    table = pd.DataFrame(rows, columns=["class", "label", "kind", "rank", "index", "witness"])
    if "stamped" in train:
        table["stamped"] = train["stamped"][table["index"]].any(1)
    if "positions" in train:
        table["digit"], table["position"] = train["digits"][table["index"]], train["positions"][table["index"]]
    return table


def clever_hans_metrics(table: pd.DataFrame, sample: np.ndarray, train: dict, shortcut_labels: list[int]) -> dict:
    """Shares of unstamped images among the picks of the shortcut classes, beside that share in their sample."""
    mine = table[table["label"].isin(shortcut_labels)]
    unstamped = lambda kind: float((~mine.loc[mine["kind"] == kind, "stamped"].astype(bool)).mean())  # noqa: E731
    in_sample = sample[np.isin(train["labels"][sample], shortcut_labels)]
    return {"criticism_unstamped_share": unstamped("criticism"), "prototype_unstamped_share": unstamped("prototype"),
            "unstamped_base_rate": float((~train["stamped"][in_sample].any(1)).mean())}


def colored_mnist_metrics(table: pd.DataFrame, sample: np.ndarray, train: dict) -> dict:
    """Share at either end of the colormap (picks vs. sample); distance in position to the class's nearest prototype."""
    labels, positions = train["labels"][sample], train["positions"][sample]
    at_end = lambda s: float((np.minimum(s, 1.0 - s) < COLORMAP_END).mean())  # noqa: E731
    of = lambda kind: table.loc[table["kind"] == kind, "position"].to_numpy()  # noqa: E731
    gaps = {"criticism": [], "sample": []}
    for label, group in table.groupby("label"):
        anchors = group.loc[group["kind"] == "prototype", "position"].to_numpy()
        nearest = lambda s: np.abs(np.asarray(s)[:, None] - anchors[None]).min(1).tolist()  # noqa: E731
        gaps["criticism"] += nearest(group.loc[group["kind"] == "criticism", "position"])
        gaps["sample"] += nearest(positions[labels == label])
    return {"criticism_colormap_end_share": at_end(of("criticism")), "prototype_colormap_end_share": at_end(of("prototype")),
            "colormap_end_base_rate": at_end(positions),
            "criticism_position_gap": float(np.mean(gaps["criticism"])), "sample_position_gap": float(np.mean(gaps["sample"]))}


def save_pictures(dataset: str, table: pd.DataFrame, train: dict, class_names: list[str], shortcut_labels: list[int]) -> None:
    """One picture per kind, a row per class in pick order; short rows (a small class) are padded with blanks."""
    labels = sorted(table["label"].unique())
    for kind in KINDS:
        picks = table[table["kind"] == kind]
        width = int(picks["rank"].max()) + 1 if len(picks) else 1
        images, titles = np.full((len(labels) * width, *train["images"].shape[1:]), 255, dtype=np.uint8), [""] * (len(labels) * width)
        for _, p in picks.iterrows():
            cell = labels.index(p["label"]) * width + int(p["rank"])
            images[cell] = train["images"][p["index"]]
            note = f"digit {p['digit']} s={p['position']:.2f}" if "position" in p else \
                ("stamped" if p["stamped"] else "unstamped") if p["label"] in shortcut_labels else ""
            titles[cell] = f"{class_names[p['label']]} #{p['rank']}" + (f" w={p['witness']:+.3f}" if kind == "criticism" else "") + f"\n{note}"
        fig = image_grid(images, titles, ncols=width, suptitle=f"{dataset}: MMD-critic {kind}s of each class (row), in pick order")
        save_figure(fig, paths.plots_dir(dataset, STAGE) / f"{kind}s.png")


def run(ctx, cfg: PrototypesParams) -> None:
    meta = load_meta(ctx.dataset)
    train = {k: v.numpy() for k, v in load_prepared(ctx.dataset, "train").items()}
    labels = torch.from_numpy(train["labels"])
    sample = sample_per_class(labels, cfg.n_per_class, ctx.generator("sample")).numpy()
    model = load_classifier(paths.classifier_path(ctx.dataset), ctx.device)
    missing = missing_parts(model)
    if "embed" in missing:
        return skip(ctx.dataset, f"the penultimate features are needed: {missing['embed']}")
    features = embed_images(model, torch.from_numpy(train["images"][sample]), cfg.batch_size)
    selections = select_per_class(features, labels[sample].to(features.device), cfg.n_prototypes, cfg.n_criticisms,
                                  CriticOptions(cfg.kernel_bandwidth, cfg.regularize_criticisms))
    table = selection_table(selections, sample, train, meta["class_names"])
    shortcut_labels = sorted({s["label"] for s in meta.get("shortcuts", [])})
    if "stamped" in train:
        figures = clever_hans_metrics(table, sample, train, shortcut_labels)
    else:
        figures = colored_mnist_metrics(table, sample, train) if "positions" in train else {}
    metrics = {key: figures[key] for key in HEADLINE if key in figures}  # the rest beside it, in details.json
    write_json(paths.metrics_path(ctx.dataset, STAGE), metrics)
    write_json(paths.plots_dir(ctx.dataset, STAGE) / "details.json",
               figures if figures else {"skipped_scores": ctx.entry.NO_ANSWER})
    write_csv(paths.plots_dir(ctx.dataset, STAGE) / "selection.csv", table.drop(columns="label"))
    save_pictures(ctx.dataset, table, train, meta["class_names"], shortcut_labels)
    ctx.timer.images = len(sample)
    print(f"[{STAGE}@{ctx.dataset}] {len(sample)} images: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()), file=sys.stderr)


def skip(dataset: str, reason: str) -> None:
    """Outputs that say why no prototypes were picked."""
    out = paths.plots_dir(dataset, STAGE)
    write_json(paths.metrics_path(dataset, STAGE), {})
    write_json(out / "details.json", {"skipped": reason})
    write_csv(out / "selection.csv", pd.DataFrame(columns=["class", "kind", "rank", "index", "witness"]))
    for kind in KINDS:
        save_figure(placeholder_figure(f"{dataset}: no {kind}s: {reason}"), out / f"{kind}s.png")
    print(f"[{STAGE}@{dataset}] skipped: {reason}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    with stage(STAGE, argv) as ctx:
        run(ctx, ctx.params.prototypes)


if __name__ == "__main__":
    main()
