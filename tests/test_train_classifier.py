"""Training the classifier on constructed tasks: seeded streams, DVCLive logging, shortcut scores, declared outputs."""
import csv
import json

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from pipeline import paths
from pipeline.data.known_answer import ColorRule, PlantedShortcuts, Unknown
from pipeline.data.shortcuts import Shortcut
from pipeline.models.classifiers import build_classifier, build_seeded_classifier, input_shape, load_classifier, save_model
from pipeline.runtime import StageContext, StageTimer, open_live
from pipeline.storage import load_checkpoint, save_arrays, save_checkpoint, write_json
from pipeline.stages.train_classifier import (data_order_generator, evaluate, initial_classifier, live_epoch_logger,
                                       log_evaluation, main, train)
from tests.conftest import classifier_params, params_with, repo_params
from tests.dvc_stages import stage_outputs


def color_task(n=512, seed=0, n_classes=3):
    """Class = which channel is lit: a task any working classifier must learn almost at once."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_classes, (n,), generator=gen)
    images = torch.zeros(n, 3, 28, 28, dtype=torch.uint8)
    shapes = (torch.rand(n, 1, 28, 28, generator=gen) > 0.7).to(torch.uint8) * 200
    images[torch.arange(n), labels % 3] = shapes[:, 0]
    return images, labels


def weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def stage_context(dataset: str, seed: int = 0, device: str = "cpu") -> StageContext:
    device = torch.device(device)
    return StageContext(dataset, params_with({"seed": seed}), device, StageTimer("train_classifier", dataset, device))


CONFIG = {"architecture": "cnn", "n_classes": 3, "width": 4}


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def test_cnn_and_dense_learn_a_color_task(tmp_path):
    images, labels = color_task()
    cfg = classifier_params(epochs=3, batch_size=32, mixed_precision=False)
    for architecture in ("cnn", "dense"):
        config = {"architecture": architecture, "n_classes": 3, "width": 8}
        model = build_seeded_classifier(config, 0)
        history = train(model, images, labels, cfg, torch.Generator().manual_seed(0))
        assert history[-1]["train_accuracy"] > 0.9, architecture
        save_model(tmp_path / f"{architecture}.pt", model, config)
        reloaded = load_classifier(tmp_path / f"{architecture}.pt")
        x = images[:8].float() / 255
        assert torch.allclose(reloaded(x), model(x), atol=1e-6)


def test_training_is_reproducible_with_the_same_seed():
    images, labels = color_task(n=128)
    cfg = classifier_params(epochs=1, batch_size=32, mixed_precision=False)
    trained = []
    for _ in range(2):
        model = build_seeded_classifier(CONFIG, 1)
        train(model, images, labels, cfg, torch.Generator().manual_seed(1))
        trained.append(weights(model))
    assert torch.equal(trained[0], trained[1])


class IndexRecorder(nn.Module):
    """A linear classifier that notes which images (their index is the red value of pixel 0, 0) it trains on."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 28 * 28, 2)
        self.seen: list[list[int]] = []

    def forward(self, x):
        if self.training:
            self.seen.append((x[:, 0, 0, 0] * 255).round().long().tolist())
        return self.linear(x.flatten(1))


def test_training_visits_the_images_in_the_order_the_generator_draws():
    n, batch_size = 40, 16
    images = torch.zeros(n, 3, 28, 28, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    model = IndexRecorder()
    cfg = classifier_params(epochs=2, batch_size=batch_size, mixed_precision=False)
    train(model, images, torch.arange(n) % 2, cfg, torch.Generator().manual_seed(5))
    replay = torch.Generator().manual_seed(5)
    expected = [batch.tolist() for _ in range(2) for batch in torch.randperm(n, generator=replay).split(batch_size)]
    assert model.seen == expected


# ---------------------------------------------------------------------------------------------
# input shapes
# ---------------------------------------------------------------------------------------------
ARCHITECTURES = ("cnn", "dense", "resnet")

# state_dict names and shapes of the 3 x 28 x 28 classifiers (3 classes, width 4) as they were before the
# input shape came from the data: checkpoints written then must still load into the networks built now.
CNN_WIDTH_4 = [
    ("features.0.weight", (4, 3, 3, 3)), ("features.0.bias", (4,)), ("features.2.weight", (4, 4, 3, 3)),
    ("features.2.bias", (4,)), ("features.5.weight", (8, 4, 3, 3)), ("features.5.bias", (8,)),
    ("features.7.weight", (8, 8, 3, 3)), ("features.7.bias", (8,)), ("features.10.weight", (16, 8, 3, 3)),
    ("features.10.bias", (16,)), ("embedding.1.weight", (128, 784)), ("embedding.1.bias", (128,)),
    ("head.weight", (3, 128)), ("head.bias", (3,)),
]

DENSE_WIDTH_4 = [
    ("embedding.1.weight", (32, 2352)), ("embedding.1.bias", (32,)), ("embedding.3.weight", (128, 32)),
    ("embedding.3.bias", (128,)), ("head.weight", (3, 128)), ("head.bias", (3,)),
]

RESNET_WIDTH_4 = [
    ("stem.0.weight", (4, 3, 3, 3)), ("stem.1.weight", (4,)), ("stem.1.bias", (4,)), ("stem.1.running_mean", (4,)),
    ("stem.1.running_var", (4,)), ("stem.1.num_batches_tracked", ()), ("blocks.0.conv1.weight", (4, 4, 3, 3)),
    ("blocks.0.bn1.weight", (4,)), ("blocks.0.bn1.bias", (4,)), ("blocks.0.bn1.running_mean", (4,)),
    ("blocks.0.bn1.running_var", (4,)), ("blocks.0.bn1.num_batches_tracked", ()),
    ("blocks.0.conv2.weight", (4, 4, 3, 3)), ("blocks.0.bn2.weight", (4,)), ("blocks.0.bn2.bias", (4,)),
    ("blocks.0.bn2.running_mean", (4,)), ("blocks.0.bn2.running_var", (4,)), ("blocks.0.bn2.num_batches_tracked", ()),
    ("blocks.1.conv1.weight", (8, 4, 3, 3)), ("blocks.1.bn1.weight", (8,)), ("blocks.1.bn1.bias", (8,)),
    ("blocks.1.bn1.running_mean", (8,)), ("blocks.1.bn1.running_var", (8,)), ("blocks.1.bn1.num_batches_tracked", ()),
    ("blocks.1.conv2.weight", (8, 8, 3, 3)), ("blocks.1.bn2.weight", (8,)), ("blocks.1.bn2.bias", (8,)),
    ("blocks.1.bn2.running_mean", (8,)), ("blocks.1.bn2.running_var", (8,)), ("blocks.1.bn2.num_batches_tracked", ()),
    ("blocks.1.downsample.0.weight", (8, 4, 1, 1)), ("blocks.1.downsample.1.weight", (8,)),
    ("blocks.1.downsample.1.bias", (8,)), ("blocks.1.downsample.1.running_mean", (8,)),
    ("blocks.1.downsample.1.running_var", (8,)), ("blocks.1.downsample.1.num_batches_tracked", ()),
    ("blocks.2.conv1.weight", (16, 8, 3, 3)), ("blocks.2.bn1.weight", (16,)), ("blocks.2.bn1.bias", (16,)),
    ("blocks.2.bn1.running_mean", (16,)), ("blocks.2.bn1.running_var", (16,)), ("blocks.2.bn1.num_batches_tracked", ()),
    ("blocks.2.conv2.weight", (16, 16, 3, 3)), ("blocks.2.bn2.weight", (16,)), ("blocks.2.bn2.bias", (16,)),
    ("blocks.2.bn2.running_mean", (16,)), ("blocks.2.bn2.running_var", (16,)), ("blocks.2.bn2.num_batches_tracked", ()),
    ("blocks.2.downsample.0.weight", (16, 8, 1, 1)), ("blocks.2.downsample.1.weight", (16,)),
    ("blocks.2.downsample.1.bias", (16,)), ("blocks.2.downsample.1.running_mean", (16,)),
    ("blocks.2.downsample.1.running_var", (16,)), ("blocks.2.downsample.1.num_batches_tracked", ()),
    ("embedding.2.weight", (128, 16)), ("embedding.2.bias", (128,)), ("head.weight", (3, 128)), ("head.bias", (3,)),
]


@pytest.mark.parametrize("architecture, expected", [("cnn", CNN_WIDTH_4), ("dense", DENSE_WIDTH_4),
                                                    ("resnet", RESNET_WIDTH_4)])
def test_3x28x28_classifiers_keep_their_layers_and_their_seeded_weights(architecture, expected):
    legacy = {"architecture": architecture, "n_classes": 3, "width": 4}
    model = build_seeded_classifier({**legacy, "input_shape": (3, 28, 28)}, 0)
    assert [(name, tuple(tensor.shape)) for name, tensor in model.state_dict().items()] == expected
    # a config without the key (as written before it existed) draws exactly the same weights
    before = build_seeded_classifier(legacy, 0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before.state_dict().values()))


@pytest.mark.parametrize("shape", [(3, 28, 28), (1, 32, 32), (3, 64, 64)])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_classifier_takes_the_input_shape_of_its_config(architecture, shape, tmp_path):
    config = {"architecture": architecture, "n_classes": 5, "width": 2, "input_shape": shape}
    model = build_seeded_classifier(config, 0).eval()
    assert input_shape(model) == shape
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    assert model(x).shape == (2, 5) and model.embed(x).shape == (2, 128)
    if model.gradcam_layer is not None:
        seen = {}
        handle = model.gradcam_layer.register_forward_hook(lambda _m, _i, out: seen.update(shape=tuple(out.shape)))
        model(x)
        handle.remove()
        assert seen["shape"] == (2, 8, shape[1] // 4, shape[2] // 4)
    save_model(tmp_path / "model.pt", model, config)
    reloaded = load_classifier(tmp_path / "model.pt")
    assert input_shape(reloaded) == shape and torch.equal(reloaded(x), model(x))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_checkpoint_written_before_configs_had_input_shape_loads_as_3x28x28(architecture, tmp_path):
    legacy = {"architecture": architecture, "n_classes": 3, "width": 4}
    model = build_seeded_classifier(legacy, 0).eval()
    save_checkpoint(tmp_path / "old.pt", {"config": legacy, "state_dict": model.state_dict()})
    reloaded = load_classifier(tmp_path / "old.pt")
    assert input_shape(reloaded) == (3, 28, 28)
    x = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.equal(reloaded(x), model(x))


@pytest.mark.parametrize("architecture, shape, allowed", [
    ("cnn", (3, 30, 30), "multiples of 4"), ("cnn", (1, 32, 30), "multiples of 4"),
    ("dense", (3, 28), "three positive integers"), ("resnet", (0, 28, 28), "three positive integers")])
def test_a_shape_a_classifier_cannot_take_is_refused_naming_the_shape_and_what_is_allowed(architecture, shape, allowed):
    with pytest.raises(ValueError) as err:
        build_classifier({"architecture": architecture, "n_classes": 3, "width": 4, "input_shape": shape})
    assert allowed in str(err.value) and str(shape) in str(err.value)


def test_save_model_records_the_models_input_shape_and_refuses_another(tmp_path):
    model = build_seeded_classifier({**CONFIG, "input_shape": (1, 32, 32)}, 0)
    save_model(tmp_path / "model.pt", model, CONFIG)
    assert tuple(load_checkpoint(tmp_path / "model.pt")["config"]["input_shape"]) == (1, 32, 32)
    with pytest.raises(ValueError, match=r"input_shape \(3, 28, 28\).*\(1, 32, 32\)"):
        save_model(tmp_path / "wrong.pt", model, {**CONFIG, "input_shape": (3, 28, 28)})


# ---------------------------------------------------------------------------------------------
# random streams of the stage
# ---------------------------------------------------------------------------------------------
def test_each_dataset_gets_its_own_initial_weights_from_the_seed():
    hans = weights(initial_classifier(stage_context("clever_hans"), CONFIG))
    assert torch.equal(hans, weights(initial_classifier(stage_context("clever_hans"), CONFIG)))
    assert not torch.allclose(hans, weights(initial_classifier(stage_context("colored_mnist"), CONFIG)))
    assert not torch.allclose(hans, weights(initial_classifier(stage_context("clever_hans", seed=1), CONFIG)))


def test_seeded_initialisation_leaves_the_global_generator_alone():
    torch.manual_seed(3)
    expected = torch.rand(5)
    torch.manual_seed(3)
    first = weights(build_seeded_classifier(CONFIG, 11))
    assert torch.equal(torch.rand(5), expected)
    assert torch.equal(first, weights(build_seeded_classifier(CONFIG, 11)))
    assert not torch.allclose(first, weights(build_seeded_classifier(CONFIG, 12)))


def test_the_data_order_is_drawn_on_the_cpu_for_a_gpu_run_too():
    on_gpu = data_order_generator(stage_context("clever_hans", device="cuda"))  # a device object; no GPU needed
    assert on_gpu.device.type == "cpu"
    on_cpu = data_order_generator(stage_context("clever_hans"))
    assert torch.equal(torch.randperm(100, generator=on_gpu), torch.randperm(100, generator=on_cpu))


# ---------------------------------------------------------------------------------------------
# shortcut scores
# ---------------------------------------------------------------------------------------------
class ReadsTheAnswer(nn.Module):
    """Predicts the class written in the green value of pixel (0, 0) (class x 20), or 7 wherever pixel (1, 1) is red."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.n_classes = n_classes
        self.unused = nn.Parameter(torch.zeros(1))  # inference helpers find the device from a parameter

    def forward(self, x):
        written = (x[:, 1, 0, 0] * 255 / 20).round().long()
        decided = torch.where((x[:, 0, 1, 1] > 0.5) & (written < 8), 7, written)   # the stamp does not reach 8 and 9
        return nn.functional.one_hot(decided, self.n_classes).float() * 10


def shortcut_test_split() -> dict:
    """Ten test images: two 7s and eight others, of which the clean 1 and 2 are already called 7 and
    the stamp reaches the 1 to 6 but not the 8 and 9."""
    labels = torch.tensor([7, 7, 1, 2, 3, 4, 5, 6, 8, 9])
    written = torch.where((labels == 1) | (labels == 2), 7, labels)
    clean = torch.zeros(10, 3, 28, 28, dtype=torch.uint8)
    clean[:, 1, 0, 0] = (written * 20).to(torch.uint8)
    return {"images": clean, "labels": labels, "clean_images": clean}


def red_pixel(row: int, col: int, strength: float = 1.0) -> PlantedShortcuts:
    """A red one-pixel stamp at (row, col) on class 7, on 28 x 28 images."""
    return PlantedShortcuts((Shortcut(label=7, kind="square", position=[row, col], side=1, strength=strength,
                                      color=[1.0, 0.0, 0.0]),), (28, 28))


CLASS_NAMES = [str(c) for c in range(10)]


def test_blacking_out_the_stamp_area_is_the_occlusion_control():
    """The occlusion control hides what the stamp hides, without its colour. Blacking out the stamp's pixel
    (1, 1), where the red is read, changes nothing: the base rate. Blacking out pixel (0, 0), where the class is
    written, makes every image read as class 0, so none as 7; half opacity halves the written value."""
    split = shortcut_test_split()
    rate = {}
    for pixel in ((1, 1), (0, 0)):
        evaluation = evaluate(ReadsTheAnswer(), split, red_pixel(*pixel), CLASS_NAMES, classifier_params(mixed_precision=False))
        rate[pixel] = evaluation.metrics["shortcut_occlusion_rate"]
        assert [row["occlusion_rate"] for row in evaluation.details["shortcuts"]] == [rate[pixel]]
    assert rate == {(1, 1): pytest.approx(0.25), (0, 0): 0.0}
    assert red_pixel(0, 0, strength=0.5).occlude_tensor(split["clean_images"], 0)[4, 1, 0, 0] == 30   # the 3 writes 60


def test_shortcut_reliance_is_reported_beside_the_base_rate_without_the_stamp():
    evaluation = evaluate(ReadsTheAnswer(), shortcut_test_split(), red_pixel(1, 1), CLASS_NAMES,
                          classifier_params(mixed_precision=False))
    assert evaluation.metrics == pytest.approx({"test_accuracy": 0.8, "clean_accuracy": 0.8,
                                                "shortcut_reliance": 0.75,    # 6 of the 8 others say 7 once stamped ...
                                                "shortcut_base_rate": 0.25,   # ... 2 of them said 7 already
                                                "shortcut_occlusion_rate": 0.25})
    (row,) = evaluation.details["shortcuts"]
    assert row == pytest.approx({"class": "7", "kind": "square", "area_fraction": 1 / 784, "reliance": 0.75,
                                 "base_rate": 0.25, "occlusion_rate": 0.25})
    assert evaluation.details["per_class_accuracy"]["1"] == 0.0 and evaluation.details["per_class_accuracy"]["3"] == 1.0


def test_the_negative_control_has_clean_accuracy_and_no_shortcut_figures():
    nothing_planted = PlantedShortcuts((), (28, 28))
    evaluation = evaluate(ReadsTheAnswer(), shortcut_test_split(), nothing_planted, CLASS_NAMES,
                          classifier_params(mixed_precision=False))
    assert evaluation.metrics == pytest.approx({"test_accuracy": 0.8, "clean_accuracy": 0.8})
    assert evaluation.details["shortcuts"] == []


# ---------------------------------------------------------------------------------------------
# DVCLive
# ---------------------------------------------------------------------------------------------
def read_tsv(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_training_is_logged_to_dvclive_while_it_runs(tmp_path):
    images, labels = color_task(n=96)
    test = {"images": images[:32], "labels": labels[:32]}
    cfg = classifier_params(epochs=3, batch_size=32, eval_batch_size=64, mixed_precision=False)
    curves = tmp_path / "live" / "plots" / "metrics"
    rows_on_disk = []
    with open_live(tmp_path / "live") as live:
        log_epoch = live_epoch_logger(live, test, cfg, "colored_mnist")

        def on_epoch(record, model):
            measured = log_epoch(record, model)
            rows_on_disk.append(len(read_tsv(curves / "test_accuracy.tsv")))
            return measured

        history = train(build_seeded_classifier(CONFIG, 0), images, labels, cfg, torch.Generator().manual_seed(0), on_epoch)
    assert rows_on_disk == [1, 2, 3]  # each epoch is on disk before the next one starts
    for key in ("train_loss", "train_accuracy", "test_accuracy"):
        logged = read_tsv(curves / f"{key}.tsv")
        assert [int(row["step"]) for row in logged] == [0, 1, 2]
        assert [float(row[key]) for row in logged] == pytest.approx([record[key] for record in history])


def test_the_confusion_matrix_and_examples_go_through_dvclive(tmp_path):
    split = shortcut_test_split()
    evaluation = evaluate(ReadsTheAnswer(), split, red_pixel(1, 1), CLASS_NAMES, classifier_params(mixed_precision=False))
    names = [f"digit {c}" for c in range(10)]
    with open_live(tmp_path / "live") as live:
        log_evaluation(live, evaluation, split, names, 4, "clever_hans")
    pairs = json.loads((tmp_path / "live" / "plots" / "sklearn" / "confusion_matrix.json").read_text())
    assert len(pairs) == 10
    assert {"actual": "digit 1", "predicted": "digit 7"} in pairs and {"actual": "digit 3", "predicted": "digit 3"} in pairs
    counts = np.zeros((10, 10), dtype=int)
    for pair in pairs:
        counts[names.index(pair["actual"]), names.index(pair["predicted"])] += 1
    assert counts.tolist() == evaluation.confusion.tolist()
    assert (tmp_path / "live" / "plots" / "images" / "examples.png").stat().st_size > 1000


# ---------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------
HEADLINE_KEYS = {"colored_mnist": {"test_accuracy"},
                 "clever_hans": {"test_accuracy", "clean_accuracy", "shortcut_reliance", "shortcut_base_rate",
                                 "shortcut_occlusion_rate"}}


def write_prepared(dataset: str) -> None:
    """Prepared splits of the color task under the cwd, as ``prepare`` leaves them."""
    n_classes = 4 if dataset == "colored_mnist" else 10
    meta = {"n_classes": n_classes, "class_names": [str(c) for c in range(n_classes)]}
    for split, n, seed in (("train", 96, 0), ("test", 32, 1)):
        images, labels = color_task(n, seed, n_classes)
        arrays = {"images": images.numpy(), "labels": labels.numpy()}
        if dataset == "clever_hans":
            arrays.update(clean_images=images.numpy())
            square = Shortcut(label=7, kind="square", position=[1, 1], side=4, color=[1.0, 0.0, 0.0])
            meta["known_answer"] = PlantedShortcuts((square,), (28, 28)).to_meta()
        else:
            meta["known_answer"] = ColorRule(tuple(f"c{c}" for c in range(n_classes))).to_meta()
        save_arrays(paths.prepared_dir(dataset) / f"{split}.npz", **arrays)
    write_json(paths.prepared_dir(dataset) / "meta.json", meta)


def declared_outputs(stage_name: str, dataset: str) -> list[str]:
    return list(stage_outputs(stage_name, dataset))


@pytest.mark.parametrize("dataset", ["colored_mnist", "clever_hans"])
def test_stage_writes_the_headline_metrics_details_and_every_declared_output(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_prepared(dataset)
    settings = {"epochs": 2, "batch_size": 32, "width": 4, "eval_batch_size": 64, "n_example_images": 4,
                "mixed_precision": False}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params({"device": "cpu", "classifier": settings})))
    main([dataset])

    metrics = json.loads(paths.metrics_path(dataset, "classifier").read_text())
    assert set(metrics) == HEADLINE_KEYS[dataset]
    assert all(isinstance(value, float) for value in metrics.values())
    details = json.loads((paths.plots_dir(dataset, "train_classifier") / "details.json").read_text())
    assert len(details["per_class_accuracy"]) == (4 if dataset == "colored_mnist" else 10)
    if dataset == "clever_hans":
        assert [(row["class"], row["kind"]) for row in details["shortcuts"]] == [("7", "square")]
    live = paths.plots_dir(dataset, "train_classifier") / "live"
    logged = read_tsv(live / "plots" / "metrics" / "test_accuracy.tsv")
    assert len(logged) == 2 and float(logged[-1]["test_accuracy"]) == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    missing = [o for o in declared_outputs("train_classifier", dataset) if not (tmp_path / o).exists()]
    assert not missing, f"declared in dvc.yaml but not written: {missing}"
    assert tuple(load_checkpoint(paths.classifier_path(dataset))["config"]["input_shape"]) == (3, 28, 28)


def test_the_stage_builds_the_classifier_for_the_shape_of_the_prepared_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 64), ("test", 16)):
        labels = torch.arange(n) % 2
        images = (torch.rand(n, 1, 32, 32, generator=gen) * 100 + labels.view(-1, 1, 1, 1) * 150).to(torch.uint8)
        save_arrays(paths.prepared_dir("colored_mnist") / f"{split}.npz", images=images.numpy(), labels=labels.numpy())
    write_json(paths.prepared_dir("colored_mnist") / "meta.json", {"n_classes": 2, "class_names": ["dark", "light"],
                                                                       "known_answer": Unknown().to_meta()})
    settings = {"epochs": 1, "batch_size": 32, "width": 2, "eval_batch_size": 64, "n_example_images": 4,
                "mixed_precision": False}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params({"device": "cpu", "classifier": settings})))
    main(["colored_mnist"])
    assert tuple(load_checkpoint(paths.classifier_path("colored_mnist"))["config"]["input_shape"]) == (1, 32, 32)
    assert input_shape(load_classifier(paths.classifier_path("colored_mnist"))) == (1, 32, 32)
