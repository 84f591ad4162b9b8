"""Architectures compared on constructed cases: the ResNet, rank correlations of maps, training alike, params, the report."""
import copy
import math

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from pipeline.config import ConfigError, Params, build
from pipeline.evaluation.architectures import (ComparisonOptions, attribution_maps, correlation_matrix, mean_over_shared_methods,
                                            mean_rank_correlation, pairwise_correlations, relevance_lifts, train_alike)
from pipeline.models.classifiers import ResNetClassifier, build_seeded_classifier, frozen, load_classifier, save_model
from tests.conftest import REPO, classifier_params, repo_params

DEFAULTS = yaml.safe_load((REPO / "params.yaml").read_text())


# ---------------------------------------------------------------------------------------------
# the ResNet
# ---------------------------------------------------------------------------------------------
def test_resnet_gives_logits_a_128d_embedding_and_a_7x7_gradcam_layer():
    model = build_seeded_classifier({"architecture": "resnet", "n_classes": 5, "width": 4}, 0).eval()
    assert isinstance(model, ResNetClassifier)
    x = torch.rand(3, 3, 28, 28)
    assert model(x).shape == (3, 5)
    assert model.embed(x).shape == (3, 128)
    seen = {}
    handle = model.gradcam_layer.register_forward_hook(lambda _m, _i, out: seen.update(shape=tuple(out.shape)))
    model(x)
    handle.remove()
    assert seen["shape"] == (3, 16, 7, 7)   # 4 x width channels at the last resolution
    assert any(module is model.gradcam_layer for module in model.modules())


def test_resnet_relus_are_separate_modules_so_deeplift_adds_up():
    """DeepLift's attributions sum to f(x) - f(baseline) only when no ReLU module is reused or in place."""
    from captum.attr import DeepLift

    model = frozen(build_seeded_classifier({"architecture": "resnet", "n_classes": 4, "width": 4}, 1), "cpu")
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == len({id(m) for m in relus}) == 1 + 2 * 3 + 1 and not any(m.inplace for m in relus)
    x = torch.rand(2, 3, 28, 28)
    _, delta = DeepLift(model).attribute(x, baselines=torch.zeros_like(x), target=torch.tensor([0, 3]),
                                         return_convergence_delta=True)
    assert delta.abs().max() < 1e-3


def test_resnet_round_trips_through_its_checkpoint(tmp_path):
    config = {"architecture": "resnet", "n_classes": 3, "width": 4}
    model = build_seeded_classifier(config, 2).eval()
    save_model(tmp_path / "resnet.pt", model, config)
    x = torch.rand(4, 3, 28, 28)
    assert torch.allclose(load_classifier(tmp_path / "resnet.pt")(x), model(x), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# rank correlation of maps
# ---------------------------------------------------------------------------------------------
def ramp(n_images: int = 2) -> torch.Tensor:
    """Maps whose pixels are all different: 1, 2, ..., 784 over the image, split over three channels."""
    values = torch.arange(1, 28 * 28 + 1, dtype=torch.float32).reshape(1, 1, 28, 28) / 3
    return values.expand(n_images, 3, 28, 28).clone()


def test_identical_maps_correlate_1_and_reversed_rankings_minus_1():
    maps = ramp()
    assert mean_rank_correlation(maps, maps.clone()) == pytest.approx(1.0)
    reversed_ranking = (28 * 28 + 1) / 3 - maps   # positive, highest where the ramp is lowest
    assert mean_rank_correlation(maps, reversed_ranking) == pytest.approx(-1.0)


def test_maps_are_compared_by_magnitude_summed_over_channels():
    maps = ramp()
    flipped = maps.clone()
    flipped[:, 1] *= -1   # the sign of a channel does not change how much relevance a pixel gets
    assert mean_rank_correlation(maps, flipped) == pytest.approx(1.0)
    assert math.isnan(mean_rank_correlation(torch.ones(2, 3, 28, 28), maps))   # a constant map has no ranking


def small_cnn(seed: int) -> nn.Module:
    return frozen(build_seeded_classifier({"architecture": "cnn", "n_classes": 3, "width": 4}, seed), "cpu")


def test_identical_models_give_identical_maps_and_a_different_model_does_not():
    images = torch.randint(0, 256, (6, 3, 28, 28), dtype=torch.uint8)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    options = ComparisonOptions(methods=("ig_zero", "saliency", "gradcam"), ig_steps=4, batch_size=4)
    models = {"a": small_cnn(0), "b": copy.deepcopy(small_cnn(0)), "c": small_cnn(1)}
    maps, skipped = attribution_maps(models, images, targets, options)
    assert skipped == {} and maps["a"]["saliency"].shape == (6, 3, 28, 28)
    correlations = pairwise_correlations(maps, options.methods)
    assert list(correlations) == ["a vs b", "a vs c", "b vs c"]
    assert correlations["a vs b"] == pytest.approx({"ig_zero": 1.0, "saliency": 1.0, "gradcam": 1.0})
    assert correlations["a vs c"]["saliency"] < 0.9


def test_a_method_a_model_cannot_run_is_skipped_and_left_out_of_its_pairs():
    images = torch.rand(2, 3, 28, 28)
    dense = frozen(build_seeded_classifier({"architecture": "dense", "n_classes": 3, "width": 2}, 0), "cpu")
    maps, skipped = attribution_maps({"dense": dense, "cnn": small_cnn(0)}, images, torch.tensor([0, 1]),
                                     ComparisonOptions(methods=("saliency", "gradcam"), batch_size=2))
    assert list(skipped) == ["dense"] and "gradcam" in skipped["dense"]
    correlations = pairwise_correlations(maps, ("saliency", "gradcam"))
    assert set(correlations["dense vs cnn"]) == {"saliency"}
    matrix = correlation_matrix(correlations, ["dense", "cnn"], "gradcam")
    assert np.isnan(matrix).all()   # no pair has gradcam, and neither diagonal cell is a measurement


# ---------------------------------------------------------------------------------------------
# scores per architecture
# ---------------------------------------------------------------------------------------------
def streams(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(len(name))


def test_relevance_mass_is_held_to_each_method_s_own_support_and_averaged_over_the_methods_every_model_ran():
    """Image: a 4x4 stamp (16 pixels) and a 48-pixel digit. ``on_stamp`` puts all its relevance on the stamp but has
    the input's support (64 pixels): lift 1 - 16 / 64. ``input_like`` spreads it evenly over the same support: lift 0.
    ``saliency`` is 1 everywhere (784 pixels): chance 16 / 784, relevance mass the same."""
    masks = torch.zeros(20, 28, 28, dtype=torch.bool)
    masks[:, :4, :4] = True
    image = torch.zeros(20, 3, 28, 28)
    image[:, 0, :4, :4], image[:, :, 10:16, 10:18] = 1.0, 1.0 / 3
    on_stamp = image * masks[:, None] + 1e-6 * image * ~masks[:, None]
    maps = {"a": {"m": on_stamp, "saliency": torch.ones(20, 3, 28, 28)},
            "b": {"m": image.clone(), "saliency": torch.ones(20, 3, 28, 28)}}
    means, per_method, shared = relevance_lifts(maps, masks, streams)
    assert shared == ["m", "saliency"]
    assert per_method["a"]["m"].chance == pytest.approx(16 / 64) and per_method["a"]["m"].lift == pytest.approx(0.75, abs=1e-4)
    assert per_method["b"]["m"].lift == pytest.approx(0.0, abs=1e-6) and per_method["b"]["m"].verdict == "no better than chance"
    assert per_method["a"]["saliency"].chance == pytest.approx(16 / 784) == per_method["a"]["saliency"].score
    assert means["a"].lift == pytest.approx(0.75 / 2, abs=1e-4) and means["a"].verdict == "above chance"
    assert means["b"].lift == pytest.approx(0.0, abs=1e-6)


def test_a_method_one_model_could_not_be_judged_on_is_left_out_of_every_model_s_mean():
    masks = torch.zeros(4, 28, 28, dtype=torch.bool)
    masks[:, :4, :4] = True
    ones = torch.ones(4, 3, 28, 28)
    maps = {"a": {"m": ones, "n": ones}, "b": {"m": ones, "n": torch.zeros(4, 3, 28, 28)}}   # b's n: empty maps
    means, per_method, shared = relevance_lifts(maps, masks, streams)
    assert shared == ["m"] and per_method["b"]["n"].verdict == "not judged"
    fooled_on_none = {"a": torch.zeros(4, dtype=torch.bool), "b": torch.zeros(4, dtype=torch.bool)}
    means, _, shared = relevance_lifts(maps, masks, streams, among=fooled_on_none, reason_if_empty="fooled on none")
    assert shared == [] and all(lift.verdict == "not judged" for lift in means.values())


def test_headline_means_use_only_methods_every_architecture_scored():
    scores = {"dense": {"ig_zero": 0.2, "saliency": 0.4},
              "cnn": {"ig_zero": 0.6, "saliency": 0.8, "gradcam": 0.9},
              "resnet": {"ig_zero": 0.4, "saliency": float("nan"), "gradcam": 0.1}}
    means, shared = mean_over_shared_methods(scores)
    assert shared == ["ig_zero"]
    assert means == pytest.approx({"dense": 0.2, "cnn": 0.6, "resnet": 0.4})
    means, shared = mean_over_shared_methods({"a": {"x": 1.0}, "b": {"y": 2.0}})
    assert shared == [] and all(math.isnan(v) for v in means.values())


# ---------------------------------------------------------------------------------------------
# training alike
# ---------------------------------------------------------------------------------------------
def test_models_trained_alike_see_the_same_data_in_the_same_order():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (64,), generator=gen)
    images = torch.zeros(64, 3, 28, 28, dtype=torch.uint8)
    images[torch.arange(64), labels] = 200
    models = {"first": build_seeded_classifier({"architecture": "cnn", "n_classes": 3, "width": 4}, 5),
              "second": build_seeded_classifier({"architecture": "cnn", "n_classes": 3, "width": 4}, 5)}
    histories, seconds = train_alike(models, images, labels, classifier_params(epochs=1, batch_size=16, mixed_precision=False),
                                     lambda: torch.Generator().manual_seed(7))
    assert histories["first"] == histories["second"] and set(seconds) == {"first", "second"}
    for a, b in zip(models["first"].parameters(), models["second"].parameters()):
        assert torch.equal(a, b)


def test_every_architecture_trains_and_is_explained_on_images_of_the_shape_it_was_built_for():
    """1 x 32 x 36 images: each architecture built for that shape trains, and every method (occlusion's windows
    and Grad-CAM's upsampling included) gives maps of the images' shape."""
    shape = (1, 32, 36)
    labels = torch.arange(12) % 3
    images = torch.randint(0, 256, (12, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    models = {a: build_seeded_classifier({"architecture": a, "n_classes": 3, "width": 2, "input_shape": shape}, 0)
              for a in ("cnn", "dense", "resnet")}
    histories, _ = train_alike(models, images, labels, classifier_params(epochs=1, batch_size=4, mixed_precision=False),
                               lambda: torch.Generator().manual_seed(7))
    assert all(len(history) == 1 for history in histories.values())
    models = {a: frozen(model, "cpu") for a, model in models.items()}
    options = ComparisonOptions(methods=("saliency", "gradcam", "occlusion"), batch_size=4)
    maps, skipped = attribution_maps(models, images[:4], labels[:4], options)
    assert {a: set(reasons) for a, reasons in skipped.items()} == {"dense": {"gradcam"}}
    assert {(a, m): tuple(x.shape) for a, per_method in maps.items() for m, x in per_method.items()} == {
        (a, m): (4, *shape) for a in models for m in options.methods if (a, m) != ("dense", "gradcam")}


# ---------------------------------------------------------------------------------------------
# params
# ---------------------------------------------------------------------------------------------
def with_change(section: str, key: str, value) -> dict:
    raw = copy.deepcopy(DEFAULTS)
    raw[section][key] = value
    return raw


def test_a_resnet_can_be_the_main_classifier():
    assert build(Params, with_change("classifier", "architecture", "resnet")).classifier.architecture == "resnet"


@pytest.mark.parametrize("key, value, must_name", [
    ("names", ["cnn"], "architectures.names"),
    ("names", ["cnn", "cnn"], "architectures.names"),
    ("names", ["cnn", "vgg"], "architectures.names[1]"),
    ("methods", ["ig_zero", "occlusion"], "architectures.methods[1]"),
    ("methods", [], "architectures.methods"),
    ("epochs", 0, "architectures.epochs"),
    ("n_images", 0, "architectures.n_images"),
])
def test_invalid_architectures_params_name_the_key(key, value, must_name):
    with pytest.raises(ConfigError) as err:
        build(Params, with_change("architectures", key, value))
    assert must_name in str(err.value)


def test_architectures_epochs_default_to_the_classifiers():
    params = build(Params, DEFAULTS)
    assert params.architectures.epochs is None and params.architectures.names == ["dense", "cnn", "resnet"]


@pytest.mark.parametrize("dataset, fraction", [("clever_hans", 0.95), ("negative_control", 0.0), ("colored_mnist", None)])
def test_the_stage_writes_each_architecture_s_relevance_lift_beside_its_support_chance(dataset, fraction, tmp_path,
                                                                                      monkeypatch):
    import json

    from pipeline import paths
    from pipeline.data.known_answer import ColorRule, PlantedShortcuts
    from pipeline.data.shortcuts import Shortcut
    from pipeline.stages.architectures import main
    from pipeline.storage import save_arrays, write_json

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    n_classes = 4 if fraction is None else 10
    for split, n in (("train", 40), ("test", 20)):
        gray = (rng.random((n, 28, 28)) < 0.2).astype(np.uint8) * 200
        arrays = {"images": np.repeat(gray[:, None], 3, axis=1), "labels": np.arange(n) % n_classes}
        if fraction is not None:
            arrays |= {"clean_images": arrays["images"]} if split == "test" else {"stamped": np.zeros((n, 1), bool)}
        save_arrays(paths.prepared_dir(dataset) / f"{split}.npz", **arrays)
    answer = ColorRule(("spring", "summer", "autumn", "winter")) if fraction is None else \
        PlantedShortcuts((Shortcut(label=7, kind="square", side=8, fraction=fraction, color=[1.0, 0.0, 0.0]),), (28, 28))
    write_json(paths.prepared_dir(dataset) / "meta.json", {"n_classes": n_classes, "known_answer": answer.to_meta(),
                                                           "class_names": [str(c) for c in range(n_classes)]})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params({
        "device": "cpu", "classifier": {"epochs": 1, "width": 2, "batch_size": 16, "mixed_precision": False},
        "architectures": {"names": ["dense", "cnn"], "methods": ["saliency", "ig_zero"], "n_images": 6, "ig_steps": 2,
                          "batch_size": 4, "n_picture_images": 2}})))
    main([dataset])
    metrics = json.loads(paths.metrics_path(dataset, "architectures").read_text())
    details = json.loads((paths.plots_dir(dataset, "architectures") / "details.json").read_text())
    figure = "digit_relevance_mass" if fraction is None else "relevance_mass"
    assert details["headline_score"] == figure and details["headline_methods"] == ["saliency", "ig_zero"]
    for a in ("dense", "cnn"):
        lift = details["chance"][figure][a]
        assert lift["chance_level"] == "a uniform map on the method's own support"
        assert lift["n"] == 6    # n_images (planted: stamped images of other classes)
        assert metrics[f"{figure}_{a}_lift"] == pytest.approx(lift["lift"], abs=1e-6)
        assert [metrics[f"{figure}_{a}_lift_low"], metrics[f"{figure}_{a}_lift_high"]] == pytest.approx(lift["interval"], abs=1e-6)
        assert set(details["chance_per_method"][figure][a]) == {"saliency", "ig_zero"}
    expected = {"shortcut_reliance"} if fraction is not None else set()
    assert {k.rsplit("_", 1)[0] for k in metrics if "_lift" not in k} == expected
    assert all(0 <= details["architectures"][a]["test_accuracy"] <= 1 for a in ("dense", "cnn"))
