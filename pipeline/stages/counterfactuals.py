"""Stage ``counterfactuals@<dataset>``: translate test images into every other class and let the classifier judge.

For a seeded sample of ``counterfactuals.n_images`` test images and every target class other than
the image's own, two counterfactuals are made with the EMA translator of ``train_gan``:

- reference-guided: the style of the target class's prototype — the mean style code of
  ``n_reference_images`` random training images of that class (``reference: mean_style``) or the
  style of one fixed random training image (``reference: fixed_image``);
- latent-guided: the mapping network's style for a random latent and the target class.

The classifier (never seen by the GAN) then decides: conversion rate (share assigned to the target),
the target-vs-predicted confusion matrix, how much the image changed (mean L1, share of pixels
changed by more than 0.1) and how real the counterfactuals look to the classifier (Fréchet distance
between penultimate-layer features of real target-class test images and of counterfactuals into that
class, beside the same distance between two disjoint sets of real images as the floor).

``metrics/<D>/counterfactuals.json`` holds six headline figures; per-pair conversion, the
latent-guided change sizes and distances, and per-class distances go to
``plots/<D>/counterfactuals/details.json``.
"""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline import paths
from pipeline.config import CounterfactualParams, options_from
from pipeline.counterfactuals.plots import (confusion_figure, gallery, interpolation, interpolation_figure, pca_2d,
                                            style_space_figure, style_space_frame)
from pipeline.counterfactuals.quality import evaluate, exact_error
from pipeline.counterfactuals.translation import (CONTRACT_KEYS, MODES, TranslationOptions, make_counterfactuals,
                                                  own_class_styles)
from pipeline.prepared import load_meta, load_prepared
from pipeline.storage import save_arrays, save_figure, write_csv, write_json


def write_series(folder, frames: dict[str, pd.DataFrame]) -> None:
    """One CSV per series in ``folder`` (emptied first, so no series of an earlier run is left over)."""
    shutil.rmtree(folder, ignore_errors=True)
    for name, frame in frames.items():
        write_csv(folder / f"{name}.csv", frame)


def save_plots(dataset: str, result: dict, confusions: dict, details: dict, translator: nn.Module,
               classifier: nn.Module, test: dict, class_names: list[str], cfg: CounterfactualParams) -> None:
    """Confusion tables and heat maps per mode, per-pair conversion, the gallery, interpolation strips and
    the style space, under ``plots/<D>/counterfactuals/``."""
    out, pictures = paths.plots_dir(dataset, "counterfactuals"), paths.pictures_dir(dataset, "counterfactuals")
    target = result["target"].cpu().numpy()
    for mode, suffix in MODES.items():
        predicted = result[f"predicted{suffix}"].cpu().numpy()
        write_csv(out / f"confusion{suffix}.csv", pd.DataFrame({
            "target": [class_names[t] for t in target], "predicted": [class_names[p] for p in predicted]}))
        fig = confusion_figure(confusions[suffix].cpu().numpy(), class_names,
                               f"{dataset}: {mode}-guided counterfactuals (row-normalised colour, counts)")
        save_figure(fig, pictures / f"confusion{suffix}.png")
    write_series(out / "conversion_per_pair", {
        mode: pd.DataFrame({"pair": list(entry["conversion_per_pair"]),
                            "conversion_rate": list(entry["conversion_per_pair"].values())})
        for mode, entry in details["modes"].items()})

    # gallery: the first images of the sample, one per row
    first = torch.unique(result["image_index"])[: cfg.n_gallery_images]
    save_figure(gallery(translator, classifier, test["images"][first], test["labels"][first], result["class_styles"],
                        class_names, f"{dataset}: counterfactuals (reference-guided), p = classifier's probability"),
                pictures / "gallery.png")

    # interpolation strips: the first rows of distinct images
    _, first_rows = np.unique(result["image_index"].cpu().numpy(), return_index=True)
    rows = torch.from_numpy(np.sort(first_rows)[: cfg.n_interpolation_images]).to(result["target"].device)
    strip_pairs = list(zip(result["source"][rows].tolist(), result["target"][rows].tolist()))
    blends, alphas, p_source, p_target = interpolation(classifier, result["real"][rows], result["counterfactual"][rows],
                                                       result["source"][rows], result["target"][rows],
                                                       cfg.interpolation_steps)
    write_series(out / "interpolation", {
        f"example{i}_{source}-to-{target}": pd.DataFrame({"alpha": alphas, "source_probability": p_source[i],
                                                          "target_probability": p_target[i]})
        for i, (source, target) in enumerate(strip_pairs)})
    save_figure(interpolation_figure(blends, p_source, p_target, f"{dataset}: image → counterfactual"),
                pictures / "interpolation.png")

    # style space of real test images (their own class's style)
    n = min(cfg.n_style_points, len(test["images"]))
    pick = torch.arange(n, device=test["images"].device)
    points = pca_2d(own_class_styles(translator, test["images"][pick], test["labels"][pick], cfg.batch_size))
    labels = test["labels"][pick].cpu().numpy()
    colors = test["colors"][pick].cpu().numpy() if "colors" in test else None
    write_csv(out / "style_space.csv", style_space_frame(points, labels, class_names, colors))
    save_figure(style_space_figure(points, labels, class_names, colors, f"{dataset}: style codes of test images (PCA)"),
                pictures / "style_space.png")


def main(argv: list[str] | None = None) -> None:
    from pipeline.models.gan import load_translator
    from pipeline.models.classifiers import load_classifier
    from pipeline.runtime import stage

    with stage("counterfactuals", argv) as ctx:
        cfg = ctx.params.counterfactuals
        meta = load_meta(ctx.dataset)
        n_classes, class_names = meta["n_classes"], meta["class_names"]
        test = load_prepared(ctx.dataset, "test", ctx.device)
        train_split = load_prepared(ctx.dataset, "train", ctx.device)
        references = {"images": train_split["images"], "labels": train_split["labels"]}
        translator = load_translator(paths.gan_path(ctx.dataset), ctx.device)
        classifier = load_classifier(paths.classifier_path(ctx.dataset), ctx.device)

        options = options_from(cfg, TranslationOptions)
        result = make_counterfactuals(translator, classifier, test, references, n_classes, options, ctx.generator())
        save_arrays(paths.counterfactuals_path(ctx.dataset),
                    **{key: result[key].cpu().numpy() for key in CONTRACT_KEYS})
        metrics, details, confusions = evaluate(result, classifier, test, n_classes, ctx.generator("features"),
                                                cfg.batch_size)
        if "gray" in test and "positions" in test:  # colored MNIST: the exact counterfactual is known
            exact = exact_error(result, test, class_names)
            metrics["exact_counterfactual_error"] = exact["reference"]
            details["exact_counterfactual_error"] = exact
        write_json(paths.metrics_path(ctx.dataset, "counterfactuals"), metrics)
        write_json(paths.plots_dir(ctx.dataset, "counterfactuals") / "details.json", details)
        save_plots(ctx.dataset, result, confusions, details, translator, classifier, test, class_names, cfg)
        ctx.timer.images = 2 * details["n_counterfactuals"]
        print(f"[counterfactuals@{ctx.dataset}] {details['n_counterfactuals']} pairs: conversion "
              f"{metrics['conversion_rate']:.4f} (reference), {metrics['conversion_rate_latent']:.4f} (latent); "
              f"L1 {metrics['mean_l1']:.4f}; feature distance {metrics['feature_distance']:.2f} "
              f"(real floor {metrics['feature_distance_real_floor']:.2f})", file=sys.stderr)


if __name__ == "__main__":
    main()
