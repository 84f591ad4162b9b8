"""Stage ``attribute@<dataset>``: captum attributions of the classifier, scored against the known answer.

Every method explains the classifier's *predicted* class on a seeded sample of test images, and is
scored for faithfulness (deletion curve, infidelity, max-sensitivity), for the model-randomisation
sanity check, and against the ground truth: the planted shortcut's pixels (``clever_hans``), the
digit's pixels, and the RGB channels that carry the colormap (``colored_mnist``). Grad-CAM also
segments the digit, and mistakes get a contrastive (predicted vs. true class) view.
"""
from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import torch
from tqdm import tqdm

from pipeline import paths
from pipeline.attribution_methods import (Explainer, as_captum_explanation, gradcam_explainer, make_explainer,
                                          skip_reason)
from pipeline.attribution_plots import (contrastive_figure, counterfactual_figure, deletion_figure, ig_baselines_figure,
                                        localization_figure, method_grids, placeholder_figure, segmentation_figure)
from pipeline.attribution_scores import (CHANNELS, channel_shares, colormap_channel_std, curve_area, deletion_curve,
                                         foreground_mask, nanmean, pixel_map, pointing_game, rank_correlation,
                                         relevance_mass, segmentation_iou)
from pipeline.config import AttributionParams
from pipeline.data import batch_slices, load_meta, load_prepared, subsample, to_float
from pipeline.inference import predict_probabilities
from pipeline.models import build_classifier, frozen, load_classifier
from pipeline.runtime import stage
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
        batch = to_float(batch) if batch.dtype == torch.uint8 else batch.float()
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


def attribute_all(methods: list[str], model, sets: dict, cfg: AttributionParams, seed: int) -> dict:
    """{method: {set name: attributions}}: every image set in one batched pass per method, one progress bar."""
    images = torch.cat([s["images"] for s in sets.values()])
    targets = torch.cat([s["targets"] for s in sets.values()])
    sizes = [len(s["targets"]) for s in sets.values()]
    result = {}
    with tqdm(total=math.ceil(len(images) / cfg.batch_size) * len(methods), desc="attributions", file=sys.stderr,
              mininterval=2, leave=False) as bar:
        for name in methods:
            bar.set_postfix_str(name)
            maps = attribute_batches(make_explainer(name, model, cfg, seed), images, targets, cfg.batch_size, bar)
            result[name] = dict(zip(sets, maps.split(sizes)))
    return result


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------
def probability_function(model, cfg: AttributionParams):
    return lambda images: predict_probabilities(model, images, cfg.internal_batch_size)


def faithfulness_scores(name: str, model, random_model, images: torch.Tensor, targets: torch.Tensor,
                        attributions: torch.Tensor, cfg: AttributionParams, seed: int) -> dict:
    """Infidelity and randomisation check on ``n_faithfulness_images``, max-sensitivity on ``n_sensitivity_images``."""
    from captum.metrics import infidelity, sensitivity_max

    x = to_float(images[: cfg.n_faithfulness_images])
    t = targets[: cfg.n_faithfulness_images]
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)

    def gaussian_perturbation(inputs):
        noise = torch.randn(inputs.shape, generator=generator, device=inputs.device) * cfg.infidelity_noise
        return noise, inputs - noise

    infidelities = infidelity(model, gaussian_perturbation, x, attributions[: len(x)], target=t,
                              n_perturb_samples=cfg.infidelity_samples, normalize=True,
                              max_examples_per_batch=max(len(x), min(cfg.batch_size * 4, len(x) * cfg.infidelity_samples)))
    random_maps = attribute_batches(make_explainer(name, random_model, cfg, seed), x, t, cfg.batch_size)
    randomization = rank_correlation(pixel_map(attributions[: len(x)]).abs(), pixel_map(random_maps).abs())

    xs, ts = x[: cfg.n_sensitivity_images], t[: cfg.n_sensitivity_images]
    explanation = as_captum_explanation(make_explainer(name, model, cfg, seed))
    sensitivities = sensitivity_max(explanation, xs, perturb_radius=cfg.sensitivity_radius,
                                    n_perturb_samples=cfg.sensitivity_samples, target=ts,
                                    max_examples_per_batch=max(len(xs), min(cfg.batch_size, len(xs) * cfg.sensitivity_samples)))
    return {"infidelity": nanmean(infidelities), "sensitivity_max": nanmean(sensitivities),
            "randomization_spearman": nanmean(randomization)}


def color_scores(attributions: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                 channel_std: np.ndarray) -> dict:
    """Share of |attribution| per RGB channel, overall and per class, and how well it follows the colormap's channels."""
    shares = channel_shares(attributions)
    per_class = torch.stack([shares[labels == c].nanmean(dim=0) if (labels == c).any()
                             else torch.full((3,), torch.nan, device=shares.device) for c in range(len(class_names))])
    per_class = per_class.cpu().numpy()
    expected = channel_std / np.maximum(channel_std.sum(axis=1, keepdims=True), 1e-12)
    finite = np.isfinite(per_class).all(axis=1)
    alignment = (float(np.corrcoef(per_class[finite].ravel(), expected[finite].ravel())[0, 1])
                 if finite.sum() >= 1 and per_class[finite].std() > 0 else float("nan"))
    return {
        "channel_share": dict(zip(CHANNELS, shares.nanmean(dim=0).tolist())),
        "channel_share_per_class": {name: dict(zip(CHANNELS, row.tolist())) for name, row in zip(class_names, per_class)},
        "colormap_alignment": alignment,
    }


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("ignore", category=UserWarning, module=r"captum.*")
    warnings.filterwarnings("ignore", message=r".*(require gradients|non-linear activations|requires_grad).*")
    with stage(STAGE, argv) as ctx:
        cfg, dataset, device = ctx.params.attribution, ctx.dataset, ctx.device
        seed = ctx.rng("seed").integers(2**31 - 1).item()
        torch.manual_seed(seed)  # captum's NoiseTunnel and sensitivity_max draw from the global generator
        meta = load_meta(dataset)
        names = meta["class_names"]
        test = load_prepared(dataset, "test", device)
        model_path = paths.classifier_path(dataset)
        model = load_classifier(model_path, device)
        random_model = build_classifier(load_checkpoint(model_path, made_by=f"train_classifier@{dataset}")["config"])
        frozen(random_model, device)

        methods, skipped = runnable_methods(cfg.methods, model)
        for name, reason in skipped.items():
            log(dataset, f"skipping {name}: {reason}")
        predicted = predict_probabilities(model, test["images"], cfg.internal_batch_size).argmax(1)
        sets = image_sets(test, predicted, model, cfg, ctx.rng("images"))
        sample = sets["sample"]
        log(dataset, f"{len(methods)} methods on " + ", ".join(f"{len(s['targets'])} {k}" for k, s in sets.items()) + " images")
        attributions = attribute_all(methods, model, sets, cfg, seed)

        images = to_float(sample["images"])
        digit_source = test["clean_images"] if "clean_images" in test else test["images"]
        digit_masks = foreground_mask(digit_source[sample["index"]])
        probability = probability_function(model, cfg)
        results, curves = {}, {}
        channel_std = colormap_channel_std(ctx.params.colored_mnist.colormaps) if dataset == "colored_mnist" else None
        for name in tqdm(methods, desc="scores", file=sys.stderr, leave=False):
            maps = attributions[name]["sample"]
            curve = deletion_curve(probability, images, maps, sample["targets"], 0.0, cfg.deletion_steps)
            curves[name] = curve.mean(dim=0)
            record = {"deletion_auc": curve_area(curve).mean().item()}
            record.update(faithfulness_scores(name, model, random_model, sample["images"], sample["targets"], maps, cfg, seed))
            if "shortcut" in sets:
                for key, suffix in (("shortcut", ""), ("flipped", "_flipped")):
                    maps_k, masks = attributions[name][key], sets[key]["masks"]
                    record[f"relevance_mass{suffix}"] = nanmean(relevance_mass(maps_k, masks))
                    record[f"pointing_game{suffix}"] = nanmean(pointing_game(maps_k, masks))
            record["relevance_mass_digit"] = nanmean(relevance_mass(maps, digit_masks))
            record["pointing_game_digit"] = nanmean(pointing_game(maps, digit_masks))
            if channel_std is not None and name != "gradcam":  # Grad-CAM has no per-channel relevance
                record.update(color_scores(maps, test["labels"][sample["index"]], names, channel_std))
            results[name] = record
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        random_order = torch.rand(images.shape, generator=generator, device=device)
        random_curve = deletion_curve(probability, images, random_order, sample["targets"], 0.0, cfg.deletion_steps)
        curves["random order"] = random_curve.mean(dim=0)

        metrics = {"n_images": len(sample["targets"]), "methods": results, "skipped": skipped,
                   "deletion_auc_random": curve_area(random_curve).mean().item()}
        if "shortcut" in sets:
            metrics["localization"] = {
                "n_shortcut_images": len(sets["shortcut"]["targets"]),
                "n_flipped_images": len(sets["flipped"]["targets"]),
                "mask_area_fraction": sets["shortcut"]["masks"].float().mean().item(),
            }
        metrics["digit_area_fraction"] = digit_masks.float().mean().item()
        if channel_std is not None:
            metrics["colormap_channel_std"] = {n: dict(zip(CHANNELS, row.tolist())) for n, row in zip(names, channel_std)}

        out = paths.plots_dir(dataset, STAGE)
        gallery = gallery_rows(sets, cfg.n_gallery_images)
        metrics["gradcam_segmentation"] = gradcam_outputs(model, sets, gallery, digit_source, cfg, out, dataset)
        metrics["contrastive"] = contrastive_outputs(model, test, predicted, cfg, seed, ctx.rng("contrastive"), names,
                                                     out, dataset)
        write_json(paths.metrics_path(dataset, "attribution"), metrics)
        save_attributions(dataset, sets, attributions)
        save_plots(dataset, sets, attributions, methods, gallery, curves, metrics, names, cfg, seed, out)
        ctx.timer.images = sum(len(s["targets"]) for s in sets.values()) * max(1, len(methods))
        log(dataset, summary(metrics, "shortcut" in sets))


def summary(metrics: dict, localization: bool) -> str:
    key = "relevance_mass" if localization else "deletion_auc"
    ranked = sorted(((v.get(key, float("nan")), k) for k, v in metrics["methods"].items()), reverse=localization)
    best = ", ".join(f"{k} {v:.3f}" for v, k in ranked[:3])
    seg = metrics["gradcam_segmentation"]
    text = f"best {key}: {best}"
    if seg.get("best_iou") is not None:
        text += f"; Grad-CAM digit IoU {seg['best_iou']:.3f} at {seg['best_threshold']:.2f}"
    return text + f"; {metrics['contrastive']['n_misclassified']} mistakes"


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


def contrastive_outputs(model, test: dict, predicted: torch.Tensor, cfg: AttributionParams, seed: int,
                        rng: np.random.Generator, names: list[str], out, dataset: str) -> dict:
    """Attributions of misclassified images for the predicted and the true class, and how alike they are."""
    wrong = torch.nonzero(predicted != test["labels"]).squeeze(1)
    record = {"method": cfg.contrastive_method, "n_misclassified": len(wrong), "n_analysed": 0, "mean_rank_correlation": None}
    reason = skip_reason(cfg.contrastive_method, model)
    if reason or not len(wrong):
        save_figure(placeholder_figure(reason or "no misclassified test images"), out / "contrastive.png")
        return record | ({"skipped": reason} if reason else {})
    chosen = wrong[torch.as_tensor(subsample(len(wrong), cfg.n_contrastive_images, rng), device=wrong.device)]
    explain = make_explainer(cfg.contrastive_method, model, cfg, seed)
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


def save_plots(dataset: str, sets: dict, attributions: dict, methods: list[str], gallery: dict, curves: dict,
               metrics: dict, names: list[str], cfg: AttributionParams, seed: int, out) -> None:
    import pandas as pd

    rows = [(sets[k]["images"][s], sets[k]["targets"][s], k) for k, s in gallery.items()]
    images = torch.cat([r[0] for r in rows]).cpu().numpy()
    titles = [f"{'shortcut ' if kind != 'sample' else ''}→ {names[t]}" for _, targets, kind in rows for t in targets.tolist()]
    maps = {name: torch.cat([attributions[name][k][s] for k, s in gallery.items()]).cpu().numpy() for name in methods}
    heat, color = method_grids(images, maps, titles, dataset)
    save_figure(heat, out / "methods_heatmap.png")
    save_figure(color, out / "methods_color.png")
    save_figure(ig_baselines_figure(images[:4], {m: maps[m][:4] for m in methods if m.startswith("ig_")}, cfg, seed, dataset),
                out / "ig_baselines.png")

    deletion_dir = out / "deletion"
    if deletion_dir.exists():
        for old in deletion_dir.glob("*.csv"):
            old.unlink()
    fractions = np.linspace(0, 1, cfg.deletion_steps + 1)
    for name, curve in curves.items():
        write_csv(deletion_dir / f"{name.replace(' ', '_')}.csv",
                  pd.DataFrame({"fraction": fractions, "probability": curve.cpu().numpy()}))
    save_figure(deletion_figure(fractions, {k: v.cpu().numpy() for k, v in curves.items()}, metrics, dataset),
                out / "deletion.png")

    shortcut = "localization" in metrics
    suffix = "" if shortcut else "_digit"
    frame = pd.DataFrame([{"method": m, "relevance_mass": metrics["methods"][m][f"relevance_mass{suffix}"],
                           "pointing_game": metrics["methods"][m][f"pointing_game{suffix}"],
                           "region": "shortcut" if shortcut else "digit"} for m in methods])
    write_csv(out / "localization.csv", frame)
    save_figure(localization_figure(metrics, methods, dataset), out / "localization.png")


if __name__ == "__main__":
    main()
