"""The report on a constructed run: sentences from known metrics, and the page in a real headless browser."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline import report  # noqa: E402

CLASSIFIER = {
    "colored_mnist": {"test_accuracy": 0.999, "per_class_accuracy": {"0": 1.0, "1": 0.998, "2": 1.0, "3": 0.999}},
    "clever_hans": {"test_accuracy": 0.995, "per_class_accuracy": {str(c): 0.99 for c in range(10)},
                    "clean_accuracy": 0.98, "shortcut_reliance": 0.94, "shortcut_reliance_per_class": {"7_square": 0.94}},
}
EXPLAIN = {"n_pairs": 90, "n_pairs_kept": 80, "shortcut_iou": 0.61, "best_discriminative_method": "d_ig",
           "stamped_control": {"n_pairs": 40, "n_moved_by_stamp": 40, "methods": {"d_ig": {"shortcut_iou": 0.67}}},
           "methods": {"d_ig": {"median_score": 0.83, "iqr_score": 0.1}, "ig": {"median_score": 0.41, "iqr_score": 0.2},
                       "random": {"median_score": 0.2, "iqr_score": 0.1}, "residual": {"median_score": 0.7, "iqr_score": 0.1}}}


def picture(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path)
    plt.close(fig)


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    for dataset, n_classes in (("colored_mnist", 4), ("clever_hans", 10)):
        (tmp_path / "metrics" / dataset / "timing").mkdir(parents=True)
        (tmp_path / "metrics" / dataset / "classifier.json").write_text(json.dumps(CLASSIFIER[dataset]))
        (tmp_path / "metrics" / dataset / "explain.json").write_text(json.dumps(EXPLAIN))
        (tmp_path / "metrics" / dataset / "timing" / "train_classifier.json").write_text(json.dumps(
            {"stage": f"train_classifier@{dataset}", "device": "cpu", "seconds": 2.0, "images": 100, "images_per_second": 50.0}))
        names = ["spring", "summer", "autumn", "winter"] if n_classes == 4 else [str(c) for c in range(10)]
        (tmp_path / "data" / "prepared" / dataset).mkdir(parents=True)
        (tmp_path / "data" / "prepared" / dataset / "meta.json").write_text(json.dumps({"class_names": names, "n_classes": n_classes}))
        picture(tmp_path / "plots" / dataset / "prepare" / "examples.png")
        picture(tmp_path / "plots" / dataset / "train_classifier" / "confusion.png")
    report.main(["--params", "params.yaml"])
    return tmp_path


def test_report_states_findings_from_the_metrics(run_dir):
    text = (run_dir / "report" / "README.md").read_text()
    assert "assigns 94.0 % of them to class 7: it relies on the square" in text
    assert "Discriminative integrated gradients scores 0.830 vs. 0.410 for vanilla integrated gradients: better" in text
    assert "IoU 0.61" in text
    assert "control (40 clean images" in text and "reaches IoU 0.67" in text
    timing = json.loads((run_dir / "metrics" / "timing.json").read_text())
    assert timing["total_seconds"] == 4.0 and set(timing["stages"]) == {"train_classifier@colored_mnist", "train_classifier@clever_hans"}


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
