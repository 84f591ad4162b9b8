"""A stand-in for ``counterfactuals@<dataset>`` in the contract format, for tests of its consumers.

Usage: ``python stub_counterfactuals.py <dataset> [n_images]``, run from a repository root that has
prepared data. "Counterfactuals" are the test images with a faint checkerboard added (a planted
frequency artifact), one row per (image, target != source); the classifier's verdicts are not run:
``predicted`` is set to the target and ``target_probability`` to 1.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def checkerboard(amplitude: float) -> np.ndarray:
    yy, xx = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
    return amplitude * np.where((yy // 2 + xx // 2) % 2 == 0, 1.0, -1.0)


def stub_counterfactuals(images: np.ndarray, labels: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    n = len(images)
    image_index = np.repeat(np.arange(n), n_classes - 1)
    source = labels[image_index]
    offset = np.tile(np.arange(1, n_classes), n)
    target = (source + offset) % n_classes
    real = images[image_index]

    def planted(amplitude):
        return np.clip(np.rint(real.astype(np.float32) + 255 * checkerboard(amplitude)), 0, 255).astype(np.uint8)

    rows = len(image_index)
    return {"real": real, "counterfactual": planted(0.08), "counterfactual_latent": planted(0.04),
            "image_index": image_index.astype(np.int64), "source": source.astype(np.int64), "target": target.astype(np.int64),
            "predicted": target.astype(np.int64), "target_probability": np.ones(rows, np.float32),
            "predicted_latent": target.astype(np.int64), "target_probability_latent": np.ones(rows, np.float32)}


def main() -> None:
    dataset = sys.argv[1]
    n_images = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    with np.load(Path("data/prepared") / dataset / "test.npz") as test:
        images, labels = test["images"][:n_images], test["labels"][:n_images]
    n_classes = json.loads((Path("data/prepared") / dataset / "meta.json").read_text())["n_classes"]
    out = Path("data/counterfactuals") / dataset / "counterfactuals.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **stub_counterfactuals(images, labels, n_classes))


if __name__ == "__main__":
    main()
