"""Attribution methods as uniform, batched callables built on captum.

``make_explainer(name, model, options, noise)`` returns ``explain(images, targets) -> attributions`` with
the shape of ``images`` (N x C x H x W float32); ``options`` (:class:`AttributionOptions`) hold the methods'
settings, ``noise`` is the ``ig_noise`` baseline image. ``attribute_batches`` runs one on many images.
Grad-CAM maps are upsampled to the input size and spread evenly over the channels, so that
the channel sum is the Grad-CAM map itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable

import torch
from annotated_types import Ge, Gt, Predicate
from torch import nn
from tqdm import tqdm

from pipeline.attribution.names import ATTRIBUTION_METHODS, NEEDS_CONV_LAYER, NEEDS_HOOKS
from pipeline.data.tensors import as_float, batch_slices
from pipeline.models.classifiers import missing_parts

Explainer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AttributionOptions:
    """How the methods of ``make_explainer`` are set up, and how many images go through them at a time."""

    batch_size: Annotated[int, Ge(1)] = 256  # images per attribution call
    internal_batch_size: Annotated[int, Ge(1)] = 4096  # interpolated or perturbed images per forward pass
    ig_steps: Annotated[int, Ge(1)] = 32
    blur_kernel_size: Annotated[int, Ge(3), Predicate(lambda n: n % 2 == 1), "odd"] = 11  # the ig_blur baseline
    blur_sigma: Annotated[float, Gt(0)] = 3.0
    occlusion_window: Annotated[int, Ge(1)] = 4
    occlusion_stride: Annotated[int, Ge(1)] = 2
    smoothgrad_samples: Annotated[int, Ge(1)] = 16
    smoothgrad_stdev: Annotated[float, Gt(0)] = 0.15


class Negated(nn.Module):
    """The model's outputs with the sign flipped: Grad-CAM of it shows evidence *against* a class."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.model(x)


def skip_reason(name: str, model: nn.Module) -> str | None:
    """Why ``name`` cannot run on ``model`` (None when it can)."""
    missing = missing_parts(model)
    if name in NEEDS_HOOKS and "hooks" in missing:
        return f"{name} hooks the model's activation modules; {missing['hooks']}"
    if name in NEEDS_CONV_LAYER and "gradcam_layer" in missing:
        return f"{name} needs a convolutional layer; {missing['gradcam_layer']}"
    return None


def runnable_methods(names: list[str], model: nn.Module) -> tuple[list[str], dict[str, str]]:
    """The methods of ``names`` that can run on ``model``, and {method: why not} for the others."""
    runnable, skipped = [], {}
    for name in names:
        reason = skip_reason(name, model)
        if reason:
            skipped[name] = reason
        else:
            runnable.append(name)
    return runnable, skipped


def blurred(images: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Gaussian-blurred copy of a batch (the ``ig_blur`` baseline), borders reflected (:mod:`pipeline.attribution.blur`)."""
    from pipeline.attribution.blur import gaussian_blur

    return gaussian_blur(images, sigma, kernel_size)


def noise_baseline(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """One uniform-noise image (1 x C x H x W) drawn by ``generator``: the ``ig_noise`` baseline of every input.

    Drawn on the generator's device (the CPU for the stage, so a CPU and a GPU run share it).
    """
    return torch.rand((1, *shape), generator=generator, device=generator.device)


def upsampled_gradcam(layer_gradcam, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from captum.attr import LayerAttribution

    cam = layer_gradcam.attribute(images, target=targets, relu_attributions=True)
    cam = LayerAttribution.interpolate(cam, tuple(images.shape[-2:]), interpolate_mode="bilinear")
    return (cam / images.shape[1]).expand_as(images).contiguous()


def gradcam_explainer(model: nn.Module, counterfactual: bool = False) -> Explainer:
    """Grad-CAM on the model's last convolutional layer; ``counterfactual``: with negated gradients."""
    from captum.attr import LayerGradCam

    method = LayerGradCam(Negated(model) if counterfactual else model, model.gradcam_layer)
    return lambda images, targets: upsampled_gradcam(method, images, targets)


def make_explainer(name: str, model: nn.Module, options: AttributionOptions, noise: torch.Tensor | None = None) -> Explainer:
    """A batched attribution function for method ``name`` (see ``ATTRIBUTION_METHODS``).

    ``noise``: the 1 x C x H x W baseline image of ``ig_noise`` (see ``noise_baseline``); only that method needs it.
    """
    from captum import attr

    if name not in ATTRIBUTION_METHODS:
        raise ValueError(f"unknown attribution method {name!r}; known: {', '.join(ATTRIBUTION_METHODS)}")
    reason = skip_reason(name, model)
    if reason:
        raise ValueError(reason)
    if name == "ig_noise" and noise is None:
        raise ValueError("ig_noise needs its baseline image: pass noise=noise_baseline(...)")

    def per_eval(images: torch.Tensor, per_image: int) -> int:
        """How many perturbed copies of the batch fit in one forward pass of ``internal_batch_size``."""
        return max(1, min(per_image, options.internal_batch_size // max(1, len(images))))

    if name.startswith("ig_"):
        ig = attr.IntegratedGradients(model)

        def integrated_gradients(images, targets):
            if name == "ig_zero":
                baselines = torch.zeros_like(images)
            elif name == "ig_noise":
                baselines = noise.to(images.device).expand_as(images)
            else:
                baselines = blurred(images, options.blur_kernel_size, options.blur_sigma)
            return ig.attribute(images, baselines=baselines, target=targets, n_steps=options.ig_steps,
                                internal_batch_size=max(len(images), options.internal_batch_size))

        return integrated_gradients
    if name == "saliency":
        method = attr.Saliency(model)
        return lambda images, targets: method.attribute(images, target=targets, abs=True)
    if name == "inputxgrad":
        method = attr.InputXGradient(model)
        return lambda images, targets: method.attribute(images, target=targets)
    if name == "deeplift":
        method = attr.DeepLift(model)
        return lambda images, targets: method.attribute(images, baselines=torch.zeros_like(images), target=targets)
    if name == "guided_backprop":
        method = attr.GuidedBackprop(model)
        return lambda images, targets: method.attribute(images, target=targets)
    if name == "occlusion":
        method = attr.Occlusion(model)

        def occlusion(images, targets):
            """Windows over all channels at once, slid over height and width (the shape of ``images``)."""
            channels, height, width = images.shape[1:]
            window = (channels, options.occlusion_window, options.occlusion_window)
            strides = (channels, options.occlusion_stride, options.occlusion_stride)
            positions = (((height - options.occlusion_window) // options.occlusion_stride + 1)
                         * ((width - options.occlusion_window) // options.occlusion_stride + 1))
            return method.attribute(images, sliding_window_shapes=window, strides=strides, baselines=0.0,
                                    target=targets, perturbations_per_eval=per_eval(images, positions))

        return occlusion
    if name == "smoothgrad":
        method = attr.NoiseTunnel(attr.Saliency(model))
        return lambda images, targets: method.attribute(
            images, nt_type="smoothgrad", nt_samples=options.smoothgrad_samples, stdevs=options.smoothgrad_stdev,
            nt_samples_batch_size=per_eval(images, options.smoothgrad_samples), target=targets, abs=True)
    if name == "gradcam":
        return gradcam_explainer(model)
    # guided_gradcam
    method = attr.GuidedGradCam(model, model.gradcam_layer)
    return lambda images, targets: method.attribute(images, target=targets, interpolate_mode="bilinear")


def as_captum_explanation(explain: Explainer) -> Callable:
    """Adapt ``explain`` to captum.metrics' calling convention (inputs may come as a 1-tuple)."""

    def explanation(inputs, target=None):
        if isinstance(inputs, tuple):
            return (explain(inputs[0], target).detach(),)
        return explain(inputs, target).detach()

    return explanation


def attribute_batches(explain: Explainer, images: torch.Tensor, targets: torch.Tensor, batch_size: int,
                      bar: tqdm | None = None) -> torch.Tensor:
    """Attributions (float32, on the images' device) of uint8 or float images, ``batch_size`` at a time."""
    out = []
    for part in batch_slices(len(images), batch_size):
        batch = images[part]
        batch = as_float(batch)
        out.append(explain(batch, targets[part]).detach().float())
        if bar is not None:
            bar.update(1)
    return torch.cat(out) if out else torch.empty((0, *images.shape[1:]), device=images.device)
