"""Stage ``explain@<dataset>``: discriminative attribution on (real, counterfactual) pairs, scored.

For every pair whose counterfactual the classifier assigns to its target, each attribution method
gives a map; the sweep (:mod:`pipeline.attribution.discriminative`) turns it into masks of growing size, copies
the masked region from the counterfactual into the real image, and records how far the target's
probability rises. The area under that curve is the method's score for the pair; the mask that
minimises (size - score change) is its optimal mask. Every figure stands beside its reference, computed by the
same code on the same pairs: the score beside the random map's and the residual's; where the answer is known
(the planted shortcut, also on the negative control; the digit vs. the colour) the optimal masks beside the
whole-image mask and random masks of their own area, on GAN pairs and on the distractor control
(:mod:`pipeline.evaluation.explanations` says what each measures).

The computation lives in :mod:`pipeline.evaluation.explanations` and its figures in
:mod:`pipeline.evaluation.explanation_plots`. ``metrics/<D>/explain.json`` holds the headline figures only, the
best discriminative method's lifts with their intervals
(:func:`~pipeline.evaluation.explanations.headline_metrics`); ``plots/<D>/explain/details.json`` holds every
method's figures, each lift in full under ``chance``, why a headline is not judged (``not_judged``), the class
pairs, the distractor control's funnel and the colour rule.
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
from pipeline.data.known_answer import ColorRule, PlantedShortcuts
from pipeline.data.tensors import to_float
from pipeline.evaluation.explanation_plots import plot_color_rule, plot_curves, plot_scores, plot_shortcut_overlap, save_gallery
from pipeline.evaluation.explanations import (NAN, ExplainOptions, Pairs, best_discriminative, chance_details,
                                              class_pair_details, color_rule, color_rule_table, curve_and_score_summaries,
                                              curve_table, distractor_control, empty_method_entries, explain_every_method,
                                              headline_lifts, headline_metrics, known_answer_judges, not_judged_for,
                                              not_judged_reasons, score_lifts, shortcut_table)
from pipeline.models.classifiers import load_classifier
from pipeline.plotting import placeholder_figure
from pipeline.prepared import load_known_answer, load_meta, load_prepared
from pipeline.runtime import stage
from pipeline.scoring.chance import not_judged
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


def main(argv: list[str] | None = None) -> None:
    with stage("explain", argv) as ctx:
        cfg = ctx.params.explain
        class_names = load_meta(ctx.dataset)["class_names"]
        answer = load_known_answer(ctx.dataset)
        model = load_classifier(paths.classifier_path(ctx.dataset), ctx.device)
        skipped = {m: why for m in cfg.methods if (why := skip_reason(m, model))}
        methods = [m for m in cfg.methods if m not in skipped]
        options = dataclasses.replace(explain_options(cfg), methods=tuple(methods))
        test = load_prepared(ctx.dataset, "test", ctx.device)
        pairs = load_pairs(ctx.dataset, cfg, ctx.device, ctx.rng("pairs"))
        n_kept = len(pairs.target)
        settings = MaskSettings(cfg.n_thresholds, cfg.closing_size, cfg.blur_sigma, cfg.score_convention)
        grid = size_grid(cfg.n_grid, ctx.device)
        judges = known_answer_judges(answer, pairs, test, class_names, cfg.random_sigma, ctx.generator)
        names = [name for judge in judges for name in judge.names()]

        if n_kept:
            per_method, results, arrays, chance = explain_every_method(model, pairs, options, settings, grid,
                                                                       ctx.generator("random-map"), judges, ctx.dataset)
            chance = {**score_lifts({m: results[m][1].score for m in methods}, ctx.generator), **chance}
        else:  # nothing to explain: keep every key, with null values, so downstream reads still work
            print(f"[explain@{ctx.dataset}] warning: no counterfactual reaches its target class; nothing to score",
                  file=sys.stderr)
            per_method, results, arrays = empty_method_entries(methods), {}, {}
            chance = not_judged_for(methods, ["score_vs_random", "score_vs_residual", *names],
                                    "no counterfactual reaches its target class")
        best = best_discriminative(per_method)

        details: dict = {"n_pairs": pairs.n_pairs, "n_pairs_reaching_target": pairs.n_reaching_target, "n_pairs_kept": n_kept,
                         "counterfactual": cfg.counterfactual, "score_convention": cfg.score_convention,
                         "best_discriminative_method": best, "methods": per_method, "skipped_methods": skipped}
        gan_shortcut_fraction = None
        if isinstance(answer, PlantedShortcuts):
            selected, carried = judges[0].selected, judges[0].subsets["carried"][0]
            details["shortcut_classes"] = [class_names[label] for label in answer.labels]
            details["negative_control"] = answer.is_negative_control
            details["n_pairs_into_shortcut_class"] = int(selected.sum())
            details["n_pairs_carrying_shortcut"] = int((carried & selected).sum())
            gan_shortcut_fraction = carried[selected].float().mean().item() if selected.any() else NAN
            details["gan_shortcut_fraction"] = gan_shortcut_fraction
            if cfg.control_pairs:
                details["distractor_control"], control = distractor_control(
                    model, answer, test, options, settings, grid, ctx.generator, ctx.rng("control-pairs"))
            else:
                control = not_judged_for(methods, ["control_shortcut_iou", "control_shortcut_mass_fraction"],
                                         "no control pairs (explain.control_pairs = 0)")
            chance.update(control)
        if isinstance(answer, ColorRule):
            rule, color_frame = color_rule(model, test, class_names, cfg.batch_size)
            details["color_rule"] = rule
        for figure in chance.values():   # a method skipped for this model is not judged, with the reason
            figure.update({m: not_judged(f"skipped: {why}") for m, why in skipped.items()})
        headline = headline_lifts(chance, best)
        details["chance"] = chance_details(chance)
        details["not_judged"] = not_judged_reasons(headline)
        if gan_shortcut_fraction is not None and gan_shortcut_fraction != gan_shortcut_fraction:
            details["not_judged"]["gan_shortcut_fraction"] = judges[0].reason
        details["per_class_pair"] = class_pair_details(pairs, results, class_names)
        metrics = headline_metrics(n_kept, headline, gan_shortcut_fraction)

        out, pictures = paths.plots_dir(ctx.dataset, "explain"), paths.pictures_dir(ctx.dataset, "explain")
        grid_host = grid.cpu().numpy()
        quartiles, score_frame = curve_and_score_summaries(methods, results, len(grid_host))
        write_csv(out / "curves.csv", curve_table(grid_host, quartiles))
        write_csv(out / "scores.csv", score_frame)
        plot_curves(grid_host, quartiles, ctx.dataset, pictures / "curves.png")
        plot_scores(score_frame, ctx.dataset, pictures / "scores.png")
        gallery_method = best or methods[0]
        if n_kept:
            maps, scores = results[gallery_method]
            save_gallery(model, pairs, gallery_method, maps, scores, settings, class_names, cfg.gallery_top_k,
                         pictures / "gallery", ctx.dataset)
        else:
            (pictures / "gallery").mkdir(parents=True, exist_ok=True)
        if isinstance(answer, ColorRule):
            write_csv(out / "known_answer" / "color_rule.csv", color_rule_table(color_frame))
            plot_color_rule(color_frame, class_names, ctx.dataset, pictures / "known_answer.png")
        elif isinstance(answer, PlantedShortcuts):
            frame = shortcut_table(methods, chance)
            write_csv(out / "known_answer" / "shortcut_iou.csv", frame)
            plot_shortcut_overlap(frame, ctx.dataset, pictures / "known_answer.png")
        else:   # your own images: nothing to score against
            (out / "known_answer").mkdir(parents=True, exist_ok=True)
            save_figure(placeholder_figure(f"{ctx.dataset}: {answer.reason}"), pictures / "known_answer.png")

        source, target = pairs.source.cpu().numpy(), pairs.target.cpu().numpy()
        save_arrays(explanations_dir(ctx.dataset) / "explanations.npz", image_index=pairs.image_index.cpu().numpy(),
                    source=source, target=target, methods=np.array(methods), size_grid=grid_host, **arrays)
        write_json(out / "details.json", details)
        write_json(paths.metrics_path(ctx.dataset, "explain"), metrics)
        ctx.timer.images = n_kept * len(methods) * (cfg.n_thresholds + 1)
        said = "; ".join(lift.sentence(f"{best or 'no discriminative method'}: {figure}")
                         for figure, lift in headline.items())
        print(f"[explain@{ctx.dataset}] {n_kept}/{pairs.n_pairs} pairs kept; {said}", file=sys.stderr)


if __name__ == "__main__":
    main()
