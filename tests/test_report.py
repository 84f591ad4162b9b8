"""The report on a constructed run: sentences from known metrics, and the page in a real headless browser."""
from __future__ import annotations

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

from pipeline.report.findings import influence_findings, reliance_verdict, spectra_findings, verdict
from pipeline.report.run import DatasetRun
from pipeline.stages import report
from tests.conftest import repo_params

CLASSIFIER = {
    "colored_mnist": {"test_accuracy": 0.999},
    "clever_hans": {"test_accuracy": 0.995, "clean_accuracy": 0.98, "shortcut_reliance": 0.94, "shortcut_base_rate": 0.01},
}
CLASSIFIER_DETAILS = {
    "colored_mnist": {"per_class_accuracy": {"0": 1.0, "1": 0.998, "2": 1.0, "3": 0.999}},
    "clever_hans": {"per_class_accuracy": {str(c): 0.99 for c in range(10)}, "shortcut_reliance_per_class": {"7_square": 0.94},
                    "shortcut_base_rate_per_class": {"7_square": 0.01}},
}
EXPLAIN = {"n_pairs_kept": 80, "median_score_d_ig": 0.83, "median_score_ig": 0.41, "median_score_random": 0.2,
           "median_score_residual": 0.7, "median_score_d_deeplift": None, "shortcut_iou": 0.61, "stamped_control_shortcut_iou": 0.67}
EXPLAIN_DETAILS = {"n_pairs": 90, "best_discriminative_method": "d_ig",
                   "stamped_control": {"n_pairs": 40, "n_moved_by_stamp": 40, "methods": {"d_ig": {"shortcut_iou": 0.67}}},
                   "color_rule": {"nearest_colormap_agreement": 0.97},
                   "methods": {"d_ig": {"median_score": 0.83, "iqr_score": 0.1}, "ig": {"median_score": 0.41, "iqr_score": 0.2}}}
DISCOVER = {
    "colored_mnist": ({"n_flagged_classes": 0, "false_alarms": 0}, {"n_pairs": 50, "method": "d_ig", "flagged_classes": [], "sentences": []}),
    "clever_hans": ({"n_flagged_classes": 1, "false_alarms": 0, "shortcut_region_iou": 0.81},
                    {"n_pairs": 90, "method": "d_ig", "flagged_classes": ["7"],
                     "sentences": ["Decisions for class 7 hinge on a region of about 10×10 pixels at the top-left in 92 % of pairs."]}),
}
SPECTRA = ({"spectral_detector_accuracy": 0.91, "control_accuracy": 0.51, "frequency_artifacts_detected": True},
           {"artifact_threshold": 0.75})


def picture(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path)
    plt.close(fig)


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = repo_params()
    params["datasets"] = {name: params["datasets"][name] for name in ("colored_mnist", "clever_hans")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for dataset, n_classes in (("colored_mnist", 4), ("clever_hans", 10)):
        metrics, plots = tmp_path / "metrics" / dataset, tmp_path / "plots" / dataset
        write(metrics / "classifier.json", CLASSIFIER[dataset])
        write(plots / "train_classifier" / "details.json", CLASSIFIER_DETAILS[dataset])
        write(metrics / "explain.json", EXPLAIN)
        write(plots / "explain" / "details.json", EXPLAIN_DETAILS)
        write(metrics / "discover.json", DISCOVER[dataset][0])
        write(plots / "discover" / "details.json", DISCOVER[dataset][1])
        write(metrics / "spectra.json", SPECTRA[0])
        write(plots / "spectra" / "details.json", SPECTRA[1])
        write(metrics / "timing" / "train_classifier.json",
              {"stage": f"train_classifier@{dataset}", "device": "cpu", "seconds": 2.0, "images": 100, "images_per_second": 50.0})
        names = ["spring", "summer", "autumn", "winter"] if n_classes == 4 else [str(c) for c in range(10)]
        write(tmp_path / "data" / "prepared" / dataset / "meta.json", {"class_names": names, "n_classes": n_classes})
        picture(plots / "prepare" / "examples.png")
        picture(plots / "train_classifier" / "live" / "plots" / "images" / "examples.png")  # pictures in subfolders count
    report.main(["--params", "params.yaml"])
    return tmp_path


def test_report_leads_with_a_verdict_per_dataset(run_dir):
    text = (run_dir / "report" / "README.md").read_text()
    hans = text[text.index("## Clever Hans"):]
    assert hans.index("**Verdict:**") < hans.index("**What this run found:**")
    assert ("The classifier relies on the planted shortcut: stamped on images of other classes it moves 94.0 % of them "
            "into the shortcut's class (without the stamp: 1.0 %)" in hans)
    assert "the discovery stage flags class 7 for a region that recurs in its explanations and, pasted alone into images of other classes, moves them into it; its overlap with the planted shortcut is IoU 0.81, with no false alarm" in hans
    colored = text[:text.index("## Clever Hans")]
    assert "describes its decision on 97.0 % of test images" in colored and "finds no region that works on its own (a shortcut) for any class" in colored


def test_report_states_findings_from_the_metrics(run_dir):
    text = (run_dir / "report" / "README.md").read_text()
    assert "assigns 94.0 % of them to class 7 (without the stamp: 1.0 %): it relies on the square" in text
    assert "Discriminative integrated gradients scores 0.830 vs. 0.410 for vanilla integrated gradients: better" in text
    assert "for vanilla integrated gradients: better; vs. 0.200 for the random map: better." in text
    assert "DeepLift" not in text.split("What this run found")[1].split("###")[0]   # not run: no sentence about it
    assert "80 of 90 image/counterfactual pairs" in text and "IoU 0.61" in text
    assert "control (40 clean images" in text and "reaches IoU 0.67" in text
    assert "hinge on a region of about 10×10 pixels at the top-left in 92 % of pairs" in text
    timing = json.loads((run_dir / "metrics" / "timing.json").read_text())
    assert timing["total_seconds"] == 4.0 and set(timing["stages"]) == {"train_classifier@colored_mnist", "train_classifier@clever_hans"}


def spectra_sentence(metrics: dict, details: dict) -> str:
    run = DatasetRun("clever_hans", "clever_hans", metrics={"spectra": metrics}, details={"spectra": details})
    return " ".join(spectra_findings(run))


def test_the_spectra_sentence_says_what_the_metric_says():
    detected = spectra_sentence(*SPECTRA)
    assert "91.0 % cross-validated accuracy; on two halves of the real test images the same detector scores 51.0 %" in detected
    assert "above the 0.75 threshold and clearly above the control: the generator leaves frequency artifacts" in detected
    below = spectra_sentence({"spectral_detector_accuracy": 0.6, "control_accuracy": 0.5, "frequency_artifacts_detected": False},
                             {"artifact_threshold": 0.75})
    assert "not above the 0.75 threshold: no clear frequency artifacts" in below and "leaves frequency artifacts" not in below
    control_high = spectra_sentence({"spectral_detector_accuracy": 0.9, "control_accuracy": 0.88, "frequency_artifacts_detected": False},
                                    {"artifact_threshold": 0.75})
    assert "The control is almost as high" in control_high and "leaves frequency artifacts" not in control_high


def test_reliance_is_judged_net_of_the_base_rate():
    assert reliance_verdict(0.94, 0.01, "square") == "relies on the square"
    assert reliance_verdict(0.60, 0.55, "square") == "hardly uses the square"   # the stamp itself adds 5 points
    assert reliance_verdict(0.30, 0.05, "square") == "partly relies on the square"


def test_report_html_is_self_contained(run_dir):
    page = (run_dir / "report" / "index.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page


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
    assert total == 4 and loaded == total
    assert "What has the classifier learned?" in dom


def test_the_verdict_says_when_discovery_could_not_judge_any_class():
    run = DatasetRun("colored_mnist", "colored_mnist", metrics={"classifier": {"test_accuracy": 0.9}, "discover": {"n_flagged_classes": 0}},
                     details={"discover": {"flagged_classes": [], "classes": {"spring": {"judged": False}}}})
    text = " ".join(verdict(run, {"class_names": ["spring"]}))
    assert "too few explained pairs per class to judge any class" in text and "flags no single region" not in text


def test_without_a_known_answer_the_verdict_says_what_was_found_and_what_was_not_run():
    flagged = {"flagged_classes": ["ring"], "sentences": ["Decisions for class ring hinge on a region of about 8x8 pixels."],
               "classes": {"ring": {"judged": True}}}
    skipped = {"dissect": {"skipped": "no concept pixels"}, "explain": {"skipped_methods": {"d_deeplift": "a TorchScript network"}},
               "influence": {"n_queries": 0, "reason": "trained elsewhere"}, "discover": flagged}
    run = DatasetRun("mine", "image_folder", metrics={"classifier": {"test_accuracy": 0.8}, "discover": {"n_flagged_classes": 1}},
                     details=skipped)
    text = " ".join(verdict(run, {"class_names": ["disk", "ring"]}))
    assert "80.0 %" in text and "no known answer" in text and "Found without being told: Decisions for class ring" in text
    assert "network dissection (no concept pixels)" in text and "d_deeplift (a TorchScript network)" in text
    assert "TracIn (trained elsewhere)" in text and "false alarm" not in text
    quiet = DatasetRun("mine", "image_folder", metrics={"classifier": {"test_accuracy": 0.8}},
                       details={"discover": {"flagged_classes": [], "classes": {"ring": {"judged": True}}}})
    assert "finds no region" in " ".join(verdict(quiet, {})) and "Not run" not in " ".join(verdict(quiet, {}))


def test_the_influence_sentence_says_whether_the_stamped_images_support_the_decision():
    details = {"n_queries": 100, "n_train": 60000, "n_checkpoints": 4, "clean_control_precision_at_10": 0.0, "scoring": "normalized"}
    run = DatasetRun("clever_hans", "clever_hans", {"influence": {"proponent_precision_at_10": 0.947, "proponent_base_rate": 0.099}},
                     {"influence": details})
    [sentence] = influence_findings(run)
    assert "94.7 % of the 10 strongest proponents are stamped images of that class, against 9.9 %" in sentence
    assert "rest on the stamped training images" in sentence
    assert "4 per-epoch checkpoints, by the cosine of their final-layer loss gradients" in sentence
    weak = DatasetRun("clever_hans", "clever_hans", {"influence": {"proponent_precision_at_10": 0.2, "proponent_base_rate": 0.099}},
                      {"influence": details})
    assert "not mainly the stamped training images" in influence_findings(weak)[0]
    colors = DatasetRun("colored_mnist", "colored_mnist", {"influence": {"proponent_position_gap": 0.22, "class_position_gap": 0.32}},
                        {"influence": {**details, "proponent_same_class_share": 1.0}})
    assert "sit 0.220 from it along the colormap, a random training image of the predicted class 0.320" in influence_findings(colors)[0]
    assert influence_findings(DatasetRun("clever_hans", "clever_hans", {}, {})) == []


def test_the_report_says_when_the_gan_pairs_do_not_carry_the_shortcut():
    from pipeline.report.findings import gan_shortcut_sentence

    details = {"n_pairs_carrying_shortcut": 0, "n_pairs_into_shortcut_class": 46, "best_discriminative_method": "d_ig",
               "methods": {"d_ig": {"shortcut_iou_carried": None}}}
    low = gan_shortcut_sentence(0.0, details)
    assert low.startswith("The GAN painted the shortcut on 0 % of its counterfactuals into that class (0 of 46)")
    assert "test the digit, not the shortcut" in low and "stamped control" in low
    details.update(n_pairs_carrying_shortcut=40, methods={"d_ig": {"shortcut_iou_carried": 0.47}})
    high = gan_shortcut_sentence(40 / 46, details)
    assert high == "The GAN painted the shortcut on 87 % of its counterfactuals into that class (40 of 46); on those, the optimal masks overlap it with IoU 0.47."


def test_the_report_sets_the_shortcut_overlap_beside_the_random_maps():
    from pipeline.report.findings import shortcut_overlap_sentence

    details = {"best_discriminative_method": "d_ig", "methods": {
        "d_ig": {"shortcut_iou": 0.72, "shortcut_mass_fraction": 0.865},
        "random": {"shortcut_iou": 0.446, "shortcut_mass_fraction": 0.539}}}
    assert shortcut_overlap_sentence(0.72, details) == (
        "For images translated into the shortcut class, the best discriminative method's optimal mask overlaps the stamped "
        "shortcut with IoU 0.72 and puts 86 % of its mass on it; the smoothed random map's masks reach IoU 0.45 and 54 %, "
        "the level of chance.")
    assert shortcut_overlap_sentence(0.61, {}) == ("For images translated into the shortcut class, the best discriminative "
                                                   "method's optimal mask overlaps the stamped shortcut with IoU 0.61.")


def test_the_classifier_sentence_says_when_hiding_the_digit_does_the_work():
    from pipeline.report.findings import occlusion_caveat

    assert occlusion_caveat(0.998, 0.067, "square") == ""                       # the colour does it
    assert occlusion_caveat(1.0, 0.878, "square") == (", but blacking out the same area does most of that: what the square "
                                                      "hides of the digit, more than its colour, moves the decision")
    assert "does all of that" in occlusion_caveat(0.8, 0.9, "square")
    assert occlusion_caveat(0.9, None, "square") == ""
