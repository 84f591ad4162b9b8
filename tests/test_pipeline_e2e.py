"""The real `dvc repro` on a tiny configuration, in a temporary copy of the repository: the end-to-end tier.

What only a real run can show, on two datasets: the Clever Hans MNIST dataset of params.yaml (its known answer
through every stage) and your own image folder with a torchvision ResNet-18 trained elsewhere (no known answer,
no per-epoch weights). Every stage runs for both; DVC re-runs what a change concerns and nothing else; every
declared plot renders; the report names both. Each stage's figures are tested on constructed cases in its own
module; colored MNIST, the negative control and a Clever Hans image folder are stage tests' cases there, since a
dataset here costs a whole tiny pipeline.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.collect_run import declared_metrics as all_declared_metrics
from benchmarks.reproducibility import flatten, merged  # every leaf as a.b.c, as `dvc metrics show` lists them
from examples.own_images import MEAN, STD, train_resnet18
from tests.conftest import REPO
from tests.synthetic_images import write_image_folder
from tests.workspaces import dvc, read, repository_copy, run, stages_run

pytestmark = pytest.mark.e2e   # the end-to-end tier: `pytest -m "not e2e"` leaves it out

DATASET = "clever_hans"        # params.yaml's Clever Hans MNIST: its known answer through every stage
OWN = "own"                    # a generated folder of 32x32 RGB shapes, with a torchvision ResNet-18 trained elsewhere
ALL_DATASETS = (DATASET, OWN)
OWN_SIZE = 32
OWN_TRANSFORM = {"mean": MEAN, "std": STD}
RESNET_LAYERS = {"gradcam_layer": "layer4", "features_layer": "avgpool"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, request):
    mnist_root = request.getfixturevalue("mnist_root")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    tiny = yaml.safe_load((REPO / "tests" / "tiny_params.yaml").read_text())
    params = merged(params, tiny)
    params["data"]["root"] = str(mnist_root)
    images = write_image_folder(tmp_path_factory.mktemp("images"), n_train=200, n_test=100, size=OWN_SIZE)
    weights = tmp_path_factory.mktemp("own") / "resnet18.pt"
    torch.save(train_resnet18(images, size=OWN_SIZE).state_dict(), weights)   # a user's classifier, trained by code of its own
    params["datasets"] = {DATASET: params["datasets"][DATASET],
                          OWN: {"kind": "image_folder", "root": str(images), "image_size": OWN_SIZE,
                                "classifier": {"torchvision": "resnet18", "weights": str(weights), **OWN_TRANSFORM,
                                               **RESNET_LAYERS}}}
    return repository_copy(tmp_path_factory.mktemp("pipeline") / "repo", params, "tiny pipeline")


@pytest.fixture(scope="module")
def first_repro(workspace):
    return dvc("repro", cwd=workspace)


def test_repro_runs_every_stage_for_every_dataset_and_leaves_nothing_stale(workspace, first_repro):
    ran = stages_run(first_repro)
    stages = yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]
    expected = {f"{name}@{d}" if "matrix" in stage else name for name, stage in stages.items() for d in ALL_DATASETS}
    assert expected <= ran, sorted(expected - ran)
    assert "up to date" in dvc("status", cwd=workspace)


MAX_HEADLINE_FIGURES = 45  # per dataset, over all its metrics files: about 3 per stage (14 stages), where a lift
                           # with its interval (`<figure>_lift`, `_lift_low`, `_lift_high`) is one figure


def declared_metrics(workspace: Path, dataset: str) -> list[Path]:
    """The metrics files that dvc.yaml declares for ``dataset`` (what `dvc metrics show` lists)."""
    return [workspace / path for path in all_declared_metrics(workspace) if path.startswith(f"metrics/{dataset}/")]


def test_metrics_are_headline_numbers_and_every_lift_comes_with_its_interval(workspace, first_repro):
    """At most 45 flat headline figures per dataset, no wall clock; each known-answer figure is written as
    `<figure>_lift` with `_lift_low` <= it <= `_lift_high` (all null when nothing was judged)."""
    for dataset in ALL_DATASETS:
        files = declared_metrics(workspace, dataset)
        assert len(files) >= 12, files
        keys = {}
        for path in files:
            for key, value in flatten(json.loads(path.read_text())).items():
                assert value is None or isinstance(value, (bool, int, float)), (path.name, key, value)
                assert "second" not in key and "time" not in key, (path.name, key)   # wall clock lives in timing files
                keys[f"{path.stem}.{key}"] = value
        lifts = [key[: -len("_lift")] for key in keys if key.endswith("_lift")]
        figures = len(keys) - 2 * len(lifts)
        assert figures <= MAX_HEADLINE_FIGURES, (dataset, figures, sorted(keys))
        assert lifts, dataset   # your own images too: explain's maps beside a random map and the residual
        assert (dataset == DATASET) == any("shortcut" in key for key in keys), dataset   # no answer, no shortcut figure
        for figure in lifts:
            low, lift, high = (keys[f"{figure}_lift{end}"] for end in ("_low", "", "_high"))
            assert (low is None) == (lift is None) == (high is None), figure
            assert lift is None or low - 1e-6 <= lift <= high + 1e-6, (figure, low, lift, high)
    shown = dvc("metrics", "show", "--json", cwd=workspace)
    assert f"metrics/{DATASET}/classifier.json" in shown and "live/metrics.json" not in shown


def test_every_known_answer_figure_in_details_names_its_chance_level_and_verdict(workspace, first_repro):
    verdicts = {"above chance", "no better than chance", "below chance", "not judged"}
    stages = ("attribute", "explain", "discover", "dissect", "influence", "prototypes", "architectures")
    for stage in stages:
        chance = read(workspace, "plots", DATASET, stage, "details.json").get("chance")
        assert chance, stage
        records = [r for r in flatten_records(chance)]
        assert records, stage
        for record in records:
            assert record["verdict"] in verdicts and "chance_level" in record, (stage, record)
            assert record["verdict"] == "not judged" or record["score"] is not None, (stage, record)


def flatten_records(tree) -> list[dict]:
    """Every Lift record (a mapping with a verdict) in a nested details.json entry."""
    if isinstance(tree, dict):
        if "verdict" in tree:
            return [tree]
        return [r for value in tree.values() for r in flatten_records(value)]
    if isinstance(tree, list):
        return [r for value in tree for r in flatten_records(value)]
    return []


def test_classifier_metrics_and_details(workspace, first_repro):
    metrics = read(workspace, "metrics", DATASET, "classifier.json")
    assert set(metrics) == {"test_accuracy", "clean_accuracy", "shortcut_reliance", "shortcut_base_rate",
                            "shortcut_occlusion_rate"}
    assert 0.1 < metrics["test_accuracy"] <= 1.0, metrics
    # The known answer holds even at these sizes: the stamp alone moves other digits into 7 far more often than the
    # same images without it (0.62 against 0.14 when this was written); a stamp not planted or not learned fails here.
    assert metrics["shortcut_reliance"] - metrics["shortcut_base_rate"] >= 0.2, metrics
    details = read(workspace, "plots", DATASET, "train_classifier", "details.json")
    assert set(details["per_class_accuracy"]) == {str(c) for c in range(10)}
    (shortcut,) = details["shortcuts"]
    assert shortcut["class"] == "7" and shortcut["reliance"] == pytest.approx(metrics["shortcut_reliance"])
    assert shortcut["base_rate"] == pytest.approx(metrics["shortcut_base_rate"])
    live = workspace / "plots" / DATASET / "train_classifier" / "live"
    assert (live / "plots" / "sklearn" / "confusion_matrix.json").exists()
    for picture in ("prepare/pictures/examples.png", "train_classifier/pictures/confusion.png",
                    "train_classifier/live/plots/images/examples.png"):
        assert (workspace / "plots" / DATASET / picture).stat().st_size > 1000


def test_cosmetic_gan_param_reruns_only_train_gan(workspace, first_repro):
    output = dvc("exp", "run", "-S", "gan.n_grid_images=3", cwd=workspace)
    ran = stages_run(output)
    assert ran - {"report"} == {f"train_gan@{d}" for d in ALL_DATASETS}, ran   # gan.pt unchanged: nothing downstream re-runs
    for dataset in ALL_DATASETS:   # it resumed the finished checkpoint: no iteration was trained again
        assert read(workspace, "metrics", dataset, "timing", "train_gan.json")["iterations_run"] == 0


def test_attribution_metrics_and_plots(workspace, first_repro):
    metrics = read(workspace, "metrics", DATASET, "attribution.json")
    details = read(workspace, "plots", DATASET, "attribute", "details.json")
    methods = yaml.safe_load((workspace / "params.yaml").read_text())["attribution"]["methods"]
    assert set(details["methods"]) == set(methods)
    auc = [scores["deletion_auc"] for scores in details["methods"].values() if scores["deletion_auc"] is not None]
    assert metrics["best_deletion_auc"] == pytest.approx(min(auc))
    assert metrics["random_order_deletion_auc"] == pytest.approx(details["random_order_deletion_auc"])
    assert "shortcut_relevance_mass_flipped_lift" in metrics
    with __import__("numpy").load(workspace / "data" / "attributions" / DATASET / "attributions.npz") as attributions:
        assert attributions["sample_ig_zero"].shape == (len(attributions["sample_index"]), 3, 28, 28)
    for picture in ("methods_heatmap", "methods_color", "ig_baselines", "gradcam_segmentation",
                    "gradcam_counterfactual", "contrastive", "deletion", "localization"):
        assert (workspace / "plots" / DATASET / "attribute" / "pictures" / f"{picture}.png").stat().st_size > 1000, picture
    assert read(workspace, "metrics", DATASET, "timing", "attribute.json")["images"] > 0


def test_report_collects_every_stage_of_every_dataset(workspace, first_repro):
    assert "report" in stages_run(first_repro)
    page = (workspace / "report" / "index.html").read_text()
    assert "Verdict" in page and page.count("data:image/png;base64,") >= 6
    assert f"{DATASET}: Clever Hans" in page and f"{OWN}: Your images (no known answer)" in page
    timing = read(workspace, "metrics", "timing.json")
    stages = yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]
    expected = {f"{name}@{d}" for name, stage in stages.items() if "matrix" in stage for d in ALL_DATASETS}
    assert expected <= set(timing["stages"]), expected - set(timing["stages"])
    assert timing["total_seconds"] > 0 and timing["device"] == "cpu"


def test_gan_and_counterfactual_outputs(workspace, first_repro):
    import numpy as np

    gan = read(workspace, "metrics", DATASET, "train_gan.json")
    iterations = yaml.safe_load((workspace / "params.yaml").read_text())["gan"]["iterations"]
    assert set(gan) == {"iterations", "smoothed_discriminator_loss", "smoothed_generator_loss"}
    assert gan["iterations"] == iterations
    checkpoint = torch.load(workspace / "data" / "models" / DATASET / "gan_checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["iteration"] == iterations
    metrics = read(workspace, "metrics", DATASET, "counterfactuals.json")
    assert set(metrics) == {"conversion_rate", "conversion_rate_latent", "mean_l1", "changed_pixel_fraction",
                            "feature_distance", "feature_distance_real_floor"}
    details = read(workspace, "plots", DATASET, "counterfactuals", "details.json")
    per_pair = details["modes"]["reference"]["conversion_per_pair"]
    assert set(per_pair) <= {f"{s}->{t}" for s in range(10) for t in range(10) if s != t}
    n_images = yaml.safe_load((workspace / "params.yaml").read_text())["counterfactuals"]["n_images"]
    with np.load(workspace / "data" / "counterfactuals" / DATASET / "counterfactuals.npz") as npz:
        assert npz["counterfactual"].dtype == np.uint8 and npz["counterfactual"].shape == (n_images * 9, 3, 28, 28)
        assert (npz["source"] != npz["target"]).all()
        assert metrics["conversion_rate"] == pytest.approx(float((npz["predicted"] == npz["target"]).mean()), abs=1e-6)
    for picture in ("train_gan/pictures/translations.png", "counterfactuals/pictures/gallery.png",
                    "counterfactuals/pictures/interpolation.png", "counterfactuals/pictures/style_space.png",
                    "counterfactuals/pictures/confusion.png"):
        assert (workspace / "plots" / DATASET / picture).stat().st_size > 1000


def test_explain_and_discover_outputs(workspace, first_repro):
    metrics = read(workspace, "metrics", DATASET, "explain.json")
    details = read(workspace, "plots", DATASET, "explain", "details.json")
    assert 0 <= metrics["n_pairs_kept"] <= details["n_pairs_reaching_target"] <= details["n_pairs"]
    assert list(details["methods"]) == ["d_ig", "d_deeplift", "d_inputxgrad", "ig", "deeplift", "residual", "random"]
    assert {"shortcut_iou_lift", "control_shortcut_iou_lift", "gan_shortcut_fraction"} <= set(metrics)
    assert details["distractor_control"] and details["negative_control"] is False
    for picture in ("curves.png", "scores.png", "known_answer.png"):
        assert (workspace / "plots" / DATASET / "explain" / "pictures" / picture).stat().st_size > 1000
    discovered = read(workspace, "metrics", DATASET, "discover.json")
    found = read(workspace, "plots", DATASET, "discover", "details.json")
    flagged = found["flagged_classes"]   # null when no class had enough pairs in both halves to be judged
    assert discovered["n_flagged_classes"] == (None if flagged is None else len(flagged))
    assert (flagged is None) == (not found["judged_classes"]) and (flagged is None) == bool(found["not_judged"])
    assert "shortcut_region_iou_lift" in discovered
    assert (workspace / "plots" / DATASET / "discover" / "pictures" / "regions.png").stat().st_size > 1000


def test_probe_stages_write_their_metrics(workspace, first_repro):
    for name in ("feature_viz", "optimize_counterfactuals", "spectra"):
        assert read(workspace, "metrics", DATASET, "timing", f"{name}.json")["seconds"] > 0
    viz = read(workspace, "metrics", DATASET, "feature_viz.json")
    assert set(viz) == {"mean_class_probability", "mean_class_probability_display"}
    assert (workspace / "plots" / DATASET / "feature_viz" / "pictures" / "grids" / "class.png").stat().st_size > 1000
    optimised = read(workspace, "metrics", DATASET, "optimize_counterfactuals.json")
    assert set(optimised) == {"success_rate", "mean_l1", "frechet_distance", "gan_success_rate"}
    detail = read(workspace, "plots", DATASET, "optimize_counterfactuals", "details.json")
    assert detail["gan"]["n"] == detail["matched"]["n"] > 0     # the same (image, target) pairs
    assert optimised["gan_success_rate"] == pytest.approx(detail["gan"]["success_rate"])
    spectra = read(workspace, "metrics", DATASET, "spectra.json")
    assert {"spectral_detector_accuracy", "control_accuracy", "frequency_artifacts_detected"} <= set(spectra)
    for picture in ("optimize_counterfactuals/pictures/examples.png", "optimize_counterfactuals/pictures/comparison.png",
                    "spectra/pictures/spectra.png", "spectra/pictures/detector_weights.png"):
        assert (workspace / "plots" / DATASET / picture).stat().st_size > 1000


def test_dissect_scores_every_convolution_unit_and_a_held_out_unit(workspace, first_repro):
    import pandas as pd

    metrics = read(workspace, "metrics", DATASET, "dissect.json")
    assert set(metrics) == {"shortcut_unit_iou_lift", "shortcut_unit_iou_lift_low", "shortcut_unit_iou_lift_high"}
    details = read(workspace, "plots", DATASET, "dissect", "details.json")
    units = pd.read_csv(workspace / "plots" / DATASET / "dissect" / "units.csv")
    assert len(units) == details["n_units"] == sum(layer["n_units"] for layer in details["layers"].values())
    assert details["n_images"] == 64 and details["n_stamped"] == 32 and units["best_iou"].between(0, 1).all()
    for concept in ("digit", "shortcut"):
        assert details["concepts"][concept]["best_iou"] == pytest.approx(units[f"iou_{concept}"].max(), abs=1e-5)
        assert details["concepts"][concept]["units"] == int((units[f"iou_{concept}"] >= details["iou_threshold"]).sum())
    held_out = details["held_out"]   # the unit is chosen on one half and scored on the other
    assert held_out["n_selection"] + held_out["n_scored"] == details["n_images"]
    assert held_out["units"]["shortcut"] in set(units["unit"])
    assert (workspace / "plots" / DATASET / "dissect" / "pictures" / "units.png").stat().st_size > 1000


def test_influence_traces_decisions_through_every_epoch_checkpoint(workspace, first_repro):
    import pandas as pd

    epochs = yaml.safe_load((workspace / "params.yaml").read_text())["classifier"]["epochs"]
    checkpoints = sorted(p.name for p in (workspace / "data" / "models" / DATASET / "classifier_checkpoints").iterdir())
    assert checkpoints == [f"epoch_{k}.pt" for k in range(1, epochs + 1)]
    details = read(workspace, "plots", DATASET, "influence", "details.json")
    assert details["n_checkpoints"] == epochs
    table = pd.read_csv(workspace / "plots" / DATASET / "influence" / "proponents.csv")
    assert table["query"].nunique() > 0 and (table.groupby("query").size() == 10).all()
    assert (table.groupby("query")["score"].diff().dropna() <= 1e-6).all()   # strongest first
    assert (workspace / "plots" / DATASET / "influence" / "pictures" / "proponents.png").stat().st_size > 1000


def test_every_declared_plot_renders(workspace, first_repro):
    shown = json.loads(run([sys.executable, "-m", "dvc", "plots", "show", "--json"], workspace, stdout_only=True))
    assert not shown.get("errors"), shown.get("errors")
    rendered = set(shown["data"])
    for dataset in ALL_DATASETS:   # declared per stage, so every dataset of params.yaml gets its plots
        assert any(name.startswith(f"plots/{dataset}/train_classifier/") for name in rendered)
        assert f"plots/{dataset}/explain/scores.csv" in rendered and f"plots/{dataset}/prepare/pictures/examples.png" in rendered


def test_architectures_are_trained_alike_and_compared_on_the_same_images(workspace, first_repro):
    names = yaml.safe_load((workspace / "params.yaml").read_text())["architectures"]["names"]
    assert len(names) >= 2, names
    metrics = read(workspace, "metrics", DATASET, "architectures.json")
    details = read(workspace, "plots", DATASET, "architectures", "details.json")
    for a in names:
        assert metrics[f"shortcut_reliance_{a}"] == pytest.approx(details["architectures"][a]["shortcut_reliance"])
        assert f"relevance_mass_{a}_lift" in metrics
        assert (workspace / "data" / "models" / DATASET / "architectures" / f"{a}.pt").stat().st_size > 1000
    assert list(details["skipped"]) == ["dense"] and "gradcam" in details["skipped"]["dense"]
    for picture in ("maps.png", "correlation.png"):
        assert (workspace / "plots" / DATASET / "architectures" / "pictures" / picture).stat().st_size > 1000


def test_your_own_classifier_on_your_own_images_runs_the_whole_chain(workspace, first_repro):
    """A folder of 32x32 RGB images in 3 classes with no known answer, and a torchvision ResNet-18 trained elsewhere
    (a state dict): it is evaluated, not trained; every stage runs with it; what needs an answer or per-epoch weights
    says why it was skipped; the report leads with what was found."""
    import numpy as np
    from torchvision.models import resnet18

    from pipeline.models.classifiers import load_classifier

    meta = read(workspace, "data", "prepared", OWN, "meta.json")
    assert meta["kind"] == "image_folder" and meta["class_names"] == ["disk", "plus", "ring"]
    with np.load(workspace / "data" / "prepared" / OWN / "test.npz") as test:
        assert set(test.files) == {"images", "labels"} and test["images"].shape[1:] == (3, OWN_SIZE, OWN_SIZE)
        x = torch.from_numpy(test["images"][:8]).float() / 255

    # The pipeline's classifier computes what the user's network computes on the same images: not retrained.
    params = yaml.safe_load((workspace / "params.yaml").read_text())["datasets"][OWN]["classifier"]
    network = resnet18(num_classes=3).eval()
    network.load_state_dict(torch.load(params["weights"], weights_only=True))
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
    assert explain["skipped_methods"] == {} and "distractor_control" not in explain
    assert not any(key.startswith("shortcut") for key in read(workspace, "metrics", OWN, "explain.json"))
    assert "false_alarms" not in read(workspace, "metrics", OWN, "discover.json")
    assert "trained elsewhere" in read(workspace, "plots", OWN, "influence", "details.json")["reason"]
    assert "no known answer" in read(workspace, "plots", OWN, "dissect", "details.json")["skipped"]
    assert read(workspace, "metrics", OWN, "dissect.json") == {} and read(workspace, "metrics", OWN, "influence.json") == {}
    assert "skipped" not in read(workspace, "plots", OWN, "prototypes", "details.json")   # features from the named layer


def changed_stages(workspace: Path) -> set[str]:
    return set(json.loads(run([sys.executable, "-m", "dvc", "status", "--json"], workspace, stdout_only=True)))


def test_changing_classifier_params_makes_the_classifier_and_what_reads_it_stale_not_what_comes_before(workspace, first_repro):
    """Last in this module: it leaves the workspace at the changed params, its readers stale."""
    original = (workspace / "params.yaml").read_text()
    changed = yaml.safe_load(original)
    changed["classifier"]["epochs"] = 2
    (workspace / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    # the stages that read the classifier section: each dataset's classifier, and the architectures trained alike
    assert changed_stages(workspace) == {f"{stage}@{d}" for stage in ("train_classifier", "architectures")
                                         for d in ALL_DATASETS}
    (workspace / "params.yaml").write_text(original)

    # As an experiment of one classifier (to keep this tier short): its new weights make every stage that reads them
    # stale and nothing upstream; `dvc exp show` compares it, without wall clock, in few columns.
    output = dvc("exp", "run", "-S", "classifier.epochs=2", f"train_classifier@{DATASET}", cwd=workspace)
    assert stages_run(output) == {f"train_classifier@{DATASET}"}, stages_run(output)
    readers = {"attribute", "counterfactuals", "explain", "discover", "dissect", "influence", "feature_viz",
               "optimize_counterfactuals", "prototypes", "architectures"}
    stale = changed_stages(workspace)
    assert {f"{stage}@{DATASET}" for stage in readers} <= stale, stale
    assert f"train_classifier@{DATASET}" not in stale and not any(name.startswith(("prepare@", "train_gan@"))
                                                                    for name in stale), stale
    changed = run([sys.executable, "-m", "dvc", "exp", "show", "--no-pager", "--only-changed", "--csv"], workspace, stdout_only=True)
    rows = list(csv.reader(io.StringIO(changed)))
    header = rows[0]
    assert "classifier.epochs" in header
    assert not any(name.endswith(("seconds", "images_per_second")) for name in header), header   # no wall clock
    stage_keys = {"classifier.epochs"} | set(read(workspace, "metrics", DATASET, "classifier.json"))
    columns = [i for i, name in enumerate(header) if name == "Experiment" or name == "classifier.epochs"
               or name.rsplit(":", 1)[-1] in stage_keys]
    width = sum(max(len(header[i].rsplit(":", 1)[-1]), *(len(row[i]) for row in rows[1:] if i < len(row))) + 3 for i in columns)
    assert len(columns) <= 9 and width <= 200, (len(columns), width)
