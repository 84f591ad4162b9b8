"""Stage ``spectra@<dataset>``: do the GAN's counterfactuals differ from real images in their spectrum?

A cross-validated detector on radially averaged log spectra tells real test images from the GAN's
counterfactuals, both mapped to the generator's pixel range, beside a real-vs-real control
(``pipeline.evaluation.spectra`` says what is compared and why). ``frequency_artifacts_detected`` is
true when the detector's accuracy is above ``artifact_threshold`` and above ``control_accuracy +
control_margin``.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from pipeline import paths
from pipeline.evaluation.spectra import (DetectorSettings, artifacts_detected, compare_with_real, details_of, log_spectra,
                                         radial_table, rings, spectra_figure, weights_figure)
from pipeline.prepared import load_prepared
from pipeline.runtime import stage
from pipeline.storage import load_arrays, save_arrays, save_figure, write_csv, write_json


def main(argv: list[str] | None = None) -> None:
    with stage("spectra", argv) as ctx:
        cfg = ctx.params.spectra
        test = load_prepared(ctx.dataset, "test", ctx.device)
        gan = load_arrays(paths.counterfactuals_path(ctx.dataset), made_by=f"counterfactuals@{ctx.dataset}")
        key = "counterfactual" if cfg.generated == "reference" else "counterfactual_latent"
        fold_seed = int(ctx.rng("folds").integers(2**31 - 1))
        settings = DetectorSettings(epsilon=cfg.epsilon, C=cfg.C, folds=cfg.folds, seed=fold_seed)
        result = compare_with_real(test["images"], torch.from_numpy(gan[key]).to(ctx.device),
                                   gan["image_index"].astype(np.int64), cfg.max_images, settings, ctx.rng("sample"))
        accuracy, control = result["detector"]["accuracy"], result["control"]["accuracy"]
        detected = artifacts_detected(accuracy, control, cfg.artifact_threshold, cfg.control_margin)
        write_json(paths.metrics_path(ctx.dataset, "spectra"), {
            "spectral_detector_accuracy": accuracy, "control_accuracy": control, "frequency_artifacts_detected": detected})

        out, pictures = paths.plots_dir(ctx.dataset, "spectra"), paths.pictures_dir(ctx.dataset, "spectra")
        mean_real = log_spectra(result["real"], cfg.epsilon).mean(0)
        mean_generated = log_spectra(result["generated"], cfg.epsilon).mean(0)
        write_json(out / "details.json",
                   details_of(result, mean_generated - mean_real, cfg.artifact_threshold, cfg.control_margin, key))
        _, radii = rings(*mean_real.shape[-2:])
        weights = result["detector"]["weights"].reshape(len(mean_real), len(radii))
        save_arrays(paths.DATA / "spectra" / ctx.dataset / "spectra.npz", mean_real=mean_real.cpu().numpy(),
                    mean_generated=mean_generated.cpu().numpy(), detector_weights=weights, radii=radii)
        write_csv(out / "radial_profile.csv", radial_table(mean_real, mean_generated))
        save_figure(spectra_figure(mean_real.cpu().numpy(), mean_generated.cpu().numpy(), ctx.dataset),
                    pictures / "spectra.png")
        save_figure(weights_figure(weights, radii, accuracy, control, ctx.dataset), pictures / "detector_weights.png")
        ctx.timer.images = sum(result[part]["n_first"] + result[part]["n_second"]
                               for part in ("detector", "control", "floor_effect"))
        verdict = "frequency artifacts: generated images are separable by spectrum" if detected \
            else "no clear frequency artifacts"
        print(f"[spectra@{ctx.dataset}] detector accuracy {accuracy:.3f}, real-vs-real control {control:.3f}, "
              f"pixel floor alone {result['floor_effect']['accuracy']:.3f}: {verdict}", file=sys.stderr)


if __name__ == "__main__":
    main()
