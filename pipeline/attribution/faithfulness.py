"""How faithful a method's attributions are to the model: the deletion curve and its random-order reference,
captum's infidelity and max-sensitivity, and the model-randomisation sanity check.

Settings come in :class:`FaithfulnessOptions`; the methods' own settings in
:class:`~pipeline.attribution.methods.AttributionOptions`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from annotated_types import Ge, Gt
from torch import nn

from pipeline.attribution.methods import AttributionOptions, as_captum_explanation, make_explainer
from pipeline.attribution.scores import deletion_curve, nanmean, pixel_map, rank_correlation
from pipeline.data.tensors import to_float
from pipeline.models.inference import predict_probabilities


@dataclass(frozen=True)
class FaithfulnessOptions:
    """How many images each faithfulness score uses, and how it perturbs them."""

    deletion_steps: Annotated[int, Ge(1)] = 20  # points of the deletion curve after the intact image
    n_faithfulness_images: Annotated[int, Ge(1)] = 128  # images of infidelity and of the randomisation check
    infidelity_samples: Annotated[int, Ge(1)] = 16
    n_sensitivity_images: Annotated[int, Ge(1)] = 16
    sensitivity_samples: Annotated[int, Ge(1)] = 8
    sensitivity_radius: Annotated[float, Gt(0)] = 0.02


def random_deletion_order(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A uniform-noise "attribution" of ``shape``: deleting pixels in its order is the reference to beat."""
    return torch.rand(shape, generator=generator, device=generator.device)


def gaussian_perturbation(std: float, generator: torch.Generator):
    """captum's infidelity ``perturb_func``: Gaussian noise of ``std`` drawn by ``generator``, on the inputs' device."""

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(inputs.shape, generator=generator, device=generator.device).to(inputs.device) * std
        return noise, inputs - noise

    return perturb


def probability_function(model: nn.Module, internal_batch_size: int):
    return lambda images: predict_probabilities(model, images, internal_batch_size)


def random_order_curve(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator,
                       internal_batch_size: int, deletion_steps: int) -> torch.Tensor:
    """Per-image deletion curves of ``images`` (uint8 or float) with pixels removed in an order drawn by ``generator``."""
    images = to_float(images)
    random_order = random_deletion_order(tuple(images.shape), generator).to(images.device)
    return deletion_curve(probability_function(model, internal_batch_size), images, random_order, targets, 0.0,
                          deletion_steps)


def faithfulness_scores(name: str, model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                        attributions: torch.Tensor, random_maps: torch.Tensor | None, options: AttributionOptions,
                        faithfulness: FaithfulnessOptions, noise: torch.Tensor, perturb) -> dict:
    """Infidelity and randomisation check on ``n_faithfulness_images``, max-sensitivity on ``n_sensitivity_images``.

    ``random_maps``: the method's maps of the same images and targets by a re-initialised copy of the model (at least
    the first ``n_faithfulness_images``), or None where none can be built: the randomisation check is then NaN (not
    available). ``noise``: the ``ig_noise`` baseline image; ``perturb``: infidelity's perturbation
    (``gaussian_perturbation``).
    """
    from captum.metrics import infidelity, sensitivity_max

    x = to_float(images[: faithfulness.n_faithfulness_images])
    t = targets[: faithfulness.n_faithfulness_images]
    infidelities = infidelity(model, perturb, x, attributions[: len(x)], target=t,
                              n_perturb_samples=faithfulness.infidelity_samples, normalize=True,
                              max_examples_per_batch=max(len(x), min(options.batch_size * 4,
                                                                     len(x) * faithfulness.infidelity_samples)))
    randomization = float("nan") if random_maps is None else \
        nanmean(rank_correlation(pixel_map(attributions[: len(x)]).abs(), pixel_map(random_maps[: len(x)]).abs()))

    xs, ts = x[: faithfulness.n_sensitivity_images], t[: faithfulness.n_sensitivity_images]
    explanation = as_captum_explanation(make_explainer(name, model, options, noise))
    sensitivities = sensitivity_max(explanation, xs, perturb_radius=faithfulness.sensitivity_radius,
                                    n_perturb_samples=faithfulness.sensitivity_samples, target=ts,
                                    max_examples_per_batch=max(len(xs), min(options.batch_size,
                                                                            len(xs) * faithfulness.sensitivity_samples)))
    return {"infidelity": nanmean(infidelities), "sensitivity_max": nanmean(sensitivities),
            "randomization_spearman": randomization}
