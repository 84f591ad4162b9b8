"""Stage ``dissect@<dataset>``: network dissection of the classifier's convolution channels.

``pipeline.evaluation.dissection`` scores every channel of every convolution (its map after the ReLU, or before it:
``dissect.activation``; upsampled, thresholded at its own ``dissect.quantile`` over the sample) against
the concepts the data know, on a seeded sample of at most ``dissect.max_images`` test images:

- Clever Hans: the clean test images, a seeded share ``dissect.stamped_fraction`` of them stamped with a
  planted shortcut (images of every class; with several shortcuts, one drawn per image). ``shortcut``: the
  stamp's pixels (opacity > 0), empty on the clean images; ``digit``: the base digit's pixels (grayscale
  intensity above ``dissect.digit_threshold``) less the stamp's pixels;
- colored MNIST: ``digit`` likewise, and one concept per colormap: the digit's pixels on the images painted
  from that colormap (the class concept: the colour that decides the class).
"""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch

from pipeline import paths
from pipeline.data.tensors import subsample
from pipeline.prepared import load_meta, load_prepared
from pipeline.evaluation.dissection import (DissectionOptions, best_units, dissect, iou_ceiling, layer_summary,
                                 top_images, unit_masks, units_figure)
from pipeline.models.classifiers import conv_layers, load_classifier, missing_parts
from pipeline.plotting import placeholder_figure
from pipeline.runtime import StageContext, stage
from pipeline.storage import save_figure, write_csv, write_json


def sample_and_concepts(ctx: StageContext, test: dict, class_names: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[str], dict]:
    """(images [N x 3 x H x W] uint8, concepts [N x K x H x W] bool, concept names, what the sample holds)."""
    cfg = ctx.params.dissect
    index = torch.as_tensor(subsample(len(test["labels"]), cfg.max_images, ctx.rng("sample")))
    if "shortcut_images" not in test:
        gray = test["gray"][index]
        digit = gray.float() / 255 > cfg.digit_threshold
        labels = test["labels"][index]
        colors = [digit & (labels == c).view(-1, 1, 1) for c in range(len(class_names))]
        return test["images"][index], torch.stack([digit] + colors, 1), ["digit"] + list(class_names), {"n_images": len(index)}
    images, n = test["clean_images"][index].clone(), len(index)
    rng = ctx.rng("stamp")
    stamped = torch.as_tensor(rng.permutation(n)[: int(round(cfg.stamped_fraction * n))], dtype=torch.long)
    which = torch.as_tensor(rng.integers(0, len(test["shortcut_labels"]), size=len(stamped)), dtype=torch.long)
    images[stamped] = test["shortcut_images"][which, index[stamped]]
    shortcut = torch.zeros(n, *images.shape[2:], dtype=torch.bool)
    shortcut[stamped] = test["shortcut_alpha"][which] > 0
    digit = (test["clean_images"][index, 0].float() / 255 > cfg.digit_threshold) & ~shortcut
    return images, torch.stack([digit, shortcut], 1), ["digit", "shortcut"], {"n_images": n, "n_stamped": len(stamped)}


def headline(result, kind: str, iou_threshold: float) -> dict:
    """Units that detect the known answer (Clever Hans: the shortcut; colored MNIST: any colormap's digit pixels,
    a unit counted once) and the best IoUs."""
    name = "shortcut" if kind == "clever_hans" else "color"
    target = [k for k, c in enumerate(result.concept_names) if c != "digit"]
    iou = result.iou
    return {f"{name}_units": int(result.detects(iou_threshold)[:, target].any(1).sum()),
            f"best_{name}_unit_iou": float(iou[:, target].max()),
            "best_digit_unit_iou": float(iou[:, result.concept_names.index("digit")].max())}


def unit_table(result, kind: str) -> pd.DataFrame:
    iou = result.iou.numpy()
    table = pd.DataFrame({"unit": result.unit_names(), "layer": [result.layer_names[k] for k in result.unit_layer.tolist()],
                          "channel": result.unit_channel.numpy(), "threshold": result.thresholds.numpy(),
                          "mask_share": result.mask_share.numpy()})
    for k, concept in enumerate(result.concept_names):
        table[f"iou_{concept}"] = iou[:, k]
    if kind == "colored_mnist":
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


def skip(dataset: str, kind: str, concepts: list[str], reason: str) -> None:
    """Outputs that say why nothing was dissected: no unit detects anything, no best IoU (no known answer: no figure)."""
    answer = {"clever_hans": "shortcut", "colored_mnist": "color"}.get(kind)
    write_json(paths.metrics_path(dataset, "dissect"), {f"{answer}_units": 0, f"best_{answer}_unit_iou": None,
                                                        "best_digit_unit_iou": None} if answer else {})
    out = paths.plots_dir(dataset, "dissect")
    write_json(out / "details.json", {"skipped": reason})
    write_csv(out / "units.csv", pd.DataFrame(columns=["unit", "layer", "channel"] + [f"iou_{c}" for c in concepts]))
    write_csv(out / "layers.csv", pd.DataFrame(columns=["layer", "depth", "n_units"] + concepts))
    save_figure(placeholder_figure(f"{dataset}: not dissected: {reason}"), out / "units.png")
    print(f"[dissect@{dataset}] skipped: {reason}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    with stage("dissect", argv) as ctx:
        cfg = ctx.params.dissect
        if ctx.entry.known_answer is None:  # the concepts a unit may detect are the known answer's pixels
            return skip(ctx.dataset, ctx.kind, [], "dissection scores units against the pixels of known concepts, and "
                                                   "an image_folder dataset has no known answer")
        meta = load_meta(ctx.dataset)
        test = load_prepared(ctx.dataset, "test")
        images, concepts, names, sample = sample_and_concepts(ctx, test, meta["class_names"])
        model = load_classifier(paths.classifier_path(ctx.dataset), ctx.device)
        missing = missing_parts(model)
        if "hooks" in missing:
            return skip(ctx.dataset, ctx.kind, names, missing["hooks"])
        if not conv_layers(model):
            return skip(ctx.dataset, ctx.kind, names, "the classifier has no convolution (classifier.architecture: dense)")
        options = DissectionOptions(cfg.quantile, cfg.iou_threshold, cfg.activation, cfg.batch_size)
        result = dissect(model, images.to(ctx.device), concepts.to(ctx.device), names, options)
        best, layers = best_units(result), layer_summary(result, cfg.iou_threshold)
        metrics = headline(result, ctx.kind, cfg.iou_threshold)
        write_json(paths.metrics_path(ctx.dataset, "dissect"), metrics)
        out = paths.plots_dir(ctx.dataset, "dissect")
        write_json(out / "details.json", {**sample, "quantile": cfg.quantile, "iou_threshold": cfg.iou_threshold, "activation": cfg.activation,
                                          "n_units": len(result.thresholds), "concepts": concept_table(result, best, cfg), "layers": layers})
        write_csv(out / "units.csv", unit_table(result, ctx.kind))
        write_csv(out / "layers.csv", layer_table(layers, names))
        save_figure(picture(model, images, concepts, result, best, cfg, ctx.dataset), out / "units.png")
        ctx.timer.images = len(images)
        print(f"[dissect@{ctx.dataset}] {len(result.thresholds)} units, {len(images)} images: "
              + ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()), file=sys.stderr)


if __name__ == "__main__":
    main()
