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
from pipeline.config import CounterfactualParams
from pipeline.data.tensors import batch_slices, to_float, to_uint8
from pipeline.prepared import load_meta, load_prepared
from pipeline.counterfactuals.frechet import feature_frechet_distance
from pipeline.models.inference import embed_images, predict_probabilities
from pipeline.storage import save_arrays, save_figure, write_csv, write_json

CHANGE_THRESHOLD = 0.1  # a pixel "changed" when some channel moved by more than this (images in [0, 1])
MODES = {"reference": "", "latent": "_latent"}  # guidance -> key suffix in counterfactuals.npz
CONTRACT_KEYS = ("real", "counterfactual", "counterfactual_latent", "image_index", "source", "target",
                 "predicted", "target_probability", "predicted_latent", "target_probability_latent")


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------
def all_other_targets(sources: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row -> position in ``sources``, row -> target class) for every target != source, image-major order."""
    n = len(sources)
    rows = torch.arange(n, device=sources.device).repeat_interleave(n_classes)
    targets = torch.arange(n_classes, device=sources.device).repeat(n)
    keep = targets != sources[rows]
    return rows[keep], targets[keep]


@torch.no_grad()
def class_reference_styles(translator: nn.Module, images: torch.Tensor, labels: torch.Tensor, n_classes: int,
                           mode: str, n_references: int, generator: torch.Generator) -> torch.Tensor:
    """One style code per class (n_classes x style_dim): the mean style of ``n_references`` random images
    of the class (``mean_style``) or the style of one random image of it (``fixed_image``)."""
    count = 1 if mode == "fixed_image" else n_references
    styles = []
    for c in range(n_classes):  # one batched pass per class, n_classes <= 10
        members = torch.nonzero(labels == c).flatten()
        if len(members) == 0:
            raise ValueError(f"no reference images of class {c}")
        chosen = members[torch.randperm(len(members), generator=generator, device=generator.device)[:count].to(members.device)]
        classes = torch.full((len(chosen),), c, device=images.device, dtype=torch.long)
        styles.append(translator.reference_style(to_float(images[chosen]), classes).float().mean(0))
    return torch.stack(styles)


@torch.no_grad()
def translate(translator: nn.Module, images: torch.Tensor, styles: torch.Tensor, batch_size: int) -> torch.Tensor:
    """uint8 counterfactuals of uint8 ``images`` (N x 3 x 28 x 28) under per-row ``styles`` (N x S), batched."""
    out = torch.empty_like(images, dtype=torch.uint8)
    for part in batch_slices(len(images), batch_size):
        out[part] = to_uint8(translator(to_float(images[part]), styles[part]).float())
    return out


def make_counterfactuals(translator: nn.Module, classifier: nn.Module, test: dict, references: dict,
                         n_classes: int, cfg: CounterfactualParams, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """All counterfactuals of a seeded sample of test images, in the counterfactuals.npz format (tensors)."""
    device = test["images"].device
    order = torch.randperm(len(test["images"]), generator=generator, device=generator.device).to(device)
    pick = order[: cfg.n_images].sort().values
    rows, targets = all_other_targets(test["labels"][pick], n_classes)
    image_index = pick[rows]
    real = test["images"][image_index]
    class_styles = class_reference_styles(translator, references["images"], references["labels"], n_classes,
                                          cfg.reference, cfg.n_reference_images, generator)
    counterfactual = translate(translator, real, class_styles[targets], cfg.batch_size)
    z = torch.randn(len(targets), translator.config["latent_dim"], generator=generator, device=generator.device).to(device)
    latent_styles = torch.cat([translator.latent_style(z[part], targets[part]) for part in batch_slices(len(z), cfg.batch_size)]) \
        if len(z) else z
    counterfactual_latent = translate(translator, real, latent_styles, cfg.batch_size)
    result = {"real": real, "counterfactual": counterfactual, "counterfactual_latent": counterfactual_latent,
              "image_index": image_index.long(), "source": test["labels"][image_index].long(), "target": targets.long()}
    for suffix, images in (("", counterfactual), ("_latent", counterfactual_latent)):
        probabilities = predict_probabilities(classifier, images, cfg.batch_size)
        result[f"predicted{suffix}"] = probabilities.argmax(1)
        result[f"target_probability{suffix}"] = probabilities.gather(1, targets[:, None]).squeeze(1).float()
    result["class_styles"] = class_styles
    return result


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def conversion(predicted: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> tuple[float, dict[str, float]]:
    """Share of counterfactuals the classifier assigns to their target: overall and per "source->target" pair."""
    hit = (predicted == target).float()
    overall = hit.mean().item() if len(hit) else float("nan")
    pairs = torch.stack([source, target], 1)
    unique, inverse = torch.unique(pairs, dim=0, return_inverse=True)
    sums = torch.zeros(len(unique), device=hit.device).index_add_(0, inverse, hit)
    counts = torch.bincount(inverse, minlength=len(unique)).float()
    per_pair = {f"{s}->{t}": v for (s, t), v in zip(unique.tolist(), (sums / counts).tolist())}
    return overall, per_pair


def change_size(real: torch.Tensor, counterfactual: torch.Tensor) -> tuple[float, float]:
    """(mean absolute change per pixel and channel, share of pixels changed by more than CHANGE_THRESHOLD)."""
    if len(real) == 0:
        return float("nan"), float("nan")
    diff = (to_float(counterfactual) - to_float(real)).abs()
    return diff.mean().item(), (diff.amax(dim=1) > CHANGE_THRESHOLD).float().mean().item()


def shuffled_members(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Positions where ``mask`` is true, in a seeded random order."""
    members = torch.nonzero(mask).flatten()
    return members[torch.randperm(len(members), generator=generator, device=generator.device).to(members.device)]


def feature_distances(real_features: torch.Tensor, real_labels: torch.Tensor,
                      counterfactual_features: dict[str, torch.Tensor], targets: torch.Tensor, n_classes: int,
                      generator: torch.Generator) -> dict:
    """Per class c, the Fréchet distance of each mode's counterfactuals into c to real images of c, and its floor.

    The real images of c are split once into disjoint halves A and B. Every mode is compared with the
    same half A, on the same ``m`` counterfactual rows (the same images and targets in every mode).
    The floor is the distance between A and ``m`` images of B: the same sample sizes as the
    comparison it is the floor for (the Fréchet distance grows as samples shrink).
    ``m`` = min(counterfactuals into c, size of B). Returns ``{"distance": {mode: {c: value}},
    "floor": {c: value}, "n_compared": {c: m}}``; a class with m < 2 gets NaN.
    """
    result = {"distance": {mode: {} for mode in counterfactual_features}, "floor": {}, "n_compared": {}}
    for c in range(n_classes):
        members = shuffled_members(real_labels == c, generator)
        half_a, half_b = members[: len(members) // 2], members[len(members) // 2:]
        into_c = shuffled_members(targets == c, generator)
        m = min(len(into_c), len(half_b))
        rows = into_c[:m]
        result["floor"][str(c)] = feature_frechet_distance(real_features[half_a], real_features[half_b[:m]])
        for mode, features in counterfactual_features.items():
            result["distance"][mode][str(c)] = feature_frechet_distance(real_features[half_a], features[rows])
        result["n_compared"][str(c)] = m
    return result


def nanmean(values) -> float:
    values = np.asarray(list(values), dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def evaluate(result: dict, classifier: nn.Module, test: dict, n_classes: int, generator: torch.Generator,
             batch_size: int) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """(headline metrics of counterfactuals.json, details per mode/pair/class, target-vs-predicted confusion per mode).

    The test images are embedded once; both modes are compared with the same real images.
    """
    from pipeline.evaluation.classification import confusion_matrix

    real_features = embed_images(classifier, test["images"], batch_size)
    fake_features = {mode: embed_images(classifier, result[f"counterfactual{suffix}"], batch_size)
                     for mode, suffix in MODES.items()}
    distances = feature_distances(real_features, test["labels"], fake_features, result["target"], n_classes, generator)
    details = {"n_counterfactuals": len(result["target"]), "modes": {},
               "feature_distance_real_floor": nanmean(distances["floor"].values()),
               "feature_distance_real_floor_per_class": distances["floor"],
               "feature_distance_n_compared_per_class": distances["n_compared"]}
    confusions = {}
    for mode, suffix in MODES.items():
        rate, per_pair = conversion(result[f"predicted{suffix}"], result["source"], result["target"])
        l1, changed = change_size(result["real"], result[f"counterfactual{suffix}"])
        details["modes"][mode] = {
            "conversion_rate": rate, "mean_l1": l1, "changed_pixel_fraction": changed,
            "feature_distance": nanmean(distances["distance"][mode].values()),
            "feature_distance_per_class": distances["distance"][mode], "conversion_per_pair": per_pair}
        confusions[suffix] = confusion_matrix(result["target"], result[f"predicted{suffix}"], n_classes)
    reference = details["modes"]["reference"]
    metrics = {"conversion_rate": reference["conversion_rate"],
               "conversion_rate_latent": details["modes"]["latent"]["conversion_rate"],
               "mean_l1": reference["mean_l1"], "changed_pixel_fraction": reference["changed_pixel_fraction"],
               "feature_distance": reference["feature_distance"],
               "feature_distance_real_floor": details["feature_distance_real_floor"]}
    return metrics, details, confusions


def mean_abs_error(images: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean absolute per-pixel, per-channel difference of two uint8 image sets, on the [0, 1] scale."""
    if not len(images):
        return float("nan")
    return (images.float() - truth.float()).abs().mean().item() / 255.0


def exact_error(result: dict, test: dict, colormaps: list[str]) -> dict:
    """Colored MNIST: the GAN's error against the exact counterfactual (the same digit, recolored with the
    target colormap at the same position), per guidance mode, beside the error of changing nothing."""
    from pipeline.data.colored_mnist import exact_counterfactuals

    index = result["image_index"].cpu()
    exact = exact_counterfactuals(test["gray"].cpu().numpy()[index], test["positions"].cpu().numpy()[index],
                                  result["target"].cpu().numpy(), colormaps)
    exact = torch.from_numpy(exact).to(result["real"].device)
    errors = {mode: mean_abs_error(result[f"counterfactual{suffix}"], exact) for mode, suffix in MODES.items()}
    errors["unchanged_image"] = mean_abs_error(result["real"], exact)
    return errors


# --------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def gallery(translator: nn.Module, classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor,
            class_styles: torch.Tensor, class_names: list[str], title: str):
    """Rows: test images; columns: the original, then its counterfactual into each class (reference-guided),
    titled with the classifier's probability of that class."""
    from pipeline.plotting import image_grid

    n, n_classes = len(images), len(class_names)
    rows = torch.arange(n, device=images.device).repeat_interleave(n_classes)
    targets = torch.arange(n_classes, device=images.device).repeat(n)
    fakes = translate(translator, images[rows], class_styles[targets], 4096)
    p_fake = predict_probabilities(classifier, fakes).gather(1, targets[:, None]).squeeze(1).view(n, n_classes)
    p_real = predict_probabilities(classifier, images).gather(1, labels[:, None]).squeeze(1)
    grid = torch.cat([images[:, None], fakes.view(n, n_classes, *images.shape[1:])], 1).flatten(0, 1).cpu().numpy()
    titles = []
    for r, label in enumerate(labels.tolist()):
        titles.append(f"{class_names[label]}: p={p_real[r]:.2f}")
        titles += [f"→{class_names[c]}: p={p_fake[r, c]:.2f}" for c in range(n_classes)]
    return image_grid(grid, titles, ncols=n_classes + 1, suptitle=title)


@torch.no_grad()
def interpolation(classifier: nn.Module, real: torch.Tensor, counterfactual: torch.Tensor, source: torch.Tensor,
                  target: torch.Tensor, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-space blends (1 - a) x + a x_cf for a in linspace(0, 1, steps), with the classifier's
    source and target probabilities at each step.

    Returns (blends n x steps x C x H x W, alphas [steps], p_source n x steps, p_target n x steps).
    """
    n = len(real)
    alphas = torch.linspace(0, 1, steps, device=real.device)
    x, x_cf = to_float(real)[:, None], to_float(counterfactual)[:, None]
    blends = (1 - alphas.view(1, -1, 1, 1, 1)) * x + alphas.view(1, -1, 1, 1, 1) * x_cf  # n x steps x C x H x W
    probabilities = predict_probabilities(classifier, blends.flatten(0, 1)).view(n, steps, -1)
    p_source = probabilities.gather(2, source.view(n, 1, 1).expand(n, steps, 1)).squeeze(2).cpu().numpy()
    p_target = probabilities.gather(2, target.view(n, 1, 1).expand(n, steps, 1)).squeeze(2).cpu().numpy()
    return blends.cpu().numpy(), alphas.cpu().numpy(), p_source, p_target


def interpolation_figure(blends: np.ndarray, p_source: np.ndarray, p_target: np.ndarray, title: str):
    from pipeline.plotting import image_grid

    n, steps = blends.shape[:2]
    titles = [f"{ps:.2f}|{pt:.2f}" for ps, pt in zip(p_source.flat, p_target.flat)]
    return image_grid(blends.reshape(n * steps, *blends.shape[2:]), titles, ncols=steps, cell=1.0,
                      suptitle=title + "  (titles: p(source)|p(target))")


def write_series(folder, frames: dict[str, pd.DataFrame]) -> None:
    """One CSV per series in ``folder`` (emptied first, so no series of an earlier run is left over)."""
    shutil.rmtree(folder, ignore_errors=True)
    for name, frame in frames.items():
        write_csv(folder / f"{name}.csv", frame)


def pca_2d(values: torch.Tensor) -> np.ndarray:
    centred = values.float() - values.float().mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ v[:2].T).cpu().numpy()


def style_space_figure(points: np.ndarray, labels: np.ndarray, class_names: list[str], colors: np.ndarray | None, title: str):
    import matplotlib.pyplot as plt

    panels = 2 if colors is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.6), squeeze=False)
    ax = axes[0, 0]
    cmap = plt.get_cmap("tab10")
    for c, name in enumerate(class_names):
        chosen = labels == c
        ax.scatter(points[chosen, 0], points[chosen, 1], s=5, color=cmap(c % 10), label=name, alpha=0.7)
    ax.legend(fontsize=7, markerscale=2)
    ax.set_title("colored by class", fontsize=9)
    if colors is not None:
        axes[0, 1].scatter(points[:, 0], points[:, 1], s=5, c=np.clip(colors, 0, 1))
        axes[0, 1].set_title("colored by each image's RGB color", fontsize=9)
    for a in axes.flat:
        a.set_xlabel("PC 1")
        a.set_ylabel("PC 2")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_plots(dataset: str, result: dict, confusions: dict, details: dict, translator: nn.Module,
               classifier: nn.Module, test: dict, class_names: list[str], cfg: CounterfactualParams) -> None:
    from pipeline.plotting import confusion_heatmap

    out = paths.plots_dir(dataset, "counterfactuals")
    target = result["target"].cpu().numpy()
    for mode, suffix in MODES.items():
        predicted = result[f"predicted{suffix}"].cpu().numpy()
        write_csv(out / f"confusion{suffix}.csv", pd.DataFrame({
            "target": [class_names[t] for t in target], "predicted": [class_names[p] for p in predicted]}))
        fig = confusion_heatmap(confusions[suffix].cpu().numpy(), class_names,
                                f"{dataset}: {mode}-guided counterfactuals (row-normalised colour, counts)")
        fig.axes[0].set_ylabel("target")
        save_figure(fig, out / f"confusion{suffix}.png")
    write_series(out / "conversion_per_pair", {
        mode: pd.DataFrame({"pair": list(entry["conversion_per_pair"]),
                            "conversion_rate": list(entry["conversion_per_pair"].values())})
        for mode, entry in details["modes"].items()})

    # gallery: the first images of the sample, one per row
    first = torch.unique(result["image_index"])[: cfg.n_gallery_images]
    save_figure(gallery(translator, classifier, test["images"][first], test["labels"][first], result["class_styles"],
                        class_names, f"{dataset}: counterfactuals (reference-guided), p = classifier's probability"),
                out / "gallery.png")

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
                out / "interpolation.png")

    # style space of real test images (their own class's style)
    n = min(cfg.n_style_points, len(test["images"]))
    pick = torch.arange(n, device=test["images"].device)
    with torch.no_grad():
        styles = torch.cat([translator.reference_style(to_float(test["images"][pick[part]]), test["labels"][pick[part]])
                            for part in batch_slices(n, cfg.batch_size)])
    points = pca_2d(styles)
    labels = test["labels"][pick].cpu().numpy()
    frame = pd.DataFrame({"pc1": points[:, 0], "pc2": points[:, 1], "class": [class_names[c] for c in labels]})
    colors = None
    if "colors" in test:
        colors = test["colors"][pick].cpu().numpy()
        frame["color"] = ["#%02x%02x%02x" % tuple(int(round(255 * v)) for v in rgb) for rgb in colors]
    write_csv(out / "style_space.csv", frame)
    save_figure(style_space_figure(points, labels, class_names, colors, f"{dataset}: style codes of test images (PCA)"),
                out / "style_space.png")


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

        result = make_counterfactuals(translator, classifier, test, references, n_classes, cfg, ctx.generator())
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
