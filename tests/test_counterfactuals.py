import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.config import CounterfactualParams
from pipeline.counterfactuals.quality import change_size, conversion, evaluate, feature_distances
from pipeline.counterfactuals.translation import TranslationOptions, all_other_targets, make_counterfactuals

N_CLASSES = 3


def channel_images(labels, seed=0):
    """Class = which channel is lit (a random sparse shape)."""
    gen = torch.Generator().manual_seed(seed)
    n = len(labels)
    images = torch.zeros(n, 3, 28, 28, dtype=torch.uint8)
    images[torch.arange(n), labels] = (torch.rand(n, 28, 28, generator=gen) > 0.7).to(torch.uint8) * 200
    return images


class ChannelClassifier(nn.Module):
    """Decides by the brightest channel; its 'features' are channel means and their squares."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(50.0), requires_grad=False)

    def forward(self, x):
        return x.mean((2, 3)) * self.scale

    def embed(self, x):
        m = x.mean((2, 3))
        return torch.cat([m, m**2], 1)


class PrototypeTranslator(nn.Module):
    """Returns the target class's prototype image whatever the input (style = one-hot class)."""

    config = {"latent_dim": 2}

    def __init__(self):
        super().__init__()
        self.prototypes = torch.zeros(N_CLASSES, 3 * 28 * 28)
        for c in range(N_CLASSES):
            self.prototypes.view(N_CLASSES, 3, 28, 28)[c, c, 8:20, 8:20] = 0.8

    def latent_style(self, z, classes):
        return F.one_hot(classes, N_CLASSES).float()

    def reference_style(self, x, classes):
        return F.one_hot(classes, N_CLASSES).float()

    def forward(self, x, style):
        return (style @ self.prototypes).view(-1, 3, 28, 28)


class IdentityTranslator(PrototypeTranslator):
    def forward(self, x, style):
        return x


def data(n, seed):
    labels = torch.arange(n) % N_CLASSES
    return {"images": channel_images(labels, seed), "labels": labels}


def run_chain(translator, n_images=12):
    test, references = data(60, 0), data(30, 1)
    options = TranslationOptions(n_images=n_images, n_reference_images=5, batch_size=7)
    result = make_counterfactuals(translator, ChannelClassifier(), test, references, N_CLASSES, options,
                                  torch.Generator().manual_seed(0))
    metrics, details, confusions = evaluate(result, ChannelClassifier(), test, N_CLASSES,
                                            torch.Generator().manual_seed(0), 16)
    return result, metrics, details, confusions


HEADLINE_KEYS = {"conversion_rate", "conversion_rate_latent", "mean_l1", "changed_pixel_fraction", "feature_distance",
                 "feature_distance_real_floor"}


def test_prototype_generator_converts_everything():
    result, metrics, details, confusions = run_chain(PrototypeTranslator())
    assert set(metrics) == HEADLINE_KEYS and all(isinstance(v, float) for v in metrics.values())
    assert metrics["conversion_rate"] == 1.0 and metrics["conversion_rate_latent"] == 1.0
    per_pair = details["modes"]["reference"]["conversion_per_pair"]
    assert set(per_pair) == {f"{s}->{t}" for s in range(3) for t in range(3) if s != t}
    assert all(v == 1.0 for v in per_pair.values())
    assert torch.equal(confusions[""], torch.diag(torch.bincount(result["target"], minlength=3)))
    assert metrics["mean_l1"] > 0.05 and metrics["changed_pixel_fraction"] > 0.1
    # the contract of counterfactuals.npz: one row per (image, target != source), uint8 images
    n = 12 * (N_CLASSES - 1)
    for key in ("real", "counterfactual", "counterfactual_latent"):
        assert result[key].shape == (n, 3, 28, 28) and result[key].dtype == torch.uint8
    for key in ("image_index", "source", "target", "predicted", "predicted_latent"):
        assert result[key].shape == (n,) and result[key].dtype == torch.int64
    assert result["target_probability"].dtype == torch.float32 and (result["target_probability"] > 0.9).all()
    assert (result["source"] != result["target"]).all()
    assert len(torch.unique(result["image_index"])) == 12


def test_identity_generator_converts_nothing_and_changes_nothing():
    result, metrics, _, _ = run_chain(IdentityTranslator())
    assert metrics["conversion_rate"] == 0.0 and metrics["conversion_rate_latent"] == 0.0
    assert metrics["mean_l1"] == 0.0 and metrics["changed_pixel_fraction"] == 0.0
    assert torch.equal(result["predicted"], result["source"])


def test_all_other_targets_pairs_each_image_with_every_other_class():
    sources = torch.tensor([0, 2, 1, 2])
    rows, targets = all_other_targets(sources, 3)
    assert len(rows) == 4 * 2 and (sources[rows] != targets).all()
    assert sorted(zip(rows.tolist(), targets.tolist())) == [(0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 2), (3, 0), (3, 1)]


def test_conversion_per_pair_on_known_predictions():
    source = torch.tensor([0, 0, 0, 1, 1])
    target = torch.tensor([1, 1, 2, 0, 0])
    predicted = torch.tensor([1, 0, 2, 1, 1])
    overall, per_pair = conversion(predicted, source, target)
    assert overall == pytest.approx(2 / 5)
    assert per_pair == {"0->1": 0.5, "0->2": 1.0, "1->0": 0.0}


def test_change_size_counts_pixels_over_threshold():
    real = torch.zeros(2, 3, 28, 28, dtype=torch.uint8)
    fake = real.clone()
    fake[0, 1, :14] = 51  # 0.2 on one channel of the top half of one image
    l1, changed = change_size(real, fake)
    assert changed == pytest.approx(0.25)
    assert l1 == pytest.approx(0.2 * 14 * 28 / (2 * 3 * 28 * 28), rel=1e-5)


def test_both_modes_are_compared_with_the_same_real_images():
    """The prototype translator makes identical reference- and latent-guided images: identical distances."""
    _, metrics, details, _ = run_chain(PrototypeTranslator(), n_images=30)
    reference, latent = details["modes"]["reference"], details["modes"]["latent"]
    assert reference["feature_distance_per_class"] == latent["feature_distance_per_class"]
    assert metrics["feature_distance"] == latent["feature_distance"] > metrics["feature_distance_real_floor"]


def test_the_real_floor_is_computed_at_the_sample_size_it_is_the_floor_for():
    """Counterfactual features drawn from the real distribution sit at the floor, not far above it.

    Few counterfactuals per class (60) against many real images (1000 per half): at unequal sample
    sizes the floor between the two real halves is far below what equally real "counterfactuals" score.
    """
    gen = torch.Generator().manual_seed(0)
    n_classes, dim = 4, 16
    labels = torch.arange(2000 * n_classes) % n_classes
    real = torch.randn(len(labels), dim, generator=gen) + labels[:, None].float()
    targets = torch.arange(60 * n_classes) % n_classes
    fake = torch.randn(len(targets), dim, generator=gen) + targets[:, None].float()
    result = feature_distances(real, labels, {"reference": fake}, targets, n_classes, torch.Generator().manual_seed(1))
    assert set(result["n_compared"].values()) == {60}
    distance = np.mean(list(result["distance"]["reference"].values()))
    floor = np.mean(list(result["floor"].values()))
    assert 0.75 < floor / distance < 1.33, (floor, distance)


class BrightnessStyleTranslator(PrototypeTranslator):
    """Style = the reference image's mean brightness; the output is a flat image of that brightness."""

    def reference_style(self, x, classes):
        return x.mean((1, 2, 3))[:, None]

    def latent_style(self, z, classes):
        return torch.zeros(len(z), 1)

    def forward(self, x, style):
        return style.view(-1, 1, 1, 1).expand(len(x), 3, 28, 28)


def brightness_references(per_class=6, seed=3):
    """Training images of flat, distinct brightness: each image's style is unique."""
    labels = torch.arange(per_class * N_CLASSES) % N_CLASSES
    levels = torch.randperm(200, generator=torch.Generator().manual_seed(seed))[: len(labels)] + 20
    return {"images": levels.view(-1, 1, 1, 1).expand(-1, 3, 28, 28).to(torch.uint8).contiguous(), "labels": labels}


@pytest.mark.parametrize("reference", ["fixed_image", "mean_style"])
def test_reference_styles_come_from_one_training_image_or_the_class_mean(reference):
    references = brightness_references()
    image_styles = references["images"][:, 0, 0, 0].double() / 255.0
    options = TranslationOptions(n_images=9, reference=reference, n_reference_images=100, batch_size=5)
    result = make_counterfactuals(BrightnessStyleTranslator(), ChannelClassifier(), data(30, 0), references, N_CLASSES,
                                  options, torch.Generator().manual_seed(0))
    for c in range(N_CLASSES):
        members = image_styles[references["labels"] == c]
        style = result["class_styles"][c, 0].double()
        one_image = torch.isclose(members, style, atol=1e-6)
        if reference == "fixed_image":
            assert one_image.sum() == 1        # the style of exactly one training image of the class
        else:
            assert not one_image.any() and torch.isclose(style, members.mean(), atol=1e-6)
        into_c = result["counterfactual"][result["target"] == c]
        assert (into_c == torch.round(style * 255).to(torch.uint8)).all()   # every counterfactual into c uses it


def test_plot_data_has_one_file_per_series(tmp_path, monkeypatch):
    """Per-pair conversion: one file per guidance mode; interpolation: one file per example, so that
    `dvc plots show` draws each series on its own instead of stacking or joining them."""
    import pandas as pd

    from pipeline import paths
    from pipeline.stages.counterfactuals import save_plots

    monkeypatch.chdir(tmp_path)
    test = data(30, 0)
    cfg = CounterfactualParams(n_images=6, n_reference_images=5, batch_size=7, n_gallery_images=2,
                               n_interpolation_images=3, interpolation_steps=4, n_style_points=20)
    options = TranslationOptions(n_images=cfg.n_images, n_reference_images=cfg.n_reference_images,
                                 batch_size=cfg.batch_size)
    translator, classifier = PrototypeTranslator(), ChannelClassifier()
    result = make_counterfactuals(translator, classifier, test, data(30, 1), N_CLASSES, options,
                                  torch.Generator().manual_seed(0))
    _, details, confusions = evaluate(result, classifier, test, N_CLASSES, torch.Generator().manual_seed(0), 16)
    save_plots("colored_mnist", result, confusions, details, translator, classifier, test, ["a", "b", "c"], cfg)
    out = paths.plots_dir("colored_mnist", "counterfactuals")
    for mode in ("reference", "latent"):
        frame = pd.read_csv(out / "conversion_per_pair" / f"{mode}.csv", dtype={"pair": str})
        assert list(frame.columns) == ["pair", "conversion_rate"] and frame["pair"].is_unique
        assert dict(zip(frame["pair"], frame["conversion_rate"])) == details["modes"][mode]["conversion_per_pair"]
    strips = sorted((out / "interpolation").glob("*.csv"))
    assert len(strips) == 3
    for path in strips:
        frame = pd.read_csv(path)
        assert list(frame.columns) == ["alpha", "source_probability", "target_probability"]
        assert frame["alpha"].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])


def test_exact_counterfactual_error_is_zero_for_the_exact_answer_and_known_for_no_change():
    import numpy as np

    from pipeline.counterfactuals.quality import exact_error
    from pipeline.data.colored_mnist import exact_counterfactuals

    colormaps = ["spring", "summer", "autumn", "winter"]
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, size=(5, 28, 28)).astype(np.uint8)
    positions = rng.random(5).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 0])
    targets = np.array([1, 2, 3, 0, 2])
    real = exact_counterfactuals(gray, positions, labels, colormaps)
    exact = exact_counterfactuals(gray, positions, targets, colormaps)
    test = {"gray": torch.from_numpy(gray), "positions": torch.from_numpy(positions)}
    result = {"image_index": torch.arange(5), "target": torch.from_numpy(targets), "real": torch.from_numpy(real),
              "counterfactual": torch.from_numpy(exact), "counterfactual_latent": torch.from_numpy(real)}
    errors = exact_error(result, test, colormaps)
    assert errors["reference"] == 0.0
    no_change = np.abs(real.astype(np.float64) - exact.astype(np.float64)).mean() / 255
    assert no_change > 0.01
    assert errors["latent"] == pytest.approx(no_change) and errors["unchanged_image"] == pytest.approx(no_change)
