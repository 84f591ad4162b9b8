"""The real `dvc repro` on a tiny configuration, in a temporary copy of the repository."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.collect_run import matrix_items
from benchmarks.reproducibility import flatten, merged  # every leaf as a.b.c, as `dvc metrics show` lists them
from examples.own_images import MEAN, STD, train_resnet18
from tests.conftest import REPO
from tests.synthetic_images import write_image_folder

COPIED = ["pipeline", "dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config", ".gitignore"]
DATASETS = ("colored_mnist", "clever_hans")   # the MNIST datasets, whose known answers the checks below read
IMAGE_FOLDER = "shapes"                        # a Clever Hans dataset over a generated folder of 64x64 RGB images
OWN = "own"                                    # the same folder as it is, with a torchvision ResNet-18 trained elsewhere
ALL_DATASETS = DATASETS + (IMAGE_FOLDER, OWN)
OWN_TRANSFORM = {"mean": MEAN, "std": STD}
RESNET_LAYERS = {"gradcam_layer": "layer4", "features_layer": "avgpool"}


def run(args: list[str], cwd: Path, stdout_only: bool = False) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com", PYTHONUNBUFFERED="1")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
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
    params = merged(params, tiny)
    params["data"]["root"] = str(mnist_root)
    images = write_image_folder(tmp_path_factory.mktemp("images"), n_train=200, n_test=100, size=64)  # >= tiny sizes
    square = dict(params["datasets"]["clever_hans"]["shortcuts"][0], label=2, position=[0, 0], side=20)
    params["datasets"][IMAGE_FOLDER] = {"kind": "clever_hans", "source": "image_folder", "root": str(images),
                                        "image_size": 64, "shortcuts": [square],   # the stamp test, of your architecture:
                                        "classifier": {"torchvision": "resnet18", **OWN_TRANSFORM, **RESNET_LAYERS}}
    weights = tmp_path_factory.mktemp("own") / "resnet18.pt"
    torch.save(train_resnet18(images).state_dict(), weights)   # a user's classifier, trained by code of its own
    params["datasets"][OWN] = {"kind": "image_folder", "root": str(images), "image_size": 64,
                               "classifier": {"torchvision": "resnet18", "weights": str(weights), **OWN_TRANSFORM,
                                              **RESNET_LAYERS}}
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
    stages = yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]
    expected = {f"{name}@{d}" if "matrix" in stage else name for name, stage in stages.items() for d in ALL_DATASETS}
    assert expected <= ran, sorted(expected - ran)
    status = dvc("status", cwd=workspace)
    assert "up to date" in status


def read(workspace: Path, *parts: str) -> dict:
    return json.loads(workspace.joinpath(*parts).read_text())


MAX_METRIC_KEYS = 55  # per dataset, over all its metrics files: about 3 headline figures per stage (14 stages)


def declared_metrics(workspace: Path, dataset: str) -> list[Path]:
    """The metrics files that dvc.yaml declares for ``dataset`` (what `dvc metrics show` lists)."""
    stages = yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]
    files = []
    for stage in stages.values():
        for entry in stage.get("metrics", []):
            name = next(iter(entry)) if isinstance(entry, dict) else entry
            if "${item.dataset}" in name and dataset in matrix_items(workspace, stage):
                files.append(workspace / name.replace("${item.dataset}", dataset))
    return files


def test_metrics_hold_only_headline_numbers_at_most_55_keys_per_dataset(workspace, first_repro):
    for dataset in DATASETS:
        files = declared_metrics(workspace, dataset)
        assert len(files) >= 12, files
        keys = {}
        for path in files:
            for key, value in flatten(json.loads(path.read_text())).items():
                assert value is None or isinstance(value, (bool, int, float)), (path.name, key, value)
                assert "second" not in key and "time" not in key, (path.name, key)   # wall clock lives in timing files
                keys[f"{path.stem}.{key}"] = value
        assert len(keys) <= MAX_METRIC_KEYS, (dataset, len(keys), sorted(keys))
        shown = dvc("metrics", "show", "--json", cwd=workspace)
        assert f"metrics/{dataset}/classifier.json" in shown and "live/metrics.json" not in shown


def test_classifier_metrics_and_details(workspace, first_repro):
    for dataset, n_classes in (("colored_mnist", 4), ("clever_hans", 10)):
        metrics = read(workspace, "metrics", dataset, "classifier.json")
        assert 1.0 / n_classes < metrics["test_accuracy"] <= 1.0, (dataset, metrics)
        details = read(workspace, "plots", dataset, "train_classifier", "details.json")
        assert set(details["per_class_accuracy"]) == {str(c) for c in range(n_classes)}
    hans = read(workspace, "metrics", "clever_hans", "classifier.json")
    assert set(hans) == {"test_accuracy", "clean_accuracy", "shortcut_reliance", "shortcut_base_rate", "shortcut_occlusion_rate"}
    assert 0.0 <= hans["shortcut_occlusion_rate"] <= 1.0
    hans_details = read(workspace, "plots", "clever_hans", "train_classifier", "details.json")
    assert hans_details["shortcut_reliance_per_class"]["7_square"] == pytest.approx(hans["shortcut_reliance"])
    live = workspace / "plots" / "clever_hans" / "train_classifier" / "live"
    assert (live / "plots" / "sklearn" / "confusion_matrix.json").exists()
    for dataset in DATASETS:
        for picture in ("prepare/pictures/examples.png", "train_classifier/pictures/confusion.png",
                        "train_classifier/live/plots/images/examples.png"):
            assert (workspace / "plots" / dataset / picture).stat().st_size > 1000


def test_changing_classifier_params_reruns_only_downstream_stages(workspace, first_repro):
    output = dvc("exp", "run", "-S", "classifier.epochs=2", cwd=workspace)
    ran = stages_run(output)
    assert {f"train_classifier@{d}" for d in DATASETS} <= ran
    assert not any(name.startswith(("prepare@", "train_gan@")) for name in ran), ran
    shown = dvc("exp", "show", "--no-pager", "--csv", cwd=workspace)
    assert "classifier.epochs" in shown
    changed = run([sys.executable, "-m", "dvc", "exp", "show", "--no-pager", "--only-changed", "--csv"], workspace, stdout_only=True)
    rows = list(csv.reader(io.StringIO(changed)))
    header = rows[0]
    assert "classifier.epochs" in header
    assert not any(name.endswith(("seconds", "images_per_second")) for name in header), header   # no wall clock
    # The changed stage's columns (its param and the MNIST datasets' classifier.json keys: one for colored MNIST,
    # five for Clever Hans) fit in 200 columns.
    stage_keys = {"classifier.epochs"} | {key for d in DATASETS for key in read(workspace, "metrics", d, "classifier.json")}
    columns = [i for i, name in enumerate(header) if name == "Experiment" or name == "classifier.epochs"
               or (name.rsplit(":", 1)[-1] in stage_keys and f"{IMAGE_FOLDER}/classifier.json" not in name)]
    width = sum(max(len(header[i].rsplit(":", 1)[-1]), *(len(row[i]) for row in rows[1:] if i < len(row))) + 3 for i in columns)
    assert len(columns) <= 9 and width <= 200, (len(columns), width)


def test_cosmetic_gan_param_reruns_only_train_gan(workspace, first_repro):
    output = dvc("exp", "run", "-S", "gan.n_grid_images=3", cwd=workspace)
    ran = stages_run(output)
    assert ran - {"report"} == {f"train_gan@{d}" for d in ALL_DATASETS}, ran   # gan.pt unchanged: nothing downstream re-runs
    for dataset in ALL_DATASETS:   # it resumed the finished checkpoint: no iteration was trained again
        assert read(workspace, "metrics", dataset, "timing", "train_gan.json")["iterations_run"] == 0


def test_attribution_metrics_and_plots(workspace, first_repro):
    methods = ("ig_zero", "ig_noise", "ig_blur", "saliency", "inputxgrad", "deeplift", "guided_backprop",
               "occlusion", "smoothgrad", "gradcam", "guided_gradcam")
    for dataset in DATASETS:
        assert f"attribute@{dataset}" in stages_run(first_repro)
        metrics = read(workspace, "metrics", dataset, "attribution.json")
        details = read(workspace, "plots", dataset, "attribute", "details.json")
        assert set(details["methods"]) == set(methods)
        auc = [scores["deletion_auc"] for scores in details["methods"].values() if scores["deletion_auc"] is not None]
        assert metrics["best_deletion_auc"] == pytest.approx(min(auc))
        assert metrics["random_order_deletion_auc"] == pytest.approx(details["random_order_deletion_auc"])
        for name, scores in details["methods"].items():
            for key in ("deletion_auc", "infidelity", "sensitivity_max", "randomization_spearman"):
                assert key in scores, (dataset, name, key)
        attributions = dict(__import__("numpy").load(workspace / "data" / "attributions" / dataset / "attributions.npz"))
        assert attributions["sample_ig_zero"].shape == (len(attributions["sample_index"]), 3, 28, 28)
        for picture in ("methods_heatmap", "methods_color", "ig_baselines", "gradcam_segmentation",
                        "gradcam_counterfactual", "contrastive", "deletion", "localization"):
            assert (workspace / "plots" / dataset / "attribute" / "pictures" / f"{picture}.png").stat().st_size > 1000, picture
        assert (workspace / "plots" / dataset / "attribute" / "deletion" / "random_order.csv").exists()
    hans = read(workspace, "metrics", "clever_hans", "attribution.json")
    assert "best_shortcut_relevance_mass_flipped" in hans
    assert read(workspace, "metrics", "clever_hans", "timing", "attribute.json")["images"] > 0


def test_report_collects_every_stage(workspace, first_repro):
    assert "report" in stages_run(first_repro)
    page = (workspace / "report" / "index.html").read_text()
    assert "Verdict" in page and "What this run found" in page and page.count("data:image/png;base64,") >= 6
    timing = read(workspace, "metrics", "timing.json")
    stages = yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]
    expected = {f"{name}@{d}" for name, stage in stages.items() if "matrix" in stage for d in ALL_DATASETS}
    assert expected <= set(timing["stages"]), expected - set(timing["stages"])
    assert timing["total_seconds"] > 0 and timing["device"] == "cpu"


def test_gan_and_counterfactual_outputs(workspace, first_repro):
    import numpy as np
    import torch

    ran = stages_run(first_repro)
    for dataset, n_classes in (("colored_mnist", 4), ("clever_hans", 10)):
        assert f"train_gan@{dataset}" in ran and f"counterfactuals@{dataset}" in ran
        gan = read(workspace, "metrics", dataset, "train_gan.json")
        assert set(gan) == {"iterations", "smoothed_discriminator_loss", "smoothed_generator_loss"} and gan["iterations"] == 4
        timing = read(workspace, "metrics", dataset, "timing", "train_gan.json")
        assert timing["iterations_run"] in (0, 4)   # 0 once a cosmetic change resumed the finished run
        checkpoint = torch.load(workspace / "data" / "models" / dataset / "gan_checkpoints" / "last.pt", weights_only=True)
        assert checkpoint["iteration"] == 4
        metrics = read(workspace, "metrics", dataset, "counterfactuals.json")
        exact = {"exact_counterfactual_error"} if dataset == "colored_mnist" else set()
        assert set(metrics) == {"conversion_rate", "conversion_rate_latent", "mean_l1", "changed_pixel_fraction",
                                "feature_distance", "feature_distance_real_floor"} | exact
        details = read(workspace, "plots", dataset, "counterfactuals", "details.json")
        per_pair = details["modes"]["reference"]["conversion_per_pair"]
        assert set(per_pair) <= {f"{s}->{t}" for s in range(n_classes) for t in range(n_classes) if s != t}
        with np.load(workspace / "data" / "counterfactuals" / dataset / "counterfactuals.npz") as npz:
            assert npz["counterfactual"].dtype == np.uint8 and npz["counterfactual"].shape == (20 * (n_classes - 1), 3, 28, 28)
            assert (npz["source"] != npz["target"]).all()
            assert metrics["conversion_rate"] == pytest.approx(float((npz["predicted"] == npz["target"]).mean()), abs=1e-6)
        for picture in ("train_gan/pictures/translations.png", "counterfactuals/pictures/gallery.png",
                        "counterfactuals/pictures/interpolation.png", "counterfactuals/pictures/style_space.png",
                        "counterfactuals/pictures/confusion.png"):
            assert (workspace / "plots" / dataset / picture).stat().st_size > 1000


def test_explain_and_discover_outputs(workspace, first_repro):
    ran = stages_run(first_repro)
    methods = ["d_ig", "d_deeplift", "d_inputxgrad", "ig", "deeplift", "residual", "random"]
    for dataset in DATASETS:
        assert f"explain@{dataset}" in ran and f"discover@{dataset}" in ran
        metrics = read(workspace, "metrics", dataset, "explain.json")
        details = read(workspace, "plots", dataset, "explain", "details.json")
        assert 0 <= metrics["n_pairs_kept"] <= details["n_pairs_reaching_target"] <= details["n_pairs"]
        assert list(details["methods"]) == methods
        for method in ("d_ig", "d_deeplift", "ig", "deeplift", "residual", "random"):
            assert metrics[f"median_score_{method}"] == details["methods"][method]["median_score"]
        assert ("shortcut_iou" in metrics) == (dataset == "clever_hans")
        for picture in ("curves.png", "scores.png", "known_answer.png"):
            assert (workspace / "plots" / dataset / "explain" / "pictures" / picture).stat().st_size > 1000
        discovered = read(workspace, "metrics", dataset, "discover.json")
        found = read(workspace, "plots", dataset, "discover", "details.json")
        assert discovered["n_flagged_classes"] == len(found["flagged_classes"])
        assert ("shortcut_region_iou" in discovered) == (dataset == "clever_hans")
        assert (workspace / "plots" / dataset / "discover" / "pictures" / "regions.png").stat().st_size > 1000


def test_probe_stages_write_their_metrics(workspace, first_repro):
    ran = stages_run(first_repro)
    for dataset in DATASETS:
        for name in ("feature_viz", "optimize_counterfactuals", "spectra"):
            assert f"{name}@{dataset}" in ran
            assert read(workspace, "metrics", dataset, "timing", f"{name}.json")["seconds"] > 0
        viz = read(workspace, "metrics", dataset, "feature_viz.json")
        assert set(viz) == {"mean_class_probability", "mean_class_probability_display"}
        assert (workspace / "plots" / dataset / "feature_viz" / "pictures" / "grids" / "class.png").stat().st_size > 1000
        optimised = read(workspace, "metrics", dataset, "optimize_counterfactuals.json")
        assert set(optimised) == {"success_rate", "mean_l1", "frechet_distance", "gan_success_rate"}
        detail = read(workspace, "plots", dataset, "optimize_counterfactuals", "details.json")
        assert detail["gan"]["n"] == detail["matched"]["n"] > 0     # the same (image, target) pairs
        assert optimised["gan_success_rate"] == pytest.approx(detail["gan"]["success_rate"])
        spectra = read(workspace, "metrics", dataset, "spectra.json")
        assert {"spectral_detector_accuracy", "control_accuracy", "frequency_artifacts_detected"} <= set(spectra)
        for picture in ("optimize_counterfactuals/pictures/examples.png", "optimize_counterfactuals/pictures/comparison.png",
                        "spectra/pictures/spectra.png", "spectra/pictures/detector_weights.png"):
            assert (workspace / "plots" / dataset / picture).stat().st_size > 1000


def test_dissect_scores_every_convolution_unit(workspace, first_repro):
    import pandas as pd

    ran = stages_run(first_repro)
    for dataset, answer in (("colored_mnist", "color"), ("clever_hans", "shortcut")):
        assert f"dissect@{dataset}" in ran
        metrics = read(workspace, "metrics", dataset, "dissect.json")
        assert set(metrics) == {f"{answer}_units", f"best_{answer}_unit_iou", "best_digit_unit_iou"}
        details = read(workspace, "plots", dataset, "dissect", "details.json")
        units = pd.read_csv(workspace / "plots" / dataset / "dissect" / "units.csv")
        assert len(units) == details["n_units"] == sum(layer["n_units"] for layer in details["layers"].values())
        assert details["n_images"] == 64 and units["best_iou"].between(0, 1).all()
        assert metrics["best_digit_unit_iou"] == pytest.approx(units["iou_digit"].max(), abs=1e-5)
        assert metrics[f"best_{answer}_unit_iou"] == pytest.approx(units[f"iou_{answer}"].max(), abs=1e-5)
        # iou_color: a unit's best IoU over the colormaps, so that a unit counts once
        assert metrics[f"{answer}_units"] == int((units[f"iou_{answer}"] >= details["iou_threshold"]).sum())
        assert (workspace / "plots" / dataset / "dissect" / "pictures" / "units.png").stat().st_size > 1000
    assert read(workspace, "plots", "clever_hans", "dissect", "details.json")["n_stamped"] == 32


def test_influence_traces_decisions_through_every_epoch_checkpoint(workspace, first_repro):
    import pandas as pd

    ran = stages_run(first_repro)
    epochs = yaml.safe_load((workspace / "params.yaml").read_text())["classifier"]["epochs"]
    for dataset, keys in (("colored_mnist", {"proponent_position_gap", "class_position_gap"}),
                          ("clever_hans", {"proponent_precision_at_10", "proponent_base_rate"})):
        assert f"influence@{dataset}" in ran
        checkpoints = sorted(p.name for p in (workspace / "data" / "models" / dataset / "classifier_checkpoints").iterdir())
        assert checkpoints == [f"epoch_{k}.pt" for k in range(1, epochs + 1)]
        metrics = read(workspace, "metrics", dataset, "influence.json")
        details = read(workspace, "plots", dataset, "influence", "details.json")
        assert set(metrics) == keys and details["n_checkpoints"] == epochs
        assert all(0 <= value <= 1 for value in metrics.values()), metrics
        table = pd.read_csv(workspace / "plots" / dataset / "influence" / "proponents.csv")
        assert len(table) == details["n_queries"] * 10 and table["query"].nunique() == details["n_queries"] > 0
        assert (table.groupby("query")["score"].diff().dropna() <= 1e-6).all()   # strongest first
        assert (workspace / "plots" / dataset / "influence" / "pictures" / "proponents.png").stat().st_size > 1000
    hans = read(workspace, "plots", "clever_hans", "influence", "details.json")
    assert hans["proponent_precision_at_10"] == pytest.approx(hans["precision_at_k"]["10"])


def test_every_declared_plot_renders(workspace, first_repro):
    shown = json.loads(run([sys.executable, "-m", "dvc", "plots", "show", "--json"], workspace, stdout_only=True))
    assert not shown.get("errors"), shown.get("errors")
    rendered = set(shown["data"])
    for dataset in ALL_DATASETS:   # declared per stage, so every dataset of params.yaml gets its plots
        assert any(name.startswith(f"plots/{dataset}/train_classifier/") for name in rendered)
        assert any(name.startswith(f"plots/{dataset}/explain/") for name in rendered)
        assert f"plots/{dataset}/explain/scores.csv" in rendered and f"plots/{dataset}/prepare/pictures/examples.png" in rendered


def test_architectures_are_trained_alike_and_compared_on_the_same_images(workspace, first_repro):
    ran = stages_run(first_repro)
    names = ("dense", "cnn", "resnet")
    for dataset in DATASETS:
        assert f"architectures@{dataset}" in ran
        metrics = read(workspace, "metrics", dataset, "architectures.json")
        details = read(workspace, "plots", dataset, "architectures", "details.json")
        known = ["shortcut_reliance", "relevance_mass"] if dataset == "clever_hans" else ["colormap_alignment"]
        assert set(metrics) == {f"{key}_{a}" for key in ["test_accuracy", *known] for a in names}
        for a in names:
            assert metrics[f"test_accuracy_{a}"] == pytest.approx(details["architectures"][a]["test_accuracy"])
            assert (workspace / "data" / "models" / dataset / "architectures" / f"{a}.pt").stat().st_size > 1000
        assert list(details["skipped"]) == ["dense"] and "gradcam" in details["skipped"]["dense"]
        assert details["headline_methods"] == ["ig_zero", "saliency"]   # gradcam: not for dense, and no colour channels
        rows = list(csv.DictReader(io.StringIO((workspace / "plots" / dataset / "architectures" / "correlation.csv").read_text())))
        sets = 2 if dataset == "clever_hans" else 1
        assert len(rows) == sets * (3 * 2 + 1)   # three pairs for ig_zero and saliency, cnn vs resnet for gradcam
        for picture in ("maps.png", "correlation.png"):
            assert (workspace / "plots" / dataset / "architectures" / "pictures" / picture).stat().st_size > 1000
    hans = read(workspace, "plots", "clever_hans", "architectures", "details.json")
    assert hans["architectures"]["cnn"]["shortcut_reliance"] == pytest.approx(
        read(workspace, "metrics", "clever_hans", "architectures.json")["shortcut_reliance_cnn"])


def test_a_clever_hans_image_folder_runs_the_whole_chain(workspace, first_repro):
    """Your own images (a generated folder of 64x64 RGB shapes in 3 classes) with a planted square: every stage
    and the report run, at the images' own size, and the known-answer figures are there."""
    import numpy as np

    meta = read(workspace, "data", "prepared", IMAGE_FOLDER, "meta.json")
    assert meta["class_names"] == ["disk", "plus", "ring"] and meta["n_classes"] == 3 and meta["source"] == "image_folder"
    test = np.load(workspace / "data" / "prepared" / IMAGE_FOLDER / "test.npz")
    assert test["images"].shape[1:] == (3, 64, 64) and test["shortcut_alpha"].shape == (1, 64, 64)
    classifier = read(workspace, "metrics", IMAGE_FOLDER, "classifier.json")
    assert 0 <= classifier["shortcut_reliance"] <= 1 and 0 <= classifier["clean_accuracy"] <= 1
    explain = read(workspace, "metrics", IMAGE_FOLDER, "explain.json")
    assert "stamped_control_shortcut_iou" in explain
    for name in ("attribution", "counterfactuals", "discover", "influence", "dissect", "spectra"):
        assert (workspace / "metrics" / IMAGE_FOLDER / f"{name}.json").exists(), name
    page = (workspace / "report" / "index.html").read_text()
    assert "Clever Hans images (a planted shortcut): shapes" in page


def test_your_own_classifier_on_your_own_images_runs_the_whole_chain(workspace, first_repro):
    """A folder of 64x64 RGB images in 3 classes with no known answer, and a torchvision ResNet-18 trained elsewhere
    (a state dict): it is evaluated, not trained; every stage runs with it; what needs an answer or per-epoch weights
    says why it was skipped; the report leads with what was found."""
    import numpy as np
    from torchvision.models import resnet18

    from pipeline.models.classifiers import load_classifier

    ran = stages_run(first_repro)
    stages = yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]
    assert {f"{name}@{OWN}" for name, stage in stages.items() if "matrix" in stage} <= ran
    meta = read(workspace, "data", "prepared", OWN, "meta.json")
    assert meta["kind"] == "image_folder" and meta["class_names"] == ["disk", "plus", "ring"]
    test = np.load(workspace / "data" / "prepared" / OWN / "test.npz")
    assert set(test.files) == {"images", "labels"} and test["images"].shape[1:] == (3, 64, 64)

    # The pipeline's classifier computes what the user's network computes on the same images: not retrained.
    params = yaml.safe_load((workspace / "params.yaml").read_text())["datasets"][OWN]["classifier"]
    network = resnet18(num_classes=3).eval()
    network.load_state_dict(torch.load(params["weights"], weights_only=True))
    x = torch.from_numpy(test["images"][:8]).float() / 255
    mean, std = (torch.tensor(OWN_TRANSFORM[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        torch.testing.assert_close(load_classifier(workspace / "data" / "models" / OWN / "classifier.pt")(x),
                                   network((x - mean) / std), rtol=1e-4, atol=1e-4)
    classifier = read(workspace, "metrics", OWN, "classifier.json")
    assert set(classifier) == {"test_accuracy"} and 0 <= classifier["test_accuracy"] <= 1
    assert not list((workspace / "data" / "models" / OWN / "classifier_checkpoints").iterdir())

    attribution = read(workspace, "plots", OWN, "attribute", "details.json")
    assert attribution["skipped"] == {} and {"deeplift", "guided_backprop", "gradcam"} <= set(attribution["methods"])
    explain = read(workspace, "plots", OWN, "explain", "details.json")
    assert explain["skipped_methods"] == {} and "stamped_control" not in explain
    assert "shortcut_iou" not in read(workspace, "metrics", OWN, "explain.json")
    assert "false_alarms" not in read(workspace, "metrics", OWN, "discover.json")
    assert "trained elsewhere" in read(workspace, "plots", OWN, "influence", "details.json")["reason"]
    assert "no known answer" in read(workspace, "plots", OWN, "dissect", "details.json")["skipped"]
    assert read(workspace, "metrics", OWN, "dissect.json") == {} and read(workspace, "metrics", OWN, "influence.json") == {}
    prototypes = read(workspace, "plots", OWN, "prototypes", "details.json")
    assert "skipped" not in prototypes   # the penultimate features come from the named layer
    page = (workspace / "report" / "index.html").read_text()
    assert "Your images (no known answer): own" in page and "Not run:" in page


def test_the_stamp_test_trains_your_architecture(workspace, first_repro):
    """The Clever Hans folder names a torchvision architecture without weights: the pipeline trains it, keeps its
    per-epoch weights (for TracIn) and finds its final layer and named layers."""
    from pipeline.models.classifiers import load_classifier, missing_parts

    epochs = yaml.safe_load((workspace / "params.yaml").read_text())["classifier"]["epochs"]
    checkpoints = workspace / "data" / "models" / IMAGE_FOLDER / "classifier_checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [f"epoch_{k}.pt" for k in range(1, epochs + 1)]
    last = load_classifier(checkpoints / f"epoch_{epochs}.pt")
    assert type(last.network).__name__ == "ResNet" and missing_parts(last) == {}
    details = read(workspace, "plots", IMAGE_FOLDER, "influence", "details.json")
    assert details.get("n_checkpoints", epochs) == epochs and "trained elsewhere" not in details.get("reason", "")
    assert read(workspace, "plots", IMAGE_FOLDER, "attribute", "details.json")["skipped"] == {}
    assert "skipped" not in read(workspace, "plots", IMAGE_FOLDER, "prototypes", "details.json")
