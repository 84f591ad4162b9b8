"""The real `dvc repro` on a tiny configuration, in a temporary copy of the repository."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

COPIED = ["pipeline", "dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config", ".gitignore"]
DATASETS = ("colored_mnist", "clever_hans")


def deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = deep_merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def run(args: list[str], cwd: Path, stdout_only: bool = False) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com", PYTHONUNBUFFERED="1")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{output[-6000:]}"
    return result.stdout if stdout_only else output


def dvc(*args: str, cwd: Path) -> str:
    return run([sys.executable, "-m", "dvc", *args], cwd)


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, request):
    mnist_root = request.getfixturevalue("mnist_root")
    ws = tmp_path_factory.mktemp("pipeline") / "repo"
    ws.mkdir()
    for name in COPIED:
        src, dst = REPO / name, ws / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    tiny = yaml.safe_load((REPO / "tests" / "tiny_params.yaml").read_text())
    params = deep_merge(params, tiny)
    params["data"]["root"] = str(mnist_root)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], ws)
    run(["git", "add", "-A"], ws)
    run(["git", "commit", "-qm", "tiny pipeline"], ws)
    return ws


@pytest.fixture(scope="module")
def first_repro(workspace):
    return dvc("repro", cwd=workspace)


def test_repro_runs_every_stage_for_both_datasets(workspace, first_repro):
    ran = stages_run(first_repro)
    for dataset in DATASETS:
        assert f"prepare@{dataset}" in ran and f"train_classifier@{dataset}" in ran
    status = dvc("status", cwd=workspace)
    assert "up to date" in status


def test_classifier_metrics_are_sane(workspace, first_repro):
    for dataset, n_classes in (("colored_mnist", 4), ("clever_hans", 10)):
        metrics = json.loads((workspace / "metrics" / dataset / "classifier.json").read_text())
        assert 1.0 / n_classes < metrics["test_accuracy"] <= 1.0, (dataset, metrics)
        assert set(metrics["per_class_accuracy"]) == {str(c) for c in range(n_classes)}
    hans = json.loads((workspace / "metrics" / "clever_hans" / "classifier.json").read_text())
    assert 0.0 <= hans["shortcut_reliance"] <= 1.0 and "7_square" in hans["shortcut_reliance_per_class"]
    assert 0.1 < hans["clean_accuracy"] <= 1.0
    shown = dvc("metrics", "show", cwd=workspace)
    assert "test_accuracy" in shown
    for dataset in DATASETS:
        for picture in ("prepare/examples.png", "train_classifier/confusion.png", "train_classifier/examples.png"):
            assert (workspace / "plots" / dataset / picture).stat().st_size > 1000


def test_changing_classifier_params_reruns_only_downstream_stages(workspace, first_repro):
    output = dvc("exp", "run", "-S", "classifier.epochs=2", cwd=workspace)
    ran = stages_run(output)
    assert {f"train_classifier@{d}" for d in DATASETS} <= ran
    assert not any(name.startswith(("prepare@", "train_gan@")) for name in ran), ran
    shown = dvc("exp", "show", "--no-pager", "--csv", cwd=workspace)
    assert "classifier.epochs" in shown


def test_attribution_metrics_and_plots(workspace, first_repro):
    import math

    methods = ("ig_zero", "ig_noise", "ig_blur", "saliency", "inputxgrad", "deeplift", "guided_backprop",
               "occlusion", "smoothgrad", "gradcam", "guided_gradcam")
    for dataset in DATASETS:
        assert f"attribute@{dataset}" in stages_run(first_repro)
        metrics = json.loads((workspace / "metrics" / dataset / "attribution.json").read_text())
        assert set(metrics["methods"]) == set(methods)
        for name, scores in metrics["methods"].items():
            for key in ("deletion_auc", "infidelity", "sensitivity_max", "randomization_spearman"):
                assert key in scores, (dataset, name, key)
            assert 0.0 <= scores["deletion_auc"] <= 1.0 and scores["sensitivity_max"] >= 0.0
            if dataset == "clever_hans":
                assert 0.0 <= scores["relevance_mass"] <= 1.0 and 0.0 <= scores["pointing_game"] <= 1.0
            else:
                assert "relevance_mass" not in scores
                if name != "gradcam":
                    assert sum(scores["channel_share"].values()) == pytest.approx(1.0, abs=1e-4)
        segmentation = metrics["gradcam_segmentation"]
        assert 0.0 <= segmentation["best_threshold"] < 1.0 and 0.0 < segmentation["best_iou"] <= 1.0
        contrastive = metrics["contrastive"]
        assert contrastive["n_misclassified"] >= 0
        rho = contrastive["mean_rank_correlation"]
        assert rho is None or -1.0 <= rho <= 1.0 or math.isnan(rho)
        attributions = dict(__import__("numpy").load(workspace / "data" / "attributions" / dataset / "attributions.npz"))
        assert attributions["sample_ig_zero"].shape == (len(attributions["sample_index"]), 3, 28, 28)
        for picture in ("methods_heatmap", "methods_color", "ig_baselines", "gradcam_segmentation",
                        "gradcam_counterfactual", "contrastive", "deletion", "localization"):
            assert (workspace / "plots" / dataset / "attribute" / f"{picture}.png").stat().st_size > 1000, picture
        assert (workspace / "plots" / dataset / "attribute" / "deletion" / "random_order.csv").exists()
    timing = json.loads((workspace / "metrics" / "clever_hans" / "timing" / "attribute.json").read_text())
    assert timing["images"] > 0
    assert "deletion_auc" in dvc("metrics", "show", cwd=workspace)


def test_report_collects_every_stage(workspace, first_repro):
    assert "report" in stages_run(first_repro)
    page = (workspace / "report" / "index.html").read_text()
    assert "What this run found" in page and page.count("data:image/png;base64,") >= 6
    timing = json.loads((workspace / "metrics" / "timing.json").read_text())
    assert {f"train_classifier@{d}" for d in DATASETS} <= set(timing["stages"])
    assert timing["total_seconds"] > 0 and timing["device"] == "cpu"

def test_gan_and_counterfactual_outputs(workspace, first_repro):
    import numpy as np
    import torch

    ran = stages_run(first_repro)
    for dataset, n_classes in (("colored_mnist", 4), ("clever_hans", 10)):
        assert f"train_gan@{dataset}" in ran and f"counterfactuals@{dataset}" in ran
        gan = json.loads((workspace / "metrics" / dataset / "train_gan.json").read_text())
        assert gan["iterations_run"] == gan["iterations"] == 4 and gan["iterations_per_second"] > 0
        checkpoint = torch.load(workspace / "data" / "models" / dataset / "gan_checkpoints" / "last.pt", weights_only=True)
        assert checkpoint["iteration"] == 4
        metrics = json.loads((workspace / "metrics" / dataset / "counterfactuals.json").read_text())
        for key in ("conversion_rate", "conversion_rate_latent", "changed_pixel_fraction"):
            assert 0.0 <= metrics[key] <= 1.0, (dataset, key, metrics[key])
        assert metrics["mean_l1"] >= 0 and metrics["feature_distance_real_floor"] >= 0
        assert metrics["feature_distance"] is not None
        assert set(metrics["conversion_per_pair"]) <= {f"{s}->{t}" for s in range(n_classes) for t in range(n_classes) if s != t}
        with np.load(workspace / "data" / "counterfactuals" / dataset / "counterfactuals.npz") as npz:
            assert npz["counterfactual"].dtype == np.uint8 and npz["counterfactual"].shape == (20 * (n_classes - 1), 3, 28, 28)
            assert (npz["source"] != npz["target"]).all()
            assert metrics["conversion_rate"] == pytest.approx(float((npz["predicted"] == npz["target"]).mean()), abs=1e-6)
        for picture in ("train_gan/translations.png", "counterfactuals/gallery.png", "counterfactuals/interpolation.png",
                        "counterfactuals/style_space.png", "counterfactuals/confusion.png"):
            assert (workspace / "plots" / dataset / picture).stat().st_size > 1000

def test_explain_metrics_are_sane(workspace, first_repro):
    ran = stages_run(first_repro)
    methods = ["d_ig", "d_deeplift", "d_inputxgrad", "ig", "deeplift", "residual", "random"]
    for dataset in DATASETS:
        assert f"explain@{dataset}" in ran
        metrics = json.loads((workspace / "metrics" / dataset / "explain.json").read_text())
        assert 0 <= metrics["n_pairs_kept"] <= metrics["n_pairs_reaching_target"] <= metrics["n_pairs"]
        assert metrics["n_pairs"] > 0
        assert list(metrics["methods"]) == methods
        for entry in metrics["methods"].values():
            keys = {"median_score", "iqr_score", "mean_optimal_mask_size", "reached_target_fraction"}
            assert keys <= set(entry)
            if metrics["n_pairs_kept"]:  # a tiny GAN may not reach any target; then the values are null
                assert -1.0 <= entry["median_score"] <= 1.0
                assert 0.0 <= entry["mean_optimal_mask_size"] <= 1.0
                assert 0.0 <= entry["reached_target_fraction"] <= 1.0
        if dataset == "clever_hans":
            assert "shortcut_iou" in metrics and all("shortcut_iou" in e for e in metrics["methods"].values())
        else:
            assert "color_rule" in metrics and all("digit_mass_fraction" in e for e in metrics["methods"].values())
        for picture in ("curves.png", "scores.png", "known_answer.png"):
            assert (workspace / "plots" / dataset / "explain" / picture).stat().st_size > 1000
    shown = dvc("metrics", "show", cwd=workspace)
    assert "median_score" in shown


def test_probe_stages_write_their_metrics(workspace, first_repro):
    ran = stages_run(first_repro)
    for dataset, n_classes in (("colored_mnist", 4), ("clever_hans", 10)):
        for name in ("feature_viz", "optimize_counterfactuals", "spectra"):
            assert f"{name}@{dataset}" in ran
            timing = json.loads((workspace / "metrics" / dataset / "timing" / f"{name}.json").read_text())
            assert timing["seconds"] > 0
        viz = json.loads((workspace / "metrics" / dataset / "feature_viz.json").read_text())
        assert 0.0 <= viz["mean_class_probability"] <= 1.0 and len(viz["class_probability"]) == n_classes
        assert (workspace / "plots" / dataset / "feature_viz" / "grids" / "class.png").stat().st_size > 1000
        optimised = json.loads((workspace / "metrics" / dataset / "optimize_counterfactuals.json").read_text())
        assert optimised["n"] >= 8 and 0.0 <= optimised["success_rate"] <= 1.0
        assert optimised["mean_l1"] >= 0 and 0 <= optimised["mean_l0"] <= 28 * 28
        assert optimised["gan"]["n"] == optimised["matched"]["n"] > 0     # the same (image, target) pairs
        assert {"success_rate", "mean_l1", "mean_l0", "frechet_distance"} <= set(optimised["gan"])
        spectra = json.loads((workspace / "metrics" / dataset / "spectra.json").read_text())
        assert 0.0 <= spectra["spectral_detector_accuracy"] <= 1.0 and spectra["n_test"] > 0
        for picture in ("optimize_counterfactuals/examples.png", "optimize_counterfactuals/comparison.png",
                        "spectra/spectra.png", "spectra/detector_weights.png"):
            assert (workspace / "plots" / dataset / picture).stat().st_size > 1000
    shown = dvc("metrics", "show", cwd=workspace)
    assert "spectral_detector_accuracy" in shown and "mean_class_probability" in shown


def test_every_declared_plot_renders(workspace, first_repro):
    shown = json.loads(run([sys.executable, "-m", "dvc", "plots", "show", "--json"], workspace, stdout_only=True))
    assert not shown.get("errors"), shown.get("errors")
    rendered = set(shown["data"])
    for dataset in DATASETS:
        assert f"plots/{dataset}/train_classifier/confusion.csv" in rendered
        assert any(name.startswith(f"plots/{dataset}/explain/") for name in rendered)
