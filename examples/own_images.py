"""Make a folder of images and a classifier trained on them outside the pipeline, to try the pipeline on "your own".

    python -m examples.own_images demo

writes ``demo/images/{train,test}/<class>/*.png`` (64x64 RGB pictures of a disk, a plus and a ring in random
colors, sizes and places on dark noise: 200 training and 100 test images per class) and ``demo/resnet18.pt``,
the state dict of a torchvision ResNet-18 trained on them for one epoch with its own input transform, as
your code would; then it prints the ``datasets`` entry that points the pipeline at both.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

MEAN, STD = [0.45, 0.45, 0.45], [0.25, 0.25, 0.25]   # the input transform this classifier was trained with


def train_resnet18(images: Path, epochs: int = 1, seed: int = 0, size: int = 64) -> torch.nn.Module:
    """torchvision's ResNet-18 trained on ``images/train`` resized to ``size`` (a plain loop, not the pipeline's)."""
    from torchvision.models import resnet18

    from pipeline.data.sources import load_image_folder

    pixels, labels, classes = load_image_folder(images, train=True, size=size)
    x = torch.from_numpy(pixels) / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    y = torch.from_numpy(labels)
    torch.manual_seed(seed)
    network = resnet18(num_classes=len(classes))
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(32):
            loss = torch.nn.functional.cross_entropy(network(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return network


def entry(images: Path, weights: Path) -> str:
    return f"""  my_images:
    kind: image_folder
    root: {images}
    image_size: 64
    classifier:
      torchvision: resnet18
      weights: {weights}
      mean: {MEAN}
      std: {STD}
      gradcam_layer: layer4
      features_layer: avgpool"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write images/ and resnet18.pt")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.synthetic_images import write_image_folder

    images = write_image_folder(args.folder / "images", n_train=200, n_test=100, size=64)
    weights = args.folder / "resnet18.pt"
    torch.save(train_resnet18(images).state_dict(), weights)
    print(f"wrote {images}/ and {weights}; add under `datasets:` in params.yaml:\n\n{entry(images, weights)}")


if __name__ == "__main__":
    main()
