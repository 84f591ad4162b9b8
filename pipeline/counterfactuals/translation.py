"""GAN counterfactuals: every test image translated into every other class, reference- and latent-guided.

A translator is an ``nn.Module`` like :class:`pipeline.models.gan.Translator`: ``translator(x, style)``
translates float images, ``reference_style(x, classes)`` and ``latent_style(z, classes)`` give style
codes, and ``translator.config["latent_dim"]`` is the size of a latent. The classifier only judges the results.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from annotated_types import Ge
from torch import nn

from pipeline.data.tensors import batch_slices, to_float, to_uint8
from pipeline.models.inference import predict_probabilities

MODES = {"reference": "", "latent": "_latent"}  # guidance -> key suffix in counterfactuals.npz
CONTRACT_KEYS = ("real", "counterfactual", "counterfactual_latent", "image_index", "source", "target",
                 "predicted", "target_probability", "predicted_latent", "target_probability_latent")


@dataclass(frozen=True)
class TranslationOptions:
    """How many test images to translate, how a class's reference style is made, and the batch size.

    ``reference``: ``mean_style`` (the mean style code of ``n_reference_images`` random images of
    the class) or ``fixed_image`` (the style of one random image of the class).
    """

    n_images: Annotated[int, Ge(1)] = 1000
    reference: Literal["mean_style", "fixed_image"] = "mean_style"
    n_reference_images: Annotated[int, Ge(1)] = 64
    batch_size: Annotated[int, Ge(1)] = 1024


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
def own_class_styles(translator: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The style code of each uint8 image under its own class (``labels``), batched."""
    return torch.cat([translator.reference_style(to_float(images[part]), labels[part])
                      for part in batch_slices(len(images), batch_size)])


@torch.no_grad()
def translate(translator: nn.Module, images: torch.Tensor, styles: torch.Tensor, batch_size: int) -> torch.Tensor:
    """uint8 counterfactuals of uint8 ``images`` (N x 3 x 28 x 28) under per-row ``styles`` (N x S), batched."""
    out = torch.empty_like(images, dtype=torch.uint8)
    for part in batch_slices(len(images), batch_size):
        out[part] = to_uint8(translator(to_float(images[part]), styles[part]).float())
    return out


def make_counterfactuals(translator: nn.Module, classifier: nn.Module, test: dict, references: dict,
                         n_classes: int, options: TranslationOptions, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """All counterfactuals of a seeded sample of test images, in the counterfactuals.npz format (tensors)."""
    device = test["images"].device
    order = torch.randperm(len(test["images"]), generator=generator, device=generator.device).to(device)
    pick = order[: options.n_images].sort().values
    rows, targets = all_other_targets(test["labels"][pick], n_classes)
    image_index = pick[rows]
    real = test["images"][image_index]
    class_styles = class_reference_styles(translator, references["images"], references["labels"], n_classes,
                                          options.reference, options.n_reference_images, generator)
    counterfactual = translate(translator, real, class_styles[targets], options.batch_size)
    z = torch.randn(len(targets), translator.config["latent_dim"], generator=generator, device=generator.device).to(device)
    latent_styles = torch.cat([translator.latent_style(z[part], targets[part]) for part in batch_slices(len(z), options.batch_size)]) \
        if len(z) else z
    counterfactual_latent = translate(translator, real, latent_styles, options.batch_size)
    result = {"real": real, "counterfactual": counterfactual, "counterfactual_latent": counterfactual_latent,
              "image_index": image_index.long(), "source": test["labels"][image_index].long(), "target": targets.long()}
    for suffix, images in (("", counterfactual), ("_latent", counterfactual_latent)):
        probabilities = predict_probabilities(classifier, images, options.batch_size)
        result[f"predicted{suffix}"] = probabilities.argmax(1)
        result[f"target_probability{suffix}"] = probabilities.gather(1, targets[:, None]).squeeze(1).float()
    result["class_styles"] = class_styles
    return result
