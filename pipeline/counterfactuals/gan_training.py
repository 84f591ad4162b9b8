"""Training of a StarGAN v2-style class-to-class translator, without the classifier.

One iteration = one discriminator step and one generator step on a batch whose first half is
translated with latent-guided styles (mapping network) and second half with reference-guided styles
(style encoder on a random training image of the target class). Losses: non-saturating adversarial,
R1 penalty on reals (fp32; "lazy" with ``r1_every`` = k > 1: every k-th step, weighted k times),
style reconstruction, cycle consistency and, for the edit generator, the mean of its mask on the translated
images (``mask_weight``: an edit changes only what it must). ``generator`` picks the generator network
(:data:`pipeline.models.gan.GENERATORS`). An exponential moving average
(EMA) of generator, mapping network and style encoder is kept and is what later stages use.

Random streams (see :class:`GanStreams`): which images form a batch, their target classes and the
reference images are drawn on the CPU, so a CPU run and a GPU run train on the same images in the same
order; the latent codes are drawn on the device.

Losses stay on the device; they are copied to the host only every ``log_every`` iterations, where
they are checked (non-finite or above ``max_loss`` stops the run naming the iteration and the loss)
and logged. Checkpoints every ``checkpoint_every`` iterations let an interrupted run resume; a
checkpoint is written only after the losses up to it were checked, and records what it depends on
(:func:`fingerprint`) and the device type it was trained on. Settings come as
:class:`GanTrainingOptions`; the translation grid of a trained translator is drawn here too.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Annotated, Callable, ClassVar, Literal

import numpy as np
import torch
from annotated_types import Ge, Gt, Interval
from torch import nn
from torch.nn import functional as F
from torch.profiler import record_function
from tqdm import tqdm

from pipeline.data.tensors import to_float
from pipeline.models.gan import GanNets, Translator, generate, translator_state
from pipeline.models.inference import autocast
from pipeline.storage import InputError, load_checkpoint, save_checkpoint

LOSS_NAMES = ("d_real", "d_fake", "d_r1", "g_adversarial", "g_style", "g_cycle", "g_mask")
# Settings that change neither the networks nor their training, only what is logged and kept:
# left out of gan.pt and of the fingerprint, so changing one leaves gan.pt byte-identical.
COSMETIC_SETTINGS = ("checkpoint_every", "log_every", "max_loss")
# Settings that may change between an interrupted run and its resumption: how long to train, and
# whether the same step is replayed as a CUDA graph.
RESUMABLE_SETTINGS = ("iterations", "cuda_graph")
# Per-iteration decay of the smoothed losses reported as metrics (an average over about 100 iterations).
LOSS_SMOOTHING = 0.99


@dataclasses.dataclass(frozen=True)
class GanTrainingOptions:
    """Everything GAN training reads: the networks' sizes, the optimisers, the loss weights, how long to
    train, and how often losses are checked and logged and a checkpoint is written."""

    iterations: Annotated[int, Ge(1)] = 2000
    batch_size: Annotated[int, Ge(2), "half latent-, half reference-guided"] = 256
    generator: Literal["stargan", "edit"] = "stargan"  # network of the generator (pipeline.models.gan.GENERATORS)
    style_dim: Annotated[int, Ge(1)] = 32
    latent_dim: Annotated[int, Ge(1)] = 16
    width: Annotated[int, Ge(1)] = 32
    learning_rate: Annotated[float, Gt(0)] = 4e-4
    mapping_learning_rate: Annotated[float, Gt(0)] = 4e-5
    beta1: Annotated[float, Interval(ge=0, lt=1)] = 0.0
    beta2: Annotated[float, Interval(ge=0, lt=1)] = 0.99
    weight_decay: Annotated[float, Ge(0)] = 1e-4
    adversarial_weight: Annotated[float, Ge(0)] = 1.0
    r1_weight: Annotated[float, Ge(0)] = 1.0
    r1_every: Annotated[int, Ge(1)] = 1  # lazy R1: the penalty on every k-th discriminator step only, weighted k times
    style_weight: Annotated[float, Ge(0)] = 1.0
    cycle_weight: Annotated[float, Ge(0)] = 1.0
    mask_weight: Annotated[float, Ge(0)] = 0.0  # edit generator: weight of its mean mask (0 for stargan's, which has none)
    ema_beta: Annotated[float, Interval(ge=0, lt=1)] = 0.999
    mixed_precision: bool = False
    cuda_graph: bool = False
    checkpoint_every: Annotated[int, Ge(1)] = 500
    log_every: Annotated[int, Ge(1)] = 50
    max_loss: Annotated[float, Gt(0)] = 1e4


class NonFiniteLoss(RuntimeError):
    """A GAN loss became NaN/inf or exceeded ``gan.max_loss``."""


class CheckpointMismatch(InputError):
    """A checkpoint that matches the run in everything but the device it was trained on."""


# --------------------------------------------------------------------------------------------
# Losses (module-level so tests can replace one)
# --------------------------------------------------------------------------------------------
def adversarial_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Non-saturating GAN loss: softplus(-D) for 'real', softplus(D) for 'fake'."""
    return F.softplus(-logits.float() if real else logits.float()).mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """0.5 * E ||d D(x) / d x||^2 on real images (fp32, differentiable)."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return 0.5 * grad.pow(2).flatten(1).sum(1).mean()


def style_reconstruction_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (predicted.float() - target.float()).abs().mean()


def cycle_loss(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    return (reconstructed.float() - original.float()).abs().mean()


# --------------------------------------------------------------------------------------------
# Pieces of the training loop
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class GanStreams:
    """The named random streams of GAN training, one per kind of draw.

    ``batch`` (which training images form a batch), ``targets`` (their target classes) and ``references``
    (which image of the target class gives the reference style) live on the CPU: a CPU and a GPU run draw
    the same indices. ``latent`` (the mapping network's codes) lives on the training device, so a step
    replayed as a CUDA graph draws fresh codes on every replay.
    """

    batch: torch.Generator
    targets: torch.Generator
    references: torch.Generator
    latent: torch.Generator

    ON_DEVICE: ClassVar[tuple[str, ...]] = ("latent",)

    @classmethod
    def create(cls, make: Callable[[str, torch.device], torch.Generator], device: torch.device | str) -> GanStreams:
        """``make(name, device)`` returns the seeded generator of stream ``name`` on ``device``."""
        def device_of(name: str) -> torch.device:
            return torch.device(device) if name in cls.ON_DEVICE else torch.device("cpu")

        return cls(**{f.name: make(f.name, device_of(f.name)) for f in dataclasses.fields(cls)})

    def state(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name).get_state() for f in dataclasses.fields(self)}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).set_state(state[f.name])


class ClassSampler:
    """Draw random training indices of given classes, on the device of ``classes`` and ``generator``."""

    def __init__(self, labels: torch.Tensor, n_classes: int):
        counts = torch.bincount(labels, minlength=n_classes)
        empty = torch.nonzero(counts == 0).flatten().tolist()
        if empty:
            raise ValueError(f"no training images of class(es) {empty}: the GAN needs references of every class")
        self.order = torch.argsort(labels, stable=True)
        self.counts = counts
        self.offsets = torch.cumsum(counts, 0) - counts

    def sample(self, classes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(len(classes), generator=generator, device=classes.device)
        position = (u * self.counts[classes]).long().clamp_max(self.counts[classes] - 1)
        return self.order[self.offsets[classes] + position]


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * model, for every parameter ``ema`` shares by name with ``model``."""
    params = dict(model.named_parameters())
    averages = list(ema.named_parameters())
    # one fused kernel per group of tensors instead of one launch per parameter
    torch._foreach_lerp_([a for _, a in averages], [params[name].detach() for name, _ in averages], 1.0 - beta)


def ema_beta_at(iteration: int, beta: float) -> float:
    """EMA decay with a warm-up, so a short run's average is not dominated by the random init."""
    return min(beta, (1.0 + iteration) / (10.0 + iteration))


def translator_settings(cfg: GanTrainingOptions) -> dict:
    """The options that shape the trained translator (all but :data:`COSMETIC_SETTINGS`); stored in gan.pt."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in COSMETIC_SETTINGS}


def code_digest(files: dict[str, Path]) -> str:
    """sha256 of the source ``files`` ({module name: path}): each name with the bytes of its file."""
    digest = hashlib.sha256()
    for name, path in files.items():
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def data_digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 of the training images and labels (their shapes, types and bytes)."""
    digest = hashlib.sha256()
    for tensor in (images, labels):
        digest.update(f"{tuple(tensor.shape)} {tensor.dtype}".encode())
        digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy()))
    return digest.hexdigest()


def fingerprint(cfg: GanTrainingOptions, config: dict, seed: int, images: torch.Tensor, labels: torch.Tensor,
                code: str, deterministic: bool = False) -> str:
    """What a checkpoint must agree on to be resumed: the options that change the maths (not how long to
    train, nor what is logged), the architecture, the seed, whether kernels are deterministic, the data,
    and ``code``, a digest of the code training runs (:func:`code_digest`). The device is checked on its own."""
    settings = {k: v for k, v in translator_settings(cfg).items() if k not in RESUMABLE_SETTINGS}
    blob = json.dumps({"settings": settings, "config": config, "seed": seed, "deterministic": deterministic,
                       "data": data_digest(images, labels), "code": code}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def net_config(cfg: GanTrainingOptions, n_classes: int, image_shape: tuple[int, int, int]) -> dict:
    """The architecture settings :class:`GanNets` and the saved translator are built from; ``image_shape``
    (channels, height, width) is the training images' (``images.shape[1:]``)."""
    return {"n_classes": n_classes, "style_dim": cfg.style_dim, "latent_dim": cfg.latent_dim, "width": cfg.width,
            "image_shape": tuple(int(n) for n in image_shape), "generator": cfg.generator}


def make_optimizers(nets: GanNets, cfg: GanTrainingOptions, graphable: bool = False) -> dict[str, torch.optim.Optimizer]:
    """Adam for the translator (mapping network at its own rate) and for the discriminator; fused (one kernel for
    all parameters: on one CPU thread a step of the width-16 networks' optimisers took 14 ms fused, 50 ms one
    parameter at a time).

    ``graphable``: device-side step counts (``capturable``), so the step can live in a CUDA graph.
    """
    options = {"betas": (cfg.beta1, cfg.beta2), "weight_decay": cfg.weight_decay, "fused": True}
    if graphable:
        options.update(capturable=True)
    translator = torch.optim.Adam([
        {"params": list(nets.generator.parameters()) + list(nets.style_encoder.parameters()), "lr": cfg.learning_rate},
        {"params": nets.mapping.parameters(), "lr": cfg.mapping_learning_rate},
    ], **options)
    discriminator = torch.optim.Adam(nets.discriminator.parameters(), lr=cfg.learning_rate, **options)
    return {"translator": translator, "discriminator": discriminator}


class GraphedStep:
    """Run ``step()`` eagerly for ``warmup`` calls, then capture it once as a CUDA graph and replay it.

    A training step of these small networks launches thousands of tiny kernels; replaying them as one
    graph removes the per-kernel launch cost, which dominates on a GPU. The step must keep static
    shapes and never synchronise with the host: it reads its indices from a fixed device buffer that is
    refilled before each call (:class:`StepInputs`) and draws its random numbers from ``generator``, which
    is registered with the graph so every replay gets fresh ones. If capture fails, training goes on
    eagerly with a warning. Returns the step's output tensor (overwritten by the next replay).
    """

    def __init__(self, step, generator: torch.Generator, warmup: int = 3):
        self.step, self.generator, self.warmup = step, generator, warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output: torch.Tensor | None = None
        self.failed = False

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        if self.graph is not None:
            self.graph.replay()
            return self.output
        if self.failed:
            return self.step()
        if self.calls <= self.warmup:
            return self._warmup()
        try:
            self._capture()
        except RuntimeError as err:  # e.g. an operation that cannot be captured on this torch/driver
            self._give_up(f"capture failed: {str(err).splitlines()[0]}")
            return self.step()
        before = self.generator.get_state()
        self.graph.replay()
        if torch.equal(before, self.generator.get_state()):
            # replays must draw fresh random numbers (and advance the state a checkpoint saves)
            self._give_up("replay did not advance the random generator")
        return self.output

    def _give_up(self, why: str) -> None:
        """Run every later step eagerly, with a warning saying why."""
        self.graph, self.failed = None, True
        print(f"[train_gan] warning: CUDA graph {why}; training continues without it "
              "(gan.cuda_graph: false skips the attempt)", file=sys.stderr)

    def _warmup(self) -> torch.Tensor:
        # eager steps on a side stream before capture, as CUDA graphs require
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            output = self.step()
        torch.cuda.current_stream().wait_stream(side)
        return output

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.generator)
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            self.output = self.step()
        self.graph = graph


def draw_indices(streams: GanStreams, sampler: ClassSampler, n_images: int, n_classes: int, batch_size: int) -> torch.Tensor:
    """The CPU draws of one step, packed as one int64 tensor for one copy to the device: the batch's image
    indices (batch_size), its target classes (batch_size) and the reference images' indices (the second half)."""
    index = torch.randint(n_images, (batch_size,), generator=streams.batch)
    targets = torch.randint(n_classes, (batch_size,), generator=streams.targets)
    references = sampler.sample(targets[batch_size // 2:], streams.references)
    return torch.cat([index, targets, references])


class StepInputs:
    """A device buffer holding one step's indices from :func:`draw_indices`, and views of its three parts.

    Refilled by one host-to-device copy per step (from pinned memory, without waiting for the GPU); the
    buffer never moves, so a step captured as a CUDA graph reads each step's new indices.
    """

    def __init__(self, batch_size: int, device: torch.device):
        sizes = (batch_size, batch_size, batch_size - batch_size // 2)
        self.buffer = torch.zeros(sum(sizes), dtype=torch.long, device=device)
        self.index, self.targets, self.references = self.buffer.split(sizes)

    def load(self, drawn: torch.Tensor) -> None:
        if self.buffer.device.type == "cuda":
            drawn = drawn.pin_memory()
        self.buffer.copy_(drawn, non_blocking=True)


def training_step(nets: GanNets, optimizers: dict, images: torch.Tensor, labels: torch.Tensor, inputs: StepInputs,
                  cfg: GanTrainingOptions, latent: torch.Generator, with_r1: bool = True) -> torch.Tensor:
    """One discriminator and one generator update on the images ``inputs`` indexes, with latent codes drawn
    from ``latent``; returns the losses (len(LOSS_NAMES), on the device). ``with_r1``: whether this step takes the
    R1 penalty (weighted ``r1_every`` times; its reported ``d_r1`` is that weighted term, 0 on the steps without,
    so the mean over steps is the penalty as applied). The phases are labelled for the profiler
    (``benchmarks/gan_step.py``)."""
    device = images.device
    x_real, y_org, y_trg = to_float(images[inputs.index]), labels[inputs.index], inputs.targets
    half = cfg.batch_size // 2
    z = torch.randn(half, nets.config["latent_dim"], generator=latent, device=device)
    x_ref = to_float(images[inputs.references])

    def target_styles() -> torch.Tensor:
        return torch.cat([nets.mapping(z, y_trg[:half]), nets.style_encoder(x_ref, y_trg[half:])])

    # discriminator
    nets.discriminator.requires_grad_(True)
    with record_function("d_forward"):
        with torch.no_grad(), autocast(device, cfg.mixed_precision):
            x_fake = nets.generator(x_real, target_styles())
        x_real_grad = x_real.detach().requires_grad_(with_r1)
        real_logits = nets.discriminator(x_real_grad, y_org)  # fp32: the R1 penalty needs exact gradients
        d_real = adversarial_loss(real_logits, real=True)
        with autocast(device, cfg.mixed_precision):
            fake_logits = nets.discriminator(x_fake.float(), y_trg)
        d_fake = adversarial_loss(fake_logits, real=False)
    with record_function("d_r1"):
        d_r1 = cfg.r1_every * r1_penalty(real_logits, x_real_grad) if with_r1 else torch.zeros((), device=device)
    d_loss = cfg.adversarial_weight * (d_real + d_fake) + cfg.r1_weight * d_r1
    with record_function("d_backward"):
        optimizers["discriminator"].zero_grad(set_to_none=True)
        d_loss.backward()
    with record_function("d_optimizer"):
        optimizers["discriminator"].step()

    # generator, mapping network, style encoder
    nets.discriminator.requires_grad_(False)
    with record_function("g_forward"), autocast(device, cfg.mixed_precision):
        s_trg = target_styles()
        x_fake, mask = generate(nets.generator, x_real, s_trg)
        g_mask = mask.float().mean() if mask is not None else torch.zeros((), device=device)
        g_adversarial = adversarial_loss(nets.discriminator(x_fake, y_trg), real=True)
        g_style = style_reconstruction_loss(nets.style_encoder(x_fake, y_trg), s_trg)
        x_cycle = nets.generator(x_fake, nets.style_encoder(x_real, y_org))
        g_cycle = cycle_loss(x_cycle, x_real)
    g_loss = (cfg.adversarial_weight * g_adversarial + cfg.style_weight * g_style + cfg.cycle_weight * g_cycle
              + cfg.mask_weight * g_mask)
    with record_function("g_backward"):
        optimizers["translator"].zero_grad(set_to_none=True)
        g_loss.backward()
    with record_function("g_optimizer"):
        optimizers["translator"].step()
    nets.discriminator.requires_grad_(True)
    return torch.stack([d_real, d_fake, d_r1, g_adversarial, g_style, g_cycle, g_mask]).detach().float()


def check_losses(losses: np.ndarray, first_iteration: int, cfg: GanTrainingOptions, last_good: str) -> None:
    """Raise :class:`NonFiniteLoss` naming the first iteration and loss that is non-finite or too large."""
    bad = ~np.isfinite(losses) | (np.abs(losses) > cfg.max_loss)
    if not bad.any():
        return
    row, column = np.argwhere(bad)[0]
    value = losses[row, column]
    why = "is not finite" if not np.isfinite(value) else f"exceeds gan.max_loss = {cfg.max_loss:g}"
    raise NonFiniteLoss(
        f"GAN training stopped: loss {LOSS_NAMES[column]} = {value} {why} at iteration {first_iteration + row}; "
        f"{last_good}. Try a lower gan.learning_rate or a higher gan.r1_weight.")


@dataclasses.dataclass
class Progress:
    """What training carries besides weights and random streams: iterations done, the logged history (loss
    means per log interval) and the per-iteration losses' exponential moving average (before bias correction)."""

    iteration: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)
    smoothed: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(len(LOSS_NAMES)))

    def add(self, losses: np.ndarray) -> None:
        """Fold in the checked losses of the next ``len(losses)`` iterations, one row per iteration."""
        for row in losses.astype(np.float64):
            self.smoothed = LOSS_SMOOTHING * self.smoothed + (1.0 - LOSS_SMOOTHING) * row
        self.iteration += len(losses)

    def smoothed_losses(self) -> dict[str, float]:
        """The moving average of each loss, bias-corrected so a short run is not pulled towards zero."""
        correction = 1.0 - LOSS_SMOOTHING ** self.iteration if self.iteration else 1.0
        return {name: float(v / correction) for name, v in zip(LOSS_NAMES, self.smoothed)}


def save_training_state(path: Path, nets: GanNets, ema: Translator, optimizers: dict, streams: GanStreams,
                        progress: Progress, stamp: str, device: torch.device) -> None:
    save_checkpoint(path, {
        "iteration": progress.iteration,
        "fingerprint": stamp,
        "device": device.type,
        "nets": {k: v.detach().cpu() for k, v in nets.state_dict().items()},
        "ema": translator_state(ema),
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "rng": streams.state(),
        "history": json.dumps(progress.history),
        "smoothed_losses": progress.smoothed.tolist(),
    })


def try_resume(path: Path, nets: GanNets, ema: Translator, optimizers: dict, streams: GanStreams, stamp: str,
               iterations: int, device: torch.device) -> Progress:
    """Load the checkpoint when it matches ``stamp`` and is not past ``iterations``; the progress it holds.

    A checkpoint that matches but was trained on another device type is refused (:class:`CheckpointMismatch`):
    its random-generator state cannot drive this device's generator, and training there would not continue
    the same computation.
    """
    if not path.exists():
        return Progress()
    state = load_checkpoint(path, made_by="train_gan")
    if state.get("fingerprint") != stamp:
        print(f"[train_gan] {path} was made with other params, data or code: starting over", file=sys.stderr)
        return Progress()
    if state["iteration"] > iterations:
        print(f"[train_gan] {path} is at iteration {state['iteration']} > gan.iterations = {iterations}: starting over",
              file=sys.stderr)
        return Progress()
    if state.get("device") != device.type:
        raise CheckpointMismatch(
            f"{path} was trained on {state.get('device')} but this run is on {device.type}: set `device: "
            f"{state.get('device')}` to resume it, or delete {path.parent} to start fresh on {device.type}")
    nets.load_state_dict(state["nets"])
    ema.load_state_dict(state["ema"])
    for name, opt in optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
    streams.load_state(state["rng"])
    print(f"[train_gan] resuming from {path} at iteration {state['iteration']}", file=sys.stderr)
    return Progress(int(state["iteration"]), json.loads(state["history"]), np.asarray(state["smoothed_losses"]))


def train(nets: GanNets, images: torch.Tensor, labels: torch.Tensor, cfg: GanTrainingOptions, streams: GanStreams,
          checkpoint_path: Path, stamp: str, on_log=None) -> dict:
    """Train ``nets`` on device-resident uint8 ``images``, resuming from ``checkpoint_path`` when it matches.

    Returns {"ema": Translator, "history": [...], "smoothed_losses": {name: value}, "iterations_run": int,
    "seconds": float}. ``on_log(record, ema)`` is called at every log point (after the losses were checked) with
    the EMA translator as it stands.
    """
    device = images.device
    n_classes = nets.config["n_classes"]
    sampler = ClassSampler(labels.cpu(), n_classes)
    graphed = cfg.cuda_graph and device.type == "cuda"
    if graphed and cfg.r1_every != 1:
        raise ValueError(f"gan.cuda_graph replays one captured step, so it needs gan.r1_every: 1 (got {cfg.r1_every})")
    optimizers = make_optimizers(nets, cfg, graphable=graphed)
    ema = Translator(nets.config).to(device)
    ema.load_state_dict(translator_state(nets))
    ema.requires_grad_(False)
    progress = try_resume(checkpoint_path, nets, ema, optimizers, streams, stamp, cfg.iterations, device)
    start = progress.iteration
    last_good = (f"the last good checkpoint {checkpoint_path} (iteration {start}) is kept" if start
                 else "no checkpoint was written yet")
    nets.train()
    flush_every = math.gcd(cfg.log_every, cfg.checkpoint_every)
    buffer = torch.zeros(flush_every, len(LOSS_NAMES), device=device)
    row = 0
    inputs = StepInputs(cfg.batch_size, device)

    with_r1 = True

    def step() -> torch.Tensor:
        return training_step(nets, optimizers, images, labels, inputs, cfg, streams.latent, with_r1)

    run_step = GraphedStep(step, streams.latent) if graphed else step
    started = time.perf_counter()
    bar = tqdm(range(start, cfg.iterations), total=cfg.iterations, initial=start, desc="train_gan", leave=False,
               file=sys.stderr, mininterval=2)
    for iteration in bar:
        inputs.load(draw_indices(streams, sampler, len(images), n_classes, cfg.batch_size))
        with_r1 = iteration % cfg.r1_every == 0
        buffer[row] = run_step()
        with record_function("ema"):
            ema_update(ema, nets, ema_beta_at(iteration, cfg.ema_beta))
        row += 1
        done = iteration + 1
        if done % flush_every == 0 or done == cfg.iterations:
            with record_function("logging"):
                losses = buffer[:row].cpu().numpy()
                check_losses(losses, done - row + 1, cfg, last_good)
                progress.add(losses)
                record = {"iteration": done, **{name: float(v) for name, v in zip(LOSS_NAMES, losses.mean(0))}}
                progress.history.append(record)
                row = 0
                bar.set_postfix(d=f"{record['d_real'] + record['d_fake']:.3f}", g=f"{record['g_adversarial']:.3f}",
                                cyc=f"{record['g_cycle']:.3f}", refresh=False)
            if on_log is not None:
                on_log(record, ema)
            if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
                save_training_state(checkpoint_path, nets, ema, optimizers, streams, progress, stamp, device)
                last_good = f"the last good checkpoint {checkpoint_path} (iteration {done}) is kept"
    bar.close()
    seconds = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
    nets.eval()
    return {"ema": ema, "history": progress.history, "smoothed_losses": progress.smoothed_losses(),
            "iterations_run": cfg.iterations - start, "seconds": seconds}


# --------------------------------------------------------------------------------------------
# What a finished run reports
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def translation_grid(ema: Translator, test: dict, class_names: list[str], n_rows: int, pick_generator: torch.Generator,
                     latent_generator: torch.Generator, title: str):
    """Rows: test images; columns: the original, then its latent-guided translation into each class.

    The rows are drawn with ``pick_generator`` (CPU: the same images on every device), the latent codes
    with ``latent_generator`` on its own device.
    """
    from pipeline.plotting import image_grid  # here, so figure code stays out of the fingerprint

    device = test["images"].device
    n_classes = len(class_names)
    pick = torch.randperm(len(test["images"]), generator=pick_generator)[:n_rows].to(device)
    x = to_float(test["images"][pick])
    z = torch.randn(n_classes, ema.config["latent_dim"], generator=latent_generator, device=latent_generator.device).to(device)
    classes = torch.arange(n_classes, device=device)
    styles = ema.latent_style(z, classes)  # one style per class, shared by all rows
    columns = [x] + [ema(x, styles[c].expand(len(x), -1)) for c in range(n_classes)]
    grid = torch.stack(columns, dim=1).flatten(0, 1).cpu().numpy()
    labels = test["labels"][pick].tolist()
    titles = []
    for r in range(len(x)):
        titles += [f"input ({class_names[labels[r]]})"] + [f"→ {name}" for name in class_names]
    return image_grid(grid, titles, ncols=n_classes + 1, suptitle=title)


def headline_metrics(smoothed: dict[str, float], cfg: GanTrainingOptions, iterations: int) -> dict:
    """What ``metrics/<D>/train_gan.json`` holds: the iterations trained and the objective each optimiser
    minimises (weighted sums of the losses), smoothed over about the last 100 iterations."""
    discriminator = cfg.adversarial_weight * (smoothed["d_real"] + smoothed["d_fake"]) + cfg.r1_weight * smoothed["d_r1"]
    generator = (cfg.adversarial_weight * smoothed["g_adversarial"] + cfg.style_weight * smoothed["g_style"]
                 + cfg.cycle_weight * smoothed["g_cycle"] + cfg.mask_weight * smoothed["g_mask"])
    return {"iterations": iterations, "smoothed_discriminator_loss": discriminator, "smoothed_generator_loss": generator}


def training_timing(result: dict) -> dict[str, float]:
    """Wall-clock figures of this run's training loop, for the stage's timing file."""
    seconds, run = result["seconds"], result["iterations_run"]
    return {"iterations_run": run, "training_seconds": seconds,
            "iterations_per_second": run / seconds if seconds > 0 and run else 0.0}

