"""Stage ``feature_viz@<dataset>``: activation maximisation of class logits and convolution channels,
and a "deepdream" of every convolution layer as a whole (``pipeline.evaluation.feature_viz``).

Every output class and the first ``channels_per_layer`` channels of every convolution are maximised
from two starts (ones, seeded noise). The layer dream starts from real test images; on clever_hans
they are clean test images of the classes without a planted shortcut, so any colour the dream paints inside a
shortcut's truth region comes from the model; ``details.json`` says, per planted shortcut (all of them, keyed by
its class), how much of the change falls there.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from pipeline import paths
from pipeline.config import options_from
from pipeline.data.known_answer import PlantedShortcuts
from pipeline.evaluation.feature_viz import (STARTS, KnownRegion, MaximiseOptions, build_units, class_probability_table,
                                             curve_table, dream, dream_figure, dream_starts, maximise, summarise,
                                             unit_arrays, unit_grids, unit_table)
from pipeline.models.classifiers import load_classifier
from pipeline.prepared import load_known_answer, load_meta, load_prepared
from pipeline.runtime import StageContext, stage
from pipeline.storage import save_arrays, save_figure, write_csv, write_json


def maximise_options(cfg) -> MaximiseOptions:
    """The ``feature_viz`` params that steer the ascent."""
    return options_from(cfg, MaximiseOptions)


def layer_dream(ctx: StageContext, model: nn.Module, class_names: list[str]) -> dict:
    """The layer dream of the stage: pictures, and its figures for details.json; where shortcuts are planted, where
    the change goes against each one's truth region (``shortcuts``, keyed by its class's name)."""
    cfg = ctx.params.feature_viz
    answer = load_known_answer(ctx.dataset)
    planted = answer.shortcuts if isinstance(answer, PlantedShortcuts) else ()
    test = load_prepared(ctx.dataset, "test")
    start = dream_starts(test["clean_images"] if planted else test["images"], test["labels"], [s.label for s in planted],
                         cfg.dream_images, ctx.generator("dream")).to(ctx.device)
    known = [KnownRegion(s.label, torch.from_numpy(answer.region(k)).to(ctx.device), s.color) for k, s in enumerate(planted)]
    dreams = [dream(model, start, cfg.dream_steps, cfg.dream_step_size, region) for region in known or [None]]
    details, shown = dreams[0]
    if known:
        details["shortcuts"] = {class_names[region.label]: found["shortcut"] for region, (found, _) in zip(known, dreams)}
        del details["shortcut"]
    save_figure(dream_figure(start, shown, class_names, ctx.dataset),
                paths.pictures_dir(ctx.dataset, "feature_viz") / "grids" / "dream.png")
    return details


def main(argv: list[str] | None = None) -> None:
    with stage("feature_viz", argv) as ctx:
        cfg = ctx.params.feature_viz
        meta = load_meta(ctx.dataset)
        model = load_classifier(paths.classifier_path(ctx.dataset), ctx.device)
        units = build_units(model, meta["n_classes"], cfg.channels_per_layer)
        result = maximise(model, units, maximise_options(cfg), ctx.generator())
        metrics, details, rows = summarise(result, units, meta["class_names"], cfg.steps)
        details["dream"] = layer_dream(ctx, model, meta["class_names"])
        write_json(paths.metrics_path(ctx.dataset, "feature_viz"), metrics)
        out = paths.plots_dir(ctx.dataset, "feature_viz")
        write_json(out / "details.json", details)
        write_csv(out / "units.csv", unit_table(rows))
        write_csv(out / "curve.csv", curve_table(result["curve"].cpu().numpy()))
        write_csv(out / "class_probability.csv", class_probability_table(rows))
        for name, fig in unit_grids(result, units, meta["class_names"], ctx.dataset):
            save_figure(fig, paths.pictures_dir(ctx.dataset, "feature_viz") / "grids" / f"{name}.png")
        save_arrays(paths.DATA / "feature_viz" / ctx.dataset / "feature_viz.npz", **unit_arrays(result, units))
        ctx.timer.images = len(STARTS) * len(units) * cfg.steps + details["dream"]["images"] * len(units.layer_names[:-1]) * cfg.dream_steps
        print(f"[feature_viz@{ctx.dataset}] {len(units)} units x {len(STARTS)} starts, {cfg.steps} steps: "
              f"mean class probability {metrics['mean_class_probability']:.3f} "
              f"(ones {details['mean_class_probability_ones']:.3f}, noise {details['mean_class_probability_noise']:.3f})",
              file=sys.stderr)


if __name__ == "__main__":
    main()
