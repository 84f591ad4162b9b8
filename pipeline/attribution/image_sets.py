"""The images the attribution methods explain, every method's maps of them, and the rows shown in the pictures.

A set is ``{"index", "images", "targets", "which"}`` (+ ``"masks"`` for the shortcut sets): test indices,
the images (uint8 or float), the class each is explained for, and the shortcut stamped on it (-1: none).
"""
from __future__ import annotations

import math
import sys

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.attribution.methods import AttributionOptions, attribute_batches, make_explainer
from pipeline.data.known_answer import KnownAnswer, PlantedShortcuts
from pipeline.data.tensors import subsample
from pipeline.models.inference import moved_by_stamp


def image_sets(test: dict, predicted: torch.Tensor, model: nn.Module, n_images: int, n_localization_images: int,
               internal_batch_size: int, rng: np.random.Generator, answer: KnownAnswer | None = None) -> dict:
    """The images each method explains, as {name: {"index", "images", "targets", ...}}.

    ``sample``: a seeded sample of ``n_images`` test images, explained for the predicted class. Where shortcuts are
    planted (``answer``), per shortcut also ``shortcut``: clean test images of its class with it stamped on, explained
    for that class; and ``flipped``: clean test images of *other* classes that the stamp alone moves into its class,
    stamped (where the Clever Hans strategy shows); ``n_localization_images`` of each per shortcut, with the
    shortcut's truth region as ``masks``. ``internal_batch_size``: images per forward pass of the model.
    """
    device = test["images"].device
    chosen = torch.as_tensor(subsample(len(test["labels"]), n_images, rng), device=device)
    sets = {"sample": {"index": chosen, "images": test["images"][chosen], "targets": predicted[chosen],
                       "which": torch.full_like(chosen, -1)}}
    if not isinstance(answer, PlantedShortcuts) or not answer.shortcuts:
        return sets
    labels, clean = test["labels"], test["clean_images"]
    moved_shortcut, moved_index, _ = moved_by_stamp(model, test, answer, internal_batch_size)
    for name in ("shortcut", "flipped"):
        parts = []
        for k, label in enumerate(answer.labels):
            candidates = torch.nonzero(labels == label).squeeze(1) if name == "shortcut" else moved_index[moved_shortcut == k]
            keep = candidates[torch.as_tensor(subsample(len(candidates), n_localization_images, rng), device=device)]
            parts.append({"index": keep, "images": answer.stamp_tensor(clean[keep], k), "targets": torch.full_like(keep, label),
                          "which": torch.full_like(keep, k)})
        sets[name] = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        sets[name]["masks"] = answer.regions(device)[sets[name]["which"]]
    return sets


def attribute_all(methods: list[str], model: nn.Module, sets: dict, options: AttributionOptions,
                  noise: torch.Tensor, desc: str = "attributions") -> dict:
    """{method: {set name: attributions}}: every image set in one batched pass per method, one progress bar (``desc``).
    Each set is explained for its own ``targets``, whichever ``model`` explains it (the classifier, or its
    re-initialised copy for a chance level)."""
    images = torch.cat([s["images"] for s in sets.values()])
    targets = torch.cat([s["targets"] for s in sets.values()])
    sizes = [len(s["targets"]) for s in sets.values()]
    result = {}
    with tqdm(total=math.ceil(len(images) / options.batch_size) * len(methods), desc=desc, file=sys.stderr,
              mininterval=2, leave=False) as bar:
        for name in methods:
            bar.set_postfix_str(name)
            maps = attribute_batches(make_explainer(name, model, options, noise), images, targets, options.batch_size, bar)
            result[name] = dict(zip(sets, maps.split(sizes)))
    return result


def attribution_arrays(sets: dict, attributions: dict) -> dict[str, np.ndarray]:
    """float16 attributions per method and image set, with the test indices, targets and shortcut index."""
    arrays = {}
    for key, s in sets.items():
        arrays[f"{key}_index"] = s["index"].cpu().numpy()
        arrays[f"{key}_targets"] = s["targets"].cpu().numpy()
        arrays[f"{key}_shortcut"] = s["which"].cpu().numpy()
        for name, per_set in attributions.items():
            arrays[f"{key}_{name}"] = per_set[key].cpu().numpy().astype(np.float16)
    return arrays


def gallery_rows(sets: dict, n: int) -> dict:
    """Images shown in the pictures: the sample, and for Clever Hans half of them images with the shortcut."""
    if "flipped" not in sets:
        return {"sample": slice(0, n)}
    second = "flipped" if len(sets["flipped"]["targets"]) else "shortcut"
    return {"sample": slice(0, n - n // 2), second: slice(0, n // 2)}


def gallery(sets: dict, attributions: dict, methods: list[str], rows: dict, class_names: list[str]):
    """The gallery's images (numpy), their titles and each method's maps of them (numpy); ``rows``: ``gallery_rows``."""
    shown = [(sets[k]["images"][s], sets[k]["targets"][s], k) for k, s in rows.items()]
    images = torch.cat([r[0] for r in shown]).cpu().numpy()
    titles = [f"{'shortcut ' if kind != 'sample' else ''}→ {class_names[t]}" for _, targets, kind in shown
              for t in targets.tolist()]
    maps = {name: torch.cat([attributions[name][k][s] for k, s in rows.items()]).cpu().numpy() for name in methods}
    return images, titles, maps
