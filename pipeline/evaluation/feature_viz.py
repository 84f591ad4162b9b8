"""Activation maximisation of class logits and convolution channels, and a "deepdream" of every
convolution layer as a whole: the units, the input parameterisations, the ascent, the dream, where a
dream's change falls against a known region, and the tables and pictures of the results.

For every output class and the first ``channels_per_layer`` channels of every convolution, an input
is ascended along the gradient of that unit's activation (a class's logit; a channel's spatial mean
before its ReLU) and re-standardised (zero mean, unit standard deviation per image) after every
step. Two starts per unit: a constant image of ones and seeded Gaussian noise. All units and both
starts are one batch: image ``i`` drives only its own unit, so one backward pass serves them all.

The layer dream starts from real images instead and ascends a whole layer's energy (the mean squared
activation after its ReLU), with steps normalised by the gradient's mean magnitude and the image kept
in [0, 1]: it shows what the layer amplifies in real data. Against a known region (a planted
shortcut), :func:`dream_on_region` says how much of the change falls there.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated, Iterator, Literal

import numpy as np
import pandas as pd
import torch
from annotated_types import Ge, Gt
from torch import nn
from tqdm import tqdm

from pipeline.attribution.blur import gaussian_blur
from pipeline.data.tensors import as_float
from pipeline.models.classifiers import conv_layers, input_shape, layer_outputs
from pipeline.plotting import image_grid

STARTS = ("ones", "noise")
CLASS_LAYER = "class"


@dataclass(frozen=True)
class MaximiseOptions:
    """How :func:`maximise` ascends: steps, the optimiser, the starts, the regularisers and the parameterisation."""

    steps: Annotated[int, Ge(1)] = 256
    learning_rate: Annotated[float, Gt(0)] = 0.05  # Adam on the input; re-standardised after every step
    noise_scale: Annotated[float, Gt(0)] = 1.0  # std of the noise start (the other start is all ones)
    jitter: Annotated[int, Ge(0), "0 = off"] = 0  # regulariser: random shift by up to this many pixels per step
    total_variation: Annotated[float, Ge(0), "0 = off"] = 0.0  # regulariser: weight of the total-variation penalty
    blur_every: Annotated[int, Ge(0), "0 = off"] = 0  # regulariser: Gaussian blur of the input every k steps
    blur_sigma: Annotated[float, Gt(0)] = 0.5
    parameterization: Literal["pixel", "fourier"] = "pixel"  # fourier: decorrelated 1/f frequency basis
    fourier_decay: Annotated[float, Ge(0)] = 1.0  # spectrum scale 1/f**decay of the fourier parameterisation


@dataclass
class Units:
    """Which unit each image of the batch maximises: ``layer[i]`` names its layer, ``channel[i]`` the channel/class."""

    layer_names: list[str]          # conv layers in forward order, then CLASS_LAYER
    layer: torch.Tensor             # int64 [U]: index into layer_names
    channel: torch.Tensor           # int64 [U]

    def __len__(self) -> int:
        return len(self.layer)


def build_units(model: nn.Module, n_classes: int, channels_per_layer: int) -> Units:
    names, layer, channel = [], [], []
    for k, (name, conv) in enumerate(conv_layers(model)):
        n = min(channels_per_layer, conv.out_channels)
        names.append(name)
        layer += [k] * n
        channel += list(range(n))
    names.append(CLASS_LAYER)
    layer += [len(names) - 1] * n_classes
    channel += list(range(n_classes))
    return Units(names, torch.tensor(layer), torch.tensor(channel))


def standardise(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per image: subtract the mean, divide by the standard deviation (over channels and pixels)."""
    flat = x.flatten(1)
    mean = flat.mean(1).view(-1, 1, 1, 1)
    std = flat.std(1, unbiased=False).view(-1, 1, 1, 1)
    return (x - mean) / (std + eps)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels, per image [N]."""
    dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).mean(1)
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).mean(1)
    return dy + dx


class Parameterisation:
    """Maps the optimised tensor to images and back: identity (``pixel``) or a 1/f-scaled spectrum (``fourier``).

    The fourier basis decorrelates neighbouring pixels: a gradient step on its coefficients moves
    low frequencies more than high ones, which keeps the images smoother than pixel steps do.
    """

    def __init__(self, kind: str, shape: tuple[int, ...], decay: float, device: torch.device):
        self.kind, self.shape = kind, shape
        h, w = shape[-2:]
        fy = torch.fft.fftfreq(h, device=device)[:, None]
        fx = torch.fft.rfftfreq(w, device=device)[None, :]
        frequency = torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / max(h, w))
        self.scale = frequency.pow(-decay)                      # [H, W//2+1]

    def to_image(self, p: torch.Tensor) -> torch.Tensor:
        if self.kind == "pixel":
            return p
        spectrum = torch.view_as_complex(p) * self.scale
        return torch.fft.irfft2(spectrum, s=self.shape[-2:], norm="ortho")

    def from_image(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "pixel":
            return x.clone()
        return torch.view_as_real(torch.fft.rfft2(x, norm="ortho") / self.scale).contiguous()


def unit_activations(model: nn.Module, x: torch.Tensor, units: Units) -> tuple[torch.Tensor, torch.Tensor]:
    """(activation of each image's own unit [N], logits [N x C]) for a batch laid out as ``units`` repeated."""
    convs = conv_layers(model)
    logits, outputs = layer_outputs(model, x, [conv for _, conv in convs])
    n_units = len(units)
    layer = units.layer.to(x.device).repeat(len(x) // n_units)
    channel = units.channel.to(x.device).repeat(len(x) // n_units)
    activation = torch.zeros(len(x), device=x.device, dtype=logits.dtype)
    for k in range(len(units.layer_names)):
        rows = torch.nonzero(layer == k).squeeze(1)
        if k < len(convs):
            value = outputs[k][rows, channel[rows]].flatten(1).mean(1)
        else:
            value = logits[rows, channel[rows]]
        activation = activation.index_put((rows,), value.to(activation.dtype))
    return activation, logits


def maximise(model: nn.Module, units: Units, options: MaximiseOptions, generator: torch.Generator,
             progress: bool = True, image_shape: tuple[int, int, int] | None = None) -> dict[str, torch.Tensor]:
    """Activation maximisation of every unit from both starts at once, on images of ``image_shape`` (channels,
    height, width; when None, the shape the model records: :func:`pipeline.models.classifiers.input_shape`).

    Returns ``images`` [2U x C x H x W] (standardised; rows ``start * U + unit``), ``activation`` and
    ``probability`` (softmax of each image's own class, meaningful for class units) [2U] of the final
    images, and ``curve`` [steps x 2]: the mean class-unit probability per start before each step.
    """
    device = next(model.parameters()).device
    n_units = len(units)
    shape = (len(STARTS) * n_units, *(image_shape if image_shape is not None else input_shape(model)))
    noise = torch.randn(shape, generator=generator, device=generator.device).to(device) * options.noise_scale
    start = torch.ones(shape, device=device)
    start[n_units:] = noise[n_units:]
    param = Parameterisation(options.parameterization, shape, options.fourier_decay, device)
    p = param.from_image(start).requires_grad_(True)
    optimizer = torch.optim.Adam([p], lr=options.learning_rate)
    is_class = (units.layer == len(units.layer_names) - 1).to(device).repeat(len(STARTS))
    start_of = torch.arange(len(STARTS), device=device).repeat_interleave(n_units)
    class_rows = [torch.nonzero(is_class & (start_of == s)).squeeze(1) for s in range(len(STARTS))]
    own_class = torch.where(is_class, units.channel.to(device).repeat(len(STARTS)), 0)  # 0 for conv units
    curve = torch.zeros(options.steps, len(STARTS), device=device)
    shifts = torch.randint(-options.jitter, options.jitter + 1, (options.steps, 2), generator=generator,
                           device=generator.device).cpu()
    bar = tqdm(range(options.steps), desc="activation maximisation", leave=False, file=sys.stderr,
               mininterval=2, disable=not progress)
    for step in bar:
        x = param.to_image(p)
        if options.jitter:
            x = torch.roll(x, shifts=(int(shifts[step, 0]), int(shifts[step, 1])), dims=(2, 3))
        activation, logits = unit_activations(model, x, units)
        loss = -activation.sum()
        if options.total_variation:
            loss = loss + options.total_variation * total_variation(x).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            probability = logits.float().softmax(1).gather(1, own_class[:, None]).squeeze(1)
            for s, rows in enumerate(class_rows):
                curve[step, s] = probability[rows].mean()
            image = param.to_image(p)
            if options.blur_every and (step + 1) % options.blur_every == 0:
                image = gaussian_blur(image, options.blur_sigma)
            p.copy_(param.from_image(standardise(image)))
    with torch.no_grad():
        images = param.to_image(p).detach()
        activation, logits = unit_activations(model, images, units)
        probability = logits.float().softmax(1).gather(1, own_class[:, None]).squeeze(1)
        shown = display(images)
        shown_probability = model(shown).float().softmax(1).gather(1, own_class[:, None]).squeeze(1)
    return {"images": images, "activation": activation.float(), "probability": probability, "curve": curve,
            "is_class": is_class, "display_probability": shown_probability}


def layer_energy(model: nn.Module, x: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Per image: the mean squared post-ReLU activation of the convolution layer ``owner[i]`` drives [N]."""
    _, outputs = layer_outputs(model, x, [conv for _, conv in conv_layers(model)])
    energy = torch.stack([torch.relu(out).float().pow(2).flatten(1).mean(1) for out in outputs], 1)
    return energy.gather(1, owner[:, None]).squeeze(1)


def dream_layers(model: nn.Module, images: torch.Tensor, steps: int, step_size: float) -> dict[str, torch.Tensor]:
    """Deepdream of every convolution layer from the same real ``images`` [N x C x H x W] in [0, 1].

    Each step moves every image along the gradient of its layer's energy, divided by the gradient's
    mean absolute value (so ``step_size`` is the mean change per pixel and step), and clamps to [0, 1].
    All layers are one batch (rows ``layer * N + image``). Returns ``images`` [L x N x C x H x W] and
    ``gain`` [L x N]: the layer's energy after the dream over its energy on the real image.
    """
    n_layers, n = len(conv_layers(model)), len(images)
    owner = torch.arange(n_layers, device=images.device).repeat_interleave(n)
    x = images.float().repeat(n_layers, 1, 1, 1)
    with torch.no_grad():
        before = layer_energy(model, x, owner)
    for _ in range(steps):
        x.requires_grad_(True)
        grad, = torch.autograd.grad(layer_energy(model, x, owner).sum(), x)
        with torch.no_grad():
            scale = grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)
            x = (x + step_size * grad / scale).clamp(0.0, 1.0)
    with torch.no_grad():
        after = layer_energy(model, x, owner)
    return {"images": x.detach().view(n_layers, n, *images.shape[1:]),
            "gain": (after / before.clamp_min(1e-12)).view(n_layers, n)}


def dream_on_region(start: torch.Tensor, dreamed: torch.Tensor, region: torch.Tensor, color: list[float]) -> dict:
    """Where a dream's change goes, against a known region (a planted shortcut's opacity > 0, [H x W]).

    ``change_share``: the share of the summed absolute change (all channels) inside the region, to
    compare with ``area_share``, the region's share of the image. ``toward_color``: the mean change inside
    the region projected on the direction from the start pixel to the shortcut's color (1 = painted
    fully in that color, 0 = unchanged, < 0 = away from it), per layer [L].
    """
    inside = region.bool()
    change = (dreamed - start[None]).abs().sum(2)                             # [L, N, H, W]
    share = change[..., inside].sum((1, 2)) / change.sum((1, 2, 3)).clamp_min(1e-12)
    target = torch.tensor(color, dtype=start.dtype, device=start.device).view(1, 1, -1, 1, 1)
    direction = target - start[None]                                         # [1, N, C, H, W]
    moved = ((dreamed - start[None]) * direction).sum(2) / direction.pow(2).sum(2).clamp_min(1e-12)
    return {"change_share": share, "area_share": float(inside.float().mean()),
            "toward_color": moved[..., inside].mean(-1).mean(1)}


def display(images: torch.Tensor) -> torch.Tensor:
    """Standardised images -> [0, 1] per image (min-max), for pictures."""
    flat = images.flatten(1)
    low = flat.min(1).values.view(-1, 1, 1, 1)
    high = flat.max(1).values.view(-1, 1, 1, 1)
    return (images - low) / (high - low).clamp_min(1e-8)


def summarise(result: dict, units: Units, class_names: list[str], steps: int) -> tuple[dict, dict, pd.DataFrame]:
    """(headline metrics, details, one row per unit and start).

    The metrics are the two figures a run is compared by: the mean class probability of the class
    images as optimised and as drawn (min-max scaled into [0, 1], the range the classifier was trained
    on). Per start, per layer and per class figures go to the details."""
    n_units = len(units)
    activation = result["activation"].cpu().numpy()
    probability = result["probability"].cpu().numpy()
    layer = np.tile(units.layer.numpy(), len(STARTS))
    channel = np.tile(units.channel.numpy(), len(STARTS))
    start = np.repeat(np.arange(len(STARTS)), n_units)
    class_layer = len(units.layer_names) - 1
    rows = pd.DataFrame({
        "layer": [units.layer_names[k] for k in layer],
        "unit": [class_names[c] if k == class_layer else str(c) for k, c in zip(layer, channel)],
        "start": [STARTS[s] for s in start],
        "final_activation": activation,
        "class_probability": np.where(layer == class_layer, probability, np.nan),
    })
    is_class = layer == class_layer
    shown = result["display_probability"].cpu().numpy()
    metrics = {
        "mean_class_probability": float(probability[is_class].mean()),
        "mean_class_probability_display": float(shown[is_class].mean()),
    }
    details = {
        **{f"mean_class_probability_{name}": float(probability[is_class & (start == s)].mean())
           for s, name in enumerate(STARTS)},
        "steps": steps,
        "n_units": n_units,
        "final_activation": {name: float(activation[layer == k].mean()) for k, name in enumerate(units.layer_names)},
        "class_probability": {class_names[c]: {name: float(probability[is_class & (start == s) & (channel == c)][0])
                                               for s, name in enumerate(STARTS)}
                              for c in range(len(class_names))},
    }
    return metrics, details, rows


def unit_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per unit (``layer/unit``), its final activation from each start side by side (wide)."""
    wide = rows.pivot_table(index=["layer", "unit"], columns="start", values="final_activation", sort=False)
    wide = wide[list(STARTS)].add_prefix("final_activation_").reset_index()
    wide.insert(0, "unit_name", wide["layer"] + "/" + wide["unit"])
    return wide.drop(columns=["layer", "unit"])


def curve_table(curve: np.ndarray) -> pd.DataFrame:
    """``curve`` [steps x starts] as one row per step, one column per start (wide)."""
    return pd.DataFrame({"step": np.arange(1, len(curve) + 1),
                         **{f"mean_class_probability_{name}": curve[:, s] for s, name in enumerate(STARTS)}})


def class_probability_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per class unit and start (``class (start)``): the class probability of its final image."""
    classes = rows[rows["layer"] == CLASS_LAYER]
    return pd.DataFrame({"class": classes["unit"] + " (" + classes["start"] + ")",
                         "class_probability": classes["class_probability"]})


def unit_arrays(result: dict, units: Units) -> dict[str, np.ndarray]:
    """The final images and, per image, its layer, channel and start, as arrays to save."""
    return {"images": result["images"].cpu().numpy(), "layer": np.tile(units.layer.numpy(), len(STARTS)),
            "channel": np.tile(units.channel.numpy(), len(STARTS)),
            "start": np.repeat(np.arange(len(STARTS)), len(units)),
            "layer_names": np.array(units.layer_names)}


def unit_grids(result: dict, units: Units, class_names: list[str], dataset: str) -> Iterator[tuple[str, object]]:
    """(layer name, figure) per layer: the images that maximise its units, one row per start."""
    pictures = display(result["images"]).cpu().numpy()
    n_units = len(units)
    layer = units.layer.numpy()
    channel = units.channel.numpy()
    probability = result["probability"].cpu().numpy()
    for k, name in enumerate(units.layer_names):
        cols = np.flatnonzero(layer == k)
        index = np.concatenate([cols + s * n_units for s in range(len(STARTS))])
        if name == CLASS_LAYER:
            titles = [f"{STARTS[i // n_units]}: {class_names[channel[i % n_units]]}\np={probability[i]:.2f}" for i in index]
        else:
            titles = [f"{STARTS[i // n_units]}: ch {channel[i % n_units]}" for i in index]
        fig = image_grid(pictures[index], titles, ncols=len(cols),
                         suptitle=f"{dataset}: inputs that maximise {name} units (rows: start from ones, from noise)")
        yield name, fig


def dream_starts(images: torch.Tensor, labels: torch.Tensor, excluded_labels: list[int], n: int,
                 generator: torch.Generator) -> torch.Tensor:
    """A seeded sample of ``n`` of the uint8 ``images`` in [0, 1], none of a class in ``excluded_labels``."""
    keep = torch.nonzero(~torch.isin(labels, torch.tensor(excluded_labels, dtype=labels.dtype))).squeeze(1)
    chosen = keep[torch.randperm(len(keep), generator=generator)[:n]]
    return as_float(images[chosen])


@dataclass(frozen=True)
class KnownRegion:
    """A region whose answer is known (a planted shortcut): its class, pixels [H x W] (bool) and color."""

    label: int
    region: torch.Tensor
    color: list[float]


def dream(model: nn.Module, start: torch.Tensor, steps: int, step_size: float,
          known: KnownRegion | None = None) -> tuple[dict, dict]:
    """The layer dream of ``start`` [N x C x H x W] in [0, 1]: (its figures for details, what its picture shows).

    The figures: the mean energy gain per layer and, given a ``known`` region, where the change goes
    (:func:`dream_on_region`) and the share of dreamed images predicted as the region's class. The
    picture's part: the dreamed ``images`` [L x N x C x H x W], their ``predicted`` classes [L x N] and
    the real images' ``real_predicted`` [N].
    """
    result = dream_layers(model, start, steps, step_size)
    names = [name for name, _ in conv_layers(model)]
    with torch.no_grad():
        predicted = model(result["images"].flatten(0, 1)).argmax(1).view(len(names), -1).cpu()
        real_predicted = model(start).argmax(1).cpu()
    details = {"images": len(start), "steps": steps, "step_size": step_size,
               "energy_gain": {name: float(result["gain"][k].mean()) for k, name in enumerate(names)}}
    if known is not None:
        found = dream_on_region(start, result["images"], known.region, known.color)
        details["shortcut"] = {"label": known.label, "area_share": found["area_share"],
                               "change_share": dict(zip(names, found["change_share"].tolist())),
                               "toward_color": dict(zip(names, found["toward_color"].tolist())),
                               "predicted_as_shortcut_class": dict(zip(names, (predicted == known.label)
                                                                       .float().mean(1).tolist()))}
    return details, {"images": result["images"], "predicted": predicted, "real_predicted": real_predicted,
                     "layer_names": names}


def dream_figure(start: torch.Tensor, shown: dict, class_names: list[str], dataset: str):
    """One row per real image: the image, then its dream by each layer; titled with the layer and predicted class."""
    names = shown["layer_names"]
    rows = torch.cat([start[None].cpu(), shown["images"].cpu()]).transpose(0, 1).flatten(0, 1).numpy()
    columns = ["real", *names]
    labels = torch.cat([shown["real_predicted"][None], shown["predicted"]]).T.flatten()   # row-major: image, then column
    titles = [f"{columns[k % len(columns)]}: {class_names[int(c)]}" for k, c in enumerate(labels)]
    return image_grid(rows, titles, ncols=len(names) + 1,
                      suptitle=f"{dataset}: real test images dreamed by each layer (title: layer, predicted class)")
