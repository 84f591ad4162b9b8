"""Stage ``influence@<dataset>``: the training images that most supported a decision (TracIn proponents).

The classifier's checkpoints after every epoch (kept by ``train_classifier@<D>``) feed TracIn on the final
layer (``pipeline.attribution.tracin``; gradient cosines when ``normalize``); each query image gets its ``top_k``
proponents among a seeded sample of ``n_train`` training images, for the class it is explained for. The known
answer (``pipeline.evaluation.influence`` says how each figure is scored beside its chance level):

- planted shortcuts (the negative control too): stamped queries (test images of other classes that the stamp
  alone moves into the shortcut's class) and clean queries (clean test images of that class assigned to it).
  Headline: ``within_class_auc``, how much more the stamped queries rank the class's stamped training images above
  its unstamped ones than clean queries do; details: ``proponent_precision_at_10`` over the class's own base rate,
  each group's ranking over 0.5;
- colored MNIST: ``proponent_position_closeness`` (1 - colormap-position gap to the first 10 proponents) over the
  same for every searched training image of the predicted class;
- your own images (no known answer): seeded test images for their predicted class; nothing is scored, the
  proponents are shown. A classifier trained elsewhere has no per-epoch weights: the stage says so and skips.

Each headline figure is written as ``<figure>_lift``, ``_lift_low``, ``_lift_high``; raw figures, chance levels and
intervals go to details.json (``chance``).
"""
from __future__ import annotations

import copy
import sys

import pandas as pd
import torch

from pipeline import paths
from pipeline.attribution.tracin import Checkpoint, TracIn
from pipeline.config import PRECISION_AT, InfluenceParams
from pipeline.data.known_answer import ColorRule, PlantedShortcuts, Unknown
from pipeline.data.tensors import subsample
from pipeline.evaluation.influence import (Traced, by_rank, colored_mnist_figures, colored_mnist_queries, planted_figures,
                                           planted_lifts, planted_queries, precision_lift, proponent_table,
                                           proponents_figure, trace)
from pipeline.models.classifiers import load_classifier, missing_parts
from pipeline.plotting import placeholder_figure
from pipeline.prepared import load_known_answer, load_meta, load_prepared
from pipeline.runtime import stage
from pipeline.scoring.chance import not_judged
from pipeline.storage import InputError, load_checkpoint, save_figure, write_csv, write_json

STAGE = "influence"
HEADLINE = {PlantedShortcuts: ("within_class_auc",),   # precision at 10 and the rest: details.json
            ColorRule: ("proponent_position_closeness",), Unknown: ()}


def log(dataset: str, message: str) -> None:
    print(f"[{STAGE}@{dataset}] {message}", file=sys.stderr)


def load_checkpoints(dataset: str, trained_here: bool) -> list[Checkpoint]:
    """Every epoch's weights and mean learning rate, in epoch order (none for a classifier trained elsewhere)."""
    files = sorted(paths.classifier_checkpoint_dir(dataset).glob("epoch_*.pt"), key=lambda f: int(f.stem.split("_")[1]))
    if not files and trained_here:
        raise InputError(f"{paths.classifier_checkpoint_dir(dataset)} holds no epoch_<k>.pt; run `dvc repro train_classifier@{dataset}`")
    loaded = [load_checkpoint(f, made_by=f"train_classifier@{dataset}") for f in files]
    return [Checkpoint(c["state_dict"], float(c["learning_rate"])) for c in loaded]


def no_queries(ctx, answer, n_train: int,
               reason: str = "the stamp moves no test image of another class into the shortcut's class") -> None:
    """Every output, saying that no test image qualified (the stamp moves none into its class), or why none was traced:
    the headline figures not judged (null), never 0."""
    metrics = {k: v for name in HEADLINE[type(answer)] for k, v in not_judged(reason).metrics(name).items()}
    write_json(paths.metrics_path(ctx.dataset, STAGE), metrics)
    write_json(paths.plots_dir(ctx.dataset, STAGE) / "details.json", {"n_queries": 0, "n_train": n_train, "reason": reason})
    write_csv(paths.plots_dir(ctx.dataset, STAGE) / "proponents.csv", pd.DataFrame(columns=["query", "rank", "score"]))
    write_csv(paths.plots_dir(ctx.dataset, STAGE) / "by_rank.csv", pd.DataFrame(columns=["rank"]))
    save_figure(placeholder_figure(f"No query: {reason}."), paths.pictures_dir(ctx.dataset, STAGE) / "proponents.png")
    log(ctx.dataset, f"no query: {reason}")


def run(ctx, cfg: InfluenceParams) -> None:
    meta, answer = load_meta(ctx.dataset), load_known_answer(ctx.dataset)
    train = {k: v.numpy() for k, v in load_prepared(ctx.dataset, "train").items()}
    test = load_prepared(ctx.dataset, "test", ctx.device)
    classifier = load_classifier(paths.classifier_path(ctx.dataset), ctx.device)
    checkpoints = load_checkpoints(ctx.dataset, ctx.entry.trains_classifier)
    rng = ctx.rng("sample")
    candidates = subsample(len(train["labels"]), cfg.n_train, rng)
    missing = missing_parts(classifier)
    if not checkpoints or "head" in missing:
        reason = missing.get("head", "TracIn needs the weights after every training epoch, and a "
                                     "classifier trained elsewhere comes without them")
        return no_queries(ctx, answer, len(candidates), reason)
    planted = isinstance(answer, PlantedShortcuts)
    queries = planted_queries(classifier, test, answer, cfg.n_test, rng) if planted else \
        {"queries": colored_mnist_queries(classifier, test, cfg.n_test, rng)}
    shown = next(iter(queries.values()))   # stamped queries, where shortcuts are planted
    if len(shown["images"]) == 0:
        return no_queries(ctx, answer, len(candidates))

    labels = train["labels"][candidates]
    carries = train["stamped"].any(1) if planted else None
    positions = (train["positions"], test["positions"].cpu().numpy()) if isinstance(answer, ColorRule) else None
    model = copy.deepcopy(classifier)   # TracIn loads each checkpoint into it
    tracin = TracIn(model, model.head, checkpoints, torch.from_numpy(train["images"][candidates]), torch.from_numpy(labels),
                    cfg.batch_size)

    def traced(query: dict, normalize: bool = cfg.normalize) -> Traced:
        found, scores = trace(tracin, query, cfg.top_k, normalize)
        return Traced(proponent_table(found, query, candidates, train["labels"], carries, positions), scores,
                      query["targets"].cpu().numpy())

    scoring = {True: "normalized", False: "unnormalized"}
    other = scoring[not cfg.normalize]   # the other scoring, for comparison
    streams = lambda name: ctx.generator(f"chance/{name}")   # noqa: E731
    groups = {g: traced(q) for g, q in queries.items()}
    table = groups[next(iter(groups))].table
    if planted:
        lifts = planted_lifts(groups, labels, carries[candidates], PRECISION_AT, streams)
        lifts[f"{other}_precision_at_{PRECISION_AT}"] = precision_lift(
            traced(shown, not cfg.normalize).table, groups["stamped"].targets, labels, carries[candidates], PRECISION_AT,
            streams(f"precision_{other}"))
        figures = planted_figures(groups["stamped"], labels, carries[candidates], PRECISION_AT)
    elif positions is not None:
        query_positions = positions[1][shown["test_index"].cpu().numpy()]
        figures, lifts = {}, {}
        for normalize, name in ((cfg.normalize, "proponent"), (not cfg.normalize, other)):
            found, lifts[f"{name}_position_closeness"] = colored_mnist_figures(
                table if name == "proponent" else traced(shown, normalize).table, labels, positions[0][candidates],
                query_positions, PRECISION_AT, streams(f"closeness_{name}"))
            figures |= found if name == "proponent" else {f"{other}_position_gap": found["proponent_position_gap"]}
    else:
        figures, lifts = {"skipped_scores": Unknown.reason}, {}
    figures |= {"scoring": scoring[cfg.normalize], "n_train": len(candidates), "n_checkpoints": len(checkpoints),
                "chance": {name: lift.to_dict() for name, lift in lifts.items()}}

    metrics = {k: v for name in HEADLINE[type(answer)] for k, v in lifts[name].metrics(name).items()}
    write_json(paths.metrics_path(ctx.dataset, STAGE), metrics)
    write_json(paths.plots_dir(ctx.dataset, STAGE) / "details.json", figures)
    write_csv(paths.plots_dir(ctx.dataset, STAGE) / "proponents.csv", table)
    write_csv(paths.plots_dir(ctx.dataset, STAGE) / "by_rank.csv", by_rank(table, figures))
    save_figure(proponents_figure(table, shown, train["images"], meta["class_names"], cfg.n_show, ctx.dataset),
                paths.pictures_dir(ctx.dataset, STAGE) / "proponents.png")
    ctx.timer.images = len(candidates) * len(checkpoints)   # one forward pass per training image and checkpoint
    log(ctx.dataset, f"{len(shown['images'])} queries, {len(candidates)} training images, {len(checkpoints)} checkpoints: "
        + "; ".join(lift.sentence(name, 3) for name, lift in lifts.items()))


def main(argv: list[str] | None = None) -> None:
    with stage(STAGE, argv) as ctx:
        run(ctx, ctx.params.influence)


if __name__ == "__main__":
    main()
