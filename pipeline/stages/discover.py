"""Stage ``discover@<dataset>``: which regions recur in the explanations of one class, found without the answer.

Reads the optimal masks that ``explain@<dataset>`` found for every (real, counterfactual) pair, takes
those of the best discriminative method (chosen by median score, never by the known answer; ``auto``
refuses when explain ran none), and asks ``pipeline.evaluation.discovery`` for regions that pairs into one
class use far more often than pairs into the others: chosen on one half of the pairs, their figures and
p-value from the other half (``discover.held_out_share``). Each such region is then tested on its own: its
content, taken from counterfactuals into the class, is pasted into test images of other classes, and the
classifier's decisions are counted, beside the same paste at other places of the image and the region
pasted from counterfactuals into other classes. A class is flagged when one of its regions moves at least
``discover.min_trigger_rate`` of them and more than its controls do (lift above chance).
The known answer is used only afterwards, to score: for planted shortcuts (the negative control included)
the IoU of the flagged regions of each shortcut class with its truth region, beside the whole-image mask and
the same regions at random other places, and the flagged classes without a planted shortcut (false alarms;
on the negative control every flagged class); for colored MNIST, where the colour is spread over the digit,
every flagged class is a false alarm. A class with too few pairs is not judged: no IoU, no flag, null.
"""
from __future__ import annotations

import dataclasses
import sys

import numpy as np
import torch

from pipeline import paths
from pipeline.evaluation.discovery import (DiscoverySettings, Trigger, binary_masks, chosen_method, discover, discovery_details,
                                           discovery_figure, discovery_metrics, score_against_answer, trigger_test,
                                           truth_regions)
from pipeline.models.classifiers import load_classifier
from pipeline.models.inference import predict_probabilities
from pipeline.prepared import load_known_answer, load_meta, load_prepared
from pipeline.runtime import StageContext, stage
from pipeline.storage import load_arrays, save_figure, write_json


def explanations_path(dataset: str):
    return paths.DATA / "explanations" / dataset / "explanations.npz"


def counterfactual_donors(dataset: str, translation: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(counterfactuals [N,C,H,W] uint8, their classes [N]) of the translation explain used (``reference`` or
    ``latent``), only those the classifier assigns to their target: the content a region is pasted from."""
    arrays = load_arrays(paths.counterfactuals_path(dataset), made_by=f"counterfactuals@{dataset}")
    suffix = "" if translation == "reference" else "_latent"
    keep = np.flatnonzero(arrays["predicted" + suffix] == arrays["target"])
    return (torch.from_numpy(arrays["counterfactual" + suffix][keep]).to(device),
            torch.from_numpy(arrays["target"][keep]).long().to(device))


def region_trigger(ctx: StageContext, test: dict) -> Trigger:
    """``trigger(class, region)``: the trigger test of a region on at most ``discover.n_trigger_images`` test
    images (seeded) of other classes that the classifier does not already assign to the class, with donors from
    the counterfactuals into the class and, for the control, into other classes."""
    cfg = ctx.params.discover
    model = load_classifier(paths.classifier_path(ctx.dataset), ctx.device)
    classify = lambda x: predict_probabilities(model, x).argmax(1)  # noqa: E731  (uint8, or float in [0, 1])
    images, labels = test["images"].to(ctx.device), test["labels"].to(ctx.device)
    predicted = classify(images)
    donors, donor_class = counterfactual_donors(ctx.dataset, ctx.params.explain.counterfactual, ctx.device)
    rng, draws, bootstrap = ctx.rng("trigger-images"), ctx.generator("trigger-donors"), ctx.generator("trigger-bootstrap")

    def trigger(target: int, region: torch.Tensor):
        others = torch.nonzero((labels != target) & (predicted != target)).flatten().cpu().numpy()
        chosen = np.sort(rng.choice(others, size=min(cfg.n_trigger_images, len(others)), replace=False))
        return trigger_test(classify, images[torch.from_numpy(chosen).to(ctx.device)], donors[donor_class == target],
                            donors[donor_class != target], region, target, draws, bootstrap)

    return trigger


def main(argv: list[str] | None = None) -> None:
    with stage("discover", argv) as ctx:
        cfg = ctx.params.discover
        class_names = load_meta(ctx.dataset)["class_names"]
        answer = load_known_answer(ctx.dataset)
        arrays = load_arrays(explanations_path(ctx.dataset), made_by=f"explain@{ctx.dataset}")
        method = chosen_method(arrays, cfg.method)
        masks = binary_masks(arrays, method)
        targets = torch.from_numpy(arrays["target"]).long()
        settings = DiscoverySettings(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(DiscoverySettings)})
        test = load_prepared(ctx.dataset, "test")
        if len(masks) == 0:
            masks = torch.zeros(0, *test["images"].shape[-2:], dtype=torch.bool)
        found = discover(masks.to(ctx.device), targets.to(ctx.device), len(class_names), settings, ctx.generator("permutations"),
                         trigger=region_trigger(ctx, test), split_generator=ctx.generator("held-out split"))
        score = score_against_answer(found, answer, ctx.generator("region placements"))
        write_json(paths.metrics_path(ctx.dataset, "discover"), discovery_metrics(found, score))
        out = paths.plots_dir(ctx.dataset, "discover")
        detail = discovery_details(found, class_names, method, len(targets), score)
        write_json(out / "details.json", detail)
        save_figure(discovery_figure(found, class_names, truth_regions(answer), ctx.dataset, method),
                    paths.pictures_dir(ctx.dataset, "discover") / "regions.png")
        ctx.timer.images = len(targets)
        said = (" ".join(detail["sentences"]) or "no class has a recurring region of its own.") if found.judged else \
            f"nothing judged: {detail['not_judged']} (min_pairs = {cfg.min_pairs} per half)."
        print(f"[discover@{ctx.dataset}] {method} masks of {len(targets)} pairs: {said}", file=sys.stderr)


if __name__ == "__main__":
    main()
