"""Stage ``dissect@<dataset>``: network dissection of the classifier's convolution channels.

``pipeline.evaluation.dissection`` scores every channel of every convolution (its map after the ReLU, or before it:
``dissect.activation``; upsampled, thresholded at its own ``dissect.quantile`` over the sample) against
the concepts the data know, on a seeded sample of at most ``dissect.max_images`` test images:

- planted shortcuts (the negative control too): the clean test images, a seeded share ``dissect.stamped_fraction``
  of them stamped with a planted shortcut (images of every class; with several shortcuts, one drawn per image).
  ``shortcut``: the stamp's truth region, empty on the clean images; ``digit``: the base digit's pixels (grayscale
  intensity above ``dissect.digit_threshold``) less the stamp's;
- colored MNIST: ``digit`` likewise, and one concept per colormap: the digit's pixels on the images painted
  from that colormap (the class concept: the colour that decides the class).

Headline (``<figure>_lift``, ``_lift_low``, ``_lift_high``): the best unit for the known answer (the shortcut; the
colour, one unit per colormap), chosen on a seeded half of the images and scored on the other half, so that the
maximum over many units does not flatter, beside three chance levels on the same held-out images (details.json
``chance``; the highest binds): the whole-image mask (what a mask covering everything scores), area-matched random
masks (what a mask of the unit's size scores anywhere), and the best unit of a re-initialised copy of the classifier
(its architecture with seeded random weights, stream ``randomized_model``), dissected the same way: its unit chosen
on the same selection half and scored on the same held-out images against the same truth (what a unit gets from the
input alone). The tables and the picture describe every unit of the trained classifier on the whole sample.

The re-initialised copy's chance level was added after the negative control (the red corner square planted on no
training image) showed the best unit's IoU with the stamp above chance: some unit of a network segments a bright
red square whether or not the classifier uses it. Since it was added in answer to that control, the negative control
no longer tests it independently: the shortcut benchmark's clean variants (other stamps, planted on no training
image) are the check that does not depend on it.
"""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch

from pipeline import paths
from pipeline.config import options_from
from pipeline.data.known_answer import ColorRule, PlantedShortcuts, Unknown
from pipeline.data.tensors import subsample
from pipeline.evaluation.dissection import (DissectionOptions, best_units, dissect, half_split, held_out_lifts, iou_ceiling,
                                            layer_summary, top_images, unit_masks, units_figure)
from pipeline.models.classifiers import conv_layers, load_classifier, missing_parts, reinitialized_classifier
from pipeline.plotting import placeholder_figure
from pipeline.prepared import load_known_answer, load_meta, load_prepared
from pipeline.runtime import StageContext, stage
from pipeline.scoring.chance import not_judged
from pipeline.storage import load_checkpoint, save_figure, write_csv, write_json


def sample_and_concepts(ctx: StageContext, test: dict, answer, class_names: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[str], dict]:
    """(images [N x 3 x H x W] uint8, concepts [N x K x H x W] bool, concept names, what the sample holds)."""
    cfg = ctx.params.dissect
    index = torch.as_tensor(subsample(len(test["labels"]), cfg.max_images, ctx.rng("sample")))
    if isinstance(answer, ColorRule):
        gray = test["gray"][index]
        digit = gray.float() / 255 > cfg.digit_threshold
        labels = test["labels"][index]
        colors = [digit & (labels == c).view(-1, 1, 1) for c in range(len(class_names))]
        return test["images"][index], torch.stack([digit] + colors, 1), ["digit"] + list(class_names), {"n_images": len(index)}
    images, n = test["clean_images"][index].clone(), len(index)
    rng = ctx.rng("stamp")
    stamped = torch.as_tensor(rng.permutation(n)[: int(round(cfg.stamped_fraction * n))], dtype=torch.long)
    which = torch.as_tensor(rng.integers(0, len(answer.shortcuts), size=len(stamped)), dtype=torch.long)
    shortcut = torch.zeros(n, *images.shape[2:], dtype=torch.bool)
    for k in range(len(answer.shortcuts)):
        rows = stamped[which == k]
        images[rows] = answer.stamp_tensor(images[rows], k)
        shortcut[rows] = torch.from_numpy(answer.region(k))
    digit = (test["clean_images"][index, 0].float() / 255 > cfg.digit_threshold) & ~shortcut
    return images, torch.stack([digit, shortcut], 1), ["digit", "shortcut"], {"n_images": n, "n_stamped": len(stamped)}


def figures(answer, concepts: list[str]) -> dict[str, list[str]]:
    """{figure: the concepts it pools}: the known answer's (the headline) first, then the digit's."""
    known = ("shortcut_unit_iou", ["shortcut"]) if isinstance(answer, PlantedShortcuts) else \
        ("color_unit_iou", [c for c in concepts if c != "digit"])
    return dict([known, ("digit_unit_iou", ["digit"])])


def unit_table(result, answer) -> pd.DataFrame:
    iou = result.iou.numpy()
    table = pd.DataFrame({"unit": result.unit_names(), "layer": [result.layer_names[k] for k in result.unit_layer.tolist()],
                          "channel": result.unit_channel.numpy(), "threshold": result.thresholds.numpy(),
                          "mask_share": result.mask_share.numpy()})
    for k, concept in enumerate(result.concept_names):
        table[f"iou_{concept}"] = iou[:, k]
    if isinstance(answer, ColorRule):
        table["iou_color"] = iou[:, 1:].max(1)
    table["best_concept"] = [result.concept_names[k] for k in iou.argmax(1)]
    table["best_iou"] = iou.max(1)
    return table


def concept_table(result, best: dict, cfg) -> dict[str, dict]:
    """Per concept: its share of the sample's pixels, the units that detect it, the best one, the share of pixels in
    that unit's masks (at most 1 - quantile) and the IoU masks of that size can reach at most."""
    units = result.detects(cfg.iou_threshold).sum(0).tolist()
    table = {}
    for k, concept in enumerate(result.concept_names):
        mask_share = result.mask_share[best[concept]["index"]]
        table[concept] = {"area_share": float(result.concept_share[k]), "units": int(units[k]), "best_unit": best[concept]["unit"],
                          "best_iou": best[concept]["iou"], "best_unit_mask_share": float(mask_share),
                          "best_unit_iou_ceiling": float(iou_ceiling(mask_share, result.concept_share[k]))}
    return table


def layer_table(layers: dict, concepts: list[str]) -> pd.DataFrame:
    """One row per layer (``depth`` 1 = the first): the share of its units that detect each concept (a column each)."""
    return pd.DataFrame({"layer": list(layers), "depth": np.arange(1, len(layers) + 1), "n_units": [s["n_units"] for s in layers.values()],
                         **{c: [s[f"{c}_units"] / s["n_units"] for s in layers.values()] for c in concepts}})


def picture(model, images: torch.Tensor, concepts: torch.Tensor, result, best: dict, cfg, dataset: str):
    """For the best unit of each concept, its top-activating images: bright inside the unit's mask, the concept outlined."""
    n = min(cfg.n_picture_images, len(images))
    shown = [top_images(result, best[c]["index"], n) for c in result.concept_names]
    index = torch.as_tensor(np.concatenate(shown))
    units = torch.as_tensor([best[c]["index"] for c in result.concept_names]).repeat_interleave(n)
    masks = unit_masks(model, conv_layers(model), images[index].to(next(model.parameters()).device), units, result.thresholds, cfg.activation)
    concept_masks = torch.stack([concepts[rows, k] for k, rows in enumerate(shown)]).numpy()
    titles = [f"{c}: {best[c]['unit']}, IoU {best[c]['iou']:.2f}" for c in result.concept_names]
    return units_figure(images[index].numpy().reshape(len(shown), n, *images.shape[1:]), masks.cpu().numpy().reshape(concept_masks.shape),
                        concept_masks, titles, suptitle=f"{dataset}: best unit per concept on its top images (bright: the "
                                                        f"unit above its {cfg.quantile:g} quantile; magenta: the concept)")


def skip(dataset: str, answer, concepts: list[str], reason: str) -> None:
    """Outputs that say why nothing was dissected: the headline not judged (null), never 0 (no known answer: none)."""
    headline = next(iter(figures(answer, concepts))) if answer.known else None
    write_json(paths.metrics_path(dataset, "dissect"), not_judged(reason).metrics(headline) if headline else {})
    out = paths.plots_dir(dataset, "dissect")
    write_json(out / "details.json", {"skipped": reason})
    write_csv(out / "units.csv", pd.DataFrame(columns=["unit", "layer", "channel"] + [f"iou_{c}" for c in concepts]))
    write_csv(out / "layers.csv", pd.DataFrame(columns=["layer", "depth", "n_units"] + concepts))
    save_figure(placeholder_figure(f"{dataset}: not dissected: {reason}"), paths.pictures_dir(dataset, "dissect") / "units.png")
    print(f"[dissect@{dataset}] skipped: {reason}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    with stage("dissect", argv) as ctx:
        cfg, answer = ctx.params.dissect, load_known_answer(ctx.dataset)
        if not answer.known:  # the concepts a unit may detect are the known answer's pixels
            return skip(ctx.dataset, answer, [], "dissection scores units against the pixels of known concepts: "
                                                 + Unknown.reason)
        meta = load_meta(ctx.dataset)
        test = load_prepared(ctx.dataset, "test")
        images, concepts, names, sample = sample_and_concepts(ctx, test, answer, meta["class_names"])
        model_path = paths.classifier_path(ctx.dataset)
        model = load_classifier(model_path, ctx.device)
        missing = missing_parts(model)
        if "hooks" in missing:
            return skip(ctx.dataset, answer, names, missing["hooks"])
        if not conv_layers(model):
            return skip(ctx.dataset, answer, names, "the classifier has no convolution (classifier.architecture: dense)")
        options = options_from(cfg, DissectionOptions)
        images, concepts = images.to(ctx.device), concepts.to(ctx.device)
        result = dissect(model, images, concepts, names, options)
        best, layers = best_units(result), layer_summary(result, cfg.iou_threshold)
        # a model that learned nothing: the classifier's architecture (hookable, as checked above) with seeded weights
        config = load_checkpoint(model_path, made_by=f"train_classifier@{ctx.dataset}")["config"]
        reinitialized, _ = reinitialized_classifier(config, ctx.generator("randomized_model").initial_seed(), ctx.device)
        lifts, held_out = held_out_lifts(model, images, concepts, names, figures(answer, names),
                                         half_split(len(images), ctx.generator("split")), options,
                                         lambda name: ctx.generator(f"chance/{name}"), reinitialized=reinitialized)
        headline = next(iter(lifts))
        write_json(paths.metrics_path(ctx.dataset, "dissect"), lifts[headline].metrics(headline))
        out = paths.plots_dir(ctx.dataset, "dissect")
        write_json(out / "details.json", {**sample, "quantile": cfg.quantile, "iou_threshold": cfg.iou_threshold, "activation": cfg.activation,
                                          "n_units": len(result.thresholds), "concepts": concept_table(result, best, cfg), "layers": layers,
                                          "held_out": held_out, "chance": {k: lift.to_dict() for k, lift in lifts.items()}})
        write_csv(out / "units.csv", unit_table(result, answer))
        write_csv(out / "layers.csv", layer_table(layers, names))
        save_figure(picture(model, images.cpu(), concepts.cpu(), result, best, cfg, ctx.dataset),
                    paths.pictures_dir(ctx.dataset, "dissect") / "units.png")
        ctx.timer.images = len(images)
        print(f"[dissect@{ctx.dataset}] {len(result.thresholds)} units, {len(images)} images: "
              + "; ".join(lift.sentence(f"{k} (held out)", 3) for k, lift in lifts.items()), file=sys.stderr)


if __name__ == "__main__":
    main()
