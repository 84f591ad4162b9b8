"""TracIn proponents (pipeline.attribution.tracin) and their known-answer figures (pipeline.evaluation.influence), on constructed cases."""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from captum.influence import TracInCPFast

from pipeline.attribution.tracin import Checkpoint, Proponents, TracIn, gradient_factors
from pipeline.config import PRECISION_AT, ConfigError
from pipeline.data.tensors import subsample, to_float
from pipeline.evaluation.influence import (CLASS_BASE_RATE, NO_BASE_RATE, NO_RANKING, Traced, by_rank,
                                           colored_mnist_figures, per_query_share, planted_figures, planted_lifts,
                                           planted_queries, precision_lift, proponent_table, within_class_auc)
from pipeline.scoring.chance import lift_over_chance
from pipeline.scoring.proportions import class_base_rates
from pipeline.storage import save_arrays, write_json
from pipeline.models.classifiers import build_seeded_classifier
from tests.conftest import params_with

CONFIG = {"architecture": "dense", "n_classes": 3, "width": 2}


def training_set(n=96, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 28, 28), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 3, (n,), generator=generator)


def checkpoints_of_training(model, images, labels, learning_rates):
    """Plain SGD, one epoch per learning rate; the weights after each epoch with that rate."""
    kept = []
    for lr in learning_rates:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        for part in torch.arange(len(images)).split(32):
            loss = nn.functional.cross_entropy(model(to_float(images[part])), labels[part])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        kept.append(Checkpoint({k: v.clone() for k, v in model.state_dict().items()}, lr))
    return kept


@pytest.fixture(scope="module")
def trained():
    images, labels = training_set()
    model = build_seeded_classifier(CONFIG, 0)
    return model, images, labels, checkpoints_of_training(model, images, labels, [0.2, 0.05])


def captum_scores(model, checkpoints, images, labels, test_images, test_labels):
    """captum's TracInCPFast (final-layer TracIn) on the same model, checkpoints and data: the reference."""
    for p in model.parameters():
        p.requires_grad_(True)
    float_model = nn.Sequential(nn.Identity(), model)   # captum feeds the dataset's tensors as they are: float ones here

    def load(net, checkpoint):
        net[1].load_state_dict(checkpoint.state_dict)
        return checkpoint.learning_rate

    data = torch.utils.data.TensorDataset(to_float(images), labels)
    reference = TracInCPFast(float_model, model.head, data, list(checkpoints), checkpoints_load_func=load,
                             loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=40)
    return reference.influence((to_float(test_images), test_labels))


def test_unnormalised_scores_equal_captums_tracincpfast(trained):
    model, images, labels, checkpoints = trained
    test_images, test_labels = training_set(n=5, seed=1)
    ours = TracIn(model, model.head, checkpoints, images, labels, batch_size=40).scores(test_images, test_labels, normalize=False)
    expected = captum_scores(model, checkpoints, images, labels, test_images, test_labels)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)


def test_normalised_scores_are_learning_rate_weighted_gradient_cosines(trained):
    model, images, labels, checkpoints = trained
    test_images, test_labels = training_set(n=4, seed=2)
    expected = 0
    for checkpoint in checkpoints:    # the full final-layer gradients, flattened, compared by cosine
        model.load_state_dict(checkpoint.state_dict)
        grads = [torch.einsum("nc,nf->ncf", f.errors, f.inputs).flatten(1)
                 for f in (gradient_factors(model, model.head, x, y, 32) for x, y in ((test_images, test_labels), (images, labels)))]
        cosines = nn.functional.normalize(grads[0], dim=1) @ nn.functional.normalize(grads[1], dim=1).T
        expected = expected + checkpoint.learning_rate * cosines
    ours = TracIn(model, model.head, checkpoints, images, labels).scores(test_images, test_labels, normalize=True)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)
    assert ours.abs().max() <= sum(c.learning_rate for c in checkpoints) + 1e-6


def test_proponents_are_the_top_k_scores_strongest_first(trained):
    model, images, labels, checkpoints = trained
    test = training_set(n=5, seed=3)
    tracin = TracIn(model, model.head, checkpoints, images, labels)
    for normalize in (True, False):
        found = tracin.proponents(*test, top_k=4, normalize=normalize)
        best = tracin.scores(*test, normalize=normalize).topk(4, dim=1)
        assert torch.equal(found.indices, best.indices) and (found.scores.diff(dim=1) <= 0).all()


def test_learning_rates_weight_the_checkpoints(trained):
    model, images, labels, checkpoints = trained
    test = training_set(n=3, seed=2)
    doubled = [Checkpoint(c.state_dict, 2 * c.learning_rate) for c in checkpoints]
    once = TracIn(model, model.head, checkpoints, images, labels).scores(*test)
    twice = TracIn(model, model.head, doubled, images, labels).scores(*test)
    torch.testing.assert_close(twice, 2 * once)


@pytest.mark.parametrize("normalize", [True, False])
def test_a_training_image_used_as_the_test_image_is_its_own_top_proponent(trained, normalize):
    """Normalised, a duplicate's cosine is 1, the largest there is. Unnormalised, with one checkpoint,
    TracIn(z, z') = lr (a . a')(e . e') <= lr |a||a'||e||e'| (Cauchy-Schwarz): the training image with the largest
    gradient |a||e| beats every other training image on itself."""
    model, images, labels, checkpoints = trained
    last = checkpoints[-1:]
    model.load_state_dict(last[0].state_dict)
    strongest = int(gradient_factors(model, model.head, images, labels, 64).norms().argmax())
    tracin = TracIn(model, model.head, last, images, labels)
    chosen = [strongest] if not normalize else [strongest, 7, 50]
    found = tracin.proponents(images[chosen], labels[chosen], top_k=10, normalize=normalize)
    assert found.indices[:, 0].tolist() == chosen


def test_top_k_beyond_the_training_set_and_no_checkpoint_are_refused(trained):
    model, images, labels, checkpoints = trained
    with pytest.raises(ValueError, match="top_k"):
        TracIn(model, model.head, checkpoints, images[:5], labels[:5]).proponents(images[:1], labels[:1], top_k=10)
    with pytest.raises(ValueError, match="checkpoint"):
        TracIn(model, model.head, [], images, labels)


# ----------------------------------------------------------------------------------------------
# The known-answer figures on constructed proponents
# ----------------------------------------------------------------------------------------------
def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def streams(name: str) -> torch.Generator:
    return generator(len(name))


def class_95_percent_stamped():
    """40 searched training images: 0-18 class 7 stamped, 19 class 7 clean (95 % of the 7s stamped), 20-39 class 3."""
    labels = np.array([7] * 20 + [3] * 20)
    carries = np.arange(40) < 19
    return labels, carries


def merely_the_class(n_queries=20, top_k=10):
    """Each query's proponents are 10 images of class 7 in cyclic order: every 7 is a proponent equally often."""
    indices = torch.tensor([[(q + j) % 20 for j in range(top_k)] for q in range(n_queries)])
    return Proponents(indices, torch.linspace(1, 0, top_k).repeat(n_queries, 1))


def queries_into(label, n):
    return {"test_index": torch.arange(n), "targets": torch.full((n,), label)}


def test_proponents_that_are_merely_the_class_s_images_score_its_base_rate_lift_zero():
    """95 % of the 7s are stamped: proponents that are merely 7s are 95 % stamped by chance. Held to the share of
    stamped images among *all* searched training images (19 / 40) they would look like a find."""
    labels, carries = class_95_percent_stamped()
    table = proponent_table(merely_the_class(), queries_into(7, 20), np.arange(40), labels, carries)
    targets = np.full(20, 7)
    np.testing.assert_allclose(class_base_rates(targets, labels, carries), 0.95)
    lift = precision_lift(table, targets, labels, carries, PRECISION_AT, generator())
    assert lift.score == pytest.approx(0.95) and lift.chance == pytest.approx(0.95) and lift.lift == pytest.approx(0)
    assert lift.verdict == "no better than chance" and lift.reference == CLASS_BASE_RATE
    flattering = lift_over_chance(per_query_share(table, PRECISION_AT), {"all searched images": 19 / 40}, generator())
    assert flattering.verdict == "above chance"
    only_stamped = Proponents(torch.tensor([[j for j in range(10)]] * 20), torch.ones(20, 10))
    found = precision_lift(proponent_table(only_stamped, queries_into(7, 20), np.arange(40), labels, carries),
                           targets, labels, carries, PRECISION_AT, generator())
    assert found.lift == pytest.approx(0.05) and found.verdict == "above chance"


def test_the_within_class_ranking_is_an_auc_over_the_class_s_images_with_ties_counted_half():
    labels = np.array([7, 7, 7, 7, 7, 3])
    carries = np.array([True, True, True, False, False, False])
    scores = torch.tensor([[3.0, 2.0, 1.5, 2.5, 1.0, 9.0],     # 4 of the 6 (stamped, unstamped) pairs ordered right
                           [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],     # all tied: 0.5
                           [0.0, 0.0, 0.0, 1.0, 1.0, 5.0]])    # every unstamped 7 above every stamped one: 0
    auc = within_class_auc(scores, np.array([7, 7, 7]), labels, carries)
    assert auc.tolist() == pytest.approx([4 / 6, 0.5, 0.0])
    assert torch.isnan(within_class_auc(scores[:1], np.array([3]), labels, carries)).all()   # class 3: nothing stamped


def test_stamped_queries_that_rank_the_stamped_images_first_beat_clean_queries_that_do_not():
    labels, carries = class_95_percent_stamped()
    n = 20
    ranks_stamped_first = torch.where(torch.from_numpy(carries), 1.0, 0.0) + 0.01 * torch.rand(n, 40, generator=generator())
    at_random = torch.rand(n, 40, generator=generator(1))
    found = merely_the_class(n)
    groups = {"stamped": Traced(proponent_table(found, queries_into(7, n), np.arange(40), labels, carries),
                                ranks_stamped_first, np.full(n, 7)),
              "clean": Traced(proponent_table(found, queries_into(7, n), np.arange(40), labels, carries), at_random,
                              np.full(n, 7))}
    lifts = planted_lifts(groups, labels, carries, PRECISION_AT, streams)
    assert lifts["within_class_auc_stamped"].score == pytest.approx(1.0) and lifts["within_class_auc_stamped"].chance == 0.5
    assert lifts["within_class_auc_clean"].verdict == "no better than chance"
    assert lifts["within_class_auc"].verdict == "above chance" and lifts["within_class_auc"].reference.startswith("the clean")
    assert lifts["proponent_precision_at_10"].lift == pytest.approx(0) == lifts["clean_query_precision_at_10"].lift


def test_the_negative_control_has_no_stamped_training_image_so_nothing_is_judged_and_nothing_is_zero(tmp_path):
    labels, carries = class_95_percent_stamped()
    none = np.zeros_like(carries)
    table = proponent_table(merely_the_class(), queries_into(7, 20), np.arange(40), labels, none)
    groups = {g: Traced(table, torch.rand(20, 40, generator=generator()), np.full(20, 7)) for g in ("stamped", "clean")}
    lifts = planted_lifts(groups, labels, none, PRECISION_AT, streams)
    assert all(lift.verdict == "not judged" for lift in lifts.values())
    assert lifts["proponent_precision_at_10"].reason == NO_BASE_RATE and lifts["within_class_auc"].reason == NO_RANKING
    write_json(tmp_path / "metrics.json", lifts["within_class_auc"].metrics("within_class_auc"))
    assert json.loads((tmp_path / "metrics.json").read_text()) == dict.fromkeys(
        ["within_class_auc_lift", "within_class_auc_lift_low", "within_class_auc_lift_high"])
    figures = planted_figures(groups["stamped"], labels, none, PRECISION_AT)
    assert math.isnan(figures["class_base_rate"]) and figures["precision_at_k"][1] == 0.0


def test_candidates_map_proponents_back_to_training_indices():
    labels, carries = class_95_percent_stamped()
    candidates = np.arange(40)[::-1].copy()      # proponent j is training image 39 - j
    table = proponent_table(merely_the_class(2), queries_into(7, 2), candidates, labels, carries)
    assert table.loc[table["query"] == 0, "train_index"].tolist() == [39 - j for j in range(10)]
    assert table["test_index"].tolist() == [0] * 10 + [1] * 10


def test_colored_mnist_proponents_closer_on_the_colormap_than_the_class_s_images():
    labels = np.array([0] * 4 + [1] * 4)
    positions = np.array([0.1, 0.2, 0.5, 0.9, 0.0, 0.3, 0.6, 1.0], np.float32)
    test_positions = np.array([0.15, 0.5], np.float32)
    found = Proponents(torch.tensor([[0, 1] * 5, [2, 6] * 5]), torch.ones(2, 10))
    table = proponent_table(found, queries_into(0, 2), np.arange(8), labels, positions=(positions, test_positions))
    figures, lift = colored_mnist_figures(table, labels, positions, test_positions, PRECISION_AT, generator())
    gap = [(0.05 + 0.05) / 2, (0.0 + 0.1) / 2]
    class_gap = [np.mean([0.05, 0.05, 0.35, 0.75]), np.mean([0.4, 0.3, 0.0, 0.4])]
    assert figures["proponent_position_gap"] == pytest.approx(np.mean(gap))
    assert figures["class_position_gap"] == pytest.approx(np.mean(class_gap))
    assert figures["proponent_same_class_share"] == pytest.approx(0.75)
    assert lift.score == pytest.approx(1 - np.mean(gap)) and lift.chance == pytest.approx(1 - np.mean(class_gap))
    assert lift.lift == pytest.approx(np.mean(class_gap) - np.mean(gap))
    rank = by_rank(table, figures)
    assert rank["position_gap"].tolist()[:2] == pytest.approx([0.025, 0.075])


def test_sample_indices_are_seeded_sorted_and_capped():
    a = subsample(100, 10, np.random.default_rng(3))
    assert np.array_equal(a, subsample(100, 10, np.random.default_rng(3)))
    assert np.all(np.diff(a) > 0) and len(a) == 10
    assert np.array_equal(subsample(5, None, np.random.default_rng(0)), np.arange(5))
    assert np.array_equal(subsample(5, 50, np.random.default_rng(0)), np.arange(5))


@pytest.mark.parametrize("values, key", [({"top_k": 5}, "top_k"), ({"n_train": 3}, "n_train"), ({"n_test": 0}, "n_test")])
def test_bad_influence_params(values, key):
    with pytest.raises(ConfigError, match=f"influence.{key}"):
        params_with({"influence": values})


@pytest.mark.parametrize("kind", ["clever_hans", "colored_mnist"])
def test_picture_of_queries_and_proponents(tmp_path, kind):
    from pipeline.evaluation.influence import proponents_figure
    from pipeline.storage import save_figure

    queries = queries_into(7, 2) | {"images": torch.zeros(2, 3, 28, 28, dtype=torch.uint8), "true": torch.tensor([1, 0])}
    if kind == "clever_hans":
        labels, carries = class_95_percent_stamped()
        table = proponent_table(merely_the_class(2), queries, np.arange(40), labels, carries)
    else:   # a float column (positions) makes pandas rows float: indices must still work
        labels = np.array([0, 1] * 20)
        found = Proponents(torch.arange(8).repeat(2, 2)[:, :10], torch.linspace(1, 0, 10).repeat(2, 1))
        table = proponent_table(found, queries, np.arange(40), labels,
                                positions=(np.linspace(0, 1, 40, dtype=np.float32), np.array([0.2, 0.7], np.float32)))
    save_figure(proponents_figure(table, queries, np.zeros((40, 3, 28, 28), np.uint8), [str(c) for c in range(10)],
                                  n_show=1, dataset=kind), tmp_path / "proponents.png")
    assert (tmp_path / "proponents.png").stat().st_size > 1000


class AlwaysClass(nn.Module):
    """Predicts class ``label`` for every image (a classifier the stamp never moves into 7)."""

    def __init__(self, label: int, n_classes: int = 10):
        super().__init__()
        self.logits = nn.Parameter(torch.nn.functional.one_hot(torch.tensor(label), n_classes).float() * 5)

    def forward(self, x):
        return self.logits.expand(len(x), -1) + 0 * x.flatten(1)[:, :1]


def square_on_seven():
    from pipeline.data.known_answer import PlantedShortcuts
    from pipeline.data.shortcuts import Shortcut

    return PlantedShortcuts((Shortcut(label=7, kind="square", position=[0, 0], side=4, color=[1.0, 0.0, 0.0]),), (28, 28))


def test_no_image_moved_by_the_stamp_gives_empty_queries_not_a_crash():
    from pipeline.models.inference import predict_probabilities

    model = AlwaysClass(label=3)
    assert predict_probabilities(model, torch.zeros(0, 3, 28, 28, dtype=torch.uint8)).shape == (0, 10)
    test = {"labels": torch.tensor([0, 1, 2, 3, 4, 5]), "clean_images": torch.zeros(6, 3, 28, 28, dtype=torch.uint8)}
    queries = planted_queries(model, test, square_on_seven(), n_test=4, rng=np.random.default_rng(0))
    assert len(queries["stamped"]["images"]) == 0 and queries["clean"]["targets"].shape == (0,)


class RedCornerMeansSeven(AlwaysClass):
    """Class 7 when pixel (0, 0) is red (not white), else the image's mean decides between 1 (bright) and 7 (dark)."""

    def forward(self, x):
        seven = (x[:, 0, 0, 0] > 0.5) & (x[:, 1, 0, 0] < 0.5) | (x.mean((1, 2, 3)) < 0.1)
        return torch.nn.functional.one_hot(torch.where(seven, 7, 1), 10).float() * 5 + 0 * self.logits


def test_planted_queries_are_images_the_stamp_moves_and_clean_images_of_the_class_assigned_to_it():
    images = torch.zeros(8, 3, 28, 28, dtype=torch.uint8)
    images[:4] = 200                           # bright: called 1 unless stamped
    labels = torch.tensor([1, 1, 2, 7, 7, 7, 7, 3])
    queries = planted_queries(RedCornerMeansSeven(7), {"labels": labels, "clean_images": images}, square_on_seven(),
                              n_test=10, rng=np.random.default_rng(0))
    stamped, clean = queries["stamped"], queries["clean"]
    assert stamped["test_index"].tolist() == [0, 1, 2, 7] and (stamped["targets"] == 7).all()
    assert (stamped["images"][:, 0, :4, :4] == 255).all() and (stamped["images"][:, 1:, :4, :4] == 0).all()
    assert clean["test_index"].tolist() == [4, 5, 6]   # 7 at index 3 is bright: the classifier calls it 1
    assert torch.equal(clean["images"], images[[4, 5, 6]]) and (clean["targets"] == 7).all()


# ----------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------
def red_corner_means_seven(model: nn.Module) -> nn.Module:
    """The dense classifier with two paths into class 7's logit: the top-left 8x8 corner's red minus green (a red
    corner stamp moves any image into 7; gray digits have red = green) and a bright bottom-right block (the 7s)."""
    first, second = model.embedding[1], model.embedding[3]
    with torch.no_grad():
        corner, block = torch.zeros(3, 28, 28), torch.zeros(3, 28, 28)
        corner[0, :8, :8], corner[1, :8, :8] = 1.0, -1.0
        block[:, 24:, 24:] = 1.0
        for unit, weights in enumerate((corner, block)):
            first.weight[unit], first.bias[unit] = weights.flatten(), 0.0
            second.weight[unit], second.bias[unit] = 0.0, 0.0
            second.weight[unit, unit] = 1.0
            model.head.weight[:, unit] = 0.0
            if len(model.head.weight) > 7:
                model.head.weight[7, unit] = 1.0
    return model


def write_influence_inputs(dataset: str, fraction: float | None) -> None:
    """Prepared splits, meta, a classifier and its two epoch checkpoints, as prepare and train_classifier leave them."""
    from pipeline import paths
    from pipeline.data.known_answer import ColorRule, PlantedShortcuts
    from pipeline.data.shortcuts import Shortcut
    from pipeline.models.classifiers import save_model

    rng = np.random.default_rng(0)
    n_classes = 4 if fraction is None else 10
    config = {"architecture": "dense", "n_classes": n_classes, "width": 4}
    model = red_corner_means_seven(build_seeded_classifier(config, 0))
    splits = {}
    for split, n in (("train", 60), ("test", 30)):
        gray = (rng.random((n, 28, 28)) < 0.2).astype(np.uint8) * 200
        labels = np.arange(n) % n_classes
        gray[labels == 7, 24:, 24:] = 255
        splits[split] = {"images": np.repeat(gray[:, None], 3, axis=1), "labels": labels}
    if fraction is None:
        answer = ColorRule(("spring", "summer", "autumn", "winter"))
        for split in splits.values():
            split["positions"] = rng.random(len(split["labels"])).astype(np.float32)
    else:
        answer = PlantedShortcuts((Shortcut(label=7, kind="square", position=[0, 0], side=8, fraction=fraction,
                                             color=[1.0, 0.0, 0.0]),), (28, 28))
        train = splits["train"]
        train["stamped"] = ((train["labels"] == 7) & (np.arange(60) > 7) & (fraction > 0))[:, None]   # 5 of 6 7s
        train["images"] = train["images"].copy()
        train["images"][train["stamped"][:, 0]] = answer.stamp(train["images"][train["stamped"][:, 0]], 0)
        splits["test"]["clean_images"] = splits["test"]["images"]
    for name, arrays in splits.items():
        save_arrays(paths.prepared_dir(dataset) / f"{name}.npz", **arrays)
    write_json(paths.prepared_dir(dataset) / "meta.json", {"n_classes": n_classes, "known_answer": answer.to_meta(),
                                                           "class_names": [str(c) for c in range(n_classes)]})
    save_model(paths.classifier_path(dataset), model, config)
    for epoch in (1, 2):
        save_model(paths.classifier_checkpoint_path(dataset, epoch), model, config, epoch=epoch, learning_rate=0.01)


@pytest.mark.parametrize("dataset, fraction", [("clever_hans", 0.95), ("negative_control", 0.0), ("colored_mnist", None)])
def test_the_stage_writes_each_headline_lift_with_its_interval_and_null_where_nothing_is_judged(dataset, fraction,
                                                                                               tmp_path, monkeypatch):
    import yaml

    from pipeline import paths
    from pipeline.stages.influence import main
    from tests.conftest import repo_params

    monkeypatch.chdir(tmp_path)
    write_influence_inputs(dataset, fraction)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params({
        "device": "cpu", "influence": {"n_test": 6, "batch_size": 16, "n_show": 2}})))
    main([dataset])
    metrics = json.loads(paths.metrics_path(dataset, "influence").read_text())
    details = json.loads((paths.plots_dir(dataset, "influence") / "details.json").read_text())
    figures = ["proponent_position_closeness"] if fraction is None else ["within_class_auc"]
    assert list(metrics) == [f"{f}_lift{end}" for f in figures for end in ("", "_low", "_high")]
    if details.get("n_queries") == 0:    # the stamp moved no test image into 7: every headline not judged
        assert all(value is None for value in metrics.values()) and details["reason"]
        return
    for figure in figures:
        lift = details["chance"][figure]
        assert metrics[f"{figure}_lift"] == (None if lift["lift"] is None else pytest.approx(lift["lift"], abs=1e-6))
    if fraction == 0.0:    # nothing stamped in training: neither figure can say anything
        assert all(value is None for value in metrics.values())
        assert details["chance"]["proponent_precision_at_10"]["reason"] == NO_BASE_RATE
    elif fraction:         # 5 of the 6 training 7s stamped: both judged, against the class's own base rate
        assert details["chance"]["proponent_precision_at_10"]["chance"] == pytest.approx(5 / 6)
        assert details["chance"]["within_class_auc_clean"]["n"] > 0 and details["chance"]["within_class_auc"]["n"] == 6
        assert all(value is not None for value in metrics.values())
    if fraction is None:
        assert details["chance"]["proponent_position_closeness"]["chance_level"] == "every searched training image of the predicted class"
