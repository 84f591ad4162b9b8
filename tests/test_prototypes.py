"""MMD-critic (pipeline.evaluation.mmd_critic) on constructed point sets whose answer is known in advance, and the
prototypes stage's figures against the class's own base rate."""
import math

import pytest
import torch

from pipeline.evaluation.mmd_critic import (CriticOptions, median_bandwidth, mmd2, mmd_critic, rbf_kernel, sample_per_class,
                                 select_criticisms, select_per_class, select_prototypes, witness)


def gaussian(n, dim, generator, scale=1.0, shift=0.0, axis=0):
    points = torch.randn(n, dim, generator=generator, dtype=torch.float64) * scale
    points[:, axis] += shift
    return points


def planted_mixture(seed, n_main=380, n_planted=20, dim=16, distance=8.0):
    """95 % of the points in N(0, I), 5 % in a unit Gaussian ``distance`` away along the first axis (the last rows)."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([gaussian(n_main, dim, g), gaussian(n_planted, dim, g, shift=distance)])


# --------------------------------------------------------------------------------------------
# Kernel and bandwidth
# --------------------------------------------------------------------------------------------
def test_median_bandwidth_of_constructed_sets():
    line = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])  # distances 1, 3, 2
    assert median_bandwidth(line) == pytest.approx(2.0)
    square = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # four sides 1, two diagonals sqrt 2
    assert median_bandwidth(square) == pytest.approx(1.0)  # the lower of the two middle values
    mostly_one_point = torch.tensor([[0.0], [0.0], [0.0], [2.0]])  # distances 0, 0, 0, 2, 2, 2: the median is 0
    assert median_bandwidth(mostly_one_point) == pytest.approx(2.0)  # ... so the median of the positive ones
    assert median_bandwidth(torch.zeros(5, 3)) == 1.0


def test_rbf_kernel_values():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    kernel = rbf_kernel(x, bandwidth=5.0)
    assert kernel.dtype == torch.float64
    assert torch.allclose(kernel.diagonal(), torch.ones(2, dtype=torch.float64))
    assert kernel[0, 1] == pytest.approx(math.exp(-0.5))  # distance = sigma
    assert torch.allclose(kernel, kernel.T)
    assert rbf_kernel(x)[0, 1] == pytest.approx(math.exp(-0.5))  # median of one distance (5) is 5
    with pytest.raises(ValueError):
        rbf_kernel(x, bandwidth=0.0)


# --------------------------------------------------------------------------------------------
# The published objectives, against brute force
# --------------------------------------------------------------------------------------------
def test_greedy_prototypes_minimise_mmd_step_by_step():
    """Each greedy step adds the point that leaves the smallest MMD^2 between the data and the chosen set."""
    g = torch.Generator().manual_seed(0)
    kernel = rbf_kernel(torch.randn(40, 3, generator=g))
    picks = select_prototypes(kernel, 6).tolist()
    chosen, previous = [], math.inf
    for _ in range(6):
        best = min((c for c in range(40) if c not in chosen), key=lambda c: mmd2(kernel, torch.tensor(chosen + [c])))
        chosen.append(best)
        now = mmd2(kernel, torch.tensor(chosen))
        assert now < previous
        previous = now
    assert picks == chosen
    assert mmd2(kernel, torch.arange(40)) == pytest.approx(0.0, abs=1e-12)


def test_greedy_criticisms_follow_the_witness_and_the_log_determinant():
    g = torch.Generator().manual_seed(1)
    kernel = rbf_kernel(torch.randn(40, 3, generator=g))
    prototypes = select_prototypes(kernel, 4)
    score = witness(kernel, prototypes).abs()
    candidates = [c for c in range(40) if c not in prototypes.tolist()]
    chosen = []
    for _ in range(5):
        objective = lambda c: float(score[chosen + [c]].sum() + torch.logdet(kernel[chosen + [c]][:, chosen + [c]]))  # noqa: E731
        chosen.append(max((c for c in candidates if c not in chosen), key=objective))
    assert select_criticisms(kernel, prototypes, 5, regularize=True).tolist() == chosen
    by_witness = sorted(candidates, key=lambda c: -float(score[c]))[:5]
    assert select_criticisms(kernel, prototypes, 5, regularize=False).tolist() == by_witness


# --------------------------------------------------------------------------------------------
# Known answers
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_criticisms_find_a_planted_outlier_group_and_prototypes_do_not(seed):
    """5 % of the points sit far away: no prototype goes there, and it holds far more than 5 % of the criticisms
    (0.2 to 0.4 of 10 over seeds 0..19 of this construction), and the largest witness value."""
    points = planted_mixture(seed)
    planted = torch.arange(len(points)) >= 380
    prototypes, criticisms, w, _, _ = mmd_critic(points, 5, 10, CriticOptions())
    assert not planted[prototypes].any()
    assert planted[criticisms].float().mean() >= 0.2   # base rate 0.05
    assert planted[int(w.argmax())]


@pytest.mark.parametrize("n_prototypes", [2, 6])
def test_two_separated_equal_clusters_share_the_prototypes(n_prototypes):
    g = torch.Generator().manual_seed(3)
    points = torch.cat([gaussian(100, 4, g), gaussian(100, 4, g, shift=20.0)])
    in_second = (select_prototypes(rbf_kernel(points), n_prototypes) >= 100).sum().item()
    assert in_second == n_prototypes // 2


def test_witness_signs():
    """Half the data at A, half at B, every A point a prototype: the witness is negative at A (the prototypes
    over-represent it), positive at B (data, no prototypes), and 0 far from both."""
    g = torch.Generator().manual_seed(4)
    data = torch.cat([gaussian(50, 2, g, scale=0.3), gaussian(50, 2, g, scale=0.3, shift=10.0)])
    queries = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 1000.0]], dtype=torch.float64)
    kernel = rbf_kernel(queries, data, bandwidth=1.0)
    w = witness(kernel, torch.arange(50))
    assert w[0] < -0.1 and w[1] > 0.1
    assert abs(float(w[2])) < 1e-12
    direct = kernel.mean(1) - kernel[:, :50].mean(1)
    assert torch.allclose(w, direct)


def test_the_log_determinant_term_spreads_criticisms_over_separate_groups():
    """Two tight far groups (18 and 12 points) beside prototypes that cover everything else: by witness alone both
    criticisms come from the larger group; with the log-determinant term the second comes from the other group."""
    g = torch.Generator().manual_seed(5)
    points = torch.cat([gaussian(370, 2, g), gaussian(18, 2, g, scale=0.05, shift=10.0),
                        gaussian(12, 2, g, scale=0.05, shift=10.0, axis=1)])
    group = torch.cat([torch.zeros(370), torch.ones(18), torch.full((12,), 2.0)]).long()
    kernel = rbf_kernel(points)
    prototypes = torch.arange(370)
    assert group[select_criticisms(kernel, prototypes, 2, regularize=False)].tolist() == [1, 1]
    assert group[select_criticisms(kernel, prototypes, 2, regularize=True)].tolist() == [1, 2]
    assert set(select_criticisms(kernel, prototypes, 100).tolist()) == set(range(370, 400))  # never a prototype


# --------------------------------------------------------------------------------------------
# Per class, sampling, determinism
# --------------------------------------------------------------------------------------------
def test_per_class_selection_indexes_the_given_rows():
    g = torch.Generator().manual_seed(6)
    labels = torch.tensor([0, 1, 2] * 40 + [2] * 3)
    labels = labels[torch.randperm(len(labels), generator=g)]
    features = torch.randn(len(labels), 5, generator=g) + 10.0 * labels[:, None]
    selections = select_per_class(features, labels, 4, 3)
    assert sorted(selections) == [0, 1, 2]
    for label, sel in selections.items():
        assert (labels[sel.prototypes] == label).all() and (labels[sel.criticisms] == label).all()
        assert len(sel.prototypes) == 4 and len(sel.criticisms) == 3
        assert not set(sel.prototypes.tolist()) & set(sel.criticisms.tolist())
        assert sel.bandwidth == pytest.approx(median_bandwidth(features[labels == label]))
    small = select_per_class(features[:3], torch.tensor([7, 7, 7]), 2, 5)[7]  # capped by what the class has
    assert len(small.prototypes) == 2 and len(small.criticisms) == 1
    again = select_per_class(features, labels, 4, 3)
    assert all(torch.equal(again[k].prototypes, s.prototypes) and torch.equal(again[k].criticisms, s.criticisms)
               for k, s in selections.items())


def test_sample_per_class_is_seeded():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 5)[torch.randperm(85, generator=torch.Generator().manual_seed(7))]
    draw = lambda seed: sample_per_class(labels, 10, torch.Generator().manual_seed(seed))  # noqa: E731
    first = draw(0)
    assert torch.equal(first, draw(0))
    assert not torch.equal(first, draw(1))
    assert torch.equal(first, torch.sort(first).values) and len(set(first.tolist())) == len(first)
    assert [int((labels[first] == c).sum()) for c in range(3)] == [10, 10, 5]
    whole = sample_per_class(labels, 1000, torch.Generator().manual_seed(0))
    assert torch.equal(whole, torch.arange(85))


def test_options_reach_the_kernel():
    points = planted_mixture(0, dim=4)
    narrow = mmd_critic(points, 3, 3, CriticOptions(bandwidth=0.5))
    default = mmd_critic(points, 3, 3, CriticOptions())
    assert narrow[3] == 0.5 and default[3] == pytest.approx(median_bandwidth(points))
    assert not (torch.equal(narrow[0], default[0]) and torch.equal(narrow[1], default[1]))


# --------------------------------------------------------------------------------------------
# Against the known answer: each kind's share over the class's own base rate
# --------------------------------------------------------------------------------------------
def picks_table(rows):
    """A selection table from (label, kind, training index) rows; ``stamped`` or ``position`` filled by the caller."""
    import pandas as pd

    return pd.DataFrame([{"label": label, "kind": kind, "rank": rank, "index": index}
                         for rank, (label, kind, index) in enumerate(rows)])


def ninety_five_percent_stamped_sevens():
    """40 training 7s (38 stamped: 95 %; 0 and 1 are not) and 20 unstamped 3s, all sampled."""
    import numpy as np

    labels = np.array([7] * 40 + [3] * 20)
    stamped = (np.arange(60) >= 2) & (labels == 7)
    return {"labels": labels, "stamped": stamped[:, None]}, np.arange(60)


def test_criticisms_that_are_the_unstamped_sevens_beat_the_class_s_5_percent_and_other_classes_are_left_out():
    import numpy as np

    from pipeline.data.known_answer import PlantedShortcuts
    from pipeline.data.shortcuts import Shortcut
    from pipeline.stages.prototypes import planted_figures

    train, sample = ninety_five_percent_stamped_sevens()
    answer = PlantedShortcuts((Shortcut(label=7, kind="square", fraction=0.95),), (28, 28))
    table = picks_table([(7, "criticism", 0), (7, "criticism", 1), (7, "prototype", 10), (7, "prototype", 11),
                         (3, "criticism", 45), (3, "prototype", 50)])
    table["stamped"] = train["stamped"][table["index"]].any(1)
    raw, lifts = planted_figures(table, sample, train, answer, lambda name: torch.Generator().manual_seed(len(name)))
    critics, prototypes = lifts["criticism_unstamped_share"], lifts["prototype_unstamped_share"]
    assert critics.n == 2 and critics.chance == pytest.approx(0.05) and critics.lift == pytest.approx(0.95)
    assert critics.verdict == "above chance" and prototypes.verdict == "below chance"
    assert raw == pytest.approx({"criticism_unstamped_share": 1.0, "prototype_unstamped_share": 0.0,
                                 "unstamped_base_rate": 0.05})
    train["stamped"][:] = False           # the negative control: nothing planted, nothing to tell picks apart
    table["stamped"] = False
    _, lifts = planted_figures(table, sample, train, answer, lambda name: torch.Generator().manual_seed(0))
    assert all(lift.verdict == "not judged" for lift in lifts.values())
    assert lifts["criticism_unstamped_share"].reason.startswith("no sampled class holds images both")


def test_colormap_end_shares_are_held_to_the_class_s_own_share_at_the_ends():
    import numpy as np

    from pipeline.stages.prototypes import colored_mnist_figures

    positions = np.array([0.05, 0.5, 0.5, 0.5, 0.95, 0.5, 0.5, 0.5, 0.5, 0.5], np.float32)   # 2 of 10 at an end
    train = {"labels": np.zeros(10, int), "positions": positions}
    table = picks_table([(0, "criticism", 0), (0, "criticism", 4), (0, "prototype", 1), (0, "prototype", 2)])
    table["position"] = positions[table["index"]]
    raw, lifts = colored_mnist_figures(table, np.arange(10), train, lambda name: torch.Generator().manual_seed(len(name)))
    assert lifts["criticism_colormap_end_share"].chance == pytest.approx(0.2)
    assert lifts["criticism_colormap_end_share"].lift == pytest.approx(0.8)
    assert lifts["prototype_colormap_end_share"].lift == pytest.approx(-0.2)
    assert raw["criticism_position_gap"] == pytest.approx(0.45) and raw["colormap_end_base_rate"] == pytest.approx(0.2)
    assert lifts["criticism_position_gap"].lift == pytest.approx(0.45 - raw["sample_position_gap"])


@pytest.mark.parametrize("dataset, fraction", [("clever_hans", 0.95), ("negative_control", 0.0), ("colored_mnist", None)])
def test_the_stage_writes_the_criticisms_lift_and_null_where_nothing_can_be_told_apart(dataset, fraction, tmp_path,
                                                                                      monkeypatch):
    import json

    import numpy as np
    import yaml

    from pipeline import paths
    from pipeline.data.known_answer import ColorRule, PlantedShortcuts
    from pipeline.data.shortcuts import Shortcut
    from pipeline.models.classifiers import build_seeded_classifier, save_model
    from pipeline.stages.prototypes import main
    from pipeline.storage import save_arrays, write_json
    from tests.conftest import repo_params

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    n, n_classes = 80, 4 if fraction is None else 10
    gray = (rng.random((n, 28, 28)) < 0.2).astype(np.uint8) * 200
    train = {"images": np.repeat(gray[:, None], 3, axis=1), "labels": np.arange(n) % n_classes}
    if fraction is None:
        answer = ColorRule(("spring", "summer", "autumn", "winter"))
        train |= {"positions": rng.random(n).astype(np.float32), "digits": rng.integers(0, 10, n)}
    else:
        answer = PlantedShortcuts((Shortcut(label=7, kind="square", fraction=fraction, color=[1.0, 0.0, 0.0]),), (28, 28))
        train["stamped"] = ((train["labels"] == 7) & (np.arange(n) > 7) & (fraction > 0))[:, None]   # 7 of 8 7s
    save_arrays(paths.prepared_dir(dataset) / "train.npz", **train)
    write_json(paths.prepared_dir(dataset) / "meta.json", {"n_classes": n_classes, "known_answer": answer.to_meta(),
                                                           "class_names": [str(c) for c in range(n_classes)]})
    config = {"architecture": "dense", "n_classes": n_classes, "width": 2}
    save_model(paths.classifier_path(dataset), build_seeded_classifier(config, 0), config)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params({"device": "cpu", "prototypes": {
        "n_per_class": 8, "n_prototypes": 2, "n_criticisms": 2, "batch_size": 16}})))
    main([dataset])
    metrics = json.loads(paths.metrics_path(dataset, "prototypes").read_text())
    details = json.loads((paths.plots_dir(dataset, "prototypes") / "details.json").read_text())
    figure = "criticism_colormap_end_share" if fraction is None else "criticism_unstamped_share"
    assert list(metrics) == [f"{figure}_lift", f"{figure}_lift_low", f"{figure}_lift_high"]
    lift = details["chance"][figure]
    if fraction == 0.0:
        assert all(value is None for value in metrics.values()) and lift["verdict"] == "not judged"
    else:
        assert metrics[f"{figure}_lift"] == pytest.approx(lift["lift"], abs=1e-6)
        assert lift["n"] == (2 if fraction else 2 * n_classes)    # the shortcut class's criticisms; every class's
    if fraction:
        assert lift["chance"] == pytest.approx(1 / 8)
