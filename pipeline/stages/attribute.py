"""Stage ``attribute@<dataset>``: captum attributions of the classifier, scored against the known answer.

Every method explains the classifier's *predicted* class on a seeded sample of test images, and is
scored for faithfulness (deletion curve, infidelity, max-sensitivity), for the model-randomisation
sanity check, and against the ground truth: the planted shortcut's pixels (``clever_hans``), the
digit's pixels, and the RGB channels that carry the colormap (``colored_mnist``). Grad-CAM also
segments the digit, and mistakes get a contrastive (predicted vs. true class) view.

``metrics/<D>/attribution.json`` holds three headline figures (see ``headline``); every score of
every method goes to ``plots/<D>/attribute/details.json`` and ``method_scores.csv``.
"""
from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import torch
from tqdm import tqdm

from pipeline import paths
from pipeline.attribution.methods import (Explainer, as_captum_explanation, gradcam_explainer, make_explainer,
                                          noise_baseline, skip_reason)
from pipeline.attribution.plots import (contrastive_figure, counterfactual_figure, deletion_figure, ig_baselines_figure,
                                        localization_figure, method_grids, placeholder_figure, segmentation_figure)
from pipeline.attribution.scores import (CHANNELS, color_scores, colormap_channel_std, curve_area, deletion_curve,
                                         foreground_mask, nanmean, pixel_map, pointing_game, rank_correlation,
                                         relevance_mass, segmentation_iou)
from pipeline.config import AttributionParams
from pipeline.data.tensors import as_float, batch_slices, subsample, to_float
from pipeline.prepared import load_meta, load_prepared
from pipeline.models.inference import predict_probabilities
from pipeline.models.classifiers import build_seeded_classifier, frozen, load_classifier
from pipeline.runtime import StageContext, stage
from pipeline.storage import load_checkpoint, save_arrays, save_figure, write_csv, write_json

STAGE = "attribute"


def log(dataset: str, message: str) -> None:
    print(f"[{STAGE}@{dataset}] {message}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Which images are explained
# --------------------------------------------------------------------------------------------
def image_sets(test: dict, predicted: torch.Tensor, model, cfg: AttributionParams, rng: np.random.Generator) -> dict:
    """The images each method explains, as {name: {"index", "images", "targets", ...}}.

    ``sample``: a seeded sample of the test split, explained for the predicted class. For Clever Hans
    also ``shortcut``: shortcut-class test images carrying their shortcut, explained for that class,
    with the ground-truth mask; and ``flipped``: images of *other* classes stamped with the shortcut
    that the model assigns to the shortcut class (where the Clever Hans strategy shows).
    """
    device = test["images"].device
    chosen = torch.as_tensor(subsample(len(test["labels"]), cfg.n_images, rng), device=device)
    sets = {"sample": {"index": chosen, "images": test["images"][chosen], "targets": predicted[chosen],
                       "which": torch.full_like(chosen, -1)}}
    if "shortcut_images" not in test:
        return sets
    labels = test["labels"]
    for name in ("shortcut", "flipped"):
        parts = []
        for k, label in enumerate(test["shortcut_labels"].tolist()):
            stamped = test["shortcut_images"][k]
            if name == "shortcut":
                members = labels == label
            else:
                stamped_prediction = predict_probabilities(model, stamped, cfg.internal_batch_size).argmax(1)
                members = (labels != label) & (stamped_prediction == label)
            candidates = torch.nonzero(members).squeeze(1)
            keep = candidates[torch.as_tensor(subsample(len(candidates), cfg.n_localization_images, rng), device=device)]
            parts.append({"index": keep, "images": stamped[keep], "targets": torch.full_like(keep, label),
                          "which": torch.full_like(keep, k)})
        sets[name] = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        sets[name]["masks"] = test["shortcut_alpha"][sets[name]["which"]] > 0
    return sets


# --------------------------------------------------------------------------------------------
# Attributions, batched
# --------------------------------------------------------------------------------------------
def attribute_batches(explain: Explainer, images: torch.Tensor, targets: torch.Tensor, batch_size: int,
                      bar: tqdm | None = None) -> torch.Tensor:
    """Attributions (float32, on the images' device) of uint8 or float images, ``batch_size`` at a time."""
    out = []
    for part in batch_slices(len(images), batch_size):
        batch = images[part]
        batch = as_float(batch)
        out.append(explain(batch, targets[part]).detach().float())
        if bar is not None:
            bar.update(1)
    return torch.cat(out) if out else torch.empty((0, *images.shape[1:]), device=images.device)


def runnable_methods(names: list[str], model) -> tuple[list[str], dict[str, str]]:
    runnable, skipped = [], {}
    for name in names:
        reason = skip_reason(name, model)
        if reason:
            skipped[name] = reason
        else:
            runnable.append(name)
    return runnable, skipped


def attribute_all(methods: list[str], model, sets: dict, cfg: AttributionParams, noise: torch.Tensor) -> dict:
    """{method: {set name: attributions}}: every image set in one batched pass per method, one progress bar."""
    images = torch.cat([s["images"] for s in sets.values()])
    targets = torch.cat([s["targets"] for s in sets.values()])
    sizes = [len(s["targets"]) for s in sets.values()]
    result = {}
    with tqdm(total=math.ceil(len(images) / cfg.batch_size) * len(methods), desc="attributions", file=sys.stderr,
              mininterval=2, leave=False) as bar:
        for name in methods:
            bar.set_postfix_str(name)
            maps = attribute_batches(make_explainer(name, model, cfg, noise), images, targets, cfg.batch_size, bar)
            result[name] = dict(zip(sets, maps.split(sizes)))
    return result


# --------------------------------------------------------------------------------------------
# Random streams
# --------------------------------------------------------------------------------------------
RANDOM_STREAMS = ("noise_baseline", "infidelity", "deletion_order", "randomized_model", "captum")


def random_streams(ctx: StageContext) -> dict[str, torch.Generator]:
    """One CPU generator per random draw of the stage, each from its own named stream of the global seed.

    ``noise_baseline``: the ``ig_noise`` baseline image; ``infidelity``: the perturbations of captum's
    infidelity; ``deletion_order``: the random-order deletion reference; ``randomized_model``: the
    weights of the re-initialised model of the randomisation check; ``captum``: the seed of the global
    generator that captum's NoiseTunnel and sensitivity_max draw from. Drawn on the CPU, so a CPU and a
    GPU run draw the same numbers (except those captum draws on the data's device).
    """
    return {name: ctx.generator(name, device="cpu") for name in RANDOM_STREAMS}


def random_deletion_order(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A uniform-noise "attribution" of ``shape``: deleting pixels in its order is the reference to beat."""
    return torch.rand(shape, generator=generator, device=generator.device)


def gaussian_perturbation(std: float, generator: torch.Generator):
    """captum's infidelity ``perturb_func``: Gaussian noise of ``std`` drawn by ``generator``, on the inputs' device."""

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(inputs.shape, generator=generator, device=generator.device).to(inputs.device) * std
        return noise, inputs - noise

    return perturb


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------
def probability_function(model, cfg: AttributionParams):
    return lambda images: predict_probabilities(model, images, cfg.internal_batch_size)


def faithfulness_scores(name: str, model, random_model, images: torch.Tensor, targets: torch.Tensor,
                        attributions: torch.Tensor, cfg: AttributionParams, noise: torch.Tensor, perturb) -> dict:
    """Infidelity and randomisation check on ``n_faithfulness_images``, max-sensitivity on ``n_sensitivity_images``.

    ``noise``: the ``ig_noise`` baseline image; ``perturb``: infidelity's perturbation (``gaussian_perturbation``).
    """
    from captum.metrics import infidelity, sensitivity_max

    x = to_float(images[: cfg.n_faithfulness_images])
    t = targets[: cfg.n_faithfulness_images]
    infidelities = infidelity(model, perturb, x, attributions[: len(x)], target=t,
                              n_perturb_samples=cfg.infidelity_samples, normalize=True,
                              max_examples_per_batch=max(len(x), min(cfg.batch_size * 4, len(x) * cfg.infidelity_samples)))
    random_maps = attribute_batches(make_explainer(name, random_model, cfg, noise), x, t, cfg.batch_size)
    randomization = rank_correlation(pixel_map(attributions[: len(x)]).abs(), pixel_map(random_maps).abs())

    xs, ts = x[: cfg.n_sensitivity_images], t[: cfg.n_sensitivity_images]
    explanation = as_captum_explanation(make_explainer(name, model, cfg, noise))
    sensitivities = sensitivity_max(explanation, xs, perturb_radius=cfg.sensitivity_radius,
                                    n_perturb_samples=cfg.sensitivity_samples, target=ts,
                                    max_examples_per_batch=max(len(xs), min(cfg.batch_size, len(xs) * cfg.sensitivity_samples)))
    return {"infidelity": nanmean(infidelities), "sensitivity_max": nanmean(sensitivities),
            "randomization_spearman": nanmean(randomization)}


def score_methods(methods: list[str], model, random_model, sets: dict, attributions: dict, digit_masks: torch.Tensor,
                  labels: torch.Tensor, class_names: list[str], channel_std: np.ndarray | None, cfg: AttributionParams,
                  noise: torch.Tensor, perturb) -> tuple[dict, dict]:
    """Every score of every method on the sample ({method: {score: value}}), and its mean deletion curve."""
    sample = sets["sample"]
    images = to_float(sample["images"])
    probability = probability_function(model, cfg)
    results, curves = {}, {}
    for name in tqdm(methods, desc="scores", file=sys.stderr, leave=False):
        maps = attributions[name]["sample"]
        curve = deletion_curve(probability, images, maps, sample["targets"], 0.0, cfg.deletion_steps)
        curves[name] = curve.mean(dim=0)
        record = {"deletion_auc": curve_area(curve).mean().item()}
        record.update(faithfulness_scores(name, model, random_model, sample["images"], sample["targets"], maps, cfg,
                                          noise, perturb))
        if "shortcut" in sets:
            for key, suffix in (("shortcut", ""), ("flipped", "_flipped")):
                maps_k, masks = attributions[name][key], sets[key]["masks"]
                record[f"relevance_mass{suffix}"] = nanmean(relevance_mass(maps_k, masks))
                record[f"pointing_game{suffix}"] = nanmean(pointing_game(maps_k, masks))
        record["relevance_mass_digit"] = nanmean(relevance_mass(maps, digit_masks))
        record["pointing_game_digit"] = nanmean(pointing_game(maps, digit_masks))
        if channel_std is not None and name != "gradcam":  # Grad-CAM has no per-channel relevance
            record.update(color_scores(maps, labels, class_names, channel_std))
        results[name] = record
    return results, curves


# --------------------------------------------------------------------------------------------
# Headline figures
# --------------------------------------------------------------------------------------------
BEST_OF = {  # metrics key: (per-method score, True when higher is better)
    "best_deletion_auc": ("deletion_auc", False),
    "best_shortcut_relevance_mass_flipped": ("relevance_mass_flipped", True),
    "best_colormap_alignment": ("colormap_alignment", True),
}


def best_method(results: dict, score: str, higher_is_better: bool) -> str | None:
    """The method with the best finite ``score`` (None when no method has one)."""
    finite = {m: r[score] for m, r in results.items() if isinstance(r.get(score), float) and math.isfinite(r[score])}
    if not finite:
        return None
    return (max if higher_is_better else min)(finite, key=finite.get)


def headline(details: dict) -> tuple[dict, dict]:
    """The metrics file (numbers only) and, for details.json, the method behind each ``best_*`` figure.

    ``best_deletion_auc`` (lowest: most faithful) sits beside ``random_order_deletion_auc``, the same
    area for pixels removed in random order; the known answer adds the best relevance mass on the
    shortcut of images the stamp turned into the shortcut class (Clever Hans) or the best alignment
    of the channel shares with the colormaps' channels (colored MNIST). Scores a dataset does not
    measure are left out.
    """
    results = details["methods"]
    measured = {key: spec for key, spec in BEST_OF.items() if any(spec[0] in r for r in results.values())}
    methods = {key: best_method(results, score, higher_is_better) for key, (score, higher_is_better) in measured.items()}
    best = {key: results[method][measured[key][0]] if method else float("nan") for key, method in methods.items()}
    metrics = {"best_deletion_auc": best.pop("best_deletion_auc"),
               "random_order_deletion_auc": details["random_order_deletion_auc"], **best}
    return metrics, methods


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("ignore", category=UserWarning, module=r"captum.*")
    warnings.filterwarnings("ignore", message=r".*(require gradients|non-linear activations|requires_grad).*")
    with stage(STAGE, argv) as ctx:
        cfg, dataset, device = ctx.params.attribution, ctx.dataset, ctx.device
        streams = random_streams(ctx)
        torch.manual_seed(streams["captum"].initial_seed())  # NoiseTunnel and sensitivity_max draw from the global one
        meta = load_meta(dataset)
        names = meta["class_names"]
        test = load_prepared(dataset, "test", device)
        model_path = paths.classifier_path(dataset)
        model = load_classifier(model_path, device)
        config = load_checkpoint(model_path, made_by=f"train_classifier@{dataset}")["config"]
        random_model = frozen(build_seeded_classifier(config, streams["randomized_model"].initial_seed()), device)
        noise = noise_baseline(tuple(test["images"].shape[1:]), streams["noise_baseline"]).to(device)

        methods, skipped = runnable_methods(cfg.methods, model)
        for name, reason in skipped.items():
            log(dataset, f"skipping {name}: {reason}")
        predicted = predict_probabilities(model, test["images"], cfg.internal_batch_size).argmax(1)
        sets = image_sets(test, predicted, model, cfg, ctx.rng("images"))
        sample = sets["sample"]
        log(dataset, f"{len(methods)} methods on " + ", ".join(f"{len(s['targets'])} {k}" for k, s in sets.items()) + " images")
        attributions = attribute_all(methods, model, sets, cfg, noise)

        digit_source = test["clean_images"] if "clean_images" in test else test["images"]
        digit_masks = foreground_mask(digit_source[sample["index"]])
        channel_std = colormap_channel_std(ctx.params.colored_mnist.colormaps) if dataset == "colored_mnist" else None
        results, curves = score_methods(methods, model, random_model, sets, attributions, digit_masks,
                                        test["labels"][sample["index"]], names, channel_std, cfg, noise,
                                        gaussian_perturbation(cfg.infidelity_noise, streams["infidelity"]))
        images = to_float(sample["images"])
        random_order = random_deletion_order(tuple(images.shape), streams["deletion_order"]).to(device)
        random_curve = deletion_curve(probability_function(model, cfg), images, random_order, sample["targets"], 0.0,
                                      cfg.deletion_steps)
        curves["random order"] = random_curve.mean(dim=0)

        details = {"n_images": len(sample["targets"]), "methods": results, "skipped": skipped,
                   "random_order_deletion_auc": curve_area(random_curve).mean().item()}
        if "shortcut" in sets:
            details["localization"] = {
                "n_shortcut_images": len(sets["shortcut"]["targets"]),
                "n_flipped_images": len(sets["flipped"]["targets"]),
                "mask_area_fraction": sets["shortcut"]["masks"].float().mean().item(),
            }
        details["digit_area_fraction"] = digit_masks.float().mean().item()
        if channel_std is not None:
            details["colormap_channel_std"] = {n: dict(zip(CHANNELS, row.tolist())) for n, row in zip(names, channel_std)}

        out = paths.plots_dir(dataset, STAGE)
        gallery = gallery_rows(sets, cfg.n_gallery_images)
        details["gradcam_segmentation"] = gradcam_outputs(model, sets, gallery, digit_source, cfg, out, dataset)
        details["contrastive"] = contrastive_outputs(model, test, predicted, cfg, noise, ctx.rng("contrastive"), names,
                                                     out, dataset)
        metrics, details["best_methods"] = headline(details)
        write_json(paths.metrics_path(dataset, "attribution"), metrics)
        write_json(out / "details.json", details)
        save_attributions(dataset, sets, attributions)
        save_plots(dataset, sets, attributions, methods, gallery, curves, details, names, cfg, noise, out)
        ctx.timer.images = sum(len(s["targets"]) for s in sets.values()) * max(1, len(methods))
        log(dataset, summary(details, "shortcut" in sets))


def summary(details: dict, localization: bool) -> str:
    key = "relevance_mass" if localization else "deletion_auc"
    ranked = sorted(((v.get(key, float("nan")), k) for k, v in details["methods"].items()), reverse=localization)
    best = ", ".join(f"{k} {v:.3f}" for v, k in ranked[:3])
    seg = details["gradcam_segmentation"]
    text = f"best {key}: {best}"
    if seg.get("best_iou") is not None:
        text += f"; Grad-CAM digit IoU {seg['best_iou']:.3f} at {seg['best_threshold']:.2f}"
    return text + f"; {details['contrastive']['n_misclassified']} mistakes"


# --------------------------------------------------------------------------------------------
# Grad-CAM segmentation, counterfactual Grad-CAM, contrastive saliency
# --------------------------------------------------------------------------------------------
def gallery_rows(sets: dict, n: int) -> dict:
    """Images shown in the pictures: the sample, and for Clever Hans half of them images with the shortcut."""
    if "flipped" not in sets:
        return {"sample": slice(0, n)}
    second = "flipped" if len(sets["flipped"]["targets"]) else "shortcut"
    return {"sample": slice(0, n - n // 2), second: slice(0, n // 2)}


def gradcam_outputs(model, sets: dict, gallery: dict, digit_source: torch.Tensor, cfg: AttributionParams, out,
                    dataset: str) -> dict:
    """Segmentation sweep of Grad-CAM against the digit's pixels, and the counterfactual Grad-CAM picture."""
    import pandas as pd

    if skip_reason("gradcam", model):
        write_csv(out / "gradcam_segmentation.csv", pd.DataFrame(columns=["threshold", "iou"]))
        for picture in ("gradcam_segmentation.png", "gradcam_counterfactual.png"):
            save_figure(placeholder_figure(skip_reason("gradcam", model)), out / picture)
        return {"best_threshold": None, "best_iou": None, "skipped": skip_reason("gradcam", model)}
    sample = sets["sample"]
    cams = attribute_batches(gradcam_explainer(model), sample["images"], sample["targets"], cfg.batch_size)
    truth = foreground_mask(digit_source[sample["index"]])
    thresholds = torch.linspace(0, 1, cfg.segmentation_thresholds + 1, device=cams.device)[:-1]
    iou = segmentation_iou(cams, truth, thresholds).mean(dim=1)
    best = int(iou.argmax())
    write_csv(out / "gradcam_segmentation.csv", pd.DataFrame({"threshold": thresholds.cpu().numpy(), "iou": iou.cpu().numpy()}))
    n = min(6, len(cams))
    save_figure(segmentation_figure(thresholds.cpu().numpy(), iou.cpu().numpy(), best, sample["images"][:n].cpu().numpy(),
                                    pixel_map(cams[:n]).cpu().numpy(), truth[:n].cpu().numpy(), dataset),
                out / "gradcam_segmentation.png")

    rows = [(sets[k]["images"][s], sets[k]["targets"][s]) for k, s in gallery.items()]
    images, targets = torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])
    normal = attribute_batches(gradcam_explainer(model), images, targets, cfg.batch_size)
    against = attribute_batches(gradcam_explainer(model, counterfactual=True), images, targets, cfg.batch_size)
    save_figure(counterfactual_figure(images.cpu().numpy(), pixel_map(normal).cpu().numpy(),
                                      pixel_map(against).cpu().numpy(), targets.cpu().numpy(), dataset),
                out / "gradcam_counterfactual.png")
    return {"best_threshold": thresholds[best].item(), "best_iou": iou[best].item()}


def contrastive_outputs(model, test: dict, predicted: torch.Tensor, cfg: AttributionParams, noise: torch.Tensor,
                        rng: np.random.Generator, names: list[str], out, dataset: str) -> dict:
    """Attributions of misclassified images for the predicted and the true class, and how alike they are."""
    wrong = torch.nonzero(predicted != test["labels"]).squeeze(1)
    record = {"method": cfg.contrastive_method, "n_misclassified": len(wrong), "n_analysed": 0, "mean_rank_correlation": None}
    reason = skip_reason(cfg.contrastive_method, model)
    if reason or not len(wrong):
        save_figure(placeholder_figure(reason or "no misclassified test images"), out / "contrastive.png")
        return record | ({"skipped": reason} if reason else {})
    chosen = wrong[torch.as_tensor(subsample(len(wrong), cfg.n_contrastive_images, rng), device=wrong.device)]
    explain = make_explainer(cfg.contrastive_method, model, cfg, noise)
    images = test["images"][chosen]
    for_predicted = pixel_map(attribute_batches(explain, images, predicted[chosen], cfg.batch_size))
    for_true = pixel_map(attribute_batches(explain, images, test["labels"][chosen], cfg.batch_size))
    record.update(n_analysed=len(chosen), mean_rank_correlation=nanmean(rank_correlation(for_predicted, for_true)))
    n = min(cfg.n_gallery_images, len(chosen))
    save_figure(contrastive_figure(images[:n].cpu().numpy(), for_predicted[:n].cpu().numpy(), for_true[:n].cpu().numpy(),
                                   [names[i] for i in predicted[chosen][:n].tolist()],
                                   [names[i] for i in test["labels"][chosen][:n].tolist()], cfg.contrastive_method, dataset),
                out / "contrastive.png")
    return record


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------
def save_attributions(dataset: str, sets: dict, attributions: dict) -> None:
    """float16 attributions per method and image set, with the test indices, targets and shortcut index."""
    arrays = {}
    for key, s in sets.items():
        arrays[f"{key}_index"] = s["index"].cpu().numpy()
        arrays[f"{key}_targets"] = s["targets"].cpu().numpy()
        arrays[f"{key}_shortcut"] = s["which"].cpu().numpy()
        for name, per_set in attributions.items():
            arrays[f"{key}_{name}"] = per_set[key].cpu().numpy().astype(np.float16)
    save_arrays(paths.DATA / "attributions" / dataset / "attributions.npz", **arrays)


def method_scores_frame(results: dict):
    """One row per method, one column per number it scored: the per-method detail, for bar charts."""
    import pandas as pd

    rows = [{"method": method} | {k: v for k, v in scores.items() if isinstance(v, (int, float))}
            for method, scores in results.items()]
    return pd.DataFrame(rows)


def save_plots(dataset: str, sets: dict, attributions: dict, methods: list[str], gallery: dict, curves: dict,
               details: dict, names: list[str], cfg: AttributionParams, noise: torch.Tensor, out) -> None:
    import pandas as pd

    rows = [(sets[k]["images"][s], sets[k]["targets"][s], k) for k, s in gallery.items()]
    images = torch.cat([r[0] for r in rows]).cpu().numpy()
    titles = [f"{'shortcut ' if kind != 'sample' else ''}→ {names[t]}" for _, targets, kind in rows for t in targets.tolist()]
    maps = {name: torch.cat([attributions[name][k][s] for k, s in gallery.items()]).cpu().numpy() for name in methods}
    heat, color = method_grids(images, maps, titles, dataset)
    save_figure(heat, out / "methods_heatmap.png")
    save_figure(color, out / "methods_color.png")
    save_figure(ig_baselines_figure(images[:4], {m: maps[m][:4] for m in methods if m.startswith("ig_")}, cfg, noise, dataset),
                out / "ig_baselines.png")

    deletion_dir = out / "deletion"
    if deletion_dir.exists():
        for old in deletion_dir.glob("*.csv"):
            old.unlink()
    fractions = np.linspace(0, 1, cfg.deletion_steps + 1)
    for name, curve in curves.items():
        write_csv(deletion_dir / f"{name.replace(' ', '_')}.csv",
                  pd.DataFrame({"fraction": fractions, "probability": curve.cpu().numpy()}))
    save_figure(deletion_figure(fractions, {k: v.cpu().numpy() for k, v in curves.items()}, details, dataset),
                out / "deletion.png")

    write_csv(out / "method_scores.csv", method_scores_frame(details["methods"]))
    save_figure(localization_figure(details, methods, dataset), out / "localization.png")


if __name__ == "__main__":
    main()
