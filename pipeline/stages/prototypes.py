"""Stage ``prototypes@<dataset>``: MMD-critic prototypes and criticisms of every class, in the classifier's features.

A seeded sample of ``n_per_class`` training images per class goes through the classifier's ``embed``; within each class,
``pipeline.evaluation.mmd_critic`` picks the images that together look like the class (prototypes) and those they represent worst
(criticisms), scored against the known answer beside the class's own base rate
(:func:`pipeline.scoring.proportions.share_over_class_rate`; details.json ``chance``):

- planted shortcuts: the share of picks *without* the shortcut over that share among the class's sampled images (a
  class whose sampled images all carry it or all lack it, as on the negative control, is not judged);
- colored MNIST: the share of picks at either end of their colormap over that share among the class's sampled
  images, and how far a criticism's position lies from its class's nearest prototype against a sampled image's.

Headline: the criticisms' lift (``<figure>_lift``, ``_lift_low``, ``_lift_high``).
"""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch

from pipeline import paths
from pipeline.config import PrototypesParams
from pipeline.data.known_answer import ColorRule, PlantedShortcuts, Unknown
from pipeline.evaluation.mmd_critic import CriticOptions, sample_per_class, select_per_class
from pipeline.models.classifiers import load_classifier, missing_parts
from pipeline.models.inference import embed_images
from pipeline.plotting import image_grid, placeholder_figure
from pipeline.prepared import load_known_answer, load_meta, load_prepared
from pipeline.runtime import stage
from pipeline.scoring.chance import lift_between, not_judged
from pipeline.scoring.proportions import share_over_class_rate
from pipeline.storage import save_figure, write_csv, write_json

STAGE = "prototypes"
KINDS = ("prototype", "criticism")
HEADLINE = {PlantedShortcuts: "criticism_unstamped_share", ColorRule: "criticism_colormap_end_share"}
COLORMAP_END = 0.1  # colored MNIST: a position within this of 0 or 1 is at an end of its colormap (a fifth of uniform draws)
NOTHING_TO_TELL = "no sampled class holds images both with and without the planted shortcut"


def selection_table(selections: dict, sample: np.ndarray, train: dict, class_names: list[str], answer) -> pd.DataFrame:
    """One row per pick: class, kind, rank (pick order), index into the training split, witness, and the known answer
    (``stamped``: carries a planted shortcut; colored MNIST: its ``digit`` and colormap ``position``)."""
    rows = [{"class": class_names[label], "label": label, "kind": kind, "rank": rank, "index": int(sample[row]), "witness": w}
            for label, sel in selections.items()
            for kind, picks, witness in zip(KINDS, (sel.prototypes, sel.criticisms), (sel.prototype_witness, sel.criticism_witness))
            for rank, (row, w) in enumerate(zip(picks.tolist(), witness.tolist()))]
    table = pd.DataFrame(rows, columns=["class", "label", "kind", "rank", "index", "witness"])
    if isinstance(answer, PlantedShortcuts):
        table["stamped"] = train["stamped"][table["index"]].any(1)
    if isinstance(answer, ColorRule):
        table["digit"], table["position"] = train["digits"][table["index"]], train["positions"][table["index"]]
    return table


def planted_figures(table: pd.DataFrame, sample: np.ndarray, train: dict, answer, streams) -> tuple[dict, dict]:
    """Shares of unstamped images among the picks of the shortcut classes and in their sample (raw), and each kind's
    unstamped share over its class's own base rate (lifts)."""
    unstamped, labels = ~train["stamped"][sample].any(1), train["labels"][sample]
    mine = table[table["label"].isin(answer.labels)]
    raw = {f"{kind}_unstamped_share": float((~mine.loc[mine["kind"] == kind, "stamped"].astype(bool)).mean()) for kind in KINDS}
    raw["unstamped_base_rate"] = float(unstamped[np.isin(labels, answer.labels)].mean())
    lifts = {f"{kind}_unstamped_share": share_over_class_rate(
        ~picks["stamped"].to_numpy(bool), picks["label"].to_numpy(), labels, unstamped, streams(kind),
        reason_if_empty=NOTHING_TO_TELL) for kind, picks in table.groupby("kind")}
    return raw, lifts


def colored_mnist_figures(table: pd.DataFrame, sample: np.ndarray, train: dict, streams) -> tuple[dict, dict]:
    """Share at either end of the colormap (picks vs. sample); distance in position to the class's nearest prototype
    (criticisms vs. sampled images): raw, and as lifts over the class's own share and the sampled images' distance."""
    labels, positions = train["labels"][sample], train["positions"][sample]
    at_end = lambda s: np.minimum(s, 1.0 - s) < COLORMAP_END  # noqa: E731
    gaps = {"criticism": [], "sample": []}
    for label, group in table.groupby("label"):
        anchors = group.loc[group["kind"] == "prototype", "position"].to_numpy()
        nearest = lambda s: np.abs(np.asarray(s)[:, None] - anchors[None]).min(1).tolist()  # noqa: E731
        gaps["criticism"] += nearest(group.loc[group["kind"] == "criticism", "position"])
        gaps["sample"] += nearest(positions[labels == label])
    lifts = {f"{kind}_colormap_end_share": share_over_class_rate(at_end(picks["position"].to_numpy()), picks["label"].to_numpy(),
                                                                 labels, at_end(positions), streams(kind))
             for kind, picks in table.groupby("kind")}
    lifts["criticism_position_gap"] = lift_between(torch.tensor(gaps["criticism"]), torch.tensor(gaps["sample"]),
                                                   "the sampled images' gap to their class's nearest prototype",
                                                   streams("position_gap"))
    raw = {f"{kind}_colormap_end_share": float(at_end(table.loc[table["kind"] == kind, "position"].to_numpy()).mean())
           for kind in KINDS}
    return raw | {"colormap_end_base_rate": float(at_end(positions).mean()), "criticism_position_gap": float(np.mean(gaps["criticism"])),
                  "sample_position_gap": float(np.mean(gaps["sample"]))}, lifts


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
        save_figure(fig, paths.pictures_dir(dataset, STAGE) / f"{kind}s.png")


def run(ctx, cfg: PrototypesParams) -> None:
    meta, answer = load_meta(ctx.dataset), load_known_answer(ctx.dataset)
    train = {k: v.numpy() for k, v in load_prepared(ctx.dataset, "train").items()}
    labels = torch.from_numpy(train["labels"])
    sample = sample_per_class(labels, cfg.n_per_class, ctx.generator("sample")).numpy()
    model = load_classifier(paths.classifier_path(ctx.dataset), ctx.device)
    missing = missing_parts(model)
    if "embed" in missing:
        return skip(ctx.dataset, answer, f"the penultimate features are needed: {missing['embed']}")
    features = embed_images(model, torch.from_numpy(train["images"][sample]), cfg.batch_size)
    selections = select_per_class(features, labels[sample].to(features.device), cfg.n_prototypes, cfg.n_criticisms,
                                  CriticOptions(cfg.kernel_bandwidth, cfg.regularize_criticisms))
    table = selection_table(selections, sample, train, meta["class_names"], answer)
    streams = lambda name: ctx.generator(f"chance/{name}")  # noqa: E731
    if isinstance(answer, PlantedShortcuts):
        figures, lifts = planted_figures(table, sample, train, answer, streams)
    elif isinstance(answer, ColorRule):
        figures, lifts = colored_mnist_figures(table, sample, train, streams)
    else:
        figures, lifts = {"skipped_scores": Unknown.reason}, {}
    headline = HEADLINE.get(type(answer))
    write_json(paths.metrics_path(ctx.dataset, STAGE), lifts[headline].metrics(headline) if headline else {})
    write_json(paths.plots_dir(ctx.dataset, STAGE) / "details.json",
               figures | {"chance": {name: lift.to_dict() for name, lift in lifts.items()}})
    write_csv(paths.plots_dir(ctx.dataset, STAGE) / "selection.csv", table.drop(columns="label"))
    save_pictures(ctx.dataset, table, train, meta["class_names"], answer.labels if isinstance(answer, PlantedShortcuts) else [])
    ctx.timer.images = len(sample)
    print(f"[{STAGE}@{ctx.dataset}] {len(sample)} images: " + "; ".join(lift.sentence(name, 3) for name, lift in lifts.items()),
          file=sys.stderr)


def skip(dataset: str, answer, reason: str) -> None:
    """Outputs that say why no prototypes were picked: the headline not judged (null), never 0."""
    out = paths.plots_dir(dataset, STAGE)
    headline = HEADLINE.get(type(answer))
    write_json(paths.metrics_path(dataset, STAGE), not_judged(reason).metrics(headline) if headline else {})
    write_json(out / "details.json", {"skipped": reason})
    write_csv(out / "selection.csv", pd.DataFrame(columns=["class", "kind", "rank", "index", "witness"]))
    for kind in KINDS:
        save_figure(placeholder_figure(f"{dataset}: no {kind}s: {reason}"), paths.pictures_dir(dataset, STAGE) / f"{kind}s.png")
    print(f"[{STAGE}@{dataset}] skipped: {reason}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    with stage(STAGE, argv) as ctx:
        run(ctx, ctx.params.prototypes)


if __name__ == "__main__":
    main()
