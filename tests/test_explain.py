"""The explain stage end to end on small constructed inputs in the counterfactuals contract format,
with a classifier whose answer is known: it reads only the redness of one 4 x 4 square."""
import json

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline import paths
from pipeline.attribution.discriminative import DISCRIMINATIVE, METHODS, MaskSettings, size_grid
from pipeline.evaluation.explanations import ExplainOptions, Pairs, carries_shortcut, stamped_control
from pipeline.models.classifiers import DenseClassifier, save_model
from pipeline.stages.explain import main
from pipeline.storage import save_arrays, write_json
from tests.conftest import REPO

SQUARE = (slice(1, 5), slice(1, 5))
PIXELS = 28 * 28
SHORTCUT_CLASS = {"colored_mnist": 3, "clever_hans": 7}
N_CLASSES = {"colored_mnist": 4, "clever_hans": 10}
COLORMAPS = ["spring", "summer", "autumn", "winter"]


def square_detector(n_classes: int, shortcut_class: int) -> DenseClassifier:
    """A dense classifier that reads only the redness r (mean red - green) of the 4 x 4 square at
    (1, 1): the shortcut class's logit is 20 r - 5, every other logit -10 r (for r >= -0.1)."""
    model = DenseClassifier(n_classes, width=4)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        first = model.embedding[1].weight.view(-1, 3, 28, 28)
        first[0, 0][SQUARE], first[0, 1][SQUARE] = 1 / 16, -1 / 16
        model.embedding[1].bias[0] = 0.1          # active at r = 0, so gradients at the real image flow
        model.embedding[3].weight[0, 0] = 1.0
        model.head.weight[:, 0], model.head.bias[:] = -10.0, 1.0
        model.head.weight[shortcut_class, 0], model.head.bias[shortcut_class] = 20.0, -7.0
    return model


def probability_gain(n_classes: int) -> float:
    """p(shortcut class) with the square red (r = 1) minus with it black (r = 0)."""
    logits = torch.tensor([[15.0] + [-10.0] * (n_classes - 1), [-5.0] + [0.0] * (n_classes - 1)])
    p = logits.softmax(dim=1)[:, 0]
    return (p[0] - p[1]).item()


def build_inputs(dataset: str, n_images: int = 12) -> dict:
    """Gray test digits with the square black, the square detector, and counterfactuals of every
    image of another class into the shortcut class: the square painted red, and a change the
    classifier ignores (more green in rows 15..19). Under the cwd."""
    n_classes, shortcut = N_CLASSES[dataset], SHORTCUT_CLASS[dataset]
    rng = np.random.default_rng(0)
    images = np.repeat((rng.random((n_images, 1, 28, 28)) < 0.2).astype(np.uint8) * 200, 3, axis=1)
    images[:, :, SQUARE[0], SQUARE[1]] = 0
    labels = np.arange(n_images) % n_classes
    stamped = images.copy()
    stamped[:, 0, SQUARE[0], SQUARE[1]] = 255
    test = {"images": images, "labels": labels.astype(np.int64)}
    if dataset == "colored_mnist":
        names = COLORMAPS
        positions = (0.05 + 0.1 * (np.arange(n_images) // n_classes)).astype(np.float32)  # 4 images per position bin
        colors = np.stack([matplotlib.colormaps[names[c]](p)[:3] for c, p in zip(labels, positions)]).astype(np.float32)
        test.update(positions=positions, colors=colors)
    else:
        names = [str(c) for c in range(n_classes)]
        alpha = np.zeros((1, 28, 28), dtype=np.float32)
        alpha[0][SQUARE] = 1.0
        test.update(shortcut_alpha=alpha, shortcut_labels=np.array([shortcut]), clean_images=images, shortcut_images=stamped[None])
    save_arrays(paths.prepared_dir(dataset) / "test.npz", **test)
    write_json(paths.prepared_dir(dataset) / "meta.json", {"class_names": names, "n_classes": n_classes})
    save_model(paths.classifier_path(dataset), square_detector(n_classes, shortcut),
               {"architecture": "dense", "n_classes": n_classes, "width": 4})

    index = np.flatnonzero(labels != shortcut)
    counterfactual = stamped[index].copy()
    counterfactual[:, 1, 15:20, 10:15] = np.maximum(counterfactual[:, 1, 15:20, 10:15], 102)
    target = np.full(len(index), shortcut, dtype=np.int64)
    save_arrays(paths.counterfactuals_path(dataset), real=images[index], counterfactual=counterfactual,
                counterfactual_latent=counterfactual, image_index=index, source=labels[index], target=target,
                predicted=target, target_probability=np.full(len(index), 0.99, dtype=np.float32),
                predicted_latent=labels[index], target_probability_latent=np.zeros(len(index), dtype=np.float32))
    return {"n_pairs": len(index)}


def write_params(path, **explain):
    # one spatial mask per pair (channels summed): the expected scores count the changed pixels in every channel
    settings = {"n_thresholds": 12, "ig_steps": 4, "batch_size": 100, "attribution_batch_size": 8, "gallery_top_k": 1,
                "closing_size": 1, "blur_sigma": 0.0, "mask_channels": "sum", "attributed": "real"}
    settings.update(explain)
    path.write_text(yaml.safe_dump({"device": "cpu", "explain": settings}))


def declared_plots(dataset: str) -> dict[str, dict]:
    """dvc.yaml's top-level plot definitions of this dataset's explain CSVs: path -> definition."""
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    entries = [entry for entry in plots if isinstance(entry, dict)]
    return {path: spec for entry in entries for path, spec in entry.items()
            if path.startswith(f"plots/{dataset}/explain/") and path.endswith(".csv")}


@pytest.mark.parametrize("dataset", ["colored_mnist", "clever_hans"])
def test_the_stage_finds_the_square_the_classifier_reads(dataset, tmp_path, monkeypatch):
    """Every discriminative map and the residual select exactly the square: optimal mask = the square,
    score = gain * (1 - 8/784) (the curve rises over the square's 16 pixels, then stays flat). IG and
    DeepLift from a black baseline see nothing (the real square is black): score 0."""
    monkeypatch.chdir(tmp_path)
    made = build_inputs(dataset)
    write_params(tmp_path / "params.yaml")
    main([dataset])
    metrics = json.loads(paths.metrics_path(dataset, "explain").read_text())
    out = paths.plots_dir(dataset, "explain")
    details = json.loads((out / "details.json").read_text())

    expected = probability_gain(N_CLASSES[dataset]) * (1 - 8 / PIXELS)
    headline = ["n_pairs_kept"] + [f"median_score_{m}" for m in ("d_ig", "d_deeplift", "ig", "deeplift", "residual", "random")]
    headline += ["shortcut_iou", "stamped_control_shortcut_iou", "gan_shortcut_fraction"] if dataset == "clever_hans" else []
    assert list(metrics) == headline and len(metrics) <= 10
    assert metrics["n_pairs_kept"] == made["n_pairs"] == details["n_pairs"] == details["n_pairs_reaching_target"]
    for method in ("d_ig", "d_deeplift", "residual"):
        assert metrics[f"median_score_{method}"] == pytest.approx(expected, abs=1e-3), method
    assert details["methods"]["d_inputxgrad"]["median_score"] == pytest.approx(expected, abs=1e-3)
    assert metrics["median_score_ig"] == metrics["median_score_deeplift"] == 0.0
    assert metrics["median_score_random"] < expected - 0.05
    for method in DISCRIMINATIVE + ("residual",):
        entry = details["methods"][method]
        assert entry["mean_optimal_mask_size"] == pytest.approx(16 / PIXELS, abs=1e-6) and entry["reached_target_fraction"] == 1.0
    assert details["best_discriminative_method"] in DISCRIMINATIVE
    assert sum(entry["n_pairs"] for entry in details["per_class_pair"].values()) == made["n_pairs"]

    if dataset == "clever_hans":
        assert metrics["shortcut_iou"] == metrics["stamped_control_shortcut_iou"] == 1.0
        assert metrics["gan_shortcut_fraction"] == 1.0 and details["n_pairs_carrying_shortcut"] == made["n_pairs"]
        assert details["methods"]["d_ig"]["shortcut_iou_carried"] == 1.0
        assert details["methods"]["ig"]["shortcut_iou"] == 0.0 and details["methods"]["random"]["shortcut_iou"] < 0.5
        assert details["stamped_control"]["n_pairs"] == 11  # every test image but the one 7
        bars = pd.read_csv(out / "known_answer" / "shortcut_iou.csv")
        assert list(bars.columns) == ["pairs", "shortcut_iou"] and len(bars) == 2 * len(METHODS)
        assert bars.set_index("pairs").loc["d_ig: stamped control", "shortcut_iou"] == 1.0
    else:
        assert details["methods"]["d_ig"]["digit_mass_fraction"] == 0.0  # the square lies on the background
        # the detector calls every test image class 0 (ties), and every color lies on its own colormap
        assert details["color_rule"]["test_accuracy"] == details["color_rule"]["nearest_colormap_agreement"] == 0.25
        rule = pd.read_csv(out / "known_answer" / "color_rule.csv")
        assert list(rule.columns) == ["position", "accuracy", "nearest_colormap_agreement"]
        assert rule["accuracy"].tolist()[:3] == [0.25] * 3 and rule["accuracy"][3:].isna().all()

    curves = pd.read_csv(out / "curves.csv")
    assert list(curves.columns) == ["mask_size", *METHODS]
    assert curves["d_ig"].iloc[0] == 0.0 and curves["d_ig"].iloc[-1] == pytest.approx(expected / (1 - 8 / PIXELS), abs=1e-4)
    declared = declared_plots(dataset)
    assert set(declared) == {f"plots/{dataset}/explain/{name}" for name in
                             ("curves.csv", "scores.csv", "known_answer/" + ("color_rule.csv" if dataset == "colored_mnist"
                                                                             else "shortcut_iou.csv"))}
    for path, spec in declared.items():
        columns = set(pd.read_csv(tmp_path / path).columns)
        fields = [spec["x"], *(spec["y"] if isinstance(spec["y"], list) else [spec["y"]])]
        assert set(fields) <= columns and "template" in spec, path
    for name in ("scores.csv", "curves.png", "scores.png", "known_answer.png"):
        assert (out / name).stat().st_size > 100, name
    assert list((out / "gallery").glob("*.png"))
    arrays = np.load(tmp_path / "data" / "explanations" / dataset / "explanations.npz")
    assert arrays["d_ig_curve"].shape == (made["n_pairs"], 101)
    timing = json.loads(paths.timing_path(dataset, "explain").read_text())
    assert timing["images"] == made["n_pairs"] * 7 * 13


def test_the_quac_convention_credits_a_blank_map_with_half_the_full_change(tmp_path, monkeypatch):
    """IG from a black baseline gives a blank map here. Ours: no mask, score 0. QuAC's: its negative
    thresholds copy the whole counterfactual, so the curve runs from (0, 0) to (1, gain): gain / 2."""
    monkeypatch.chdir(tmp_path)
    build_inputs("clever_hans")
    write_params(tmp_path / "params.yaml", methods=["ig", "d_ig"], control_pairs=0, score_convention="quac")
    main(["clever_hans"])
    metrics = json.loads(paths.metrics_path("clever_hans", "explain").read_text())
    details = json.loads((paths.plots_dir("clever_hans", "explain") / "details.json").read_text())
    assert details["score_convention"] == "quac"
    assert metrics["median_score_ig"] == pytest.approx(probability_gain(10) / 2, abs=1e-3)
    assert metrics["median_score_d_ig"] == pytest.approx(probability_gain(10) * (1 - 8 / PIXELS), abs=1e-3)
    assert metrics["median_score_residual"] is None and metrics["stamped_control_shortcut_iou"] is None  # not run


def test_stage_survives_when_no_counterfactual_reaches_its_target(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_inputs("clever_hans", n_images=2)
    write_params(tmp_path / "params.yaml", counterfactual="latent", methods=["d_ig", "random"])
    main(["clever_hans"])
    metrics = json.loads(paths.metrics_path("clever_hans", "explain").read_text())
    details = json.loads((paths.plots_dir("clever_hans", "explain") / "details.json").read_text())
    assert metrics["n_pairs_kept"] == 0 and metrics["median_score_d_ig"] is None and metrics["shortcut_iou"] is None
    assert details["methods"]["d_ig"]["median_score"] is None


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
    options = ExplainOptions(methods=("d_ig", "d_deeplift", "residual", "random"), ig_steps=8, control_pairs=50)
    control = stamped_control(SquareDetector(), test, options, MaskSettings(20, 1, 0.0), size_grid(101),
                              torch.Generator().manual_seed(0), np.random.default_rng(0))
    assert control["n_pairs"] == control["n_moved_by_stamp"] == 11  # every image but the one 7
    for method in ("d_ig", "d_deeplift", "residual"):
        assert control["methods"][method]["shortcut_iou"] == pytest.approx(1.0), method
        assert control["methods"][method]["median_score"] > 0.9, method
    assert control["methods"]["random"]["shortcut_iou"] < 0.5


def test_stamped_control_keeps_at_most_control_pairs_seeded():
    test = control_test_split()
    options = ExplainOptions(methods=("residual",), control_pairs=4)
    run = lambda seed: stamped_control(SquareDetector(), test, options, MaskSettings(8, 1, 0.0), size_grid(11),  # noqa: E731
                                       torch.Generator().manual_seed(0), np.random.default_rng(seed))
    assert run(0) == run(0) and run(0)["n_pairs"] == 4 and run(0)["n_moved_by_stamp"] == 11


def test_a_blur_wider_than_the_image_is_rejected_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", blur_sigma=10.0)
    with pytest.raises(SystemExit):
        main(["clever_hans"])
    assert "explain.blur_sigma" in capsys.readouterr().err


def test_per_channel_masks_of_the_counterfactual_class_copy_only_the_changed_channel(tmp_path, monkeypatch):
    """The counterfactual paints only the red channel of the square. Explaining the counterfactual's
    class with one mask per channel, the optimal mask is that red channel alone: a third of the
    spatial mask, on the square (IoU 1), with the same probability gain."""
    monkeypatch.chdir(tmp_path)
    build_inputs("clever_hans")
    write_params(tmp_path / "params.yaml", methods=["d_ig", "d_deeplift"], control_pairs=0,
                 mask_channels="per_channel", attributed="counterfactual")
    main(["clever_hans"])
    metrics = json.loads(paths.metrics_path("clever_hans", "explain").read_text())
    details = json.loads((paths.plots_dir("clever_hans", "explain") / "details.json").read_text())
    for method in ("d_ig", "d_deeplift"):
        entry = details["methods"][method]
        assert entry["mean_optimal_mask_size"] == pytest.approx(16 / PIXELS / 3, abs=1e-6), method
        assert entry["reached_target_fraction"] == 1.0 and entry["shortcut_iou"] == 1.0
    assert metrics["shortcut_iou"] == 1.0
    assert metrics["median_score_d_ig"] > probability_gain(10) * (1 - 8 / PIXELS)   # smaller masks score higher
    masks = np.load(tmp_path / "data" / "explanations" / "clever_hans" / "explanations.npz")["d_ig_optimal_mask"]
    assert masks[:, 0].any() and not masks[:, 1:].any()   # red only


def test_a_counterfactual_carries_the_shortcut_when_it_is_closer_to_the_stamped_image_than_to_the_clean_one():
    """Into the shortcut class: the stamped image itself, a faint copy of the stamp (closer to stamped), the digit
    redrawn without the stamp (the clean image changed elsewhere) and a square of the wrong color; into another class
    the stamped image, which does not count (no shortcut is planted there)."""
    clean = torch.zeros(5, 3, 28, 28, dtype=torch.uint8)
    clean[:, :, 10:20, 10:20] = 200
    stamped = clean.clone()
    stamped[:, 0, SQUARE[0], SQUARE[1]] = 255
    alpha = torch.zeros(1, 28, 28)
    alpha[0][SQUARE] = 1.0
    test = {"clean_images": clean, "shortcut_images": stamped[None], "shortcut_alpha": alpha, "shortcut_labels": torch.tensor([7])}
    counterfactual = stamped.float() / 255
    counterfactual[1, 0][SQUARE] = 0.6                                   # a faint red square
    counterfactual[2] = clean[2].float() / 255
    counterfactual[2, :, 20:25, 5:10] = 1.0                              # redrawn elsewhere, no square
    counterfactual[3, 0][SQUARE], counterfactual[3, 1][SQUARE] = 0.0, 1.0  # green, not red
    target = torch.tensor([7, 7, 7, 7, 3])
    pairs = Pairs(clean.float() / 255, counterfactual, torch.arange(5), torch.zeros(5, dtype=torch.long), target, 5, 5)
    assert carries_shortcut(test, pairs).tolist() == [True, True, False, False, False]
