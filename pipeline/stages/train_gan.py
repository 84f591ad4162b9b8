"""Stage ``train_gan@<dataset>``: a StarGAN v2-style class-to-class translator, trained without the classifier.
``gan.generator`` picks its generator: ``edit`` (a colour and a mask applied to the real image) or ``stargan``
(a change of the whole image in logit space); :mod:`pipeline.models.gan` has both.

Trains on the prepared training split (:mod:`pipeline.counterfactuals.gan_training` holds the networks'
training: losses, random streams, EMA, checkpoints), resuming from ``gan_checkpoints/last.pt`` when that
checkpoint matches the run's fingerprint. Writes the EMA translator (``gan.pt``), the loss curves as
DVCLive plots, a grid of latent-guided translations of test images, the headline metrics and the
training's timing.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from pipeline import paths
from pipeline.config import GanParams, options_from
from pipeline.counterfactuals.gan_training import (LOSS_NAMES, GanStreams, GanTrainingOptions, NonFiniteLoss, code_digest,
                                                   fingerprint, headline_metrics, net_config, train, training_timing,
                                                   translation_grid, translator_settings)
from pipeline.prepared import load_meta, load_prepared
from pipeline.models.gan import GanNets, save_translator
from pipeline.runtime import open_live, source_files, stage
from pipeline.storage import save_figure, write_json

# The module whose code, with every pipeline module it imports at import time, the fingerprint covers;
# config.py is not among them: the params' values are fingerprinted, not their schema.
TRAINING_MODULE = "pipeline.counterfactuals.gan_training"


def training_options(cfg: GanParams) -> GanTrainingOptions:
    """The ``gan`` params training reads: all but ``n_grid_images``, which only sizes the figure (so it is
    left out of gan.pt and of the fingerprint, and changing it leaves gan.pt byte-identical)."""
    return options_from(cfg, GanTrainingOptions)


def training_code_digest() -> str:
    """sha256 of the source of the training module and of every pipeline module it imports at import time."""
    return code_digest(source_files(TRAINING_MODULE))


def log_history(history: list[dict], live_dir: Path) -> None:
    """Every loss, averaged per log interval, as DVCLive curves (step = iteration)."""
    live = open_live(live_dir)
    for record in history:
        live.step = record["iteration"]
        for name in LOSS_NAMES:
            live.log_metric(name, record[name], plot=True)
    live.end()


def main(argv: list[str] | None = None) -> None:
    with stage("train_gan", argv) as ctx:
        cfg = ctx.params.gan
        options = training_options(cfg)
        meta = load_meta(ctx.dataset)
        train_split = load_prepared(ctx.dataset, "train", ctx.device)
        test = load_prepared(ctx.dataset, "test", ctx.device)
        config = net_config(options, meta["n_classes"], tuple(train_split["images"].shape[1:]))
        torch.manual_seed(ctx.params.seed)
        nets = GanNets(config).to(ctx.device)
        stamp = fingerprint(options, config, ctx.params.seed, train_split["images"], train_split["labels"],
                            training_code_digest(), deterministic=ctx.params.deterministic)
        streams = GanStreams.create(lambda name, device: ctx.generator(f"/{name}", device), ctx.device)
        checkpoint_path = paths.gan_checkpoint_dir(ctx.dataset) / "last.pt"
        checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            result = train(nets, train_split["images"], train_split["labels"], options, streams, checkpoint_path, stamp)
        except NonFiniteLoss as err:
            print(f"error: [train_gan@{ctx.dataset}] {err}", file=sys.stderr)
            raise SystemExit(1) from err
        ema = result["ema"].eval()

        save_translator(paths.gan_path(ctx.dataset), ema, config, class_names=meta["class_names"],
                        params=translator_settings(options), iterations=cfg.iterations)
        out = paths.plots_dir(ctx.dataset, "train_gan")
        log_history(result["history"], out / "live")
        fig = translation_grid(ema, test, meta["class_names"], cfg.n_grid_images, ctx.generator("/grid-images"),
                               ctx.generator("/grid-latent", ctx.device),
                               f"{ctx.dataset}: latent-guided translations (EMA generator, {cfg.iterations} iterations)")
        save_figure(fig, paths.pictures_dir(ctx.dataset, "train_gan") / "translations.png")

        metrics = headline_metrics(result["smoothed_losses"], options, cfg.iterations)
        write_json(paths.metrics_path(ctx.dataset, "train_gan"), metrics)
        timing = training_timing(result)
        ctx.timer.details.update(timing)
        ctx.timer.images = result["iterations_run"] * cfg.batch_size
        print(f"[train_gan@{ctx.dataset}] {result['iterations_run']} iterations in {result['seconds']:.1f} s "
              f"({timing['iterations_per_second']:.1f} it/s, batch {cfg.batch_size}, {cfg.generator} generator); smoothed losses: "
              f"discriminator {metrics['smoothed_discriminator_loss']:.4f}, generator {metrics['smoothed_generator_loss']:.4f}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
