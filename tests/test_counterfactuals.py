import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.config import CounterfactualParams
from pipeline.counterfactuals import all_other_targets, change_size, conversion, evaluate, make_counterfactuals
from pipeline.frechet import feature_frechet_distance as frechet_distance
from pipeline.frechet import frechet_distance as frechet_distance_from_moments

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
    cfg = CounterfactualParams(n_images=n_images, n_reference_images=5, batch_size=7)
    result = make_counterfactuals(translator, ChannelClassifier(), test, references, N_CLASSES, cfg,
                                  torch.Generator().manual_seed(0))
    metrics, confusions = evaluate(result, ChannelClassifier(), test, N_CLASSES, torch.Generator().manual_seed(0), 16)
    return result, metrics, confusions


def test_prototype_generator_converts_everything():
    result, metrics, confusions = run_chain(PrototypeTranslator())
    assert metrics["conversion_rate"] == 1.0 and metrics["conversion_rate_latent"] == 1.0
    assert set(metrics["conversion_per_pair"]) == {f"{s}->{t}" for s in range(3) for t in range(3) if s != t}
    assert all(v == 1.0 for v in metrics["conversion_per_pair"].values())
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
    result, metrics, _ = run_chain(IdentityTranslator())
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


def test_frechet_distance_of_gaussians_matches_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)  # 5 + 1 + 1 + 0
    assert frechet_distance_from_moments(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected)
    assert frechet_distance_from_moments(mu1, np.diag(var1), mu1, np.diag(var1)) == pytest.approx(0.0, abs=1e-9)
    # a rotated (non-diagonal) covariance against itself shifted: only the means count
    rotation = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
    sigma = rotation @ np.diag(var1) @ rotation.T
    assert frechet_distance_from_moments(mu1, sigma, mu2, sigma) == pytest.approx(5.0)
    # from samples: close to the closed form
    rng = np.random.default_rng(0)
    a = rng.normal(mu1, np.sqrt(var1), size=(40_000, 3))
    b = rng.normal(mu2, np.sqrt(var2), size=(40_000, 3))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.03)
    assert frechet_distance(torch.from_numpy(a[:20_000]), torch.from_numpy(a[20_000:])) < 0.01
