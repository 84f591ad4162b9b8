"""Stage ``discover@<dataset>``: which regions recur in the explanations of one class, found without the answer.

Reads the optimal masks that ``explain@<dataset>`` found for every (real, counterfactual) pair, takes
those of the best discriminative method (chosen by median score, never by the known answer), and asks
``pipeline.evaluation.discovery`` for regions that pairs into one class use far more often than pairs into the
others. Each such region is then tested on its own: its content, taken from counterfactuals into the
class, is pasted into test images of other classes, and the classifier's decisions are counted. A
class is flagged when one of its regions moves at least ``discover.min_trigger_rate`` of them.
The known answer is used only afterwards, to score: for Clever Hans the planted shortcut's pixels
(IoU of the flagged region of its class) and the classes flagged without a planted shortcut (false
alarms); for colored MNIST, where the colour is spread over the digit, every flagged class is a
false alarm.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from pipeline import paths
from pipeline.data.tensors import to_float
from pipeline.prepared import load_meta, load_prepared
from pipeline.evaluation.discovery import Discovery, DiscoverySettings, Trigger, describe, discover, region_iou, trigger_rate
from pipeline.models.inference import predict_probabilities
from pipeline.models.classifiers import load_classifier
from pipeline.runtime import StageContext, stage
from pipeline.storage import InputError, load_arrays, save_figure, write_json


def explanations_path(dataset: str):
    return paths.DATA / "explanations" / dataset / "explanations.npz"


def is_discriminative(method: str) -> bool:
    """explain names its discriminative methods (the counterfactual as reference) ``d_*``."""
    return method.startswith("d_")


def chosen_method(arrays: dict, setting: str) -> str:
    """``setting`` itself, or for ``auto`` the discriminative method with the highest median score."""
    methods = [str(m) for m in arrays["methods"]]
    if setting != "auto":
        if setting not in methods:
            raise InputError(f"discover.method = {setting!r} was not run by explain (it ran {', '.join(methods)}); "
                             f"add it to explain.methods or use 'auto'")
        return setting
    scored = [(float(np.median(arrays[f"{m}_score"])), m) for m in methods if is_discriminative(m) and len(arrays[f"{m}_score"])]
    if not scored:
        return next((m for m in methods if is_discriminative(m)), methods[0])
    return max(scored)[1]


def binary_masks(arrays: dict, method: str) -> torch.Tensor:
    """[N, H, W] bool: a pixel belongs to a pair's optimal mask when its (blurred) weight is above one half in any channel."""
    key = f"{method}_optimal_mask"
    if key not in arrays:
        return torch.zeros(0, 1, 1, dtype=torch.bool)
    return torch.from_numpy(arrays[key]).amax(dim=1) > 127


def shortcut_truth(test: dict) -> dict[int, torch.Tensor]:
    """Planted shortcut pixels per shortcut class (Clever Hans), empty for other datasets."""
    if "shortcut_alpha" not in test:
        return {}
    truth: dict[int, torch.Tensor] = {}
    for alpha, label in zip(test["shortcut_alpha"].cpu(), test["shortcut_labels"].cpu().tolist()):
        truth[label] = truth.get(label, torch.zeros(alpha.shape, dtype=torch.bool)) | (alpha > 0)
    return truth


def counterfactual_donors(dataset: str, translation: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(counterfactuals [N,C,H,W] uint8, their classes [N]) of the translation explain used (``reference`` or
    ``latent``), only those the classifier assigns to their target: the content a region is pasted from."""
    arrays = load_arrays(paths.counterfactuals_path(dataset), made_by=f"counterfactuals@{dataset}")
    suffix = "" if translation == "reference" else "_latent"
    keep = np.flatnonzero(arrays["predicted" + suffix] == arrays["target"])
    return (torch.from_numpy(arrays["counterfactual" + suffix][keep]).to(device),
            torch.from_numpy(arrays["target"][keep]).long().to(device))


def region_trigger(ctx: StageContext, test: dict) -> Trigger:
    """``trigger(class, region)``: the trigger rate of a region on at most ``discover.n_trigger_images``
    test images (seeded) of other classes that the classifier does not already assign to the class."""
    cfg = ctx.params.discover
    model = load_classifier(paths.classifier_path(ctx.dataset), ctx.device)
    classify = lambda x: predict_probabilities(model, x).argmax(1)  # noqa: E731  (uint8, or float in [0, 1])
    images, labels = test["images"].to(ctx.device), test["labels"].to(ctx.device)
    predicted = classify(images)
    donors, donor_class = counterfactual_donors(ctx.dataset, ctx.params.explain.counterfactual, ctx.device)
    rng, generator = ctx.rng("trigger-images"), ctx.generator("trigger-donors")

    def trigger(target: int, region: torch.Tensor) -> float:
        others = torch.nonzero((labels != target) & (predicted != target)).flatten().cpu().numpy()
        chosen = np.sort(rng.choice(others, size=min(cfg.n_trigger_images, len(others)), replace=False))
        recipients = to_float(images[torch.from_numpy(chosen).to(ctx.device)])
        return trigger_rate(classify, recipients, to_float(donors[donor_class == target]), region, target, generator)

    return trigger


def score_against_truth(found: Discovery, truth: dict[int, torch.Tensor]) -> dict:
    """false alarms (flagged classes without a planted shortcut) and, per shortcut class, the region IoU."""
    flagged = found.flagged_classes
    scores = {"false_alarms": sum(1 for c in flagged if c not in truth)}
    if truth:
        ious = []
        for label, mask in truth.items():
            significant = [r.mask.cpu() for r in found.classes[label].regions if r.shortcut] if label < len(found.classes) else []
            union = torch.stack(significant).any(0) if significant else torch.zeros_like(mask)
            ious.append(region_iou(union, mask))
        scores["shortcut_region_iou"] = float(np.mean(ious))
    return scores


def details(found: Discovery, class_names: list[str], method: str, n_pairs: int) -> dict:
    height, width = found.frequency.shape[-2:]
    return {
        "method": method,
        "n_pairs": n_pairs,
        "flagged_classes": [class_names[c] for c in found.flagged_classes],
        "sentences": [describe(r, class_names[c.target], height, width)
                      for c in found.classes for r in c.regions if r.significant],
        "classes": {class_names[c.target]: {
            "n_pairs": c.n_pairs, "judged": c.judged, "flagged": c.flagged, "pixel_threshold": c.pixel_threshold,
            "max_enrichment": found.enrichment[c.target].max().item(),
            "regions": [{"top": r.top, "left": r.left, "height": r.height, "width": r.width, "area": r.area,
                         "consistency": r.consistency, "background": r.background, "p_value": r.p_value,
                         "significant": r.significant, "trigger_rate": r.trigger_rate, "shortcut": r.shortcut}
                        for r in c.regions],
        } for c in found.classes},
    }


def discovery_figure(found: Discovery, class_names: list[str], truth: dict[int, torch.Tensor], dataset: str, method: str):
    """Per class: enrichment map (share of its pairs' masks minus the other classes'), regions boxed."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(class_names)
    fig, axes = plt.subplots(1, n, figsize=(1.6 * n + 0.8, 2.2), squeeze=False)
    for c, ax in enumerate(axes[0]):
        shown = ax.imshow(found.enrichment[c].cpu().numpy(), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        for region in found.classes[c].regions:
            ax.add_patch(Rectangle((region.left - 0.5, region.top - 0.5), region.width, region.height, fill=False,
                                   edgecolor="black" if region.shortcut else "gray", linewidth=1.5,
                                   linestyle="-" if region.shortcut else "--" if region.significant else ":"))
        if c in truth:
            ax.contour(truth[c].float().numpy(), levels=[0.5], colors="lime", linewidths=0.8)
        state = "FLAGGED" if found.classes[c].flagged else ("not judged" if not found.classes[c].judged else "")
        ax.set_title(f"{class_names[c]} (n={found.classes[c].n_pairs})\n{state}", fontsize=7)
        ax.axis("off")
    fig.colorbar(shown, ax=axes[0].tolist(), fraction=0.02)
    fig.suptitle(f"{dataset}: where the {method} optimal masks of pairs into each class recur more than in other classes "
                 f"(boxes: regions; solid black: recurs and works alone = shortcut, dashed: recurs only; green: planted shortcut)", fontsize=7)
    return fig


def main(argv: list[str] | None = None) -> None:
    with stage("discover", argv) as ctx:
        cfg = ctx.params.discover
        class_names = load_meta(ctx.dataset)["class_names"]
        arrays = load_arrays(explanations_path(ctx.dataset), made_by=f"explain@{ctx.dataset}")
        method = chosen_method(arrays, cfg.method)
        masks = binary_masks(arrays, method)
        targets = torch.from_numpy(arrays["target"]).long()
        settings = DiscoverySettings(cfg.min_pairs, cfg.min_enrichment, cfg.min_area, cfg.max_regions, cfg.coverage,
                                     cfg.n_permutations, cfg.alpha, cfg.min_trigger_rate)
        test = load_prepared(ctx.dataset, "test")
        if len(masks) == 0:
            masks = torch.zeros(0, *test["images"].shape[-2:], dtype=torch.bool)
        found = discover(masks.to(ctx.device), targets.to(ctx.device), len(class_names), settings, ctx.generator("permutations"),
                         trigger=region_trigger(ctx, test))
        truth = shortcut_truth(test)
        metrics = {"n_flagged_classes": len(found.flagged_classes), **score_against_truth(found, truth)}
        write_json(paths.metrics_path(ctx.dataset, "discover"), metrics)
        out = paths.plots_dir(ctx.dataset, "discover")
        detail = details(found, class_names, method, len(targets))
        write_json(out / "details.json", detail)
        save_figure(discovery_figure(found, class_names, truth, ctx.dataset, method), out / "regions.png")
        ctx.timer.images = len(targets)
        said = " ".join(detail["sentences"]) or "no class has a recurring region of its own."
        print(f"[discover@{ctx.dataset}] {method} masks of {len(targets)} pairs: {said}", file=sys.stderr)


if __name__ == "__main__":
    main()
