"""Counterfactual files in the contract format of ``counterfactuals@D``, built without a GAN.

The translations are constructed so that the right explanation is known:
- colored MNIST: the same digit at the same colormap position, recolored with the target's colormap
  (only digit pixels change, background never does);
- Clever Hans: into a shortcut class, the same image with the shortcut stamped on it (only the
  shortcut's pixels change); into any other class, a test image of that class (a crude stand-in).
"""
from __future__ import annotations

import matplotlib
import numpy as np
import torch

from pipeline import paths
from pipeline.data.tensors import to_float, to_uint8
from pipeline.prepared import load_meta, load_prepared
from pipeline.models.inference import predict_probabilities
from pipeline.models.classifiers import load_classifier
from pipeline.storage import save_arrays


def translate(dataset: str, test: dict, meta: dict, image: int, target: int) -> np.ndarray:
    if dataset == "colored_mnist":
        real = test["images"][image].astype(np.float32)
        color = test["colors"][image]
        gray = real.max(axis=0) / max(float(color.max()), 1e-6)
        new = matplotlib.colormaps[meta["class_names"][target]](float(test["positions"][image]))[:3]
        return np.clip(np.rint(gray[None] * np.asarray(new, dtype=np.float32)[:, None, None]), 0, 255).astype(np.uint8)
    labels = test["shortcut_labels"].tolist()
    if target in labels:
        return test["shortcut_images"][labels.index(target), image]
    others = np.flatnonzero(test["labels"] == target)
    return test["images"][others[image % len(others)]] if len(others) else test["images"][image]


def write_synthetic_counterfactuals(dataset: str, n_images: int | None = None) -> dict[str, np.ndarray]:
    """Write ``data/counterfactuals/<dataset>/counterfactuals.npz`` (relative to the cwd) and return it."""
    meta = load_meta(dataset)
    test = {k: v.numpy() for k, v in load_prepared(dataset, "test").items()}
    n = len(test["labels"]) if n_images is None else min(n_images, len(test["labels"]))
    rows = [(i, int(test["labels"][i]), t) for i in range(n) for t in range(meta["n_classes"]) if t != test["labels"][i]]
    index = np.array([r[0] for r in rows], dtype=np.int64)
    source = np.array([r[1] for r in rows], dtype=np.int64)
    target = np.array([r[2] for r in rows], dtype=np.int64)
    real = test["images"][index]
    counterfactual = np.stack([translate(dataset, test, meta, i, t) for i, _, t in rows])
    latent = to_uint8(to_float(torch.from_numpy(real)) * 0.5 + to_float(torch.from_numpy(counterfactual)) * 0.5).numpy()
    model = load_classifier(paths.classifier_path(dataset))
    arrays = {"real": real, "counterfactual": counterfactual, "counterfactual_latent": latent, "image_index": index,
              "source": source, "target": target}
    for suffix, images in (("", counterfactual), ("_latent", latent)):
        probs = predict_probabilities(model, torch.from_numpy(images)).numpy()
        arrays["predicted" + suffix] = probs.argmax(1).astype(np.int64)
        arrays["target_probability" + suffix] = probs[np.arange(len(target)), target].astype(np.float32)
    save_arrays(paths.counterfactuals_path(dataset), **arrays)
    return arrays
