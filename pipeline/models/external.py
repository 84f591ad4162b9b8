"""Classifiers designed outside this pipeline: a torchvision architecture, or a network saved as TorchScript.

Every stage hands a classifier C x H x W images in [0, 1]. :class:`ExternalClassifier` puts the network's
own input transform in front of it (gray to RGB where the network takes three channels, a resize, a
per-channel ``(x - mean) / std``), so attributions and counterfactuals stay in the pipeline's pixel space,
and it names the modules that some methods need:

- ``gradcam_layer``: the module whose output Grad-CAM weighs (e.g. ``layer4`` of a ResNet);
- ``embed``: the flattened output of ``features_layer``, the penultimate features (e.g. ``avgpool``);
- ``head``: the last ``nn.Linear``, whose gradients TracIn takes.

Each is None where it cannot be had, and :func:`missing_parts` says why. captum's DeepLift and guided
backpropagation hook activation modules, which must be neither in place nor called twice in one forward
pass; torchvision's ResNets call one ReLU twice per block, so :func:`unshared` gives every such call a
module of its own (and turns in-place activations off) without changing what the network computes.
A TorchScript network runs, but its modules cannot be hooked: the methods that hook are skipped.
"""
from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.storage import read_torch_file

TORCHSCRIPT = "torchscript"    # the "architecture" of a classifier config that holds a TorchScript network
TORCHVISION = "torchvision"    # ... and of one that names a torchvision architecture ("torchvision": <name>)


@dataclass(frozen=True)
class InputTransform:
    """What the network expects of its input: ``mean`` / ``std`` per channel (None: none), a square ``size``
    (None: the images' own) and ``channels`` (None: the images' own; 3 turns gray images into RGB)."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    size: int | None = None
    channels: int | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels is not None and x.shape[1] != self.channels:
            if x.shape[1] != 1:
                raise ValueError(f"the network takes {self.channels} channels; the images have {x.shape[1]}")
            x = x.expand(-1, self.channels, -1, -1)
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if self.mean is not None:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            if mean.shape[1] != x.shape[1]:
                raise ValueError(f"mean and std have {mean.shape[1]} values; the network's input has {x.shape[1]} channels")
            x = (x - mean) / std
        return x


class Unshared(nn.Module):
    """A parameter-free module that a network calls several times per forward pass, split into one copy per
    call: call k of a pass goes to copy k (``reset`` starts a pass), so each copy is called once."""

    def __init__(self, module: nn.Module, n_calls: int):
        super().__init__()
        self.copies = nn.ModuleList(copy.deepcopy(module) for _ in range(n_calls))
        self.calls = 0

    def reset(self) -> None:
        self.calls = 0

    def forward(self, *args, **kwargs):
        module = self.copies[self.calls % len(self.copies)]
        self.calls += 1
        return module(*args, **kwargs)


def calls_per_module(network: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """How often each leaf module (no children) of ``network`` runs in one forward pass of ``example``."""
    counts: dict[str, int] = {}
    hooks = [module.register_forward_hook(lambda *_args, name=name: counts.__setitem__(name, counts.get(name, 0) + 1))
             for name, module in network.named_modules() if not list(module.children())]
    was_training = network.training
    try:
        network.eval()
        with torch.no_grad():
            network(example)
    finally:
        network.train(was_training)
        for hook in hooks:
            hook.remove()
    return counts


def unshared(network: nn.Module, example: torch.Tensor) -> tuple[nn.Module, list[Unshared]]:
    """``network`` (changed in place) with in-place activations turned off and every parameter-free leaf module
    that runs more than once per forward pass of ``example`` split by :class:`Unshared`; and those splits."""
    for module in network.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
    splits = []
    for name, n_calls in calls_per_module(network, example).items():
        module = network.get_submodule(name)
        if n_calls > 1 and not any(True for _ in module.parameters()) and not any(True for _ in module.buffers()):
            parent_name, _, child = name.rpartition(".")
            split = Unshared(module, n_calls)
            setattr(network.get_submodule(parent_name) if parent_name else network, child, split)
            splits.append(split)
    return network, splits


class ExternalClassifier(nn.Module):
    """A network of your own behind the pipeline's classifier interface (see the module docstring).

    ``input_shape`` is what the pipeline feeds (channels, height, width); ``hookable`` is False for a TorchScript
    network, whose modules forward hooks do not reach.
    """

    def __init__(self, network: nn.Module, input_shape: tuple[int, int, int], transform: InputTransform,
                 gradcam_layer: str | None = None, features_layer: str | None = None, hookable: bool = True,
                 description: str = "your classifier"):
        super().__init__()
        self.input_shape = tuple(int(n) for n in input_shape)
        self.transform = transform
        self.hookable, self.description = hookable, description
        self.splits: list[Unshared] = []
        if hookable:
            example = transform(torch.zeros(1, *self.input_shape))
            network, self.splits = unshared(network, example)
        self.network = network
        self.layer_names = {"gradcam_layer": gradcam_layer, "features_layer": features_layer}
        for key, name in self.layer_names.items():
            if name is not None and hookable:
                try:
                    network.get_submodule(name)
                except AttributeError:
                    raise ValueError(f"{description} has no module {name!r} (its {key}); its modules include "
                                     f"{', '.join(top_level_names(network))}") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for split in self.splits:
            split.reset()
        return self.network(self.transform(x))

    def named_layer(self, key: str) -> nn.Module | None:
        name = self.layer_names[key]
        return None if name is None or not self.hookable else self.network.get_submodule(name)

    @property
    def gradcam_layer(self) -> nn.Module | None:
        return self.named_layer("gradcam_layer")

    @property
    def embed(self):
        """The penultimate features (N x D, ``features_layer``'s output flattened) as a function of the images,
        or None where no features layer is named."""
        layer = self.named_layer("features_layer")
        if layer is None:
            return None

        def features(x: torch.Tensor) -> torch.Tensor:
            seen = []
            hook = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
            try:
                self(x)
            finally:
                hook.remove()
            return seen[-1].flatten(1)

        return features

    @property
    def head(self) -> nn.Module | None:
        """The last ``nn.Linear`` of the network (its output layer), or None."""
        if not self.hookable:
            return None
        linear = [m for m in self.network.modules() if isinstance(m, nn.Linear)]
        return linear[-1] if linear else None

    def missing_parts(self) -> dict[str, str]:
        """What this classifier cannot offer ("hooks", "gradcam_layer", "embed", "head") and why."""
        if not self.hookable:
            reason = f"{self.description} is a TorchScript network, whose modules cannot be hooked"
            return {part: reason for part in ("hooks", "gradcam_layer", "embed", "head")}
        missing = {}
        if self.gradcam_layer is None:
            missing["gradcam_layer"] = f"no gradcam_layer is named for {self.description}"
        if self.embed is None:
            missing["embed"] = f"no features_layer is named for {self.description}"
        if self.head is None:
            missing["head"] = f"{self.description} has no nn.Linear output layer"
        return missing


def top_level_names(network: nn.Module) -> list[str]:
    return [name for name, _ in network.named_children()][:12]


def transform_from(config: dict, input_shape: tuple[int, int, int], network_channels: int | None) -> InputTransform:
    mean, std = config.get("mean"), config.get("std")
    return InputTransform(mean=None if mean is None else tuple(mean), std=None if std is None else tuple(std),
                          size=config.get("input_size"), channels=network_channels)


def torchvision_network(name: str, n_classes: int) -> nn.Module:
    """torchvision's ``name`` architecture with ``n_classes`` outputs and random weights."""
    from torchvision import models

    if name not in models.list_models():
        raise ValueError(f"torchvision has no architecture {name!r}; see torchvision.models.list_models()")
    return models.get_model(name, weights=None, num_classes=n_classes)


def build_external(config: dict, torchscript: bytes | None = None) -> ExternalClassifier:
    """The classifier a config of architecture ``"torchvision"`` (random weights; load the state dict after) or
    ``"torchscript"`` (from the file's bytes) describes. The config holds "n_classes", "input_shape", the
    transform ("mean", "std", "input_size") and the layer names ("gradcam_layer", "features_layer")."""
    shape = tuple(config["input_shape"])
    layers = {"gradcam_layer": config.get("gradcam_layer"), "features_layer": config.get("features_layer")}
    if config["architecture"] == TORCHVISION:
        network = torchvision_network(config[TORCHVISION], config["n_classes"])
        return ExternalClassifier(network, shape, transform_from(config, shape, 3), **layers,
                                  description=f"the torchvision {config[TORCHVISION]}")
    if torchscript is None:
        raise ValueError("a TorchScript classifier needs the network's bytes")
    network = torch.jit.load(io.BytesIO(torchscript), map_location="cpu")
    return ExternalClassifier(network, shape, transform_from(config, shape, None), **layers, hookable=False,
                              description="the TorchScript network")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict saved with ``torch.save(model.state_dict(), path)`` (or a mapping holding it under
    "state_dict" or "model"), read as data: the file cannot run code."""
    try:
        state = read_torch_file(path)
    except ValueError as err:
        raise ValueError(f"{err}; save your network's weights with torch.save(model.state_dict(), path)") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of parameter names to tensors); "
                         "save one with torch.save(model.state_dict(), path)")
    return state


def load_weights(model: ExternalClassifier, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict of the bare network into ``model`` (the split modules hold neither parameters nor
    buffers, so its keys are the architecture's own); a mismatch names the first keys that differ."""
    try:
        model.network.load_state_dict(state)
    except RuntimeError as err:
        first = " ".join(str(err).split())[:600]
        raise ValueError(f"{source} does not fit {model.description} with {model.input_shape} inputs: {first}") from None


def network_state(model: ExternalClassifier) -> dict[str, torch.Tensor]:
    """The bare network's state dict, as its own architecture would save it."""
    return {k: v.detach().cpu() for k, v in model.network.state_dict().items()}
