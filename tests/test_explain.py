"""The explain stage end to end on small synthetic inputs in the counterfactuals contract format."""
import json

import numpy as np
import pytest
import torch
import yaml

from pipeline import paths
from pipeline.discriminative import MaskSettings, size_grid
from pipeline.explain import main, stamped_control
from pipeline.config import ExplainParams
from pipeline.models import build_classifier, save_model
from pipeline.storage import save_arrays, write_json

METHODS = ["d_ig", "d_deeplift", "d_inputxgrad", "ig", "deeplift", "residual", "random"]


def build_inputs(dataset: str, n_images: int = 8) -> dict:
    """Prepared test split, a random-weight classifier and a counterfactual file, under the cwd."""
    rng = np.random.default_rng(0)
    n_classes = 4 if dataset == "colored_mnist" else 10
    images = (rng.random((n_images, 3, 28, 28)) < 0.2).astype(np.uint8) * 200
    labels = np.arange(n_images) % n_classes
    test = {"images": images, "labels": labels.astype(np.int64)}
    if dataset == "colored_mnist":
        names = ["spring", "summer", "autumn", "winter"]
        test.update(positions=rng.random(n_images).astype(np.float32), colors=rng.random((n_images, 3)).astype(np.float32))
    else:
        names = [str(c) for c in range(10)]
        alpha = np.zeros((1, 28, 28), dtype=np.float32)
        alpha[0, 1:5, 1:5] = 1.0
        stamped = images.copy()
        stamped[:, :, 1:5, 1:5] = 255
        test.update(shortcut_alpha=alpha, shortcut_labels=np.array([7]), clean_images=images, shortcut_images=stamped[None])
    save_arrays(paths.prepared_dir(dataset) / "test.npz", **test)
    write_json(paths.prepared_dir(dataset) / "meta.json", {"class_names": names, "n_classes": n_classes})
    torch.manual_seed(0)
    config = {"architecture": "cnn", "n_classes": n_classes, "width": 4}
    save_model(paths.classifier_path(dataset), build_classifier(config), config)

    rows = [(i, int(labels[i]), t) for i in range(n_images) for t in range(n_classes) if t != labels[i]]
    index, source, target = (np.array(col, dtype=np.int64) for col in zip(*rows))
    counterfactual = images[index].copy()
    counterfactual[:, :, 1:5, 1:5] = 255
    predicted = np.where(np.arange(len(rows)) % 2 == 0, target, source)  # half reach their target
    save_arrays(paths.counterfactuals_path(dataset), real=images[index], counterfactual=counterfactual,
                counterfactual_latent=counterfactual, image_index=index, source=source, target=target,
                predicted=predicted, target_probability=np.full(len(rows), 0.9, dtype=np.float32),
                predicted_latent=source, target_probability_latent=np.zeros(len(rows), dtype=np.float32))
    return {"n_pairs": len(rows), "n_reaching": int((predicted == target).sum())}


def write_params(path, **explain):
    settings = {"n_thresholds": 12, "ig_steps": 4, "batch_size": 100, "attribution_batch_size": 8, "gallery_top_k": 1}
    settings.update(explain)
    path.write_text(yaml.safe_dump({"device": "cpu", "explain": settings}))


@pytest.mark.parametrize("dataset", ["colored_mnist", "clever_hans"])
def test_stage_writes_every_metric_key_and_picture(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    made = build_inputs(dataset)
    write_params(tmp_path / "params.yaml", max_pairs=10)
    main([dataset])
    metrics = json.loads(paths.metrics_path(dataset, "explain").read_text())
    assert metrics["n_pairs"] == made["n_pairs"]
    assert metrics["n_pairs_reaching_target"] == made["n_reaching"]
    assert metrics["n_pairs_kept"] == 10
    assert list(metrics["methods"]) == METHODS
    for method, entry in metrics["methods"].items():
        assert -1.0 <= entry["median_score"] <= 1.0 and entry["iqr_score"] >= 0
        assert 0.0 <= entry["mean_optimal_mask_size"] <= 1.0
        assert 0.0 <= entry["reached_target_fraction"] <= 1.0
    assert metrics["best_discriminative_method"] in METHODS[:3]
    if dataset == "clever_hans":
        assert all("shortcut_iou" in entry for entry in metrics["methods"].values())
        assert "shortcut_iou" in metrics
        control = metrics["stamped_control"]
        assert 0 <= control["n_pairs"] <= control["n_moved_by_stamp"] <= 8 - 1  # the one 7 is no source
        assert set(control["methods"]) in (set(), set(METHODS))
    else:
        assert 0.0 <= metrics["methods"]["d_ig"]["digit_mass_fraction"] <= 1.0
        assert set(metrics["color_rule"]) >= {"test_accuracy", "nearest_colormap_agreement"}
    assert sum(entry["n_pairs"] for entry in metrics["per_class_pair"].values()) == 10
    out = paths.plots_dir(dataset, "explain")
    for name in ("curves.csv", "scores.csv", "known_answer.csv", "curves.png", "scores.png", "known_answer.png"):
        assert (out / name).stat().st_size > 100, name
    assert list((out / "gallery").glob("*.png"))
    arrays = np.load(tmp_path / "data" / "explanations" / dataset / "explanations.npz")
    assert arrays["d_ig_curve"].shape == (10, 101) and len(arrays["image_index"]) == 10
    timing = json.loads(paths.timing_path(dataset, "explain").read_text())
    assert timing["images"] == 10 * 7 * 13


def test_stage_survives_when_no_counterfactual_reaches_its_target(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_inputs("clever_hans", n_images=2)
    write_params(tmp_path / "params.yaml", counterfactual="latent", methods=["d_ig", "random"])
    main(["clever_hans"])
    metrics = json.loads(paths.metrics_path("clever_hans", "explain").read_text())
    assert metrics["n_pairs_kept"] == 0 and metrics["methods"]["d_ig"]["median_score"] is None


def test_a_counterfactual_file_without_the_contract_keys_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    build_inputs("clever_hans", n_images=2)
    save_arrays(paths.counterfactuals_path("clever_hans"), real=np.zeros((1, 3, 28, 28), dtype=np.uint8))
    write_params(tmp_path / "params.yaml")
    with pytest.raises(SystemExit):
        main(["clever_hans"])
    assert "lacks counterfactual" in capsys.readouterr().err


def test_unknown_method_is_rejected_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", methods=["d_ig", "gradcam"])
    with pytest.raises(SystemExit):
        main(["clever_hans"])
    assert "explain.methods[1]" in capsys.readouterr().err


class SquareDetector(torch.nn.Module):
    """Says 7 exactly when a red square fills the top-left 4 x 4 pixels: logit 7 rises and every other
    class's logit falls with the mean (red - green) there."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(10.0), requires_grad=False)

    def forward(self, x):
        redness = (x[:, 0, 1:5, 1:5] - x[:, 1, 1:5, 1:5]).mean(dim=(1, 2))
        logits = (-self.gain * redness)[:, None].repeat(1, 10)
        logits[:, 7] = 20.0 * redness - 5.0
        return logits


def control_test_split(n_images: int = 12) -> dict:
    rng = np.random.default_rng(1)
    images = torch.from_numpy((rng.random((n_images, 3, 28, 28)) < 0.2).astype(np.uint8) * 200)
    images[:, :, 1:5, 1:5] = 0
    images[:, 1:] = images[:, :1]  # gray digits: red = green everywhere
    stamped = images.clone()
    stamped[:, 0, 1:5, 1:5], stamped[:, 1:, 1:5, 1:5] = 255, 0
    alpha = torch.zeros(1, 28, 28)
    alpha[0, 1:5, 1:5] = 1.0
    return {"clean_images": images, "shortcut_images": stamped[None], "labels": torch.arange(n_images) % 10,
            "shortcut_alpha": alpha, "shortcut_labels": torch.tensor([7])}


def test_stamped_control_finds_the_square_with_discriminative_maps_and_not_with_random_ones():
    test = control_test_split()
    cfg = ExplainParams(methods=["d_ig", "d_deeplift", "residual", "random"], n_thresholds=20, ig_steps=8,
                        closing_size=1, blur_sigma=0.0, control_pairs=50)
    control = stamped_control(SquareDetector(), test, cfg, MaskSettings(20, 1, 0.0), size_grid(101),
                              torch.Generator().manual_seed(0), np.random.default_rng(0))
    assert control["n_pairs"] == control["n_moved_by_stamp"] == 11  # every image but the one 7
    for method in ("d_ig", "d_deeplift", "residual"):
        assert control["methods"][method]["shortcut_iou"] == pytest.approx(1.0), method
        assert control["methods"][method]["median_score"] > 0.9, method
    assert control["methods"]["random"]["shortcut_iou"] < 0.5


def test_stamped_control_keeps_at_most_control_pairs_seeded():
    test = control_test_split()
    cfg = ExplainParams(methods=["residual"], n_thresholds=8, control_pairs=4)
    run = lambda seed: stamped_control(SquareDetector(), test, cfg, MaskSettings(8, 1, 0.0), size_grid(11),  # noqa: E731
                                       torch.Generator().manual_seed(0), np.random.default_rng(seed))
    assert run(0) == run(0) and run(0)["n_pairs"] == 4 and run(0)["n_moved_by_stamp"] == 11
