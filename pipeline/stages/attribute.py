"""Stage ``attribute@<dataset>``: captum attributions of the classifier, scored against the known answer.

Every method explains the classifier's *predicted* class on a seeded sample of test images, and is
scored for faithfulness (deletion curve, infidelity, max-sensitivity), for the model-randomisation
sanity check, and against the known answer: the planted shortcut's truth region (planted shortcuts, the
negative control too), the digit's pixels, and the RGB channels that carry the colormap (colored MNIST).
Relevance mass and pointing game stand beside two chance levels, as lifts over the higher one with bootstrap
intervals (``chance`` in details.json, per figure and method): a uniform map on the method's own support (what a map
scores that credits only the pixels the method can credit, with no preference among them), and the same method on
the same images and targets run on a re-initialised copy of the classifier (its architecture with seeded random
weights: what a map of that method gets from the input alone). Grad-CAM also segments the digit, and mistakes get a
contrastive (predicted vs. true class) view.

The re-initialised model's chance level was added after the negative control (the red corner square planted on no
training image) showed relevance mass on the stamp above chance for guided backpropagation, saliency and SmoothGrad:
a bright red patch may draw such maps whatever the model learned, which the uniform map does not capture. Since it was
added in answer to that control, the negative control no longer tests it independently: the shortcut benchmark's
clean variants (other stamps, planted on no training image) are the check that does not depend on it. For a
TorchScript classifier, whose architecture cannot be rebuilt with fresh weights, it is not available (details
``reinitialized_model`` says so) and the uniform map stands alone.

``metrics/<D>/attribution.json`` holds the best deletion AUC beside the random order's and the best method's
localisation lift with its interval (see :func:`~pipeline.attribution.method_scores.headline`); every score of
every method goes to ``plots/<D>/attribute/details.json`` and ``method_scores.csv``.
"""
from __future__ import annotations

import sys
import warnings

import numpy as np
import torch

from pipeline import paths
from pipeline.attribution.contrastive import contrastive_analysis
from pipeline.attribution.faithfulness import FaithfulnessOptions, gaussian_perturbation, random_order_curve
from pipeline.attribution.gradcam import gradcam_views
from pipeline.attribution.image_sets import attribute_all, attribution_arrays, gallery, gallery_rows, image_sets
from pipeline.attribution.method_scores import (BEST_BY, details_record, headline, headline_figures, method_scores_frame,
                                                score_methods, summary)
from pipeline.attribution.methods import AttributionOptions, noise_baseline, runnable_methods
from pipeline.attribution.plots import deletion_figure, ig_baselines_figure, localization_figure, method_grids
from pipeline.attribution.scores import colormap_channel_std, foreground_mask
from pipeline.config import AttributionParams, options_from
from pipeline.data.known_answer import ColorRule, PlantedShortcuts
from pipeline.prepared import load_known_answer, load_meta, load_prepared
from pipeline.models.inference import predict_probabilities
from pipeline.models.classifiers import load_classifier, reinitialized_classifier
from pipeline.runtime import StageContext, stage
from pipeline.storage import load_checkpoint, save_arrays, save_figure, write_csv, write_json

STAGE = "attribute"
RANDOM_STREAMS = ("noise_baseline", "infidelity", "deletion_order", "randomized_model", "captum")


def log(dataset: str, message: str) -> None:
    print(f"[{STAGE}@{dataset}] {message}", file=sys.stderr)


def random_streams(ctx: StageContext) -> dict[str, torch.Generator]:
    """One CPU generator per random draw of the stage, each from its own named stream of the global seed.

    ``noise_baseline``: the ``ig_noise`` baseline image; ``infidelity``: the perturbations of captum's
    infidelity; ``deletion_order``: the random-order deletion reference; ``randomized_model``: the
    weights of the re-initialised model (the randomisation check, and the localisation figures' chance level
    of a model that learned nothing); ``captum``: the seed of the global
    generator that captum's NoiseTunnel and sensitivity_max draw from. Drawn on the CPU, so a CPU and a
    GPU run draw the same numbers (except those captum draws on the data's device).
    """
    return {name: ctx.generator(name, device="cpu") for name in RANDOM_STREAMS}


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("ignore", category=UserWarning, module=r"captum.*")
    warnings.filterwarnings("ignore", message=r".*(require gradients|non-linear activations|requires_grad).*")
    with stage(STAGE, argv) as ctx:
        cfg, dataset, device = ctx.params.attribution, ctx.dataset, ctx.device
        options, faithfulness = options_from(cfg, AttributionOptions), options_from(cfg, FaithfulnessOptions)
        streams = random_streams(ctx)
        torch.manual_seed(streams["captum"].initial_seed())  # NoiseTunnel and sensitivity_max draw from the global one
        meta, answer = load_meta(dataset), load_known_answer(dataset)
        names = meta["class_names"]
        test = load_prepared(dataset, "test", device)
        model_path = paths.classifier_path(dataset)
        model = load_classifier(model_path, device)
        config = load_checkpoint(model_path, made_by=f"train_classifier@{dataset}")["config"]
        random_model, reinitialized_model = reinitialized_classifier(config, streams["randomized_model"].initial_seed(),
                                                                     device)
        noise = noise_baseline(tuple(test["images"].shape[1:]), streams["noise_baseline"]).to(device)

        methods, skipped = runnable_methods(cfg.methods, model)
        for name, reason in skipped.items():
            log(dataset, f"skipping {name}: {reason}")
        predicted = predict_probabilities(model, test["images"], cfg.internal_batch_size).argmax(1)
        sets = image_sets(test, predicted, model, cfg.n_images, cfg.n_localization_images, cfg.internal_batch_size,
                          ctx.rng("images"), answer)
        sample = sets["sample"]
        log(dataset, f"{len(methods)} methods on " + ", ".join(f"{len(s['targets'])} {k}" for k, s in sets.items()) + " images")
        attributions = attribute_all(methods, model, sets, options, noise)
        reinitialized = None if random_model is None else \
            attribute_all(methods, random_model, sets, options, noise, "attributions (re-initialised model)")

        digit_source = test["clean_images"] if isinstance(answer, PlantedShortcuts) else test["images"]
        digit_masks = foreground_mask(digit_source[sample["index"]])
        channel_std = colormap_channel_std(list(answer.colormaps)) if isinstance(answer, ColorRule) else None
        results, curves, lifts = score_methods(methods, model, sets, attributions, reinitialized, digit_masks,
                                               test["labels"][sample["index"]], names, channel_std, options, faithfulness,
                                               noise, gaussian_perturbation(cfg.infidelity_noise, streams["infidelity"]),
                                               lambda name: ctx.generator(f"chance/{name}"))
        random_curve = random_order_curve(model, sample["images"], sample["targets"], streams["deletion_order"],
                                          cfg.internal_batch_size, cfg.deletion_steps)
        curves["random order"] = random_curve.mean(dim=0)
        details = details_record(sets, results, lifts, skipped, random_curve, digit_masks, channel_std, names,
                                 reinitialized_model)

        out = paths.plots_dir(dataset, STAGE)
        rows = gallery_rows(sets, cfg.n_gallery_images)
        details["gradcam_segmentation"], sweep, pictures = gradcam_views(model, sets, rows, digit_source, cfg.batch_size,
                                                                         cfg.segmentation_thresholds, dataset)
        write_csv(out / "gradcam_segmentation.csv", sweep)
        for picture, figure in pictures.items():
            save_figure(figure, paths.pictures_dir(dataset, STAGE) / picture)
        details["contrastive"], figure = contrastive_analysis(
            model, test["images"], test["labels"], predicted, cfg.contrastive_method, options, noise,
            cfg.n_contrastive_images, ctx.rng("contrastive"), names, cfg.n_gallery_images, dataset)
        save_figure(figure, paths.pictures_dir(dataset, STAGE) / "contrastive.png")
        metrics, details["best_methods"] = headline(details, lifts, headline_figures(answer))
        details["best_methods_chosen_by"] = BEST_BY
        write_json(paths.metrics_path(dataset, "attribution"), metrics)
        write_json(out / "details.json", details)
        save_arrays(paths.DATA / "attributions" / dataset / "attributions.npz", **attribution_arrays(sets, attributions))
        save_plots(dataset, sets, attributions, methods, rows, curves, details, names, cfg, noise, out)
        ctx.timer.images = sum(len(s["targets"]) for s in sets.values()) * max(1, len(methods))
        log(dataset, summary(details, metrics))


def save_plots(dataset: str, sets: dict, attributions: dict, methods: list[str], rows: dict, curves: dict,
               details: dict, names: list[str], cfg: AttributionParams, noise: torch.Tensor, out) -> None:
    import pandas as pd

    images, titles, maps = gallery(sets, attributions, methods, rows, names)
    pictures = paths.pictures_dir(dataset, STAGE)
    heat, color = method_grids(images, maps, titles, dataset)
    save_figure(heat, pictures / "methods_heatmap.png")
    save_figure(color, pictures / "methods_color.png")
    save_figure(ig_baselines_figure(images[:4], {m: maps[m][:4] for m in methods if m.startswith("ig_")}, cfg, noise,
                                    dataset), pictures / "ig_baselines.png")

    deletion_dir = out / "deletion"
    if deletion_dir.exists():
        for old in deletion_dir.glob("*.csv"):
            old.unlink()
    fractions = np.linspace(0, 1, cfg.deletion_steps + 1)
    for name, curve in curves.items():
        write_csv(deletion_dir / f"{name.replace(' ', '_')}.csv",
                  pd.DataFrame({"fraction": fractions, "probability": curve.cpu().numpy()}))
    save_figure(deletion_figure(fractions, {k: v.cpu().numpy() for k, v in curves.items()}, details, dataset),
                pictures / "deletion.png")

    write_csv(out / "method_scores.csv", method_scores_frame(details["methods"]))
    save_figure(localization_figure(details, methods, dataset), pictures / "localization.png")


if __name__ == "__main__":
    main()
