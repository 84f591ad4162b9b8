"""Networks of the counterfactual GAN (StarGAN v2 style), sized by the image shape (channels, height, width)
their config names (MNIST: 3 x 28 x 28); height and width must be multiples of 4 and at least 28.

- Two generators, chosen by the config's "generator" (:data:`GENERATORS`); both are encoder-decoders whose
  encoder is instance-normalised (it keeps shape and drops colour statistics) and whose decoder is modulated by
  a style code through AdaIN, and both are the identity when untrained:

  - :class:`Generator` (``stargan``) — H -> H/4 and back with a bottleneck block per side; returns a per-pixel
    change of the input in logit space (zero at start), so the output stays in (0, 1). MNIST pixels sit at
    0 and 1, where the logit's slope is flat, so learning to paint on them is slow.
  - :class:`EditGenerator` (``edit``) — an edit of the real image: per pixel a colour ``c`` and a mask ``m``
    in [0, 1], ``out = x + m * (c - x)`` (:func:`apply_edit`). Painting a solid patch or recolouring a stroke
    is one step of the mask; where the mask is 0 the pixel is the input's. Skip connections carry the encoder's
    maps to the decoder, and its 1x1 head sees the input's pixels, so a mask can follow a stroke exactly, and a
    learned map of pixel places, so evidence that sits at a fixed place (a stamp) is learned where it sits.

- :class:`MappingNetwork` — random latent + target class -> style code (latent-guided translation).
- :class:`StyleEncoder` — reference image + its class -> style code (reference-guided translation).
- :class:`Discriminator` — one real/fake logit per class (multi-task); the logit of the image's
  (claimed) class is the one used.

Class-specific heads are one linear layer with ``n_classes * out`` outputs, indexed by class, so a
batch with mixed classes runs in one pass.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.models.classifiers import checked_input_shape, frozen
from pipeline.storage import load_checkpoint, save_checkpoint


PIXEL_EPS = 0.01  # input pixels are clamped to [eps, 1 - eps] before the logit
# The image shape of GAN configs (and ``gan.pt`` files) written before configs recorded "image_shape": they
# were all MNIST-sized, 3 x 28 x 28.
LEGACY_IMAGE_SHAPE = (3, 28, 28)
# The generator of configs written before configs recorded "generator".
LEGACY_GENERATOR = "stargan"
# The edit generator's mask logit at start: sigmoid(-4) = 0.018, so an untrained edit changes a pixel by at most
# 1.8 % of its distance to the (mid-grey) start colour, about 2/255 at most after rounding to uint8.
MASK_START_LOGIT = -4.0
PLACE_CHANNELS = 8  # channels of the edit generator's learned map of pixel places


def checked_image_shape(image_shape) -> tuple[int, int, int]:
    """``image_shape`` as a (channels, height, width) tuple the GAN's networks take, or a ValueError: the
    encoder halves twice and the decoder doubles twice (multiples of 4), and the style encoder's and
    discriminator's last 7 x 7 convolution needs an H/4 x W/4 map of at least 7 x 7 (at least 28)."""
    return checked_input_shape(image_shape, "the GAN", "height and width that are multiples of 4 and at least 28",
                               lambda _c, h, w: h % 4 == 0 and w % 4 == 0 and h >= 28 and w >= 28)


def image_shape_of(config: dict) -> tuple[int, int, int]:
    """The image shape a GAN ``config`` is for: its "image_shape", else ``LEGACY_IMAGE_SHAPE`` (3 x 28 x 28),
    the shape of every config written before the key existed."""
    return checked_image_shape(config.get("image_shape", LEGACY_IMAGE_SHAPE))


def pick_class(outputs: torch.Tensor, classes: torch.Tensor, width: int) -> torch.Tensor:
    """From per-class heads (N x n_classes*width) take each row's class block -> N x width."""
    blocks = outputs.view(len(outputs), -1, width)
    return blocks[torch.arange(len(outputs), device=outputs.device), classes]


class AdaIN(nn.Module):
    """Instance norm whose per-channel scale and shift come from the style code."""

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.affine = nn.Linear(style_dim, 2 * channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(style).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return self.norm(x) * (1 + gamma) + beta


class EncoderBlock(nn.Module):
    """Residual block with instance norm; optional 2x average-pool downsampling."""

    def __init__(self, c_in: int, c_out: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        self.norm1 = nn.InstanceNorm2d(c_in, affine=True)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.InstanceNorm2d(c_out, affine=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(self.norm1(x), 0.2))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
            x = F.avg_pool2d(x, 2)
        h = self.conv2(F.leaky_relu(self.norm2(h), 0.2))
        return (self.skip(x) + h) / 2**0.5


class DecoderBlock(nn.Module):
    """Residual block with AdaIN; optional 2x nearest upsampling."""

    def __init__(self, c_in: int, c_out: int, style_dim: int, upsample: bool):
        super().__init__()
        self.upsample = upsample
        self.norm1 = AdaIN(c_in, style_dim)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = AdaIN(c_out, style_dim)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.norm1(x, style), 0.2)
        if self.upsample:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv1(h)
        h = self.conv2(F.leaky_relu(self.norm2(h, style), 0.2))
        return (self.skip(x) + h) / 2**0.5


def downsampling_blocks(w: int) -> list[EncoderBlock]:
    """The encoder's two halvings: w -> 2w channels at H/2 x W/2 (14 x 14), 2w -> 4w at H/4 x W/4 (7 x 7)."""
    return [EncoderBlock(w, 2 * w, downsample=True), EncoderBlock(2 * w, 4 * w, downsample=True)]


class Generator(nn.Module):
    """H -> H/2 -> H/4 encoder, one bottleneck block per side, H/4 -> H/2 -> H AdaIN decoder
    (28 -> 14 -> 7 -> 14 -> 28 for MNIST)."""

    def __init__(self, style_dim: int = 32, width: int = 32, image_shape: tuple[int, int, int] = LEGACY_IMAGE_SHAPE):
        super().__init__()
        self.image_shape = checked_image_shape(image_shape)
        channels, w = self.image_shape[0], width
        self.stem = nn.Conv2d(channels, w, 3, padding=1)
        self.encoder = nn.ModuleList([*downsampling_blocks(w), EncoderBlock(4 * w, 4 * w, downsample=False)])
        self.decoder = nn.ModuleList([
            DecoderBlock(4 * w, 4 * w, style_dim, upsample=False),
            DecoderBlock(4 * w, 2 * w, style_dim, upsample=True),   # H/2 x W/2 (14 x 14)
            DecoderBlock(2 * w, w, style_dim, upsample=True),       # H x W (28 x 28)
        ])
        self.to_image = nn.Sequential(nn.InstanceNorm2d(w, affine=True), nn.LeakyReLU(0.2), nn.Conv2d(w, channels, 1))
        # The decoder predicts a change of the input in logit space, starting from exactly none:
        # a fresh generator is the identity, so training spends its steps on what must change.
        nn.init.zeros_(self.to_image[-1].weight)
        nn.init.zeros_(self.to_image[-1].bias)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        h = self.stem(x * 2 - 1)
        for block in self.encoder:
            h = block(h)
        for block in self.decoder:
            h = block(h, style)
        change = self.to_image(h).float()
        return torch.sigmoid(torch.logit(x.float().clamp(PIXEL_EPS, 1 - PIXEL_EPS)) + change)


def apply_edit(x: torch.Tensor, colour: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x + mask * (colour - x)``: images (N x C x H x W in [0, 1]) moved towards ``colour`` (N x C x H x W in
    [0, 1]) by ``mask`` (N x 1 x H x W in [0, 1]); a pixel whose mask is 0 is returned unchanged."""
    return x + mask * (colour - x)


class EditGenerator(nn.Module):
    """H -> H/2 -> H/4 encoder, H/4 -> H/2 -> H AdaIN decoder with the encoder's maps added at each size
    (28 -> 14 -> 7 -> 14 -> 28 for MNIST), and a per-pixel head (1x1 convolutions, AdaIN) on the decoder's map, the
    input's pixels and a learned map of pixel places that returns an edit: a colour and a mask (:meth:`edit`, applied
    by :func:`apply_edit`)."""

    def __init__(self, style_dim: int = 32, width: int = 32, image_shape: tuple[int, int, int] = LEGACY_IMAGE_SHAPE):
        super().__init__()
        self.image_shape = checked_image_shape(image_shape)
        channels, w = self.image_shape[0], width
        self.stem = nn.Conv2d(channels, w, 3, padding=1)
        self.encoder = nn.ModuleList(downsampling_blocks(w))
        self.decoder = nn.ModuleList([
            DecoderBlock(4 * w, 2 * w, style_dim, upsample=True),   # H/2 x W/2, + the encoder's 14 x 14 map
            DecoderBlock(2 * w, w, style_dim, upsample=True),       # H x W, + the stem's map
        ])
        # A learned map of each pixel's place, the same for every image: a class's evidence that sits at a fixed
        # place whatever the image (a stamp, a time stamp, a watermark) is then one choice of the style per pixel,
        # not something the decoder has to rebuild from the borders' zero padding.
        self.place = nn.Parameter(torch.randn(PLACE_CHANNELS, *self.image_shape[1:]))
        # per pixel: the decoder's map, the input's pixel and its place, modulated by the style once more, so the
        # style sets the colours (a recolouring is a function of the pixel and the target class alone)
        self.head_in = nn.Conv2d(w + channels + PLACE_CHANNELS, w, 1)
        self.head_style = AdaIN(w, style_dim)
        self.head_out = nn.Conv2d(w, channels + 1, 1)
        # An untrained edit changes (almost) nothing: no colour preference (mid-grey) and a closed mask.
        nn.init.zeros_(self.head_out.weight)
        nn.init.zeros_(self.head_out.bias)
        nn.init.constant_(self.head_out.bias[channels:], MASK_START_LOGIT)

    def edit(self, x: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(colour N x C x H x W, mask N x 1 x H x W), both in [0, 1], for images ``x`` and styles ``style`` (N x S)."""
        h = self.stem(x * 2 - 1)
        skips = [h]
        for block in self.encoder:
            h = block(h)
            skips.append(h)
        for block, skip in zip(self.decoder, reversed(skips[:-1])):
            h = block(h, style) + skip
        place = self.place.to(h.dtype).expand(len(x), -1, -1, -1)
        h = F.leaky_relu(self.head_style(self.head_in(torch.cat([h, x * 2 - 1, place], dim=1)), style), 0.2)
        out = self.head_out(h).float()
        return torch.sigmoid(out[:, :-1]), torch.sigmoid(out[:, -1:])

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        colour, mask = self.edit(x, style)
        return apply_edit(x.float(), colour, mask)


GENERATORS = {"stargan": Generator, "edit": EditGenerator}  # the config's "generator" -> network


def generate(generator: nn.Module, x: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(translated images, the edit's mask N x 1 x H x W) of an :class:`EditGenerator`; (translated images, None)
    of a generator without a mask."""
    if isinstance(generator, EditGenerator):
        colour, mask = generator.edit(x, style)
        return apply_edit(x.float(), colour, mask), mask
    return generator(x, style), None


class MappingNetwork(nn.Module):
    def __init__(self, latent_dim: int = 16, style_dim: int = 32, n_classes: int = 10, hidden: int = 128):
        super().__init__()
        self.style_dim = style_dim
        self.shared = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
        )
        self.heads = nn.Linear(hidden, n_classes * style_dim)

    def forward(self, z: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return pick_class(self.heads(self.shared(z)), classes, self.style_dim)


def _conv_trunk(width: int, channels: int) -> nn.Sequential:
    """C x H x W -> (4 * width)-d vector: conv and average-pool layers with LeakyReLU, no normalisation.

    The last 7 x 7 convolution covers the whole H/4 x W/4 map of a 28 x 28 image (1 x 1 out); on a larger
    image it slides, and the global average pool after it reduces its (H/4 - 6) x (W/4 - 6) map to the
    vector (on a 1 x 1 map the pool changes nothing, so 28 x 28 images give exactly what they did without it).
    """
    w = width
    return nn.Sequential(
        nn.Conv2d(channels, w, 3, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.LeakyReLU(0.2), nn.AvgPool2d(2),            # H/2 (14)
        nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.LeakyReLU(0.2), nn.AvgPool2d(2),        # H/4 (7)
        nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(4 * w, 4 * w, 7), nn.LeakyReLU(0.2),                                    # H/4 - 6 (1)
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),                                            # 1 x 1
    )


class StyleEncoder(nn.Module):
    def __init__(self, style_dim: int = 32, n_classes: int = 10, width: int = 32,
                 image_shape: tuple[int, int, int] = LEGACY_IMAGE_SHAPE):
        super().__init__()
        self.style_dim = style_dim
        self.image_shape = checked_image_shape(image_shape)
        self.trunk = _conv_trunk(width, self.image_shape[0])
        self.heads = nn.Linear(4 * width, n_classes * style_dim)

    def forward(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return pick_class(self.heads(self.trunk(x * 2 - 1)), classes, self.style_dim)


class Discriminator(nn.Module):
    def __init__(self, n_classes: int = 10, width: int = 32, image_shape: tuple[int, int, int] = LEGACY_IMAGE_SHAPE):
        super().__init__()
        self.image_shape = checked_image_shape(image_shape)
        self.trunk = _conv_trunk(width, self.image_shape[0])
        self.heads = nn.Linear(4 * width, n_classes)

    def forward(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Real/fake logit of each image for its class (N)."""
        return pick_class(self.heads(self.trunk(x * 2 - 1)), classes, 1).squeeze(1)


class Translator(nn.Module):
    """The trained image-to-image translator used downstream (EMA weights, no discriminator).

    ``config``: {"n_classes", "style_dim", "latent_dim", "width", "image_shape": (channels, height, width),
    "generator": a key of :data:`GENERATORS`}; a config without "image_shape" (written before configs recorded it)
    is for 3 x 28 x 28 images, one without "generator" has the ``stargan`` generator.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        c = self.config
        self.image_shape = image_shape_of(c)
        self.generator = GENERATORS[c.get("generator", LEGACY_GENERATOR)](c["style_dim"], c["width"], self.image_shape)
        self.mapping = MappingNetwork(c["latent_dim"], c["style_dim"], c["n_classes"])
        self.style_encoder = StyleEncoder(c["style_dim"], c["n_classes"], c["width"], self.image_shape)

    def latent_style(self, z: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return self.mapping(z, classes)

    def reference_style(self, reference: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return self.style_encoder(reference, classes)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.generator(x, style)


class GanNets(Translator):
    """All networks of the GAN together, so they move, save and load as one: the translator's three
    networks plus the discriminator. ``config``: see :class:`Translator`.
    """

    def __init__(self, config: dict):
        super().__init__(config)
        self.discriminator = Discriminator(self.config["n_classes"], self.config["width"], self.image_shape)


def translator_state(nets: nn.Module) -> dict:
    """State dict of generator, mapping network and style encoder (of ``GanNets`` or ``Translator``)."""
    return {name: tensor.detach().cpu() for name, tensor in nets.state_dict().items()
            if not name.startswith("discriminator.")}


def save_translator(path: str | Path, nets: nn.Module, config: dict, **extra) -> None:
    """Write the translator's file (``storage.save_checkpoint``: the same weights and ``extra`` give the same bytes)."""
    save_checkpoint(path, {"config": dict(config), "state_dict": translator_state(nets), **extra})


def load_translator(path: str | Path, device: torch.device | str = "cpu", made_by: str = "train_gan") -> Translator:
    """Rebuild the EMA translator from ``gan.pt``, in eval mode, parameters frozen."""
    checkpoint = load_checkpoint(path, made_by=made_by)
    model = Translator(checkpoint["config"])
    model.load_state_dict(checkpoint["state_dict"])
    return frozen(model, device)
