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
from torch import nn
from tqdm import tqdm

from pipeline import paths
from pipeline.config import OptimizeCounterfactualsParams
from pipeline.data.tensors import as_float, batch_slices, to_float, to_uint8
from pipeline.prepared import load_meta, load_prepared
from pipeline.counterfactuals.frechet import class_matched_frechet
from pipeline.models.inference import embed_images, predict_probabilities
from pipeline.models.classifiers import load_classifier
from pipeline.plotting import as_hwc, placeholder_figure
from pipeline.runtime import stage
from pipeline.storage import load_arrays, save_arrays, save_figure, write_csv, write_json


def output_path(dataset: str):
    return paths.DATA / "optimized_counterfactuals" / dataset / "counterfactuals.npz"


def select_images(predicted: np.ndarray, labels: np.ndarray, n_classes: int, max_misclassified: int, n_correct: int,
                  rng: np.random.Generator, preferred: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Which test images to change and into what.

    Misclassified images (a seeded sample of at most ``max_misclassified``) are pushed to their true
    class; ``n_correct`` correctly classified ones to a seeded random other class. Correct images in
    ``preferred`` (those the GAN translated) are drawn first, so the comparison covers as many as possible.
    """
    wrong = np.flatnonzero(predicted != labels)
    if len(wrong) > max_misclassified:
        wrong = np.sort(rng.choice(wrong, size=max_misclassified, replace=False))
    right = np.flatnonzero(predicted == labels)
    covered = np.isin(right, preferred) if preferred is not None else np.zeros(len(right), dtype=bool)
    order = np.concatenate([rng.permutation(right[covered]), rng.permutation(right[~covered])])
    right = np.sort(order[:n_correct])
    shift = rng.integers(1, n_classes, size=len(right)) if n_classes > 1 else np.zeros(len(right), dtype=np.int64)
    index = np.concatenate([wrong, right]).astype(np.int64)
    target = np.concatenate([labels[wrong], (labels[right] + shift) % n_classes]).astype(np.int64)
    misclassified = np.concatenate([np.ones(len(wrong), bool), np.zeros(len(right), bool)])
    return {"index": index, "target": target, "misclassified": misclassified}


def target_margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Wanted logit minus the largest other logit, per image."""
    wanted = logits.gather(1, target[:, None]).squeeze(1)
    others = logits.scatter(1, target[:, None], float("-inf")).max(1).values
    return wanted - others


def distance(x: torch.Tensor, original: torch.Tensor, kind: str) -> torch.Tensor:
    change = (x - original).flatten(1)
    return change.abs().sum(1) if kind == "l1" else change.pow(2).sum(1)


def optimize(model: nn.Module, images: torch.Tensor, target: torch.Tensor, cfg: OptimizeCounterfactualsParams,
             progress: bool = True) -> dict[str, torch.Tensor]:
    """Batched counterfactual search on float images in [0, 1]; frozen per image once the margin is reached.

    Proximal gradient descent (ISTA): a gradient step of size ``learning_rate`` on the cross-entropy,
    then the exact proximal step of ``distance_weight * distance`` together with the [0, 1] box
    (soft-thresholding of the change for L1, shrinkage for squared L2, then clipping). Unlike a
    subgradient method, this leaves pixels whose gradient is weaker than lambda exactly unchanged,
    so the L1 solutions are sparse. Returns ``counterfactual`` (float, same shape), ``steps``
    (gradient steps each image took: ``max_steps`` also for an image that never reached the margin)
    and ``reached`` (the margin was reached within ``max_steps``); only both together say when an
    image succeeded.
    """
    device = images.device
    step_size, weight = cfg.learning_rate, cfg.distance_weight
    x = images.clone()
    active = torch.ones(len(images), dtype=torch.bool, device=device)
    steps = torch.full((len(images),), cfg.max_steps, dtype=torch.int64, device=device)
    bar = tqdm(range(cfg.max_steps + 1), desc="counterfactual optimisation", leave=False, file=sys.stderr,
               mininterval=2, disable=not progress)
    for step in bar:
        x.requires_grad_(True)
        logits = model(x).float()
        reached = active & (target_margin(logits.detach(), target) >= cfg.margin)
        steps = torch.where(reached, step, steps)
        active = active & ~reached
        if step == cfg.max_steps or (step % 10 == 0 and not active.any()):
            break
        loss = nn.functional.cross_entropy(logits, target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            change = x - images - step_size * grad
            if cfg.distance == "l1":
                change = change.sign() * (change.abs() - step_size * weight).clamp_min(0.0)
            else:
                change = change / (1.0 + 2.0 * step_size * weight)
            x = torch.where(active[:, None, None, None], (images + change).clamp(0.0, 1.0), x.detach())
    return {"counterfactual": x.detach(), "steps": steps, "reached": ~active}


def change_measures(real: torch.Tensor, changed: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: L1 of the change (sum over channels and pixels, [0, 1] scale) and L0 (pixels whose
    largest channel change exceeds ``threshold``)."""
    def scaled(x: torch.Tensor) -> torch.Tensor:
        return as_float(x)

    change = (scaled(changed) - scaled(real)).abs()
    return change.flatten(1).sum(1), (change.amax(1) > threshold).flatten(1).sum(1).float()


def match_rows(ours_index: np.ndarray, ours_target: np.ndarray, theirs_index: np.ndarray, theirs_target: np.ndarray,
               n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (in ours, in theirs) of the (image, target) pairs both have; the first of duplicates in theirs."""
    ours_key = ours_index.astype(np.int64) * n_classes + ours_target
    theirs_key = theirs_index.astype(np.int64) * n_classes + theirs_target
    keys, first = np.unique(theirs_key, return_index=True)
    where = np.searchsorted(keys, ours_key)
    where = np.clip(where, 0, max(len(keys) - 1, 0))
    found = (keys[where] == ours_key) if len(keys) else np.zeros(len(ours_key), dtype=bool)
    return np.flatnonzero(found), first[where[found]]


def summary(real: torch.Tensor, changed: torch.Tensor, predicted: torch.Tensor, target: torch.Tensor,
            threshold: float) -> dict:
    if len(real) == 0:
        return {"n": 0, "success_rate": float("nan"), "mean_l1": float("nan"), "mean_l0": float("nan")}
    l1, l0 = change_measures(real, changed, threshold)
    return {"n": len(real), "success_rate": (predicted == target).float().mean().item(),
            "mean_l1": l1.mean().item(), "mean_l0": l0.mean().item()}


def difference_figure(originals: np.ndarray, changed: list[tuple[str, np.ndarray]], titles: list[str], suptitle: str):
    """Rows of original | (changed | signed difference) per method; differences summed over channels."""
    import matplotlib.pyplot as plt


    n = len(originals)
    ncols = 1 + 2 * len(changed)
    fig, axes = plt.subplots(n, ncols, figsize=(1.5 * ncols, 1.5 * n + 0.4), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(as_hwc(originals[i]), interpolation="nearest")
        axes[i, 0].set_title(titles[i], fontsize=6)
        for m, (name, images) in enumerate(changed):
            diff = (images[i].astype(np.float32) - originals[i].astype(np.float32)).sum(0) / 255.0
            limit = max(np.abs(diff).max(), 1e-3)
            axes[i, 1 + 2 * m].imshow(as_hwc(images[i]), interpolation="nearest")
            axes[i, 2 + 2 * m].imshow(diff, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
            if i == 0:
                axes[i, 1 + 2 * m].set_title(f"{name}", fontsize=7)
                axes[i, 2 + 2 * m].set_title(f"{name} - original", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(suptitle, fontsize=8)
    fig.tight_layout()
    return fig


def success_curve(steps: np.ndarray, reached: np.ndarray, max_steps: int) -> pd.DataFrame:
    """Share of images that have reached the margin after each number of gradient steps (0..max_steps).

    An image that never reached it counts at no step, so the curve ends at the share that did.
    """
    curve_steps = np.arange(max_steps + 1)
    if not len(steps):
        return pd.DataFrame({"step": curve_steps, "share_reached": np.zeros(len(curve_steps))})
    done_by = reached[None, :] & (steps[None, :] <= curve_steps[:, None])
    return pd.DataFrame({"step": curve_steps, "share_reached": done_by.mean(1)})


def optimize_in_batches(model: nn.Module, real: torch.Tensor, target: torch.Tensor,
                        cfg: OptimizeCounterfactualsParams) -> dict[str, torch.Tensor]:
    """:func:`optimize` over uint8 ``real`` in batches of ``cfg.batch_size``; the counterfactuals come back as uint8."""
    parts = [optimize(model, to_float(real[part]), target[part], cfg)
             for part in batch_slices(len(real), cfg.batch_size)]
    if not parts:
        empty = torch.zeros(0, dtype=torch.int64, device=real.device)
        return {"counterfactual": real.clone(), "steps": empty, "reached": empty.bool()}
    return {"counterfactual": to_uint8(torch.cat([p["counterfactual"] for p in parts])),
            "steps": torch.cat([p["steps"] for p in parts]), "reached": torch.cat([p["reached"] for p in parts])}


def gan_pairs(gan: dict[str, np.ndarray], chosen: dict[str, np.ndarray], n_classes: int,
              device: torch.device) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """Rows of ``chosen`` that the GAN also translated (same image, same wanted class), and the GAN's rows for them."""
    ours_rows, gan_rows = match_rows(chosen["index"], chosen["target"], gan["image_index"], gan["target"], n_classes)
    theirs = {key: torch.from_numpy(gan[key][gan_rows]).to(device) for key in ("real", "counterfactual", "target")}
    return ours_rows, theirs


def judge_gan(model: nn.Module, theirs: dict[str, torch.Tensor], reference: torch.Tensor,
              reference_labels: torch.Tensor, cfg: OptimizeCounterfactualsParams) -> tuple[torch.Tensor, dict]:
    """The classifier's verdict on the GAN's counterfactuals of the shared pairs, and their summary with the
    class-matched Fréchet distance to ``reference``."""
    if not len(theirs["target"]):
        empty = summary(theirs["real"], theirs["counterfactual"], theirs["target"], theirs["target"], cfg.change_threshold)
        return theirs["target"].clone(), {**empty, "frechet_distance": float("nan")}
    predicted = predict_probabilities(model, theirs["counterfactual"], cfg.batch_size).argmax(1)
    result = summary(theirs["real"], theirs["counterfactual"], predicted, theirs["target"], cfg.change_threshold)
    features = embed_images(model, theirs["counterfactual"], cfg.batch_size)
    result["frechet_distance"] = class_matched_frechet(features, theirs["target"], reference, reference_labels)
    return predicted, result


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

        optimised = optimize_in_batches(model, real, target, cfg)
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
        gan_predicted, gan_summary = judge_gan(model, theirs, reference, labels, cfg)

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
        write_pictures(out, ctx.dataset, cfg, names, labels[index], chosen, real, counterfactual, predicted, target,
                       ours_rows, theirs)
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
    if not len(shown):
        save_figure(placeholder_figure("no test images were selected"), out / "examples.png")
    else:
        titles = [title(i) + ("" if predicted[i] == target[i] else " ✗")
                  + (" (wrong)" if chosen["misclassified"][i] else "") for i in shown]
        fig = difference_figure(real[shown].cpu().numpy(), [("optimised", counterfactual[shown].cpu().numpy())], titles,
                                f"{dataset}: original | optimised | difference (red +, blue -); ✗ = not reached")
        save_figure(fig, out / "examples.png")
    both = ours_rows[: cfg.n_example_images]
    if not len(both):
        save_figure(placeholder_figure("the GAN has no counterfactual for these (image, wanted class) pairs"),
                    out / "comparison.png")
    else:
        fig = difference_figure(real[both].cpu().numpy(),
                                [("optimised", counterfactual[both].cpu().numpy()),
                                 ("GAN", theirs["counterfactual"][: len(both)].cpu().numpy())],
                                [title(i) for i in both],
                                f"{dataset}: the same images and wanted classes, optimisation vs. GAN")
        save_figure(fig, out / "comparison.png")


if __name__ == "__main__":
    main()
