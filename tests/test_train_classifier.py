import torch

from pipeline.config import ClassifierParams
from pipeline.models import build_classifier, load_classifier, save_model
from pipeline.train_classifier import train


def color_task(n=512, seed=0):
    """Class = which channel is lit: a task any working classifier must learn almost at once."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=gen)
    images = torch.zeros(n, 3, 28, 28, dtype=torch.uint8)
    shapes = (torch.rand(n, 1, 28, 28, generator=gen) > 0.7).to(torch.uint8) * 200
    images[torch.arange(n), labels] = shapes[:, 0]
    return images, labels


def test_cnn_and_dense_learn_a_color_task(tmp_path):
    images, labels = color_task()
    cfg = ClassifierParams(epochs=3, batch_size=32, mixed_precision=False)
    for architecture in ("cnn", "dense"):
        config = {"architecture": architecture, "n_classes": 3, "width": 8}
        torch.manual_seed(0)
        model = build_classifier(config)
        history = train(model, images, labels, cfg, torch.Generator().manual_seed(0))
        assert history[-1]["train_accuracy"] > 0.9, architecture
        save_model(tmp_path / f"{architecture}.pt", model, config)
        reloaded = load_classifier(tmp_path / f"{architecture}.pt")
        x = images[:8].float() / 255
        assert torch.allclose(reloaded(x), model(x), atol=1e-6)


def test_training_is_reproducible_with_the_same_seed():
    images, labels = color_task(n=128)
    cfg = ClassifierParams(epochs=1, batch_size=32, mixed_precision=False)
    weights = []
    for _ in range(2):
        torch.manual_seed(1)
        model = build_classifier({"architecture": "cnn", "n_classes": 3, "width": 4})
        train(model, images, labels, cfg, torch.Generator().manual_seed(1))
        weights.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
