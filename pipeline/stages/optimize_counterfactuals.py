"""Stage ``optimize_counterfactuals@<dataset>``: counterfactuals by optimising the input itself, next to the GAN's.

For each misclassified test image (wanted class: its true class) and a seeded sample of correctly
classified ones (wanted class: a seeded random other class), a copy of the image is optimised with
proximal gradient descent on ``CE(f(x'), wanted) + lambda * distance(x', x)`` (L1 or squared L2), pixels kept in [0, 1].
All images are one batch; an image stops (is frozen) as soon as the wanted logit beats every other
logit by ``margin``. The result is compared, on the same images and wanted classes, with the GAN's
reference-guided counterfactuals: success rate, L1 and L0 of the change, and the Fréchet distance
of the classifier's penultimate features to real images of the wanted classes.

``metrics/<D>/optimize_counterfactuals.json`` holds the headline figures (success rate, mean L1,
Fréchet distance, the GAN's success rate on the same pairs); counts, L0, steps, the share that
reached the margin and the matched comparison go to ``plots/<D>/optimize_counterfactuals/details.json``.
"""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pandas as pd
import torch

from pipeline import paths
from pipeline.config import OptimizeCounterfactualsParams, options_from
from pipeline.counterfactuals.frechet import class_matched_frechet
from pipeline.counterfactuals.optimization import (OptimizationOptions, change_measures, gan_pairs, judge_gan,
                                                   optimize_in_batches, select_images, summary)
from pipeline.counterfactuals.optimization_plots import examples_figure, optimisation_vs_gan_figure, success_curve
from pipeline.models.classifiers import load_classifier
from pipeline.models.inference import embed_images, predict_probabilities
from pipeline.prepared import load_meta, load_prepared
from pipeline.runtime import stage
from pipeline.storage import load_arrays, save_arrays, save_figure, write_csv, write_json


def output_path(dataset: str):
    return paths.DATA / "optimized_counterfactuals" / dataset / "counterfactuals.npz"


def main(argv: list[str] | None = None) -> None:
    with stage("optimize_counterfactuals", argv) as ctx:
        cfg = ctx.params.optimize_counterfactuals
        meta = load_meta(ctx.dataset)
        names, n_classes = meta["class_names"], meta["n_classes"]
        model = load_classifier(paths.classifier_path(ctx.dataset), ctx.device)
        test = load_prepared(ctx.dataset, "test", ctx.device)
        gan = load_arrays(paths.counterfactuals_path(ctx.dataset), made_by=f"counterfactuals@{ctx.dataset}")
        labels = test["labels"]
        predicted_test = predict_probabilities(model, test["images"], cfg.batch_size).argmax(1)
        chosen = select_images(predicted_test.cpu().numpy(), labels.cpu().numpy(), n_classes, cfg.max_misclassified,
                               cfg.n_correct, ctx.rng("select"), preferred=np.unique(gan["image_index"]))
        index = torch.from_numpy(chosen["index"]).to(ctx.device)
        target = torch.from_numpy(chosen["target"]).to(ctx.device)
        real = test["images"][index]

        options = options_from(cfg, OptimizationOptions)
        optimised = optimize_in_batches(model, real, target, options)
        counterfactual, steps, reached = optimised["counterfactual"], optimised["steps"], optimised["reached"]
        probabilities = predict_probabilities(model, counterfactual, cfg.batch_size)  # judged as saved: uint8
        predicted = probabilities.argmax(1)
        target_probability = probabilities.gather(1, target[:, None]).squeeze(1)

        overall = summary(real, counterfactual, predicted, target, cfg.change_threshold)
        misclassified = torch.from_numpy(chosen["misclassified"]).to(ctx.device)
        reference = embed_images(model, test["images"], cfg.batch_size)
        features = embed_images(model, counterfactual, cfg.batch_size)
        overall["frechet_distance"] = class_matched_frechet(features, target, reference, labels)

        # Side by side with the GAN on the same (image, wanted class) pairs.
        ours_rows, theirs = gan_pairs(gan, chosen, n_classes, ctx.device)
        ours = torch.from_numpy(ours_rows).to(ctx.device)
        matched = summary(real[ours], counterfactual[ours], predicted[ours], target[ours], cfg.change_threshold)
        matched["frechet_distance"] = class_matched_frechet(features[ours], target[ours], reference, labels)
        gan_predicted, gan_summary = judge_gan(model, theirs, reference, labels, cfg.change_threshold,
                                               cfg.batch_size)

        metrics = {"success_rate": overall["success_rate"], "mean_l1": overall["mean_l1"],
                   "frechet_distance": overall["frechet_distance"], "gan_success_rate": gan_summary["success_rate"]}
        details = {
            **overall,
            "n_misclassified": int(misclassified.sum().item()),
            "n_correct": int((~misclassified).sum().item()),
            "success_rate_misclassified": summary(real[misclassified], counterfactual[misclassified],
                                                  predicted[misclassified], target[misclassified],
                                                  cfg.change_threshold)["success_rate"],
            "margin_reached_rate": reached.float().mean().item() if len(reached) else float("nan"),
            "mean_steps": steps.float().mean().item() if len(steps) else float("nan"),
            "matched": matched,
            "gan": gan_summary,
        }
        write_json(paths.metrics_path(ctx.dataset, "optimize_counterfactuals"), metrics)
        out = paths.plots_dir(ctx.dataset, "optimize_counterfactuals")
        write_json(out / "details.json", details)

        save_arrays(output_path(ctx.dataset), real=real.cpu().numpy(), counterfactual=counterfactual.cpu().numpy(),
                    image_index=chosen["index"], source=labels[index].cpu().numpy(), target=chosen["target"],
                    misclassified=chosen["misclassified"], predicted=predicted.cpu().numpy(),
                    target_probability=target_probability.cpu().numpy(), steps=steps.cpu().numpy(),
                    reached=reached.cpu().numpy())

        write_plot_data(out, cfg, real, counterfactual, predicted, target, theirs, gan_predicted, matched, gan_summary,
                        steps, reached)
        write_pictures(paths.pictures_dir(ctx.dataset, "optimize_counterfactuals"), ctx.dataset, cfg, names, labels[index],
                       chosen, real, counterfactual, predicted, target, ours_rows, theirs)
        ctx.timer.images = len(index)
        print(f"[optimize_counterfactuals@{ctx.dataset}] {len(index)} images: success {overall['success_rate']:.3f} "
              f"(margin reached {details['margin_reached_rate']:.3f}), L1 {overall['mean_l1']:.2f}, "
              f"L0 {overall['mean_l0']:.1f}, {details['mean_steps']:.0f} steps; "
              f"GAN on {gan_summary['n']} same pairs: success {gan_summary['success_rate']:.3f}, "
              f"L1 {gan_summary['mean_l1']:.2f}, L0 {gan_summary['mean_l0']:.1f}", file=sys.stderr)


def write_plot_data(out, cfg: OptimizeCounterfactualsParams, real: torch.Tensor, counterfactual: torch.Tensor,
                    predicted: torch.Tensor, target: torch.Tensor, theirs: dict[str, torch.Tensor],
                    gan_predicted: torch.Tensor, matched: dict, gan_summary: dict, steps: torch.Tensor,
                    reached: torch.Tensor) -> None:
    """``changes/<method>.csv`` (L1 and L0 per image, one file per method), ``comparison.csv`` (one row per
    method on the same pairs) and ``success_curve.csv``."""
    changes = out / "changes"
    shutil.rmtree(changes, ignore_errors=True)
    for method, (before, after, hit) in {
        "optimisation": (real, counterfactual, predicted == target),
        "gan": (theirs["real"], theirs["counterfactual"], gan_predicted == theirs["target"]),
    }.items():
        l1, l0 = change_measures(before, after, cfg.change_threshold)
        write_csv(changes / f"{method}.csv", pd.DataFrame({"l1": l1.cpu().numpy(), "l0": l0.cpu().numpy(),
                                                          "success": hit.cpu().numpy()}))
    columns = ("success_rate", "mean_l1", "mean_l0", "frechet_distance")
    write_csv(out / "comparison.csv", pd.DataFrame([
        {"method": "optimisation (same pairs)", **{k: matched[k] for k in columns}},
        {"method": "gan (reference-guided)", **{k: gan_summary[k] for k in columns}}]))
    write_csv(out / "success_curve.csv", success_curve(steps.cpu().numpy(), reached.cpu().numpy(), cfg.max_steps))


def write_pictures(out, dataset: str, cfg: OptimizeCounterfactualsParams, names: list[str], source: torch.Tensor,
                   chosen: dict[str, np.ndarray], real: torch.Tensor, counterfactual: torch.Tensor,
                   predicted: torch.Tensor, target: torch.Tensor, ours_rows: np.ndarray,
                   theirs: dict[str, torch.Tensor]) -> None:
    """``examples.png`` (original | optimised | difference) and ``comparison.png`` (the same beside the GAN's)."""
    def title(i: int) -> str:
        return f"{names[int(source[i])]}→{names[int(target[i])]}"

    shown = np.arange(min(cfg.n_example_images, len(real)))
    titles = [title(i) + ("" if predicted[i] == target[i] else " ✗")
              + (" (wrong)" if chosen["misclassified"][i] else "") for i in shown]
    save_figure(examples_figure(real[shown].cpu().numpy(), counterfactual[shown].cpu().numpy(), titles, dataset),
                out / "examples.png")
    both = ours_rows[: cfg.n_example_images]
    save_figure(optimisation_vs_gan_figure(real[both].cpu().numpy(), counterfactual[both].cpu().numpy(),
                                           theirs["counterfactual"][: len(both)].cpu().numpy(),
                                           [title(i) for i in both], dataset), out / "comparison.png")


if __name__ == "__main__":
    main()
