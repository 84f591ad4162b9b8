"""A known answer, end to end: a planted shortcut the classifier must learn, found again by the learned chain.

`dvc repro discover@planted` in a temporary copy of the repository runs prepare -> train_classifier -> train_gan ->
counterfactuals -> explain -> discover (nothing else) on a subset of MNIST where 95 % of the training sevens carry a
red 12x12 square in the top-left corner (18 % of the image, off the digit: no other class ever shows it, so the
classifier can learn it). It asserts what the pipeline exists to say here: the classifier relies on the square far
above its base rate, and discover, without being told, flags class 7 and no other, at the square.

Sizes (over tests/tiny_params.yaml): 3000 training images (about 285 stamped sevens, enough references of every
class for the GAN), 500 test images; counterfactuals of 100 of them into each of the 9 other classes, about 90 pairs
into each class, every converted pair explained, so that a class whose counterfactuals mostly convert has the 2 x 20
pairs discover's held-out halves need (discover.min_pairs); one discriminative method (d_ig, with the random control),
which is what discover searches; the edit generator (docs/train_gan.md) at width 8 and 5x the default learning
rate, since the GAN is the one stage whose time is not a few seconds here.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, merged, repo_params
from tests.workspaces import dvc, read, repository_copy, stages_run

# Opt-in (`pytest --run-slow`): three minutes or more of training for a chain whose discover check cannot pass yet
# (below); the end-to-end module checks the planted square's reliance on every run.
pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PLANTED = "planted"
CHAIN = ("prepare", "train_classifier", "train_gan", "counterfactuals", "explain", "discover")
# The stamp alone moves at least one in five of the other classes' images into its class (their base rate is about
# 1 in 500 here); fraction 0.95 leaves unstamped sevens, so the classifier learns the digit too and its reliance stays
# well below 1 (0.34 at these settings; 0.49-0.59 for the 8x8 square at full data, metrics/seed_study.json).
MIN_RELIANCE_GAIN = 0.2
SETTINGS = {
    "device": "cpu",
    "data": {"train_size": 3000, "test_size": 500},
    "classifier": {"epochs": 4, "width": 16, "batch_size": 64},
    "gan": {"generator": "edit", "iterations": 400, "batch_size": 32, "width": 8, "style_dim": 16, "latent_dim": 8,
            "learning_rate": 0.002, "mask_weight": 0.1, "r1_every": 4, "checkpoint_every": 400, "log_every": 50, "n_grid_images": 2},
    "counterfactuals": {"n_images": 100, "n_reference_images": 16, "n_gallery_images": 2, "n_interpolation_images": 2,
                        "interpolation_steps": 5, "n_style_points": 100},
    "explain": {"methods": ["d_ig", "random"], "max_pairs": None, "n_thresholds": 50, "ig_steps": 8, "control_pairs": 0,
                "batch_size": 4096, "attribution_batch_size": 128, "gallery_top_k": 1},
    "discover": {"n_permutations": 100, "n_trigger_images": 200},
}
SQUARE = {"label": 7, "kind": "square", "fraction": 0.95, "position": [0, 0], "side": 12, "strength": 1.0,
          "color": [1.0, 0.0, 0.0]}


def planted(fraction: float) -> dict:
    """params.yaml's Clever Hans entry with the square above on ``fraction`` of the sevens."""
    entry = repo_params()["datasets"]["clever_hans"]
    return dict(entry, shortcuts=[{**entry["shortcuts"][0], **SQUARE, "fraction": fraction}])


def workspace_params(mnist_root: Path, datasets: dict, seed: int) -> dict:
    tiny = yaml.safe_load((REPO / "tests" / "tiny_params.yaml").read_text())
    params = merged(repo_params(tiny), SETTINGS)
    params["seed"] = seed
    params["data"]["root"] = str(mnist_root)
    params["datasets"] = datasets
    return params


def repro(workspace: Path, dataset: str) -> dict:
    """`dvc repro discover@<dataset>`: its output and the figures the tests read."""
    output = dvc("repro", f"discover@{dataset}", cwd=workspace)
    return {"output": output, "classifier": read(workspace, "metrics", dataset, "classifier.json"),
            "explain": read(workspace, "metrics", dataset, "explain.json"),
            "discover": read(workspace, "plots", dataset, "discover", "details.json")}


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, mnist_root) -> dict:
    params = workspace_params(mnist_root, {PLANTED: planted(SQUARE["fraction"])}, seed=0)
    return repro(repository_copy(tmp_path_factory.mktemp("known_answer") / "repo", params, "known-answer regression"), PLANTED)


def test_the_chain_runs_only_what_discover_needs(planted_run):
    assert stages_run(planted_run["output"]) == {f"{stage}@{PLANTED}" for stage in CHAIN}


def test_the_classifier_relies_on_the_planted_square(planted_run):
    measured = planted_run["classifier"]
    assert measured["shortcut_reliance"] > measured["shortcut_base_rate"] + MIN_RELIANCE_GAIN, measured


# Measured (seed 0, one thread, cores shared with another test run), two things short:
# - the GAN: its counterfactuals carry no square after 400 iterations (explain's gan_shortcut_fraction 0.0); trained
#   on, they convert 96 % of images by iteration 750 (210 s) and carry the square from iteration 1100 (0.95; 310 s);
# - the classifier: at 1200 iterations every class is judged and 7's one recurring region is the square (rows 0-11,
#   columns 0-10, in 93 % of held-out pairs into 7 against 11 % of the others), but pasted alone it moves 23.5 % of
#   other images into 7, below discover.min_trigger_rate (0.5): this classifier's shortcut reliance is 0.34.
# Strict: once the chain flags the square within these settings, this fails until the mark goes.
@pytest.mark.xfail(strict=True, reason="within the tier's time the GAN paints no square, and the classifier's "
                                       "reliance (0.34) is below discover's trigger threshold (0.5); see above")
def test_discover_flags_the_planted_class_and_only_it(planted_run):
    found, shortcut = planted_run["discover"], str(SQUARE["label"])
    assert shortcut in found["judged_classes"], (found["classes"][shortcut], planted_run["explain"])
    assert found["flagged_classes"] == [shortcut], (found["sentences"], planted_run["explain"])
    assert found["found_without_being_told"] == [shortcut], found["chance"]["shortcut_region_iou_by_class"]
