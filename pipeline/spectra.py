"""Stage ``spectra@<dataset>``: can the GAN's counterfactuals be told from real images by their spectrum?

Per image and colour channel: the log-magnitude of the 2-D FFT over the spatial axes,
``log(|F| + epsilon)``, fftshifted so low frequencies sit in the centre. The mean spectrum of real
test images and of generated counterfactuals, and their difference, are drawn as images; a single
linear layer (logistic regression, in torch) is trained on the standardised log-spectra to tell
real from generated, and tested on held-out test-image indices (a real image and the
counterfactuals made from it always fall on the same side of the split). High accuracy means the
generator leaves frequency artifacts that the classifier under study could be reacting to as well.
"""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from pipeline import paths
from pipeline.config import SpectraParams
from pipeline.data import load_prepared, to_float
from pipeline.runtime import stage
from pipeline.storage import load_arrays, save_arrays, save_figure, write_csv, write_json

CHANNELS = ("red", "green", "blue")


def log_spectra(images: torch.Tensor, epsilon: float) -> torch.Tensor:
    """uint8 or float NCHW -> float32 N x C x H x W log-magnitude spectra, low frequencies centred."""
    x = to_float(images) if images.dtype == torch.uint8 else images.float()
    magnitude = torch.fft.fft2(x, dim=(-2, -1)).abs()
    return torch.fft.fftshift(torch.log(magnitude + epsilon), dim=(-2, -1))


def train_detector(features: torch.Tensor, labels: torch.Tensor, cfg: SpectraParams, progress: bool = True) -> dict:
    """Logistic regression (one ``nn.Linear``) on standardised features, full-batch Adam; labels 1 = generated.

    Returns the layer and the standardisation (``mean``, ``std``) so that held-out data is scaled alike.
    """
    mean = features.mean(0)
    std = features.std(0).clamp_min(1e-6)
    x = (features - mean) / std
    y = labels.float()
    layer = nn.Linear(x.shape[1], 1).to(x.device)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    optimizer = torch.optim.Adam(layer.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    for _ in tqdm(range(cfg.epochs), desc="spectral detector", leave=False, file=sys.stderr, mininterval=2,
                  disable=not progress):
        loss = nn.functional.binary_cross_entropy_with_logits(layer(x).squeeze(1), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return {"layer": layer, "mean": mean, "std": std}


@torch.no_grad()
def detector_accuracy(detector: dict, features: torch.Tensor, labels: torch.Tensor) -> float:
    if len(labels) == 0:
        return float("nan")
    logits = detector["layer"]((features - detector["mean"]) / detector["std"]).squeeze(1)
    return ((logits > 0).long() == labels.long()).float().mean().item()


def held_out_indices(n_test_images: int, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Bool mask over test-image indices: True = held out for the detector's test."""
    held = np.zeros(n_test_images, dtype=bool)
    held[rng.choice(n_test_images, size=max(1, int(round(test_fraction * n_test_images))), replace=False)] = True
    return held


def balanced_split(real_index: np.ndarray, generated_index: np.ndarray, held: np.ndarray, max_images: int,
                   rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Row positions of real and generated images per fold, equal numbers of each in each fold."""
    split = {}
    for fold, keep in (("train", ~held), ("test", held)):
        real_rows = np.flatnonzero(keep[real_index])
        generated_rows = np.flatnonzero(keep[generated_index])
        share = max_images * (keep.mean() if len(keep) else 0)
        n = int(min(len(real_rows), len(generated_rows), max(1, round(share))))
        split[fold] = (np.sort(rng.choice(real_rows, n, replace=False)),
                       np.sort(rng.choice(generated_rows, n, replace=False)))
    return split


def radial_profile(spectrum: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean over channels and over rings of integer radius around the (shifted) centre: (radius, value)."""
    h, w = spectrum.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    radius = torch.sqrt(yy.float() ** 2 + xx.float() ** 2).round().long().flatten().to(spectrum.device)
    values = spectrum.float().mean(0).flatten()
    sums = torch.zeros(int(radius.max()) + 1, device=spectrum.device).index_add_(0, radius, values)
    counts = torch.bincount(radius).float()
    return np.arange(len(sums)), (sums / counts).cpu().numpy()


def spectra_figure(real: np.ndarray, generated: np.ndarray, dataset: str):
    """Rows: mean log spectrum of real, of generated, and generated - real; columns: colour channels."""
    import matplotlib.pyplot as plt

    difference = generated - real
    fig, axes = plt.subplots(3, 3, figsize=(7.5, 7.5))
    low, high = min(real.min(), generated.min()), max(real.max(), generated.max())
    limit = max(np.abs(difference).max(), 1e-6)
    for c, name in enumerate(CHANNELS):
        for r, (title, image, kwargs) in enumerate((
                ("real", real[c], {"cmap": "magma", "vmin": low, "vmax": high}),
                ("generated", generated[c], {"cmap": "magma", "vmin": low, "vmax": high}),
                ("generated - real", difference[c], {"cmap": "RdBu_r", "vmin": -limit, "vmax": limit}))):
            shown = axes[r, c].imshow(image, interpolation="nearest", **kwargs)
            axes[r, c].set_title(f"{title}, {name}", fontsize=8)
            axes[r, c].axis("off")
            if c == 2:
                fig.colorbar(shown, ax=axes[r, c], fraction=0.046)
    fig.suptitle(f"{dataset}: mean log|FFT| (centre = low frequencies)", fontsize=9)
    fig.tight_layout()
    return fig


def weights_figure(weights: np.ndarray, accuracy: float, dataset: str):
    import matplotlib.pyplot as plt

    limit = max(np.abs(weights).max(), 1e-6)
    fig, axes = plt.subplots(1, 3, figsize=(8, 2.8))
    for c, name in enumerate(CHANNELS):
        shown = axes[c].imshow(weights[c], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        axes[c].set_title(name, fontsize=8)
        axes[c].axis("off")
    fig.colorbar(shown, ax=axes, fraction=0.02)
    fig.suptitle(f"{dataset}: detector weights on the standardised log-spectrum (red: generated), "
                 f"test accuracy {accuracy:.3f}", fontsize=8)
    return fig


def main(argv: list[str] | None = None) -> None:
    with stage("spectra", argv) as ctx:
        cfg = ctx.params.spectra
        test = load_prepared(ctx.dataset, "test", ctx.device)
        gan = load_arrays(paths.counterfactuals_path(ctx.dataset), made_by=f"counterfactuals@{ctx.dataset}")
        key = "counterfactual" if cfg.generated == "reference" else "counterfactual_latent"
        n_test = len(test["images"])
        rng = ctx.rng()
        held = held_out_indices(n_test, cfg.test_fraction, rng)
        real_index = np.arange(n_test)
        generated_index = gan["image_index"].astype(np.int64)
        split = balanced_split(real_index, generated_index, held, cfg.max_images, rng)

        def features(fold: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
            real_rows, generated_rows = split[fold]
            real = log_spectra(test["images"][torch.from_numpy(real_index[real_rows]).to(ctx.device)], cfg.epsilon)
            generated = log_spectra(torch.from_numpy(gan[key][generated_rows]).to(ctx.device), cfg.epsilon)
            x = torch.cat([real, generated]).flatten(1)
            y = torch.cat([torch.zeros(len(real)), torch.ones(len(generated))]).to(ctx.device)
            return x, y, real, generated

        train_x, train_y, train_real, train_generated = features("train")
        test_x, test_y, _, _ = features("test")
        detector = train_detector(train_x, train_y, cfg)
        accuracy = detector_accuracy(detector, test_x, test_y)

        mean_real = train_real.mean(0)
        mean_generated = train_generated.mean(0)
        difference = mean_generated - mean_real
        weights = detector["layer"].weight.detach().reshape(mean_real.shape)
        metrics = {
            "spectral_detector_accuracy": accuracy,
            "spectral_detector_train_accuracy": detector_accuracy(detector, train_x, train_y),
            "frequency_artifacts_detected": bool(accuracy > cfg.artifact_threshold),
            "artifact_threshold": cfg.artifact_threshold,
            "n_train": len(train_y),
            "n_test": len(test_y),
            "mean_abs_spectrum_difference": difference.abs().mean().item(),
            "spectrum_difference_per_channel": {name: difference[c].abs().mean().item() for c, name in enumerate(CHANNELS)},
        }
        write_json(paths.metrics_path(ctx.dataset, "spectra"), metrics)
        save_arrays(paths.DATA / "spectra" / ctx.dataset / "spectra.npz", mean_real=mean_real.cpu().numpy(),
                    mean_generated=mean_generated.cpu().numpy(), detector_weights=weights.cpu().numpy())

        out = paths.plots_dir(ctx.dataset, "spectra")
        rows = []
        for group, spectrum in (("real", mean_real), ("generated", mean_generated)):
            radius, value = radial_profile(spectrum)
            rows.append(pd.DataFrame({"radius": radius, "group": group, "log_magnitude": value}))
        write_csv(out / "radial_profile.csv", pd.concat(rows, ignore_index=True))
        save_figure(spectra_figure(mean_real.cpu().numpy(), mean_generated.cpu().numpy(), ctx.dataset), out / "spectra.png")
        save_figure(weights_figure(weights.cpu().numpy(), accuracy, ctx.dataset), out / "detector_weights.png")
        ctx.timer.images = len(train_y) + len(test_y)
        verdict = "frequency artifacts: the generated images are separable by spectrum" if metrics["frequency_artifacts_detected"] \
            else "no clear frequency artifacts"
        print(f"[spectra@{ctx.dataset}] detector test accuracy {accuracy:.3f} on {len(test_y)} held-out images "
              f"(train {metrics['spectral_detector_train_accuracy']:.3f}): {verdict}", file=sys.stderr)


if __name__ == "__main__":
    main()
