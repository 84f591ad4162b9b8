"""TracIn proponents (pipeline.attribution.tracin) and their known-answer figures (pipeline.evaluation.influence), on constructed cases."""
import numpy as np
import pytest
import torch
from torch import nn

from captum.influence import TracInCPFast

from pipeline.attribution.tracin import Checkpoint, Proponents, TracIn, gradient_factors
from pipeline.config import PRECISION_AT, ConfigError, InfluenceParams
from pipeline.data.tensors import subsample, to_float
from pipeline.evaluation.influence import by_rank, clever_hans_metrics, colored_mnist_metrics, proponent_table
from pipeline.models.classifiers import build_seeded_classifier

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
def constructed_clever_hans(top_k=10):
    """20 training images: 0-9 class 7 stamped, 10-14 class 7 clean, 15-19 class 3; two queries, both into 7."""
    train = {"labels": np.array([7] * 15 + [3] * 5), "stamped": np.array([[True]] * 10 + [[False]] * 10),
             "images": np.zeros((20, 3, 28, 28), np.uint8)}
    first = list(range(top_k))                    # all stamped 7s
    second = [10, 11, 12, 13, 14, 15, 16, 17, 0, 1][:top_k]   # two stamped 7s, at ranks 9 and 10
    found = Proponents(torch.tensor([first, second]), torch.linspace(1, 0, top_k).repeat(2, 1))
    queries = {"test_index": torch.tensor([4, 8]), "targets": torch.tensor([7, 7])}
    return train, found, queries


def test_clever_hans_precision_counts_stamped_images_of_the_shortcut_class():
    train, found, queries = constructed_clever_hans()
    candidates = np.arange(20)
    table = proponent_table(found, queries, candidates, train, {})
    control = proponent_table(Proponents(torch.tensor([[15] * 10, [10] * 10]), torch.zeros(2, 10)),
                              {"test_index": queries["test_index"], "targets": torch.tensor([3, 7])}, candidates, train, {})
    figures = clever_hans_metrics(table, control, candidates, train, [7], PRECISION_AT)
    assert figures["proponent_precision_at_10"] == pytest.approx(12 / 20)
    assert figures["proponent_base_rate"] == pytest.approx(10 / 20)
    assert figures["clean_control_precision_at_10"] == 0.0
    assert figures["precision_at_k"][1] == pytest.approx(0.5)
    assert figures["precision_at_k"][8] == pytest.approx(8 / 16)
    assert figures["proponent_shortcut_class_share"] == pytest.approx(17 / 20)
    rank = by_rank(table, figures, [7])
    assert rank["stamped_share"].tolist() == [0.5] * 8 + [1.0, 1.0]


def test_candidates_map_proponents_back_to_training_indices():
    train, found, queries = constructed_clever_hans()
    candidates = np.arange(20)[::-1].copy()      # proponent j is training image 19 - j
    table = proponent_table(found, queries, candidates, train, {})
    assert table.loc[table["query"] == 0, "train_index"].tolist() == [19 - j for j in range(10)]
    assert table["test_index"].tolist() == [4] * 10 + [8] * 10


def test_colored_mnist_gap_of_proponents_and_of_the_class():
    train = {"labels": np.array([0] * 4 + [1] * 4), "positions": np.array([0.1, 0.2, 0.5, 0.9, 0.0, 0.3, 0.6, 1.0], np.float32),
             "images": np.zeros((8, 3, 28, 28), np.uint8)}
    test = {"positions": np.array([0.15, 0.5], np.float32)}
    queries = {"test_index": torch.tensor([0, 1]), "targets": torch.tensor([0, 0])}
    found = Proponents(torch.tensor([[0, 1] * 5, [2, 6] * 5]), torch.ones(2, 10))
    table = proponent_table(found, queries, np.arange(8), train, test)
    figures = colored_mnist_metrics(table, np.arange(8), train, queries, test, PRECISION_AT)
    assert figures["proponent_position_gap"] == pytest.approx((0.05 + 0.05 + 0.0 + 0.1) / 4)
    assert figures["class_position_gap"] == pytest.approx((np.mean([0.05, 0.05, 0.35, 0.75]) + np.mean([0.4, 0.3, 0.0, 0.4])) / 2)
    assert figures["proponent_same_class_share"] == pytest.approx(0.75)


def test_sample_indices_are_seeded_sorted_and_capped():
    a = subsample(100, 10, np.random.default_rng(3))
    assert np.array_equal(a, subsample(100, 10, np.random.default_rng(3)))
    assert np.all(np.diff(a) > 0) and len(a) == 10
    assert np.array_equal(subsample(5, None, np.random.default_rng(0)), np.arange(5))
    assert np.array_equal(subsample(5, 50, np.random.default_rng(0)), np.arange(5))


@pytest.mark.parametrize("values, key", [({"top_k": 5}, "top_k"), ({"n_train": 3}, "n_train"), ({"n_test": 0}, "n_test")])
def test_bad_influence_params(values, key):
    with pytest.raises(ConfigError, match=f"influence.{key}"):
        InfluenceParams(**values).check("influence")


@pytest.mark.parametrize("kind", ["clever_hans", "colored_mnist"])
def test_picture_of_queries_and_proponents(tmp_path, kind):
    from pipeline.evaluation.influence import proponents_figure
    from pipeline.storage import save_figure

    if kind == "clever_hans":
        train, found, queries = constructed_clever_hans()
        test = {}
    else:   # a float column (positions) makes pandas rows float: indices must still work
        train = {"labels": np.array([0, 1] * 4), "positions": np.linspace(0, 1, 8, dtype=np.float32),
                 "images": np.zeros((8, 3, 28, 28), np.uint8)}
        test, queries = {"positions": np.array([0.2, 0.7], np.float32)}, {"test_index": torch.tensor([0, 1]), "targets": torch.tensor([0, 1])}
        found = Proponents(torch.arange(8).repeat(2, 2)[:, :10], torch.linspace(1, 0, 10).repeat(2, 1))
    queries |= {"images": torch.zeros(2, 3, 28, 28, dtype=torch.uint8), "true": torch.tensor([1, 0])}
    table = proponent_table(found, queries, np.arange(len(train["labels"])), train, test)
    save_figure(proponents_figure(table, queries, train, [str(c) for c in range(10)], n_show=1, dataset=kind),
                tmp_path / "proponents.png")
    assert (tmp_path / "proponents.png").stat().st_size > 1000


class AlwaysClass(nn.Module):
    """Predicts class ``label`` for every image (a classifier the stamp never moves into 7)."""

    def __init__(self, label: int, n_classes: int = 10):
        super().__init__()
        self.logits = nn.Parameter(torch.nn.functional.one_hot(torch.tensor(label), n_classes).float() * 5)

    def forward(self, x):
        return self.logits.expand(len(x), -1) + 0 * x.flatten(1)[:, :1]


def test_no_image_moved_by_the_stamp_gives_empty_queries_not_a_crash():
    from pipeline.evaluation.influence import clever_hans_queries
    from pipeline.models.inference import predict_probabilities

    model = AlwaysClass(label=3)
    assert predict_probabilities(model, torch.zeros(0, 3, 28, 28, dtype=torch.uint8)).shape == (0, 10)
    images = torch.zeros(6, 3, 28, 28, dtype=torch.uint8)
    test = {"labels": torch.tensor([0, 1, 2, 3, 4, 5]), "clean_images": images, "shortcut_images": images[None],
            "shortcut_labels": torch.tensor([7])}
    queries = clever_hans_queries(model, test, n_test=4, rng=np.random.default_rng(0))
    assert len(queries["images"]) == 0 and queries["control"]["targets"].shape == (0,)
