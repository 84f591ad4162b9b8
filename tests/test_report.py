"""The report on constructed runs: stage files written as the stages write them (each known-answer figure a
``Lift.to_dict`` whose interval is set by hand), read back as typed results, and the sentences, tables and page
they give, down to a real headless browser."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess

import matplotlib
import pytest
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.data.known_answer import PlantedShortcuts  # noqa: E402
from pipeline.data.shortcuts import Shortcut  # noqa: E402
from pipeline.report.findings import spectra_findings, verdict  # noqa: E402
from pipeline.report.results import read_run  # noqa: E402
from pipeline.scoring.chance import Lift, not_judged  # noqa: E402
from pipeline.stages import report  # noqa: E402
from pipeline.storage import InputError  # noqa: E402
from tests.conftest import repo_params  # noqa: E402

DIGITS = [str(d) for d in range(10)]
COLORMAPS = ["spring", "summer", "autumn", "winter"]
SQUARE = Shortcut(label=7, kind="square", fraction=0.95, position=[0, 0], side=8, color=[1.0, 0.0, 0.0])


def figure(score: float, chance: float, low: float, high: float, reference: str = "the whole-image mask") -> dict:
    """A known-answer figure as a stage writes it: ``low`` and ``high`` bound the lift ``score - chance``."""
    return Lift(score, chance, low, high, 40, reference, {reference: chance}).to_dict()


ABOVE = figure(0.9, 0.1, 0.7, 0.9)                  # lift 0.80 [0.70, 0.90]
AT = figure(0.3, 0.25, -0.02, 0.12)                 # lift 0.05, the interval covers 0
BELOW = figure(0.1, 0.3, -0.25, -0.15)              # lift -0.20
NONE = not_judged("no query's class has stamped and unstamped training images").to_dict()


def lift_keys(name: str, record: dict) -> dict:
    return Lift.from_dict(record).metrics(name)


# --------------------------------------------------------------------------------------------
# A run's files, as the stages write them
# --------------------------------------------------------------------------------------------
def planted_files(dataset: str, fraction: float = 0.95, detectors: dict | None = None, found: bool = True,
                  reliance: float = 0.94, occlusion: float = 0.02) -> dict:
    """Every stage's files of a planted-shortcut dataset; ``detectors`` sets each headline figure (default: above chance)."""
    fig = {"region": ABOVE, "masks": ABOVE, "control": ABOVE, "attribution": ABOVE, "tracin": ABOVE, "dissect": ABOVE,
           "critic": ABOVE, **(detectors or {})}
    negative = fraction == 0
    flagged = ["7"] if found else []
    region = {"top": 0, "left": 0, "height": 8, "width": 8, "significant": True, "shortcut": found, "p_value": 0.005}
    return {
        f"data/prepared/{dataset}/meta.json": {"class_names": DIGITS, "n_classes": 10, "source": "mnist", "dataset": dataset,
                                               "known_answer": PlantedShortcuts((dataclasses.replace(SQUARE, fraction=fraction),),
                                                                                (28, 28)).to_meta()},
        f"metrics/{dataset}/classifier.json": {"test_accuracy": 0.995, "clean_accuracy": 0.98, "shortcut_reliance": reliance,
                                               "shortcut_base_rate": 0.01, "shortcut_occlusion_rate": occlusion},
        f"plots/{dataset}/train_classifier/details.json": {
            "per_class_accuracy": {str(c): 0.99 for c in range(10)},
            "shortcuts": [{"class": "7", "kind": "square", "area_fraction": 0.0816, "reliance": reliance, "base_rate": 0.01,
                           "occlusion_rate": occlusion}]},
        f"metrics/{dataset}/explain.json": {"n_pairs_kept": 80, **lift_keys("shortcut_iou", fig["masks"]),
                                            "gan_shortcut_fraction": 0.89},
        f"plots/{dataset}/explain/details.json": {
            "n_pairs": 90, "n_pairs_kept": 80, "best_discriminative_method": "d_ig", "skipped_methods": {},
            "methods": {m: {"median_score": s} for m, s in (("d_ig", 0.83), ("ig", 0.41), ("residual", 0.8), ("random", 0.2))},
            "shortcut_classes": ["7"], "negative_control": negative, "n_pairs_into_shortcut_class": 9,
            "n_pairs_carrying_shortcut": 8, "gan_shortcut_fraction": 0.89,
            "distractor_control": {"measures": "whether a method's optimal mask picks the stamp over a change elsewhere",
                                   "n_pairs": 40, "methods": {"d_ig": {"median_score": 0.7}, "residual": {"median_score": 0.6}}},
            "chance": {"score_vs_random": {"d_ig": ABOVE, "ig": BELOW, "residual": ABOVE},
                       "score_vs_residual": {"d_ig": AT, "ig": BELOW, "random": BELOW},
                       "shortcut_iou": {"d_ig": fig["masks"], "ig": AT, "residual": ABOVE, "random": AT},
                       "control_shortcut_iou": {"d_ig": fig["control"], "residual": figure(0.5, 0.1, 0.3, 0.5), "random": AT}},
            "not_judged": {}},
        f"metrics/{dataset}/discover.json": {"n_flagged_classes": len(flagged), "false_alarms": 0,
                                             **lift_keys("shortcut_region_iou", fig["region"])},
        f"plots/{dataset}/discover/details.json": {
            "method": "d_ig", "n_pairs": 90, "n_held_out": 45, "judged_classes": DIGITS, "flagged_classes": flagged,
            "sentences": ["Decisions for class 7 hinge on a region of about 8×8 pixels at the top-left."] if found else [],
            "classes": {c: {"n_pairs": 9, "judged": True, "flagged": c in flagged, "regions": [region] if c == "7" else []}
                        for c in DIGITS},
            "chance": {"trigger_rate": {"7": [ABOVE if found else AT]}, "shortcut_region_iou": fig["region"],
                       "shortcut_region_iou_by_class": {"7": {**fig["region"], "placement_p": 0.01}}},
            "negative_control": negative, "false_alarms": 0, "false_alarm_classes": [],
            "shortcuts": {"7": {"judged": True, "flagged": found, "found_without_being_told": found and not negative}},
            "found_without_being_told": ["7"] if found and not negative else []},
        f"metrics/{dataset}/attribution.json": {"best_deletion_auc": 0.06, "random_order_deletion_auc": 0.7,
                                                **lift_keys("shortcut_relevance_mass_flipped", fig["attribution"])},
        f"plots/{dataset}/attribute/details.json": {
            "n_images": 64, "skipped": {}, "random_order_deletion_auc": 0.7, "digit_area_fraction": 0.19,
            "methods": {"ig_zero": {"deletion_auc": 0.06, "randomization_spearman": 0.99},
                        "guided_backprop": {"deletion_auc": 0.13, "randomization_spearman": 0.58}},
            "chance": {"relevance_mass_flipped": {"ig_zero": BELOW, "guided_backprop": fig["attribution"]}},
            "gradcam_segmentation": {"best_threshold": 0.5, "best_iou": 0.3},
            "best_methods": {"best_deletion_auc": "ig_zero", "shortcut_relevance_mass_flipped": "guided_backprop"}},
        f"metrics/{dataset}/influence.json": lift_keys("within_class_auc", fig["tracin"]),
        f"plots/{dataset}/influence/details.json": {"n_queries": 100, "n_train": 6000, "n_checkpoints": 4, "scoring": "normalized",
                                                    "chance": {"within_class_auc": fig["tracin"], "proponent_precision_at_10": AT}},
        f"metrics/{dataset}/dissect.json": lift_keys("shortcut_unit_iou", fig["dissect"]),
        f"plots/{dataset}/dissect/details.json": {
            "n_images": 500, "held_out": {"units": {"shortcut": "conv5/50", "digit": "conv2/13"}},
            "concepts": {"digit": {"area_share": 0.13, "units": 24, "best_iou": 0.81},
                         "shortcut": {"area_share": 0.04, "units": 0, "best_iou": 0.35}},
            "chance": {"shortcut_unit_iou": fig["dissect"], "digit_unit_iou": ABOVE}},
        f"metrics/{dataset}/prototypes.json": lift_keys("criticism_unstamped_share", fig["critic"]),
        f"plots/{dataset}/prototypes/details.json": {"chance": {"criticism_unstamped_share": fig["critic"],
                                                                "prototype_unstamped_share": AT}},
    }


def probe_files(dataset: str) -> dict:
    """The stages of a planted-shortcut dataset that the verdict does not read, as they write their files."""
    architectures = {a: {"test_accuracy": acc, "shortcut_reliance": 0.6, "shortcut_base_rate": 0.01}
                     for a, acc in (("dense", 0.9), ("cnn", 0.95))}
    return {
        f"metrics/{dataset}/architectures.json": {"shortcut_reliance_dense": 0.6, **lift_keys("relevance_mass_dense", ABOVE),
                                                  "shortcut_reliance_cnn": 0.6, **lift_keys("relevance_mass_cnn", AT)},
        f"plots/{dataset}/architectures/details.json": {
            "epochs": 1, "architectures": architectures, "headline_score": "relevance_mass", "headline_methods": ["saliency"],
            "chance": {"relevance_mass": {"dense": ABOVE, "cnn": AT}},
            "rank_correlation": {"dense vs cnn": {"saliency": 0.44}}},
        f"metrics/{dataset}/feature_viz.json": {"mean_class_probability": 0.99},
        f"plots/{dataset}/feature_viz/details.json": {
            "class_probability": {c: {"ones": 1.0, "noise": 0.9} for c in DIGITS},
            "dream": {"images": 4, "shortcuts": {"7": {"label": 7, "area_share": 0.08,
                                                       "change_share": {"conv1": 0.03, "conv2": 0.02},
                                                       "toward_color": {"conv1": 0.07, "conv2": 0.04},
                                                       "predicted_as_shortcut_class": {"conv1": 0.0, "conv2": 0.25}}}}},
        f"metrics/{dataset}/train_gan.json": {"iterations": 2000, "smoothed_generator_loss": 1.5},
        f"metrics/{dataset}/counterfactuals.json": {"conversion_rate": 0.9, "conversion_rate_latent": 0.8,
                                                    "changed_pixel_fraction": 0.1, "mean_l1": 0.05},
        f"plots/{dataset}/counterfactuals/details.json": {"n_counterfactuals": 900},
        f"metrics/{dataset}/optimize_counterfactuals.json": {"success_rate": 0.97, "mean_l1": 12.0, "gan_success_rate": 0.9},
        f"plots/{dataset}/optimize_counterfactuals/details.json": {"n_misclassified": 3},
        f"metrics/{dataset}/spectra.json": {"spectral_detector_accuracy": 0.6, "control_accuracy": 0.5,
                                            "frequency_artifacts_detected": False},
        f"plots/{dataset}/spectra/details.json": {"artifact_threshold": 0.75},
    }


def colored_files(dataset: str = "colored_mnist") -> dict:
    return {
        f"data/prepared/{dataset}/meta.json": {"class_names": COLORMAPS, "n_classes": 4, "source": "mnist",
                                               "known_answer": {"kind": "color_rule", "colormaps": COLORMAPS}},
        f"metrics/{dataset}/classifier.json": {"test_accuracy": 0.999},
        f"plots/{dataset}/train_classifier/details.json": {"per_class_accuracy": {"0": 1.0, "1": 0.998, "2": 1.0, "3": 0.999}},
        f"metrics/{dataset}/explain.json": {"n_pairs_kept": 50, **lift_keys("digit_mass_fraction", ABOVE)},
        f"plots/{dataset}/explain/details.json": {
            "n_pairs": 60, "best_discriminative_method": "d_ig", "methods": {"d_ig": {"median_score": 0.9}},
            "color_rule": {"nearest_colormap_agreement": 0.97},
            "chance": {"digit_mass_fraction": {"d_ig": ABOVE}, "score_vs_random": {"d_ig": ABOVE}}},
        f"metrics/{dataset}/discover.json": {"n_flagged_classes": 0, "false_alarms": 0},
        f"plots/{dataset}/discover/details.json": {
            "method": "d_ig", "n_pairs": 60, "flagged_classes": [], "sentences": [], "false_alarms": 0, "false_alarm_classes": [],
            "classes": {c: {"n_pairs": 15, "judged": True, "flagged": False, "regions": []} for c in COLORMAPS}},
    }


def picture(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path)
    plt.close(fig)


def write_files(root, files: dict) -> None:
    for relative, content in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(json.dumps(content))


def read(root, dataset: str):
    meta_file = root / "data" / "prepared" / dataset / "meta.json"
    return read_run(dataset, json.loads(meta_file.read_text()), meta_file, lambda name: root / "metrics" / dataset / f"{name}.json",
                    lambda stage: root / "plots" / dataset / stage)


def run_of(tmp_path, files: dict, dataset: str):
    write_files(tmp_path, files)
    return read(tmp_path, dataset)


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """Three datasets (colored MNIST, Clever Hans, the negative control with a false alarm) and the report on them."""
    monkeypatch.chdir(tmp_path)
    params = repo_params()
    params["datasets"] = {name: params["datasets"][name] for name in ("colored_mnist", "clever_hans", "negative_control")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_files(tmp_path, {**colored_files(), **planted_files("clever_hans"), **probe_files("clever_hans"),
                           **planted_files("negative_control", 0.0, {"region": AT, "masks": AT, "control": BELOW,
                                                                     "tracin": NONE, "dissect": AT, "critic": NONE},
                                           found=False, reliance=0.02)})
    for dataset in ("colored_mnist", "clever_hans", "negative_control"):
        write_files(tmp_path, {f"metrics/{dataset}/timing/train_classifier.json": {
            "stage": f"train_classifier@{dataset}", "device": "cpu", "seconds": 2.0, "images": 100, "images_per_second": 50.0}})
        picture(tmp_path / "plots" / dataset / "prepare" / "examples.png")
    picture(tmp_path / "plots" / "clever_hans" / "explain" / "known_answer.png")
    picture(tmp_path / "plots" / "clever_hans" / "train_classifier" / "live" / "plots" / "images" / "examples.png")
    report.main(["--params", "params.yaml"])
    return tmp_path


def section(text: str, heading: str) -> str:
    """The Markdown of one dataset's section (from its heading to the next dataset's)."""
    start = text.index(f"## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


# --------------------------------------------------------------------------------------------
# The verdict
# --------------------------------------------------------------------------------------------
def test_the_verdict_says_what_is_used_who_found_it_and_how_sure_in_at_most_five_lines(tmp_path):
    lines = verdict(run_of(tmp_path, planted_files("clever_hans"), "clever_hans"))
    assert 3 <= len(lines) <= 5
    assert lines[0].startswith("What the classifier uses: a red 8x8 square at rows 0-7, columns 0-7 on 95 % of the training "
                               "images of 7: stamped on clean test images of other classes it moves 94.0 % of them into 7 "
                               "(as they are: 1.0 %; with the same pixels blacked out instead: 2.0 %): the classifier relies on it")
    assert lines[1].startswith("Found without being told: discovery flags class 7") and "IoU lift 0.80 [0.70, 0.90]" in lines[1]
    assert lines[2].startswith("Found above chance by 7 of 7 detectors (lift over chance, 95 % interval): discovery's "
                               "flagged regions 0.80 [0.70, 0.90]; explain's optimal masks (d_ig) 0.80 [0.70, 0.90];")
    for detector in ("explain's distractor control (d_ig)", "attribution (guided_backprop)", "TracIn", "dissection", "MMD-critic"):
        assert f"{detector} 0.80 [0.70, 0.90]" in lines[2]
    assert not any(line.startswith(("Not found", "Not tested")) for line in lines)


def test_the_verdict_says_what_was_not_found_and_no_better_than_chance(tmp_path):
    files = planted_files("clever_hans", detectors={"region": AT, "masks": AT, "control": BELOW}, found=False)
    lines = verdict(run_of(tmp_path, files, "clever_hans"))
    text = "\n".join(lines)
    assert "Found without being told" not in text and "Not found without being told: 7 not flagged" in text
    assert ("Not found: no better than chance: discovery's flagged regions 0.05 [-0.02, 0.12]; explain's optimal masks (d_ig) "
            "0.05 [-0.02, 0.12]; below chance: explain's distractor control (d_ig) -0.20 [-0.25, -0.15].") in lines


def test_what_could_not_be_tested_is_said_with_its_reason(tmp_path):
    files = planted_files("clever_hans", detectors={"critic": NONE})
    files["plots/clever_hans/influence/details.json"] = {"n_queries": 0, "n_train": 6000, "reason": "trained elsewhere"}
    files["metrics/clever_hans/influence.json"] = not_judged("trained elsewhere").metrics("within_class_auc")
    lines = verdict(run_of(tmp_path, files, "clever_hans"))
    assert len(lines) <= 5
    assert lines[-1] == ("Not tested: TracIn (trained elsewhere); MMD-critic (no query's class has stamped and unstamped "
                         "training images).")


def test_discovery_that_judged_nothing_says_why_and_counts_no_false_alarm(tmp_path):
    files = planted_files("clever_hans")
    files["metrics/clever_hans/discover.json"] = {"n_flagged_classes": None, "false_alarms": None}
    files["plots/clever_hans/discover/details.json"] = {
        "method": "d_ig", "n_pairs": 8, "flagged_classes": None, "sentences": [], "not_judged": "no class had enough pairs",
        "classes": {c: {"n_pairs": 1, "judged": False, "reason": "1 pair, fewer than 4", "flagged": False, "regions": []}
                    for c in DIGITS}, "chance": {}, "false_alarms": None, "false_alarms_reason": "nothing judged"}
    lines = verdict(run_of(tmp_path, files, "clever_hans"))
    assert lines[1] == "Discovery (without the answer) judged no class: no class had enough pairs."
    assert "Not tested: discovery's flagged regions (no class had enough pairs)" in lines[-1]


def test_the_negative_control_is_silent_or_says_its_false_alarms(tmp_path):
    quiet = {"region": AT, "masks": AT, "control": BELOW, "attribution": AT, "tracin": NONE, "dissect": AT, "critic": NONE}
    lines = verdict(run_of(tmp_path, planted_files("negative_control", 0.0, quiet, found=False, reliance=0.02), "negative_control"))
    assert len(lines) <= 5
    assert lines[0].startswith("Negative control: a red 8x8 square at rows 0-7, columns 0-7 on 0 % of the training images of 7")
    assert lines[0].endswith("it does not use what it never saw, as it should not.")
    assert lines[1] == "Discovery flagged nothing, as it must where nothing is planted."
    assert lines[2].startswith("Every detector judged stayed at or below chance, no false alarm (lift over chance, 95 % "
                               "interval): discovery's flagged regions 0.05 [-0.02, 0.12];")
    assert "False alarms" not in " ".join(lines)

    alarm = planted_files("negative_control", 0.0, {**quiet, "attribution": ABOVE, "dissect": ABOVE}, found=True, reliance=0.02)
    alarm["plots/negative_control/discover/details.json"]["false_alarm_classes"] = ["7"]
    lines = verdict(run_of(tmp_path, alarm, "negative_control"))
    assert lines[1] == "Discovery raised 1 false alarm(s) where nothing is planted: class 7."
    assert ("False alarms, above chance where nothing is planted: attribution (guided_backprop) 0.80 [0.70, 0.90]; dissection "
            "0.80 [0.70, 0.90].") in lines
    assert "Found without being told" not in " ".join(lines)


def test_reliance_is_set_against_the_base_rate_and_the_blacked_out_pixels(tmp_path):
    hidden = verdict(run_of(tmp_path, planted_files("clever_hans", reliance=0.9, occlusion=0.85), "clever_hans"))[0]
    assert "the classifier hardly uses it — blacking out those pixels does much of that" in hidden
    partly = verdict(run_of(tmp_path, planted_files("clever_hans", reliance=0.3, occlusion=0.02), "clever_hans"))[0]
    assert partly.endswith("the classifier partly relies on it.")


def test_without_a_known_answer_the_verdict_says_what_was_found_and_what_was_not_run(tmp_path):
    files = {"data/prepared/mine/meta.json": {"class_names": ["disk", "ring"], "source": "image_folder", "known_answer": {"kind": "unknown"}},
             "metrics/mine/classifier.json": {"test_accuracy": 0.8},
             "plots/mine/train_classifier/details.json": {"per_class_accuracy": {"0": 0.7, "1": 0.9}},
             "metrics/mine/discover.json": {"n_flagged_classes": 1},
             "plots/mine/discover/details.json": {"method": "d_ig", "n_pairs": 40, "flagged_classes": ["ring"],
                                                  "sentences": ["Decisions for class ring hinge on a region of about 8x8 pixels."],
                                                  "classes": {"ring": {"n_pairs": 20, "judged": True, "flagged": True, "regions": []}}},
             "metrics/mine/dissect.json": {}, "plots/mine/dissect/details.json": {"skipped": "no concept pixels"},
             "metrics/mine/influence.json": {}, "plots/mine/influence/details.json": {"n_queries": 0, "reason": "trained elsewhere"}}
    text = " ".join(verdict(run_of(tmp_path, files, "mine")))
    assert "80.0 %" in text and "No known answer" in text and "Discovery flags class ring: Decisions for class ring" in text
    assert "Not run: network dissection (no concept pixels); TracIn (trained elsewhere)." in text
    assert "Found without being told" not in text and "false alarm" not in text


# --------------------------------------------------------------------------------------------
# The page: each finding beside its chance level, with its table and pictures
# --------------------------------------------------------------------------------------------
def test_each_known_answer_sentence_sets_the_figure_beside_its_chance_level(run_dir):
    hans = section((run_dir / "report" / "README.md").read_text(), "clever_hans")
    assert ("On the 9 GAN pairs into 7, the IoU of d_ig's optimal masks with the planted shortcut's truth region is 0.90 "
            "against 0.10 by chance (the whole-image mask): lift 0.80 [0.70, 0.90], above chance.") in hans
    assert ("In a class that carries the shortcut, the share of criticisms without it is 0.90 against 0.10 by chance (the "
            "whole-image mask): lift 0.80 [0.70, 0.90], above chance.") in hans
    assert ("The share of stamped images among the 10 strongest proponents of stamped queries is 0.30 against 0.25 by "
            "chance (the whole-image mask): lift 0.05 [-0.02, 0.12], no better than chance.") in hans
    assert "Below the random map's score on the same pairs: ig." in hans


def test_every_stage_s_section_reads_its_files(run_dir):
    hans = section((run_dir / "report" / "README.md").read_text(), "clever_hans")
    assert ("cnn's relevance mass on the planted shortcut's region of stamped images (saliency, averaged per image) is 0.30 "
            "against 0.25 by chance (the whole-image mask): lift 0.05 [-0.02, 0.12], no better than chance.") in hans
    assert "| cnn | 95.0 % | 60.0 % | 1.0 % | 0.05 [-0.02, 0.12] |" in hans
    assert "put at most 3.0 % of their change inside 7's shortcut region (conv1), which covers 8.0 % of the image" in hans
    assert "assigned to their target class by the classifier 90.0 % of the time" in hans
    assert "Optimising the input directly reaches the wanted class for 97.0 % of images" in hans
    assert "not above the 0.75 threshold: no clear frequency artifacts" in hans and "| iterations | 2000 |" in hans
    assert "Not run yet" not in hans


def test_the_report_says_when_the_residual_does_as_well_as_the_best_method(tmp_path):
    from pipeline.report.findings import explain_findings

    for residual, says in ((AT, "The residual |real − counterfactual|, which needs no model, does as well as d_ig: d_ig's "
                                "mean score is 0.30 against 0.25 by chance"),
                           (BELOW, "The residual |real − counterfactual|, which needs no model, does better than d_ig"),
                           (ABOVE, "d_ig beats the residual |real − counterfactual|")):
        files = planted_files("clever_hans")
        files["plots/clever_hans/explain/details.json"]["chance"]["score_vs_residual"]["d_ig"] = residual
        assert any(line.startswith(says) for line in explain_findings(run_of(tmp_path, files, "clever_hans")))
    files = planted_files("clever_hans", detectors={"control": figure(0.4, 0.1, 0.2, 0.4)})   # the residual: IoU 0.5
    text = " ".join(explain_findings(run_of(tmp_path, files, "clever_hans")))
    assert ("On the distractor control the residual's masks overlap the stamp as well as or better than d_ig's (IoU 0.50 "
            "against 0.40, the same pairs)") in text


def test_tables_name_the_classes(run_dir):
    text = (run_dir / "report" / "README.md").read_text()
    colored = section(text, "colored_mnist")
    accuracy = colored[colored.index("**Test accuracy per class**"):]
    rows = [line.split("|")[1].strip() for line in accuracy.splitlines()[4:8]]
    assert rows == COLORMAPS                               # the stage wrote them as 0..3
    hans = section(text, "clever_hans")
    assert "| 7 | 9 | yes | FLAGGED | 1 | 8×8 at row 0, column 0 | 0.80 [0.70, 0.90] | 0.80 [0.70, 0.90] |" in hans
    assert re.search(r"\| d_ig \| 0\.83 \| 0\.7 \| 0\.80 \[0\.70, 0\.90\] \| 0\.05 \[-0\.02, 0\.12\] \|", hans)


def test_each_finding_sits_with_its_tables_and_pictures(run_dir):
    hans = section((run_dir / "report" / "README.md").read_text(), "clever_hans")
    explain = hans[hans.index("### Discriminative attribution"):hans.index("### Discovery")]
    assert explain.index("- 80 of 90 image/counterfactual pairs") < explain.index("| method |") < explain.index("known_answer.png")
    assert hans.index("**Verdict:**") < hans.index("### The data")


def test_the_negative_control_has_its_own_section_and_shows_a_false_alarm(run_dir):
    text = (run_dir / "report" / "README.md").read_text()
    control = section(text, "negative_control")
    assert control.startswith("## negative_control: Negative control: MNIST with nothing planted")
    assert ("What it is for: the same images and a classifier trained the same way as where a shortcut is planted, with "
            "nothing planted") in control
    assert "False alarms, above chance where nothing is planted: attribution (guided_backprop) 0.80 [0.70, 0.90]" in control
    assert ("| attribution (guided_backprop) | relevance mass on stamped images of other classes | 0.9 | 0.1 (the whole-image "
            "mask) | 0.80 [0.70, 0.90] | above chance |") in control
    assert "so that is a false alarm of the attribution headline: guided_backprop" in control


def test_report_html_is_self_contained(run_dir):
    page = (run_dir / "report" / "index.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 5 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page
    timing = json.loads((run_dir / "metrics" / "timing.json").read_text())
    assert timing["total_seconds"] == 6.0


def test_a_missing_or_malformed_file_ends_in_one_error_that_names_it(run_dir, capsys):
    details = run_dir / "plots" / "clever_hans" / "explain" / "details.json"
    kept = details.read_text()
    details.unlink()
    with pytest.raises(SystemExit) as stop:
        report.main(["--params", "params.yaml"])
    assert stop.value.code == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert said == ["error: plots/clever_hans/explain/details.json is missing; run `dvc repro explain@clever_hans` first"]

    broken = json.loads(kept)
    broken["chance"]["shortcut_iou"]["d_ig"] = {"score": 0.9}
    details.write_text(json.dumps(broken))
    with pytest.raises(InputError, match=re.escape(str(details)) + ".*chance/shortcut_iou/d_ig"):
        read(run_dir, "clever_hans")
    details.write_text("[]")
    with pytest.raises(InputError, match=re.escape(str(details)) + " holds list"):
        read(run_dir, "clever_hans")
    details.write_text(kept)

    stale = run_dir / "metrics" / "clever_hans" / "dissect.json"      # a headline of another run than its details
    stale.write_text(json.dumps(lift_keys("shortcut_unit_iou", AT)))
    with pytest.raises(InputError, match=re.escape(f"{stale} holds shortcut_unit_iou_lift = 0.05 but "
                                                   f"{run_dir / 'plots/clever_hans/dissect/details.json'} 0.8")):
        read(run_dir, "clever_hans")


def test_a_stage_that_has_not_run_is_named_not_counted(tmp_path):
    files = planted_files("clever_hans")
    for stage, name in (("influence", "influence"), ("dissect", "dissect")):
        del files[f"plots/clever_hans/{stage}/details.json"], files[f"metrics/clever_hans/{name}.json"]
    run = run_of(tmp_path, files, "clever_hans")
    assert "influence" in run.not_run and "dissect" in run.not_run
    assert "Not tested: TracIn (the stage has not run); dissection (the stage has not run)." in verdict(run)


def spectra_sentence(metrics: dict, details: dict) -> str:
    from pipeline.report.results import Figures

    return " ".join(spectra_findings(type("Run", (), {"result": lambda self, stage: Figures(metrics, details)})()))


def test_the_spectra_sentence_says_what_the_metric_says():
    detected = spectra_sentence({"spectral_detector_accuracy": 0.91, "control_accuracy": 0.51, "frequency_artifacts_detected": 1.0},
                                {"artifact_threshold": 0.75})
    assert "91.0 % cross-validated accuracy; on two halves of the real test images the same detector scores 51.0 %" in detected
    assert "above the 0.75 threshold and clearly above the control: the generator leaves frequency artifacts" in detected
    below = spectra_sentence({"spectral_detector_accuracy": 0.6, "control_accuracy": 0.5, "frequency_artifacts_detected": 0.0},
                             {"artifact_threshold": 0.75})
    assert "not above the 0.75 threshold: no clear frequency artifacts" in below and "leaves frequency artifacts" not in below


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_report_renders_in_a_headless_browser_with_every_image_loaded(run_dir, tmp_path):
    browser = find_chromium()
    if browser is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium); the page was not rendered")
    page = run_dir / "report" / "index.html"
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(args, capture_output=True, text=True, timeout=120, env=dict(os.environ, HOME=str(tmp_path))).stdout
    match = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert match, f"the page did not finish loading in the browser:\n{dom[:500]}"
    loaded, total = map(int, match.groups())
    assert total == 5 and loaded == total
    assert "What has the classifier learned?" in dom and "Negative control" in dom
