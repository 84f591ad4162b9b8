"""A classifier of your own: a torchvision architecture with a state dict, or a TorchScript file, behind the
pipeline's classifier interface (input transform, layers by name, what cannot be had and why)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from pipeline.attribution.methods import AttributionOptions, make_explainer, runnable_methods
from pipeline.models.classifiers import classifier_from_file, load_classifier, missing_parts, save_model
from pipeline.models.external import ExternalClassifier, InputTransform, Unshared, calls_per_module, unshared

SHAPE = (3, 32, 32)
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def resnet_config(**changes) -> dict:
    return {"architecture": "torchvision", "torchvision": "resnet18", "n_classes": 3, "input_shape": SHAPE,
            "mean": MEAN, "std": STD, "input_size": None, "gradcam_layer": "layer4", "features_layer": "avgpool"} | changes


def trained_elsewhere(seed: int = 0) -> nn.Module:
    """A torchvision ResNet-18 with 3 outputs and seeded random weights, in eval mode: a user's network."""
    from torchvision.models import resnet18

    torch.manual_seed(seed)
    network = resnet18(num_classes=3).eval()
    for module in network.modules():   # batch-norm statistics that are not the identity
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return network


def by_hand(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the user's own code computes: normalise, then the network."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return network((x - mean) / std)


@pytest.fixture(scope="module")
def state_dict_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("own") / "resnet18.pt"
    torch.save(trained_elsewhere().state_dict(), path)
    return path


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def test_a_state_dict_is_evaluated_exactly_as_the_users_own_code_would(state_dict_file):
    model, extra = classifier_from_file(resnet_config(), state_dict_file)
    x = images()
    with torch.no_grad():
        ours = model(x)
    assert extra == {}
    torch.testing.assert_close(ours, by_hand(trained_elsewhere(), x), rtol=1e-5, atol=1e-5)


def test_resnet_relus_called_twice_are_split_without_changing_the_output():
    network = trained_elsewhere()
    example = torch.zeros(1, *SHAPE)
    assert calls_per_module(network, example)["layer1.0.relu"] == 2   # torchvision's BasicBlock reuses its ReLU
    x = images()
    before = by_hand(network, x)
    network, splits = unshared(network, example)
    assert splits and all(isinstance(s, Unshared) for s in splits)
    assert set(calls_per_module(network, example).values()) == {1}
    for split in splits:
        split.reset()
    torch.testing.assert_close(by_hand(network, x), before)
    assert not any(getattr(m, "inplace", False) for m in network.modules())


def test_deeplift_and_guided_backprop_run_on_a_torchvision_resnet(state_dict_file):
    """captum refuses a ReLU that runs twice per pass; once split, every hooking method runs and gives finite maps."""
    model, _ = classifier_from_file(resnet_config(), state_dict_file)
    runnable, skipped = runnable_methods(["deeplift", "guided_backprop", "gradcam", "guided_gradcam"], model)
    assert skipped == {} and len(runnable) == 4
    x, targets = images(2), torch.tensor([0, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in runnable:
            maps = make_explainer(name, model, AttributionOptions(batch_size=2))(x, targets)
            assert maps.shape[0] == 2 and maps.shape[-2:] == SHAPE[1:] and torch.isfinite(maps).all(), name
            if "gradcam" not in name:   # Grad-CAM of a random network may be zero after its ReLU
                assert maps.abs().sum() > 0, name


def test_layers_by_name_give_gradcam_layer_features_and_head(state_dict_file):
    model, _ = classifier_from_file(resnet_config(), state_dict_file)
    assert model.gradcam_layer is model.network.layer4 and model.head is model.network.fc
    assert model.embed(images(3)).shape == (3, 512)
    assert missing_parts(model) == {}
    bare, _ = classifier_from_file(resnet_config(gradcam_layer=None, features_layer=None), state_dict_file)
    assert set(missing_parts(bare)) == {"gradcam_layer", "embed"}
    assert "gradcam_layer" in missing_parts(bare)["gradcam_layer"]
    assert runnable_methods(["gradcam", "ig_zero"], bare)[1] == {
        "gradcam": "gradcam needs a convolutional layer; no gradcam_layer is named for the torchvision resnet18"}


def test_a_saved_classifier_of_your_own_loads_back_identical(state_dict_file, tmp_path):
    model, extra = classifier_from_file(resnet_config(), state_dict_file)
    save_model(tmp_path / "classifier.pt", model, resnet_config(), **extra)
    again = load_classifier(tmp_path / "classifier.pt")
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_a_torchscript_file_runs_and_the_methods_that_hook_are_skipped_with_the_reason(tmp_path):
    network = trained_elsewhere()
    path = tmp_path / "model.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(network, torch.zeros(1, *SHAPE)).save(str(path))
    config = {"architecture": "torchscript", "n_classes": 3, "input_shape": SHAPE, "mean": MEAN, "std": STD}
    model, extra = classifier_from_file(config, path)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), by_hand(network, x), rtol=1e-5, atol=1e-5)
    runnable, skipped = runnable_methods(["ig_zero", "saliency", "deeplift", "guided_backprop", "gradcam"], model)
    assert runnable == ["ig_zero", "saliency"] and set(skipped) == {"deeplift", "guided_backprop", "gradcam"}
    assert all("TorchScript" in why for why in skipped.values())
    with pytest.raises(ValueError, match="one score per class"):
        classifier_from_file(config | {"n_classes": 4}, path)
    save_model(tmp_path / "classifier.pt", model, config, **extra)
    with torch.no_grad():
        torch.testing.assert_close(load_classifier(tmp_path / "classifier.pt")(x), model(x))


def test_files_that_do_not_fit_are_refused_with_what_differs(state_dict_file, tmp_path):
    with pytest.raises(ValueError, match="size mismatch for fc.weight"):
        classifier_from_file(resnet_config(n_classes=4), state_dict_file)  # the file's fc has 3 outputs
    with pytest.raises(ValueError, match="does not fit the torchvision resnet34"):
        classifier_from_file(resnet_config(torchvision="resnet34"), state_dict_file)
    torch.save({"weights": [1, 2, 3]}, tmp_path / "not_a_state_dict.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        classifier_from_file(resnet_config(), tmp_path / "not_a_state_dict.pt")
    with pytest.raises(FileNotFoundError):
        classifier_from_file(resnet_config(), tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="has no module 'layer9'"):
        classifier_from_file(resnet_config(gradcam_layer="layer9"), state_dict_file)


def test_the_input_transform_turns_gray_into_rgb_and_resizes():
    transform = InputTransform(mean=(0.5,) * 3, std=(0.5,) * 3, size=16, channels=3)
    gray = torch.full((2, 1, 8, 8), 0.75)
    out = transform(gray)
    assert out.shape == (2, 3, 16, 16)
    torch.testing.assert_close(out, torch.full_like(out, 0.5))
    with pytest.raises(ValueError, match="takes 3 channels"):
        transform(torch.zeros(1, 2, 8, 8))


def test_a_network_without_a_layer_to_hook_is_a_plain_classifier():
    network = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    model = ExternalClassifier(network, (3, 2, 2), InputTransform())
    assert model.head is network[1] and model.gradcam_layer is None and model.embed is None
