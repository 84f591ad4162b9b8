"""The explain stage and its scores on constructed inputs whose answer and chance level are known by hand: a
classifier that reads only the redness of one 4 x 4 square, masks equal to the truth, the whole image, as large
elsewhere or empty, and a distractor control whose extra change does (or does not) move the decision."""
import json
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline import paths
from pipeline.attribution.discriminative import DISCRIMINATIVE, METHODS, MaskSettings, size_grid
from pipeline.data.known_answer import ColorRule, PlantedShortcuts
from pipeline.data.shortcuts import Shortcut
from pipeline.evaluation.explanations import (ExplainOptions, MaskJudge, distractor_control,
                                              distractor_control_pairs, headline_lifts, headline_metrics,
                                              not_judged_reasons, random_maps, score_lifts)
from pipeline.models.classifiers import DenseClassifier, save_model
from pipeline.scoring.chance import MIN_ITEMS
from pipeline.scoring.masks import OWN_MASKS, RANDOM_MASKS, WHOLE_IMAGE
from pipeline.stages.explain import main
from pipeline.storage import save_arrays, write_json
from tests.conftest import repo_params
from tests.dvc_stages import stage_outputs

SQUARE = (slice(1, 5), slice(1, 5))
PIXELS = 28 * 28
SHORTCUT_CLASS = {"colored_mnist": 3, "clever_hans": 7, "negative_control": 7}
N_CLASSES = {"colored_mnist": 4, "clever_hans": 10, "negative_control": 10}
COLORMAPS = ["spring", "summer", "autumn", "winter"]
LIFT_KEYS = lambda figure: [f"{figure}_lift", f"{figure}_lift_low", f"{figure}_lift_high"]  # noqa: E731


def streams(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(sum(map(ord, name)))


def corner_square(label: int = 7, fraction: float = 0.95, size: int = 4) -> PlantedShortcuts:
    """A red ``size`` x ``size`` square at (1, 1) on class ``label``: the stamp the test classifiers read."""
    return PlantedShortcuts((Shortcut(label=label, kind="square", fraction=fraction, position=[1, 1], side=size,
                                      color=[1.0, 0.0, 0.0]),), (28, 28))


def square_detector(n_classes: int, shortcut_class: int, square=SQUARE) -> DenseClassifier:
    """A dense classifier that reads only the redness r (mean red - green) of a 4 x 4 ``square``: the shortcut
    class's logit is 20 r - 5, every other logit -10 r (for r >= -0.1)."""
    model = DenseClassifier(n_classes, width=4)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        first = model.embedding[1].weight.view(-1, 3, 28, 28)
        first[0, 0][square], first[0, 1][square] = 1 / 16, -1 / 16
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


def build_inputs(dataset: str, n_images: int = 12, read=SQUARE) -> dict:
    """White test digits (random pixels) with the square ``read`` black, a classifier that reads only that square,
    and counterfactuals of every image of another class into the shortcut class: the square painted red, and a
    change the classifier ignores (more green in rows 15..19). The known answer: a red square at (1, 1) on the
    shortcut class (planted on no image for the negative control). Under the cwd."""
    n_classes, shortcut = N_CLASSES[dataset], SHORTCUT_CLASS[dataset]
    rng = np.random.default_rng(0)
    images = np.repeat((rng.random((n_images, 1, 28, 28)) < 0.2).astype(np.uint8) * 255, 3, axis=1)
    images[:, :, SQUARE[0], SQUARE[1]] = 0
    images[:, :, read[0], read[1]] = 0
    labels = np.arange(n_images) % n_classes
    painted = images.copy()
    painted[:, 0, read[0], read[1]] = 255
    test = {"images": images, "labels": labels.astype(np.int64)}
    if dataset == "colored_mnist":
        names = COLORMAPS
        positions = (0.05 + 0.1 * (np.arange(n_images) // n_classes)).astype(np.float32)  # 4 images per position bin
        colors = np.stack([matplotlib.colormaps[names[c]](p)[:3] for c, p in zip(labels, positions)]).astype(np.float32)
        test.update(positions=positions, colors=colors)
        answer = ColorRule(tuple(COLORMAPS))
    else:
        names = [str(c) for c in range(n_classes)]
        test.update(clean_images=images, stamped=np.zeros((n_images, 1), dtype=bool))
        answer = corner_square(shortcut, fraction=0.0 if dataset == "negative_control" else 0.95)
    save_arrays(paths.prepared_dir(dataset) / "test.npz", **test)
    write_json(paths.prepared_dir(dataset) / "meta.json",
               {"class_names": names, "n_classes": n_classes, "known_answer": answer.to_meta()})
    save_model(paths.classifier_path(dataset), square_detector(n_classes, shortcut, read),
               {"architecture": "dense", "n_classes": n_classes, "width": 4})

    index = np.flatnonzero(labels != shortcut)
    counterfactual = painted[index].copy()
    counterfactual[:, 1, 15:20, 10:15] = np.maximum(counterfactual[:, 1, 15:20, 10:15], 102)
    target = np.full(len(index), shortcut, dtype=np.int64)
    save_arrays(paths.counterfactuals_path(dataset), real=images[index], counterfactual=counterfactual,
                counterfactual_latent=counterfactual, image_index=index, source=labels[index], target=target,
                predicted=target, target_probability=np.full(len(index), 0.99, dtype=np.float32),
                predicted_latent=labels[index], target_probability_latent=np.zeros(len(index), dtype=np.float32))
    return {"n_pairs": len(index)}


def write_params(path, dataset: str = "clever_hans", **explain):
    # one spatial mask per pair (channels summed): the expected scores count the changed pixels in every channel
    settings = {"n_thresholds": 12, "ig_steps": 4, "batch_size": 100, "attribution_batch_size": 8, "gallery_top_k": 1,
                "closing_size": 1, "blur_sigma": 0.0, "mask_channels": "sum", "attributed": "real"}
    settings.update(explain)
    params = {"device": "cpu", "explain": settings}
    if dataset == "negative_control":
        params["datasets"] = {"negative_control": {"kind": "clever_hans", "shortcuts": [
            {"label": 7, "kind": "square", "fraction": 0.0, "position": [1, 1], "side": 4, "strength": 1.0,
             "color": [1.0, 0.0, 0.0], "text": "09:41"}]}}
    path.write_text(yaml.safe_dump(repo_params(params)))


def run_stage(tmp_path, dataset: str) -> tuple[dict, dict]:
    main([dataset])
    metrics = json.loads(paths.metrics_path(dataset, "explain").read_text())
    details = json.loads((paths.plots_dir(dataset, "explain") / "details.json").read_text())
    return metrics, details


def declared_plots(dataset: str) -> dict[str, dict]:
    """dvc.yaml's plot definitions of this dataset's explain CSVs: path -> definition."""
    return {path: spec for path, spec in stage_outputs("explain", dataset, ("plots",)).items() if path.endswith(".csv")}


@pytest.mark.parametrize("dataset", ["colored_mnist", "clever_hans"])
def test_the_stage_finds_the_square_the_classifier_reads(dataset, tmp_path, monkeypatch):
    """Every discriminative map and the residual select exactly the square on GAN pairs: optimal mask = the square,
    score = gain * (1 - 8/784); so the best method's score is no better than the residual's (lift 0). IG and DeepLift
    from a black baseline see nothing (the real square is black): score 0, empty masks, whose mass is not judged."""
    monkeypatch.chdir(tmp_path)
    made = build_inputs(dataset)
    write_params(tmp_path / "params.yaml")
    metrics, details = run_stage(tmp_path, dataset)
    out = paths.plots_dir(dataset, "explain")
    chance, best = details["chance"], details["best_discriminative_method"]

    expected = probability_gain(N_CLASSES[dataset]) * (1 - 8 / PIXELS)
    headline = ["n_pairs_kept", *LIFT_KEYS("score_vs_random"), *LIFT_KEYS("score_vs_residual")]
    headline += ([*LIFT_KEYS("shortcut_iou"), *LIFT_KEYS("control_shortcut_iou"), "gan_shortcut_fraction"]
                 if dataset == "clever_hans" else LIFT_KEYS("digit_mass_fraction"))
    assert list(metrics) == headline
    assert metrics["n_pairs_kept"] == made["n_pairs"] == details["n_pairs"] == details["n_pairs_reaching_target"]
    for method in DISCRIMINATIVE + ("residual",):
        entry = details["methods"][method]
        assert entry["median_score"] == pytest.approx(expected, abs=1e-3), method
        assert entry["mean_optimal_mask_size"] == pytest.approx(16 / PIXELS, abs=1e-6) and entry["reached_target_fraction"] == 1.0
    assert details["methods"]["ig"]["median_score"] == details["methods"]["deeplift"]["median_score"] == 0.0
    # two distractor control pairs (below): fewer than MIN_ITEMS, so only the control is not judged
    not_judged = {"control_shortcut_iou_lift"} if dataset == "clever_hans" else set()
    assert best in DISCRIMINATIVE and set(details["not_judged"]) == not_judged
    assert metrics["score_vs_residual_lift"] == pytest.approx(0.0, abs=1e-6)
    assert chance["score_vs_residual"][best]["verdict"] == "no better than chance"
    assert chance["score_vs_random"][best]["verdict"] == "above chance" and metrics["score_vs_random_lift_low"] > 0
    assert chance["score_vs_random"]["ig"]["verdict"] == "below chance"
    assert "random" not in chance["score_vs_random"] and "residual" not in chance["score_vs_residual"]
    assert sum(entry["n_pairs"] for entry in details["per_class_pair"].values()) == made["n_pairs"]

    if dataset == "clever_hans":
        iou = chance["shortcut_iou"][best]
        assert iou["score"] == 1.0 and iou["chance_levels"][WHOLE_IMAGE] == pytest.approx(16 / PIXELS, abs=1e-6)
        assert iou["chance"] == max(iou["chance_levels"].values()) and iou["n"] == made["n_pairs"]
        assert metrics["shortcut_iou_lift"] == pytest.approx(1.0 - iou["chance"], abs=1e-6) and iou["verdict"] == "above chance"
        assert chance["shortcut_iou_carried"][best]["score"] == 1.0 and metrics["gan_shortcut_fraction"] == 1.0
        assert chance["shortcut_mass_fraction"][best]["score"] == pytest.approx(1.0)
        assert chance["shortcut_iou"]["ig"]["score"] == 0.0 and chance["shortcut_iou"]["ig"]["verdict"] == "below chance"
        assert chance["shortcut_mass_fraction"]["ig"]["score"] is None                   # empty masks: not judged, not 0
        assert chance["shortcut_mass_fraction"]["ig"]["reason"] == "every optimal mask is empty"
        assert chance["shortcut_iou"]["random"]["verdict"] != "above chance"
        # the control: only the images of class 0 are assigned their own class by the detector (all ties go to 0)
        control = details["distractor_control"]
        assert control["n_candidates"] == 11 and control["n_assigned_own_class"] == control["n_pairs"] == 2 < MIN_ITEMS
        assert control["methods"][best]["median_score"] > control["methods"]["residual"]["median_score"]
        assert chance["control_shortcut_iou"][best]["verdict"] == "not judged" and metrics["control_shortcut_iou_lift"] is None
        assert "only 2 control pairs" in details["not_judged"]["control_shortcut_iou_lift"]
        bars = pd.read_csv(out / "known_answer" / "shortcut_iou.csv")
        assert {"pairs", "shortcut_iou", "chance", "lift_low", "lift_high"} <= set(bars)
        assert bars.set_index("pairs").loc[f"{best}: GAN pairs", "shortcut_iou"] == 1.0
    else:
        digit = chance["digit_mass_fraction"][best]
        assert digit["score"] == 0.0 and digit["verdict"] == "below chance"   # the square lies on the background
        real = np.load(paths.counterfactuals_path(dataset))["real"]
        assert digit["chance_levels"][WHOLE_IMAGE] == pytest.approx((real.max(axis=1) > 0).mean(), abs=1e-6)  # a uniform map
        # the detector calls every test image class 0 (ties), and every color lies on its own colormap
        assert details["color_rule"]["test_accuracy"] == details["color_rule"]["nearest_colormap_agreement"] == 0.25
        rule = pd.read_csv(out / "known_answer" / "color_rule.csv")
        assert list(rule.columns) == ["position", "accuracy", "nearest_colormap_agreement"]
        assert rule["accuracy"].tolist()[:3] == [0.25] * 3 and rule["accuracy"][3:].isna().all()

    curves = pd.read_csv(out / "curves.csv")
    assert list(curves.columns) == ["mask_size", *METHODS]
    assert curves["d_ig"].iloc[0] == 0.0 and curves["d_ig"].iloc[-1] == pytest.approx(expected / (1 - 8 / PIXELS), abs=1e-4)
    declared = declared_plots(dataset)
    assert set(declared) == {f"plots/{dataset}/explain/scores.csv"}   # curves.csv and known_answer/: several series a file
    for path, spec in declared.items():
        columns = set(pd.read_csv(tmp_path / path).columns)
        fields = [spec["x"], *(spec["y"] if isinstance(spec["y"], list) else [spec["y"]])]
        assert set(fields) <= columns and "template" in spec, path
    for name in ("scores.csv", "pictures/curves.png", "pictures/scores.png", "pictures/known_answer.png"):
        assert (out / name).stat().st_size > 100, name
    assert list((out / "pictures" / "gallery").glob("*.png"))
    arrays = np.load(tmp_path / "data" / "explanations" / dataset / "explanations.npz")
    assert arrays["d_ig_curve"].shape == (made["n_pairs"], 101)
    timing = json.loads(paths.timing_path(dataset, "explain").read_text())
    assert timing["images"] == made["n_pairs"] * 7 * 13


def test_the_negative_control_scores_the_unplanted_square_and_finds_it_at_chance(tmp_path, monkeypatch):
    """Nothing planted: the classifier reads another square (rows 20-23), which the counterfactuals paint. Against
    the named class and region the masks are no better than chance, and the stamp moves nothing, so the control is
    not judged, with its reason, in the metrics (null) and in the details."""
    monkeypatch.chdir(tmp_path)
    build_inputs("negative_control", read=(slice(20, 24), slice(20, 24)))
    write_params(tmp_path / "params.yaml", "negative_control", methods=["d_ig", "residual", "random"])
    metrics, details = run_stage(tmp_path, "negative_control")
    assert details["negative_control"] is True and details["shortcut_classes"] == ["7"]
    iou = details["chance"]["shortcut_iou"]["d_ig"]
    assert iou["score"] == 0.0 and iou["verdict"] == "below chance" and metrics["shortcut_iou_lift_high"] < 0
    assert metrics["gan_shortcut_fraction"] == 0.0 and details["chance"]["shortcut_iou_carried"]["d_ig"]["score"] is None
    assert metrics["control_shortcut_iou_lift"] is None and metrics["control_shortcut_iou_lift_low"] is None
    reason = "the stamp alone moves no test image into the shortcut's class"
    assert details["not_judged"]["control_shortcut_iou_lift"] == reason == details["distractor_control"]["reason"]
    assert details["distractor_control"]["n_moved_by_stamp"] == 0


def test_the_quac_convention_credits_a_blank_map_with_half_the_full_change(tmp_path, monkeypatch):
    """IG from a black baseline gives a blank map here. Ours: no mask, score 0. QuAC's: its negative
    thresholds copy the whole counterfactual, so the curve runs from (0, 0) to (1, gain): gain / 2."""
    monkeypatch.chdir(tmp_path)
    build_inputs("clever_hans")
    write_params(tmp_path / "params.yaml", methods=["ig", "d_ig"], control_pairs=0, score_convention="quac")
    metrics, details = run_stage(tmp_path, "clever_hans")
    assert details["score_convention"] == "quac"
    assert details["methods"]["ig"]["median_score"] == pytest.approx(probability_gain(10) / 2, abs=1e-3)
    assert details["methods"]["d_ig"]["median_score"] == pytest.approx(probability_gain(10) * (1 - 8 / PIXELS), abs=1e-3)
    for figure, why in (("score_vs_residual", "residual was not run"), ("score_vs_random", "random was not run"),
                        ("control_shortcut_iou", "explain.control_pairs = 0")):
        assert metrics[f"{figure}_lift"] is None and why in details["not_judged"][f"{figure}_lift"], figure


def test_stage_survives_when_no_counterfactual_reaches_its_target(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_inputs("clever_hans", n_images=2)
    write_params(tmp_path / "params.yaml", counterfactual="latent", methods=["d_ig", "random"])
    metrics, details = run_stage(tmp_path, "clever_hans")
    assert metrics["n_pairs_kept"] == 0 and metrics["shortcut_iou_lift"] is None and metrics["score_vs_random_lift"] is None
    assert details["methods"]["d_ig"]["median_score"] is None and details["best_discriminative_method"] is None
    assert details["chance"]["shortcut_iou"]["d_ig"]["reason"] == "no counterfactual reaches its target class"
    assert "no discriminative method" in details["not_judged"]["shortcut_iou_lift"]
    assert metrics["gan_shortcut_fraction"] is None and details["not_judged"]["gan_shortcut_fraction"] == "no GAN pair goes into 7"


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
    metrics, details = run_stage(tmp_path, "clever_hans")
    for method in ("d_ig", "d_deeplift"):
        entry = details["methods"][method]
        assert entry["mean_optimal_mask_size"] == pytest.approx(16 / PIXELS / 3, abs=1e-6), method
        assert entry["reached_target_fraction"] == 1.0 and details["chance"]["shortcut_iou"][method]["score"] == 1.0
    assert details["methods"]["d_ig"]["median_score"] > probability_gain(10) * (1 - 8 / PIXELS)  # smaller masks score higher
    masks = np.load(tmp_path / "data" / "explanations" / "clever_hans" / "explanations.npz")["d_ig_optimal_mask"]
    assert masks[:, 0].any() and not masks[:, 1:].any()   # red only


# ---------------------------------------------------------------------------------------------
# Masks against the truth, beside the whole-image mask and random masks of the same area
# ---------------------------------------------------------------------------------------------
def judged(masks: torch.Tensor, selected=None, **subsets) -> dict:
    """The shortcut judge's lifts of binary masks [N,H,W] (as one-channel optimal masks) against the corner square."""
    truth = torch.zeros(len(masks), 28, 28, dtype=torch.bool)
    truth[:, SQUARE[0], SQUARE[1]] = True
    selected = torch.ones(len(masks), dtype=torch.bool) if selected is None else selected
    judge = MaskJudge("shortcut", truth, selected, "no pair into 7", 2.0, streams, subsets=subsets)
    binary = masks[:, None].float()
    return judge("d_ig", binary, binary)


def masks_at(top: int, left: int, side: int = 4, n: int = 40) -> torch.Tensor:
    masks = torch.zeros(n, 28, 28, dtype=torch.bool)
    masks[:, top:top + side, left:left + side] = True
    return masks


def test_a_mask_equal_to_the_truth_lifts_above_both_chance_levels():
    lifts = judged(masks_at(1, 1))
    iou = lifts["shortcut_iou"]
    assert iou.score == 1.0 and iou.references[WHOLE_IMAGE] == pytest.approx(16 / PIXELS)
    assert 0 <= iou.references[RANDOM_MASKS] < 0.5 and iou.chance == max(iou.references.values())
    assert iou.lift == pytest.approx(1.0 - iou.chance) and iou.verdict == "above chance"
    assert lifts["shortcut_mass_fraction"].score == 1.0 and lifts["shortcut_mass_fraction"].verdict == "above chance"


def test_the_whole_image_mask_is_exactly_at_chance():
    """Its IoU is the truth's share of the image, which is the whole-image chance level itself (and random masks of
    the whole image's area are the whole image): lift 0, interval [0, 0], no better than chance."""
    lifts = judged(torch.ones(30, 28, 28, dtype=torch.bool))
    for figure in ("shortcut_iou", "shortcut_mass_fraction"):
        lift = lifts[figure]
        assert lift.score == pytest.approx(16 / PIXELS) and lift.lift == pytest.approx(0.0, abs=1e-7)
        assert (lift.low, lift.high) == pytest.approx((0.0, 0.0), abs=1e-7) and lift.verdict == "no better than chance"


def test_a_mask_as_large_elsewhere_and_an_empty_mask_are_below_chance_and_an_empty_mask_has_no_mass():
    elsewhere = judged(masks_at(20, 20))
    assert elsewhere["shortcut_iou"].score == 0.0 and elsewhere["shortcut_iou"].verdict == "below chance"
    assert elsewhere["shortcut_mass_fraction"].verdict == "below chance"
    empty = judged(torch.zeros(30, 28, 28, dtype=torch.bool))
    assert empty["shortcut_iou"].score == 0.0 and empty["shortcut_iou"].chance == pytest.approx(16 / PIXELS)
    assert empty["shortcut_iou"].verdict == "below chance"                # a miss, against the whole image
    mass = empty["shortcut_mass_fraction"]
    assert mass.verdict == "not judged" and math.isnan(mass.lift) and mass.reason == "every optimal mask is empty"
    assert mass.to_dict()["lift"] != 0


def test_no_pair_into_the_class_and_an_empty_subset_are_not_judged_with_their_reason():
    masks = masks_at(1, 1, n=10)
    none = judged(masks, selected=torch.zeros(10, dtype=torch.bool),
                  carried=(torch.ones(10, dtype=torch.bool), "none carries"))
    assert set(none) == {"shortcut_iou", "shortcut_mass_fraction", "shortcut_iou_carried"}
    assert all(lift.verdict == "not judged" and lift.reason == "no pair into 7" for lift in none.values())
    subset = judged(masks, carried=(torch.arange(10) < 4, "none carries"))
    assert subset["shortcut_iou_carried"].n == 4 and subset["shortcut_iou_carried"].score == 1.0
    nobody = judged(masks, carried=(torch.zeros(10, dtype=torch.bool), "none carries"))
    assert nobody["shortcut_iou_carried"].verdict == "not judged" and nobody["shortcut_iou_carried"].reason == "none carries"


def test_a_centred_truth_is_at_chance_when_the_methods_masks_sit_in_the_centre_on_unrelated_pairs_too():
    """The clean watermark: the truth is the image's central 14x14 square and nothing is planted, so the masks of the
    pairs into its class lie on the digit, in the centre, as on every other pair. Uniform random masks and the
    whole-image mask call that above chance; the method's own masks on the unrelated pairs do not."""
    truth = torch.zeros(60, 28, 28, dtype=torch.bool)
    truth[:, 7:21, 7:21] = True
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(60, 28, 28, dtype=torch.bool)
    for i in range(60):                    # 10x10 blobs somewhere on the "digit" (rows and columns 6-22)
        top, left = torch.randint(6, 13, (2,), generator=generator).tolist()
        masks[i, top:top + 10, left:left + 10] = True
    selected = torch.arange(60) < 30
    binary = masks[:, None].float()
    without = MaskJudge("shortcut", truth, selected, "no pair into 4", 2.0, streams)("d_ig", binary, binary)
    assert without["shortcut_iou"].verdict == "above chance"          # the false alarm the own masks remove
    judge = MaskJudge("shortcut", truth, selected, "no pair into 4", 2.0, streams, unrelated=~selected)
    lifts = judge("d_ig", binary, binary)
    for figure in ("shortcut_iou", "shortcut_mass_fraction"):
        assert lifts[figure].reference == OWN_MASKS and lifts[figure].verdict != "above chance", lifts[figure]
    corner = masks.clone()                 # masks on a corner square for the pairs into the class: still found
    corner[:30] = False
    corner[:30, 1:5, 1:5] = True
    truth[:30] = False
    truth[:30, 1:5, 1:5] = True
    found = MaskJudge("shortcut", truth, selected, "", 2.0, streams, unrelated=~selected)("d_ig", corner[:, None].float(),
                                                                                           corner[:, None].float())
    assert found["shortcut_iou"].verdict == "above chance" and found["shortcut_iou"].references[OWN_MASKS] == 0.0


# ---------------------------------------------------------------------------------------------
# Scores beside the random map's and the residual's; the headline
# ---------------------------------------------------------------------------------------------
def test_a_score_equal_to_the_residuals_is_no_better_and_a_missing_reference_is_not_judged():
    good = torch.linspace(0.6, 0.9, 25)
    lifts = score_lifts({"d_ig": good, "residual": good.clone(), "ig": torch.full((25,), 0.1)}, streams)
    assert lifts["score_vs_residual"]["d_ig"].lift == 0.0 and lifts["score_vs_residual"]["d_ig"].verdict == "no better than chance"
    assert lifts["score_vs_residual"]["ig"].verdict == "below chance"
    assert lifts["score_vs_random"]["d_ig"].verdict == "not judged"
    assert lifts["score_vs_random"]["d_ig"].reason == "random was not run (explain.methods)"
    assert set(lifts["score_vs_residual"]) == {"d_ig", "ig"}   # the reference is not scored against itself


def test_headline_metrics_are_the_best_methods_lifts_and_null_with_a_reason_when_not_judged():
    over = score_lifts({"d_ig": torch.full((20,), 0.8), "random": torch.linspace(0.1, 0.3, 20)}, streams)
    headline = headline_lifts(over, "d_ig")
    metrics = headline_metrics(20, headline, gan_shortcut_fraction=0.5)
    assert list(metrics) == ["n_pairs_kept", *LIFT_KEYS("score_vs_random"), *LIFT_KEYS("score_vs_residual"),
                             "gan_shortcut_fraction"]
    assert metrics["score_vs_random_lift"] == pytest.approx(0.6) and metrics["score_vs_random_lift_low"] > 0.5
    assert math.isnan(metrics["score_vs_residual_lift"]) and math.isnan(metrics["score_vs_residual_lift_high"])
    assert not_judged_reasons(headline) == {"score_vs_residual_lift": "residual was not run (explain.methods)"}
    nobody = headline_lifts(over, None)
    assert all(lift.verdict == "not judged" and "no discriminative method" in lift.reason for lift in nobody.values())


# ---------------------------------------------------------------------------------------------
# The random map
# ---------------------------------------------------------------------------------------------
def test_the_random_map_is_seeded_smooth_noise_drawn_anew_for_every_channel():
    """Independent per channel (channels uncorrelated), so a per-channel mask of it needs no more pixels than a
    method's; smooth (neighbours correlate exp(-1/16) at sigma 2) and >= 0 with its minimum at 0."""
    real = torch.zeros(64, 3, 28, 28)
    draw = lambda seed: random_maps(real, 2.0, torch.Generator().manual_seed(seed))  # noqa: E731
    maps = draw(5)
    assert torch.equal(maps, draw(5)) and not torch.equal(maps, draw(6))
    assert maps.shape == real.shape and maps.min() == 0.0 and (maps.flatten(2).amin(dim=2) == 0).all()
    across = torch.corrcoef(torch.stack([maps[:, 0].flatten(), maps[:, 2].flatten()]))[0, 1].item()
    assert abs(across) < 0.1
    inner = maps[:, 0, 6:-6, 6:-6]
    left, right = inner[:, :, :-1].flatten(), inner[:, :, 1:].flatten()
    assert torch.corrcoef(torch.stack([left, right]))[0, 1].item() == pytest.approx(math.exp(-1 / 16), abs=0.03)


# ---------------------------------------------------------------------------------------------
# The distractor control
# ---------------------------------------------------------------------------------------------
MARKERS = {0: 0, 1: 6, 2: 12, 7: 18}   # class -> first column of its 4 x 4 marker (rows 22-25; or 10-13)
MAIN_ROW, OTHER_ROW = 22, 10


class MarkerDetector(torch.nn.Module):
    """Class c from the brightness of its 4 x 4 marker (10 x its mean; with ``two_places`` at rows 10-13 as well); 7
    also from the redness of the square at (1, 1) (20 x mean(red - green)), which beats any marker."""

    def __init__(self, two_places: bool = False):
        super().__init__()
        self.two_places = two_places
        self.scale = torch.nn.Parameter(torch.tensor(10.0), requires_grad=False)

    def forward(self, x):
        logits = torch.zeros(len(x), 10, dtype=x.dtype)
        for label, col in MARKERS.items():
            rows = (MAIN_ROW, OTHER_ROW) if self.two_places else (MAIN_ROW,)
            for row in rows:
                logits[:, label] = logits[:, label] + self.scale * x[:, :, row:row + 4, col:col + 4].mean(dim=(1, 2, 3))
        redness = (x[:, 0, SQUARE[0], SQUARE[1]] - x[:, 1, SQUARE[0], SQUARE[1]]).mean(dim=(1, 2))
        logits[:, 7] = logits[:, 7] + 20.0 * redness
        return logits


def marker_images(n: int = 24, free_zone: bool = True, places=None) -> dict:
    """Test images of classes 0, 1, 2, 7 with their white marker (at rows ``places[i]``, else 22) and, with
    ``free_zone``, white pixels at random in rows 8-17, columns 6-27, which the detector ignores."""
    labels = torch.tensor([list(MARKERS)[i % 4] for i in range(n)])
    images = torch.zeros(n, 3, 28, 28, dtype=torch.uint8)
    if free_zone:
        noise = torch.rand(n, 1, 10, 22, generator=torch.Generator().manual_seed(3)) < 0.5
        images[:, :, 8:18, 6:28] = noise.to(torch.uint8) * 255
    for i, label in enumerate(labels.tolist()):
        row = MAIN_ROW if places is None else places[i]
        images[i, :, row:row + 4, MARKERS[label]:MARKERS[label] + 4] = 255
    return {"clean_images": images, "labels": labels}


def decide(model, images: torch.Tensor) -> torch.Tensor:
    return model(images.float() / 255 if images.dtype == torch.uint8 else images).argmax(dim=1)


def check_control_pairs(model, pairs) -> None:
    """Each pair: the counterfactual differs from the real image in the stamp and in one box of the stamp's size
    that shares no pixel with it; the classifier keeps the real class with that change alone and says 7 with both."""
    real, counterfactual = pairs.real, pairs.counterfactual
    assert (decide(model, real) == pairs.source).all() and (pairs.target == 7).all()
    assert (decide(model, counterfactual) == 7).all()
    alone = counterfactual.clone()
    alone[..., SQUARE[0], SQUARE[1]] = real[..., SQUARE[0], SQUARE[1]]
    assert (decide(model, alone) == pairs.source).all()
    changed = (alone != real).any(dim=1)
    for mask in changed:
        rows, cols = torch.nonzero(mask, as_tuple=True)
        assert len(rows) >= 1 and rows.max() - rows.min() < 4 and cols.max() - cols.min() < 4
        assert not mask[:5, :5].any()


def test_distractor_control_pairs_differ_in_the_stamp_and_in_a_change_the_classifier_ignores():
    model, test = MarkerDetector(), marker_images()
    pairs, counts, reason = distractor_control_pairs(model, corner_square(), test, 50, np.random.default_rng(0))
    assert reason == "" and counts["n_candidates"] == counts["n_assigned_own_class"] == counts["n_moved_by_stamp"] == 18
    assert counts["n_with_distractor"] == counts["n_distractor_keeps_class"] == counts["n_usable"] == len(pairs.target) == 18
    check_control_pairs(model, pairs)
    changed = (pairs.counterfactual != pairs.real).any(dim=1).flatten(1).sum(1)
    assert (changed > 16 + 8).float().mean() > 0.5   # the distractor changes about as many pixels as the stamp
    again, _, _ = distractor_control_pairs(model, corner_square(), test, 5, np.random.default_rng(0))
    assert len(again.target) == 5 and set(again.image_index.tolist()) <= set(pairs.image_index.tolist())


def test_the_distractor_control_can_fail_the_residual_and_not_a_method_that_follows_the_classifier():
    """d_ig attributes the classifier's 7 logit, which reads only the square: its masks are the square (IoU 1). The
    residual weighs the distractor's white pixels as much as the stamp, so its masks take both."""
    options = ExplainOptions(methods=("d_ig", "residual", "random"), ig_steps=4, control_pairs=50, mask_channels="sum",
                             attributed="counterfactual")
    details, lifts = distractor_control(MarkerDetector(), corner_square(), marker_images(), options, MaskSettings(12, 1, 0.0),
                                        size_grid(21), streams, np.random.default_rng(0))
    assert details["n_pairs"] == 18 and "reason" not in details and details["measures"]
    assert lifts["control_shortcut_iou"]["d_ig"].score == 1.0 and lifts["control_shortcut_iou"]["d_ig"].verdict == "above chance"
    residual = lifts["control_shortcut_iou"]["residual"]
    assert residual.score < 0.75 and residual.verdict == "above chance"   # it finds the stamp, with the distractor
    # the random map's optimal threshold is chosen by the decision, so it may edge past masks of its own area drawn
    # blind; it stays far from the square
    assert lifts["control_shortcut_iou"]["random"].score < 0.2


def test_a_control_of_fewer_pairs_than_the_floor_is_scored_in_details_and_not_judged():
    """Five usable pairs (control_pairs 5) are below MIN_ITEMS: each method's median score is kept in details,
    and no figure gets a verdict, with the reason (a bootstrap over five pairs, or one, has next to no width)."""
    options = ExplainOptions(methods=("d_ig", "random"), ig_steps=4, control_pairs=5, mask_channels="sum",
                             attributed="counterfactual")
    details, lifts = distractor_control(MarkerDetector(), corner_square(), marker_images(), options, MaskSettings(12, 1, 0.0),
                                        size_grid(21), streams, np.random.default_rng(0))
    assert details["n_pairs"] == 5 < MIN_ITEMS and "too few for a bootstrap interval" in details["reason"]
    assert details["methods"]["d_ig"]["median_score"] is not None
    d_ig = lifts["control_shortcut_iou"]["d_ig"]
    assert d_ig.verdict == "not judged" and d_ig.n == 0 and "only 5 control pairs" in d_ig.reason


def test_a_distractor_that_moves_the_decision_is_dropped():
    """With two places for a marker, a distractor taken from a same-class image whose marker sits elsewhere can wipe
    out the real image's marker (that image then leaves its class): such pairs are dropped, the rest kept."""
    places = [MAIN_ROW if (i // 4) % 2 else OTHER_ROW for i in range(32)]
    model, test = MarkerDetector(two_places=True), marker_images(32, free_zone=False, places=places)
    pairs, counts, _ = distractor_control_pairs(model, corner_square(), test, 50, np.random.default_rng(1))
    assert counts["n_usable"] == len(pairs.target) > 0
    assert counts["n_distractor_keeps_class"] < counts["n_with_distractor"] < counts["n_moved_by_stamp"]
    check_control_pairs(model, pairs)


def test_a_stamp_with_no_room_for_a_distractor_leaves_the_control_not_judged_with_its_reason():
    pairs, counts, reason = distractor_control_pairs(MarkerDetector(), corner_square(size=20), marker_images(), 50,
                                                     np.random.default_rng(0))
    assert len(pairs.target) == 0 and reason == "no room for a distractor as large as the stamp that does not overlap it"
