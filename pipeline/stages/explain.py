"""Stage ``explain@<dataset>``: discriminative attribution on (real, counterfactual) pairs, scored.

For every pair whose counterfactual the classifier assigns to its target, each attribution method
gives a map; the sweep (:mod:`pipeline.attribution.discriminative`) turns it into masks of growing size, copies
the masked region from the counterfactual into the real image, and records how far the target's
probability rises. The area under that curve is the method's score for the pair; the mask that
minimises (size - score change) is its optimal mask. Where the answer is known (the planted
shortcut, the digit vs. the color) the optimal masks are scored against it.

The computation lives in :mod:`pipeline.evaluation.explanations` and its figures in
:mod:`pipeline.evaluation.explanation_plots`. ``metrics/<D>/explain.json`` holds the headline figures
only (:func:`~pipeline.evaluation.explanations.headline_metrics`); every figure per method, per class
pair, of the control pairs and of the color rule goes to ``plots/<D>/explain/details.json``.
"""
from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pandas as pd
import torch

from pipeline import paths
from pipeline.attribution.discriminative import MaskSettings, size_grid
from pipeline.attribution.methods import skip_reason
from pipeline.config import ExplainParams
from pipeline.data.tensors import to_float, to_uint8
from pipeline.evaluation.explanation_plots import plot_color_rule, plot_curves, plot_scores, plot_shortcut_overlap, save_gallery
from pipeline.evaluation.explanations import (NAN, ExplainOptions, Pairs, best_discriminative, carries_shortcut, class_pair_details,
                                              color_rule, color_rule_table, curve_and_score_summaries, curve_table, empty_method_entries,
                                              explain_every_method, headline_metrics, shortcut_overlap_frame, shortcut_table,
                                              shortcut_truth, stamped_control)
from pipeline.models.classifiers import load_classifier
from pipeline.plotting import placeholder_figure
from pipeline.prepared import load_meta, load_prepared
from pipeline.runtime import stage
from pipeline.storage import InputError, load_arrays, save_arrays, save_figure, write_csv, write_json

CONTRACT_KEYS = ("real", "counterfactual", "counterfactual_latent", "image_index", "source", "target",
                 "predicted", "target_probability", "predicted_latent", "target_probability_latent")


def explanations_dir(dataset: str):
    return paths.DATA / "explanations" / dataset


def load_pairs(dataset: str, cfg: ExplainParams, device: torch.device, rng: np.random.Generator) -> Pairs:
    """The counterfactual pairs the classifier assigns to their target (at most ``max_pairs``, seeded)."""
    path = paths.counterfactuals_path(dataset)
    arrays = load_arrays(path, made_by=f"counterfactuals@{dataset}")
    missing = [key for key in CONTRACT_KEYS if key not in arrays]
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)}; re-run `dvc repro counterfactuals@{dataset}`")
    suffix = "" if cfg.counterfactual == "reference" else "_latent"
    keep = np.flatnonzero(arrays["predicted" + suffix] == arrays["target"])
    n_reaching = len(keep)
    if cfg.max_pairs is not None and len(keep) > cfg.max_pairs:
        keep = np.sort(rng.choice(keep, size=cfg.max_pairs, replace=False))
    take = lambda key: torch.from_numpy(np.ascontiguousarray(arrays[key][keep])).to(device)  # noqa: E731
    return Pairs(to_float(take("real")), to_float(take("counterfactual" + suffix)), take("image_index").long(),
                 take("source").long(), take("target").long(), len(arrays["target"]), n_reaching)


def explain_options(cfg: ExplainParams) -> ExplainOptions:
    """The library's options from the ``explain`` params."""
    return ExplainOptions(methods=tuple(cfg.methods), mask_channels=cfg.mask_channels, attributed=cfg.attributed,
                          ig_steps=cfg.ig_steps, random_sigma=cfg.random_sigma, batch_size=cfg.batch_size,
                          attribution_batch_size=cfg.attribution_batch_size, mixed_precision=cfg.mixed_precision,
                          control_pairs=cfg.control_pairs)


def write_color_rule(frame: pd.DataFrame, class_names: list[str], dataset: str, out) -> None:
    """Colored MNIST's known answer: the color rule the classifier learned (plot data and picture)."""
    write_csv(out / "known_answer" / "color_rule.csv", color_rule_table(frame))
    plot_color_rule(frame, class_names, dataset, out / "known_answer.png")


def write_shortcut_overlap(methods: list[str], per_method: dict, control: dict, dataset: str, out) -> None:
    """Clever Hans's known answer: how well each method's optimal masks find the shortcut."""
    write_csv(out / "known_answer" / "shortcut_iou.csv", shortcut_table(methods, per_method, control))
    plot_shortcut_overlap(shortcut_overlap_frame(methods, per_method, control), dataset, out / "known_answer.png")


def main(argv: list[str] | None = None) -> None:
    with stage("explain", argv) as ctx:
        cfg = ctx.params.explain
        meta = load_meta(ctx.dataset)
        class_names = meta["class_names"]
        model = load_classifier(paths.classifier_path(ctx.dataset), ctx.device)
        skipped = {m: why for m in cfg.methods if (why := skip_reason(m, model))}
        methods = [m for m in cfg.methods if m not in skipped]
        options = dataclasses.replace(explain_options(cfg), methods=tuple(methods))
        test = load_prepared(ctx.dataset, "test", ctx.device)
        pairs = load_pairs(ctx.dataset, cfg, ctx.device, ctx.rng("pairs"))
        n_kept = len(pairs.target)
        settings = MaskSettings(cfg.n_thresholds, cfg.closing_size, cfg.blur_sigma, cfg.score_convention)
        grid = size_grid(cfg.n_grid, ctx.device)
        generator = ctx.generator("random-map")

        truth: dict = {}
        if ctx.kind == "colored_mnist":
            truth["digit"] = to_uint8(pairs.real).amax(dim=1) > 0
        if "shortcut_alpha" in test:
            truth["shortcut"] = shortcut_truth(test, pairs) + (carries_shortcut(test, pairs),)

        if n_kept:
            per_method, results, arrays = explain_every_method(model, pairs, options, settings, grid, generator, truth,
                                                               ctx.dataset)
        else:  # nothing to explain: keep every key, with null values, so downstream reads still work
            print(f"[explain@{ctx.dataset}] warning: no counterfactual reaches its target class; nothing to score",
                  file=sys.stderr)
            per_method, results, arrays = empty_method_entries(methods, truth), {}, {}
        best = best_discriminative(per_method)

        details: dict = {"n_pairs": pairs.n_pairs, "n_pairs_reaching_target": pairs.n_reaching_target, "n_pairs_kept": n_kept,
                         "counterfactual": cfg.counterfactual, "score_convention": cfg.score_convention,
                         "best_discriminative_method": best, "methods": per_method, "skipped_methods": skipped}
        control, gan_shortcut_fraction = None, NAN
        if "shortcut" in truth:
            control = (stamped_control(model, test, options, settings, grid, generator, ctx.rng("control-pairs"))
                       if cfg.control_pairs else {})
            into, _, carried = truth["shortcut"]
            details["n_pairs_into_shortcut_class"] = int(into.sum())
            details["n_pairs_carrying_shortcut"] = int((carried & into).sum())
            gan_shortcut_fraction = carried[into].float().mean().item() if into.any() else NAN
            details["stamped_control"] = control
        if "digit" in truth:
            details["digit_pixel_fraction"] = truth["digit"].float().mean().item() if n_kept else NAN
            rule, color_frame = color_rule(model, test, class_names, cfg.batch_size)
            details["color_rule"] = rule
        details["per_class_pair"] = class_pair_details(pairs, results, class_names)
        metrics = headline_metrics(n_kept, per_method, best, control, gan_shortcut_fraction)

        out = paths.plots_dir(ctx.dataset, "explain")
        grid_host = grid.cpu().numpy()
        quartiles, score_frame = curve_and_score_summaries(methods, results, len(grid_host))
        write_csv(out / "curves.csv", curve_table(grid_host, quartiles))
        write_csv(out / "scores.csv", score_frame)
        plot_curves(grid_host, quartiles, ctx.dataset, out / "curves.png")
        plot_scores(score_frame, ctx.dataset, out / "scores.png")
        gallery_method = best or methods[0]
        if n_kept:
            maps, scores = results[gallery_method]
            save_gallery(model, pairs, gallery_method, maps, scores, settings, class_names, cfg.gallery_top_k,
                         out / "gallery", ctx.dataset)
        else:
            (out / "gallery").mkdir(parents=True, exist_ok=True)
        if "digit" in truth:
            write_color_rule(color_frame, class_names, ctx.dataset, out)
        elif control is not None:
            write_shortcut_overlap(methods, per_method, control, ctx.dataset, out)
        else:   # your own images: nothing to score against
            (out / "known_answer").mkdir(parents=True, exist_ok=True)
            save_figure(placeholder_figure(f"{ctx.dataset}: {ctx.entry.NO_ANSWER}"), out / "known_answer.png")

        source, target = pairs.source.cpu().numpy(), pairs.target.cpu().numpy()
        save_arrays(explanations_dir(ctx.dataset) / "explanations.npz", image_index=pairs.image_index.cpu().numpy(),
                    source=source, target=target, methods=np.array(methods), size_grid=grid_host, **arrays)
        write_json(out / "details.json", details)
        write_json(paths.metrics_path(ctx.dataset, "explain"), metrics)
        ctx.timer.images = n_kept * len(methods) * (cfg.n_thresholds + 1)
        ranking = ", ".join(f"{m} {per_method[m]['median_score']:.3f}" for m in methods)
        extra = f"; shortcut IoU ({best}) {metrics['shortcut_iou']:.3f}" if control is not None and best else ""
        print(f"[explain@{ctx.dataset}] {n_kept}/{pairs.n_pairs} pairs kept; median scores: {ranking}{extra}", file=sys.stderr)


if __name__ == "__main__":
    main()
