"""Networks of the pipeline, each a small ``nn.Module`` whose config is stored beside its weights.

Every model takes C x H x W float input in [0, 1] of the ``input_shape`` (channels, height, width) it
was built for, which its config records (MNIST: 3 x 28 x 28). Activations are separate ``nn.ReLU``
modules (never reused, never in-place) so captum's DeepLift and GuidedBackprop can hook them.
"""
from __future__ import annotations

import functools
import numbers
from pathlib import Path

import torch
from torch import nn

from pipeline.models.external import (TORCHSCRIPT, TORCHVISION, ExternalClassifier, build_external, load_weights,
                                       network_state, read_state_dict)
from pipeline.storage import InputError, load_checkpoint, save_checkpoint

# The input shape of checkpoints (and configs) written before configs recorded "input_shape": they were all
# MNIST-sized, 3 x 28 x 28. Also what a model of your own without an ``input_shape`` attribute is taken to take.
LEGACY_INPUT_SHAPE = (3, 28, 28)


def checked_input_shape(input_shape, model: str, rule: str | None = None, fits=None) -> tuple[int, int, int]:
    """``input_shape`` as a (channels, height, width) tuple of positive ints; a ValueError naming the shape and
    what ``model`` allows when it is not one, or when ``fits(channels, height, width)`` is false (``rule`` says why)."""
    if not (isinstance(input_shape, (tuple, list)) and len(input_shape) == 3
            and all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n > 0 for n in input_shape)):
        raise ValueError(f"{model} needs an input shape (channels, height, width) of three positive integers; "
                         f"got {input_shape!r}")
    shape = tuple(int(n) for n in input_shape)
    if fits is not None and not fits(*shape):
        raise ValueError(f"{model} needs {rule}; got (channels, height, width) = {shape}")
    return shape


def input_shape(model: nn.Module) -> tuple[int, int, int]:
    """The (channels, height, width) ``model`` takes: the ``input_shape`` every classifier here records.

    A model of your own can say it by the same attribute; one that does not is taken to take
    ``LEGACY_INPUT_SHAPE`` (3 x 28 x 28), the shape every model had before the attribute existed.
    """
    return tuple(getattr(model, "input_shape", LEGACY_INPUT_SHAPE))


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """The model's convolutions in registration (= forward) order, named conv1, conv2, ..."""
    return [(f"conv{k + 1}", m) for k, m in enumerate(m for m in model.modules() if isinstance(m, nn.Conv2d))]


def layer_outputs(model: nn.Module, x: torch.Tensor, modules: list[nn.Module],
                  capture: str = "output") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(the model's output, the output of each of ``modules``) for one forward pass of ``x``;
    ``capture="input"`` takes each module's (first) input instead."""
    if capture not in ("output", "input"):
        raise ValueError(f"capture must be 'output' or 'input', not {capture!r}")
    seen: dict[int, torch.Tensor] = {}
    keep = (lambda k: lambda _m, _i, out: seen.__setitem__(k, out)) if capture == "output" else \
        (lambda k: lambda _m, inputs, _out: seen.__setitem__(k, inputs[0]))
    hooks = [module.register_forward_hook(keep(k)) for k, module in enumerate(modules)]
    try:
        result = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return result, [seen[k] for k in range(len(modules))]


def conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]


class CNNClassifier(nn.Module):
    """Five 3x3 conv layers in three resolutions (H, H/2, H/4: 28, 14, 7 for MNIST), then a 128-d embedding
    and a linear head. Height and width must be multiples of 4 (two 2x poolings).

    ``gradcam_layer`` is the last convolution's activation (H/4 x W/4), ``embed`` the penultimate features.
    """

    def __init__(self, n_classes: int, width: int = 32, input_shape: tuple[int, int, int] = LEGACY_INPUT_SHAPE):
        super().__init__()
        self.input_shape = checked_input_shape(input_shape, "the CNN classifier",
                                               "height and width that are multiples of 4 (it pools twice by 2)",
                                               lambda _c, h, w: h % 4 == 0 and w % 4 == 0)
        channels, height, image_width = self.input_shape
        w = width
        self.features = nn.Sequential(
            *conv_block(channels, w), *conv_block(w, w), nn.MaxPool2d(2),
            *conv_block(w, 2 * w), *conv_block(2 * w, 2 * w), nn.MaxPool2d(2),
            *conv_block(2 * w, 4 * w),
        )
        flat = 4 * w * (height // 4) * (image_width // 4)
        self.embedding = nn.Sequential(nn.Flatten(), nn.Linear(flat, 128), nn.ReLU())
        self.head = nn.Linear(128, n_classes)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.features[-1]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class DenseClassifier(nn.Module):
    """A multilayer perceptron on the flattened image (no convolutions: Grad-CAM does not apply)."""

    def __init__(self, n_classes: int, width: int = 32, input_shape: tuple[int, int, int] = LEGACY_INPUT_SHAPE):
        super().__init__()
        self.input_shape = checked_input_shape(input_shape, "the dense classifier")
        channels, height, image_width = self.input_shape
        hidden = 8 * width
        self.embedding = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * height * image_width, hidden), nn.ReLU(), nn.Linear(hidden, 128), nn.ReLU()
        )
        self.head = nn.Linear(128, n_classes)

    gradcam_layer = None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


@functools.cache
def residual_block() -> type[nn.Module]:
    """torchvision's ``BasicBlock`` with its ReLU split in two separate, not in-place modules (one after the first
    convolution, one after the sum), as captum's DeepLift and GuidedBackprop need. Imported when first built:
    torchvision is slow to import and only the ResNet needs it."""
    from torchvision.models.resnet import BasicBlock

    class ResidualBlock(BasicBlock):
        def __init__(self, c_in: int, c_out: int, stride: int = 1):
            downsample = None
            if stride != 1 or c_in != c_out:
                downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
            super().__init__(c_in, c_out, stride=stride, downsample=downsample)
            self.relu = nn.ReLU()
            self.relu_out = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu_out(self.bn2(self.conv2(out)) + identity)

    return ResidualBlock


class ResNetClassifier(nn.Module):
    """A small residual network: a 3x3 stem, one residual block per resolution (H, H/2, H/4 rounded up: 28, 14, 7
    for MNIST; widths w, 2w, 4w), global average pooling, a 128-d embedding and a linear head. Any height and
    width work.

    The blocks are torchvision's ``BasicBlock`` (two 3x3 convolutions with batch norm and an identity or 1x1
    shortcut); ``gradcam_layer`` is the last block (its output after the sum and ReLU, 7 x 7 for MNIST).
    """

    def __init__(self, n_classes: int, width: int = 32, input_shape: tuple[int, int, int] = LEGACY_INPUT_SHAPE):
        super().__init__()
        self.input_shape = checked_input_shape(input_shape, "the ResNet classifier")
        w, block = width, residual_block()
        channels = self.input_shape[0]
        self.stem = nn.Sequential(nn.Conv2d(channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.blocks = nn.Sequential(block(w, w), block(w, 2 * w, stride=2), block(2 * w, 4 * w, stride=2))
        self.embedding = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 128), nn.ReLU())
        self.head = nn.Linear(128, n_classes)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.blocks[-1]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


CLASSIFIERS = {"cnn": CNNClassifier, "dense": DenseClassifier, "resnet": ResNetClassifier}


def build_classifier(config: dict, torchscript: bytes | None = None) -> nn.Module:
    """``config``: {"architecture": "cnn"|"dense"|"resnet", "n_classes": int, "width": int,
    "input_shape": (channels, height, width)}; a config without "input_shape" (written before configs
    recorded it) is for ``LEGACY_INPUT_SHAPE``, 3 x 28 x 28. Architecture "torchvision" or "torchscript":
    a network of your own (:func:`~pipeline.models.external.build_external`; ``torchscript`` holds the file)."""
    if config["architecture"] in (TORCHVISION, TORCHSCRIPT):
        return build_external(config, torchscript)
    return CLASSIFIERS[config["architecture"]](n_classes=config["n_classes"], width=config["width"],
                                               input_shape=config.get("input_shape", LEGACY_INPUT_SHAPE))


def build_seeded_classifier(config: dict, seed: int) -> nn.Module:
    """``build_classifier(config)`` on the CPU with initial weights drawn from ``seed`` alone.

    The global random state is restored afterwards, so the weights depend neither on what ran
    before nor on the device the model moves to, and later draws are not shifted by this one.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return build_classifier(config)


def save_model(path: str | Path, model: nn.Module, config: dict, **extra) -> None:
    """Write ``model``'s weights with the ``config`` that rebuilds it (``build_classifier``). A config without
    "input_shape" gets the model's, when the model records one; a config that names another shape is refused.
    A network of your own is saved as its architecture saves it (a TorchScript one also needs ``torchscript=``
    the file's bytes in ``extra``)."""
    if hasattr(model, "input_shape"):
        shape = tuple(model.input_shape)
        if "input_shape" not in config:
            config = {**config, "input_shape": shape}
        elif tuple(config["input_shape"]) != shape:
            raise ValueError(f"the config says input_shape {tuple(config['input_shape'])} but the model was built "
                             f"for {shape}")
    if isinstance(model, ExternalClassifier):
        state = network_state(model)
    else:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_checkpoint(path, {"config": config, "state_dict": state, **extra})


def load_classifier(path: str | Path, device: torch.device | str = "cpu", made_by: str = "train_classifier") -> nn.Module:
    """Rebuild a classifier from its checkpoint, in eval mode, parameters frozen (a checkpoint written before
    configs recorded "input_shape" is for 3 x 28 x 28 images: see ``build_classifier``)."""
    checkpoint = load_checkpoint(path, made_by=made_by)
    redo = f"re-run `dvc repro {made_by}` (a classifier of your own goes under datasets.<name>.classifier in params.yaml)"
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("config"), dict) and "state_dict" in checkpoint):
        raise InputError(f"{path} is not a classifier saved by this pipeline (a config and a state_dict); {redo}")
    try:
        model = build_classifier(checkpoint["config"], checkpoint.get("torchscript"))
        set_weights(model, checkpoint["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError):
        raise InputError(f"{path} holds a config and weights that do not make a classifier; {redo}") from None
    return frozen(model, device)


def set_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load weights that ``save_model`` wrote (a network of your own: its architecture's own state dict)."""
    (model.network if isinstance(model, ExternalClassifier) else model).load_state_dict(state)


def classifier_from_file(config: dict, path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """A trained network of your own (``config``: architecture "torchvision" with ``path`` its state dict, or
    "torchscript" with ``path`` the file), in eval mode on ``device``, checked to give one score per class; and
    what ``save_model`` must keep with it. Raises FileNotFoundError, or ValueError saying what does not fit."""
    extra = {}
    if not Path(path).is_file():
        raise FileNotFoundError(path)
    if config["architecture"] == TORCHSCRIPT:
        extra["torchscript"] = Path(path).read_bytes()
        try:
            model = build_classifier(config, extra["torchscript"])
        except RuntimeError:
            raise ValueError(f"{path} is not a TorchScript network that torch.jit.save wrote, or it is cut short") from None
    else:
        state = read_state_dict(path)  # before the network is built: a file that is no state dict fails fast
        model = build_classifier(config)
        load_weights(model, state, str(path))
    model = frozen(model, device)
    with torch.no_grad():
        outputs = tuple(model(torch.zeros(2, *config["input_shape"], device=device)).shape)
    if outputs != (2, config["n_classes"]):
        raise ValueError(f"{path} gives outputs of shape {outputs[1:]} per image; the dataset has "
                         f"{config['n_classes']} classes, so one score per class is needed")
    return model, extra


def missing_parts(model: nn.Module) -> dict[str, str]:
    """What ``model`` cannot offer to the methods that need its inside, and why: "hooks" (DeepLift, guided
    backpropagation), "gradcam_layer" (Grad-CAM), "embed" (penultimate features), "head" (TracIn)."""
    if isinstance(model, ExternalClassifier):
        return model.missing_parts()
    missing = {}
    if getattr(model, "gradcam_layer", None) is None:
        missing["gradcam_layer"] = f"the {type(model).__name__} has no convolution"
    for part in ("embed", "head"):
        if getattr(model, part, None) is None:
            missing[part] = f"the {type(model).__name__} has no {part}"
    return missing


def frozen(model: nn.Module, device: torch.device | str) -> nn.Module:
    """``model`` on ``device``, in eval mode, with every parameter frozen (a model under study only judges)."""
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def reinitialized_classifier(config: dict, seed: int, device: torch.device | str) -> tuple[nn.Module | None, str]:
    """The classifier of ``config`` with weights drawn from ``seed`` alone (a model that learned nothing: the chance
    level of a figure that a model may get from the input alone), frozen on ``device``, and what it is in words. A
    torchvision architecture is built without weights, seeded; a TorchScript network cannot be rebuilt without its own
    weights: (None, "not available: <why>")."""
    if config["architecture"] == TORCHSCRIPT:
        return None, ("not available: a TorchScript network cannot be rebuilt with fresh weights, so there is no "
                      "randomisation check and the localisation figures stand beside the uniform map alone")
    name = f"torchvision {config[TORCHVISION]}" if config["architecture"] == TORCHVISION else config["architecture"]
    return (frozen(build_seeded_classifier(config, seed), device),
            f"the classifier's architecture ({name}) with seeded random weights (stream randomized_model)")
