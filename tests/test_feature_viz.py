import json

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from pipeline import paths
from pipeline.data.known_answer import ColorRule, PlantedShortcuts
from pipeline.data.shortcuts import Shortcut
from pipeline.evaluation.feature_viz import MaximiseOptions, build_units, dream_layers, dream_on_region, maximise, standardise
from pipeline.models.classifiers import CNNClassifier, frozen, save_model
from pipeline.stages.feature_viz import main
from pipeline.storage import save_arrays, write_json
from tests.conftest import repo_params
from tests.dvc_stages import stage_outputs


def linear_model(n_classes=3, seed=0):
    """Logits = W x + b with exactly half of each class's weights positive (so sign(W) has mean 0)."""
    gen = torch.Generator().manual_seed(seed)
    n = 3 * 28 * 28
    magnitude = torch.rand(n_classes, n, generator=gen) + 0.1
    signs = torch.stack([torch.where(torch.randperm(n, generator=gen) < n // 2, 1.0, -1.0) for _ in range(n_classes)])
    model = nn.Sequential(nn.Flatten(), nn.Linear(n, n_classes))
    with torch.no_grad():
        model[1].weight.copy_(magnitude * signs)
        model[1].bias.zero_()
    frozen(model, "cpu")
    return model, signs


def test_activation_maximisation_of_a_linear_model_converges_to_the_sign_of_its_weights():
    model, signs = linear_model()
    units = build_units(model, n_classes=3, channels_per_layer=4)
    assert units.layer_names == ["class"]
    cfg = MaximiseOptions(steps=200, learning_rate=0.1)
    result = maximise(model, units, cfg, torch.Generator().manual_seed(0), progress=False)
    images = result["images"].flatten(1)  # rows: ones start (3 classes), then noise start
    for start in range(2):
        got = images[3 * start: 3 * start + 3]
        assert torch.allclose(got, signs, atol=0.05), start   # standardised sign(W) is sign(W) itself
    assert (result["probability"] > 0.99).all()


def test_descent_would_fail_the_same_check():
    """The check above can fail: minimising the logit lands on -sign(W)."""
    model, signs = linear_model()
    flipped = nn.Sequential(model[0], nn.Linear(3 * 28 * 28, 3))
    with torch.no_grad():
        flipped[1].weight.copy_(-model[1].weight)
        flipped[1].bias.zero_()
    units = build_units(flipped, 3, 1)
    result = maximise(flipped, units, MaximiseOptions(steps=50, learning_rate=0.1), torch.Generator().manual_seed(0), progress=False)
    assert torch.allclose(result["images"].flatten(1)[:3], -signs, atol=0.05)


def test_cnn_units_cover_classes_and_channels_and_every_option_runs():
    torch.manual_seed(0)
    model = CNNClassifier(n_classes=4, width=4).eval()
    frozen(model, "cpu")
    units = build_units(model, 4, channels_per_layer=2)
    assert units.layer_names == ["conv1", "conv2", "conv3", "conv4", "conv5", "class"]
    assert len(units) == 5 * 2 + 4
    for cfg in (MaximiseOptions(steps=3),
                MaximiseOptions(steps=4, jitter=2, total_variation=0.1, blur_every=2, parameterization="fourier")):
        result = maximise(model, units, cfg, torch.Generator().manual_seed(0), progress=False)
        assert result["images"].shape == (2 * len(units), 3, 28, 28)
        assert torch.isfinite(result["images"]).all() and result["curve"].shape == (cfg.steps, 2)
        flat = result["images"].flatten(1)
        assert torch.allclose(flat.mean(1), torch.zeros(len(flat)), atol=1e-4)
        assert torch.allclose(flat.std(1, unbiased=False), torch.ones(len(flat)), atol=1e-3)


def test_each_image_drives_only_its_own_unit():
    """Gradient ascent raises each conv channel's activation from the ones start."""
    torch.manual_seed(0)
    model = CNNClassifier(n_classes=2, width=4).eval()
    frozen(model, "cpu")
    units = build_units(model, 2, channels_per_layer=4)
    short = maximise(model, units, MaximiseOptions(steps=1), torch.Generator().manual_seed(0), progress=False)
    long = maximise(model, units, MaximiseOptions(steps=10), torch.Generator().manual_seed(0), progress=False)
    assert (long["activation"] >= short["activation"] - 1e-4).float().mean() > 0.9


def test_standardise():
    x = torch.rand(5, 3, 28, 28) * 7 + 3
    z = standardise(x).flatten(1)
    assert torch.allclose(z.mean(1), torch.zeros(5), atol=1e-5)
    assert torch.allclose(z.std(1, unbiased=False), torch.ones(5), atol=1e-5)


def test_the_stage_writes_two_headline_metrics_and_wide_plot_data(tmp_path, monkeypatch):
    """metrics/<D>/feature_viz.json holds the two figures runs are compared by; the rest is in
    details.json; curve.csv and units.csv have one column per start, as dvc.yaml declares them."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    config = {"architecture": "cnn", "n_classes": 4, "width": 4}
    save_model(paths.classifier_path("colored_mnist"), CNNClassifier(n_classes=4, width=4), config)
    write_json(paths.prepared_dir("colored_mnist") / "meta.json",
               {"class_names": ["spring", "summer", "autumn", "winter"], "n_classes": 4,
                "known_answer": ColorRule(("spring", "summer", "autumn", "winter")).to_meta()})
    save_arrays(paths.prepared_dir("colored_mnist") / "test.npz",
                images=torch.randint(0, 256, (6, 3, 28, 28), dtype=torch.uint8).numpy(), labels=torch.arange(6).numpy() % 4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params({"device": "cpu", "feature_viz": {
        "steps": 3, "channels_per_layer": 2, "dream_images": 2, "dream_steps": 2}})))
    main(["colored_mnist"])

    metrics = json.loads(paths.metrics_path("colored_mnist", "feature_viz").read_text())
    assert list(metrics) == ["mean_class_probability", "mean_class_probability_display"]
    out = paths.plots_dir("colored_mnist", "feature_viz")
    details = json.loads((out / "details.json").read_text())
    assert details["steps"] == 3 and details["n_units"] == 5 * 2 + 4
    assert details["dream"]["images"] == 2 and len(details["dream"]["energy_gain"]) == 5
    assert (paths.pictures_dir("colored_mnist", "feature_viz") / "grids" / "dream.png").stat().st_size > 1000
    ones, noise = details["mean_class_probability_ones"], details["mean_class_probability_noise"]
    assert metrics["mean_class_probability"] == pytest.approx((ones + noise) / 2, abs=1e-6)
    curve = pd.read_csv(out / "curve.csv")
    assert list(curve.columns) == ["step", "mean_class_probability_ones", "mean_class_probability_noise"]
    assert curve["step"].tolist() == [1, 2, 3]
    units = pd.read_csv(out / "units.csv")
    assert list(units.columns) == ["unit_name", "final_activation_ones", "final_activation_noise"]
    assert units["unit_name"].tolist()[:2] == ["conv1/0", "conv1/1"] and units["unit_name"].iloc[-1] == "class/winter"

    declared = {path: spec for path, spec in stage_outputs("feature_viz", "colored_mnist", ("plots",)).items()
                if path.endswith(".csv")}
    assert {"plots/colored_mnist/feature_viz/class_probability.csv", "plots/colored_mnist/feature_viz/units.csv"} <= set(declared)
    for path, spec in declared.items():
        if (tmp_path / path).exists():
            fields = [spec["x"], *(spec["y"] if isinstance(spec["y"], list) else [spec["y"]])]
            assert set(fields) <= set(pd.read_csv(tmp_path / path).columns) and "template" in spec, path


def test_the_layer_dream_is_scored_against_every_planted_shortcut_not_only_the_first(tmp_path, monkeypatch):
    """Two shortcuts (a red square on 7, a green one on 1): the dream starts from clean images of neither class and
    says, for each, how much of its change falls in that shortcut's truth region."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    answer = PlantedShortcuts((Shortcut(label=7, kind="square", position=[0, 0], side=8, color=[1.0, 0.0, 0.0]),
                               Shortcut(label=1, kind="square", position=[20, 20], side=4, color=[0.0, 1.0, 0.0])), (28, 28))
    config = {"architecture": "cnn", "n_classes": 10, "width": 4}
    save_model(paths.classifier_path("clever_hans"), CNNClassifier(n_classes=10, width=4), config)
    write_json(paths.prepared_dir("clever_hans") / "meta.json", {"class_names": [str(c) for c in range(10)], "n_classes": 10,
                                                                 "known_answer": answer.to_meta()})
    images = torch.randint(0, 256, (20, 3, 28, 28), dtype=torch.uint8).numpy()
    save_arrays(paths.prepared_dir("clever_hans") / "test.npz", images=images, clean_images=images,
                labels=torch.arange(20).numpy() % 10)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params({"device": "cpu", "feature_viz": {
        "steps": 2, "channels_per_layer": 1, "dream_images": 3, "dream_steps": 2}})))
    main(["clever_hans"])
    dreamed = json.loads((paths.plots_dir("clever_hans", "feature_viz") / "details.json").read_text())["dream"]
    assert "shortcut" not in dreamed and list(dreamed["shortcuts"]) == ["7", "1"]
    assert dreamed["shortcuts"]["7"]["area_share"] == pytest.approx(64 / 784, abs=1e-6)   # written to 6 digits
    assert dreamed["shortcuts"]["1"]["area_share"] == pytest.approx(16 / 784, abs=1e-6) and dreamed["shortcuts"]["1"]["label"] == 1


def red_detector() -> nn.Module:
    """One 1x1 convolution whose only channel is the red intensity minus the mean of green and blue."""
    conv = nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -0.5, -0.5]).view(1, 3, 1, 1))
        conv.bias.zero_()
    return frozen(nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(28 * 28, 2)), "cpu")


def test_the_dream_of_a_red_detecting_layer_paints_the_image_red():
    model = red_detector()
    start = torch.full((2, 3, 28, 28), 0.5)
    start[:, 0] = 0.6                                     # a faint red everywhere: the detector is on
    result = dream_layers(model, start, steps=40, step_size=0.02)
    dreamed = result["images"][0]
    assert dreamed.shape == start.shape and 0 <= dreamed.min() and dreamed.max() <= 1
    red_minus_rest = dreamed[:, 0] - dreamed[:, 1:].mean(1)
    assert red_minus_rest.mean() > 0.5                    # it was 0.1
    assert (result["gain"] > 10).all()
    whole = torch.ones(28, 28)
    found = dream_on_region(start, result["images"], whole, [1.0, 0.0, 0.0])
    assert found["change_share"].item() == pytest.approx(1.0) and found["toward_color"].item() > 0.5


def test_dream_on_region_measures_where_the_change_goes_and_toward_which_color():
    start = torch.full((1, 3, 4, 4), 0.5)
    region = torch.zeros(4, 4)
    region[:2, :2] = 1
    dreamed = start.clone()[None]                          # one layer
    dreamed[0, 0, :, :2, :2] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)   # the region painted pure red
    found = dream_on_region(start, dreamed, region, [1.0, 0.0, 0.0])
    assert found["area_share"] == 0.25
    assert found["change_share"].item() == pytest.approx(1.0)
    assert found["toward_color"].item() == pytest.approx(1.0)
    dreamed[0, 0, :, 2:, 2:] = 0.0                         # as much change outside, away from nothing in particular
    found = dream_on_region(start, dreamed, region, [1.0, 0.0, 0.0])
    assert found["change_share"].item() == pytest.approx(0.5)
