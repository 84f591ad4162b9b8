"""Stage ``train_classifier@<dataset>``: train the classifier under study and measure what it relies on.

DVCLive logs the training as it runs (one step per epoch: training loss and accuracy, test accuracy),
then the test confusion matrix and a picture of example predictions, all under
``plots/<D>/train_classifier/live``. ``metrics/<D>/classifier.json`` holds the headline figures;
per-class and per-shortcut figures go to ``plots/<D>/train_classifier/details.json``.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline import paths
from pipeline.config import ClassifierParams
from pipeline.data import load_meta, load_prepared, to_float
from pipeline.inference import autocast, predict_probabilities
from pipeline.models import build_seeded_classifier, save_model
from pipeline.plotting import confusion_heatmap, image_grid
from pipeline.runtime import StageContext, open_live, stage
from pipeline.scores import accuracy, confusion_matrix, per_class_accuracy, share_of_others_assigned
from pipeline.storage import save_figure, write_json

STAGE = "train_classifier"
EpochCallback = Callable[[dict, nn.Module], dict | None]


class NonFiniteLoss(RuntimeError):
    pass


def log(dataset: str, message: str) -> None:
    print(f"[{STAGE}@{dataset}] {message}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Random streams: the model's initial weights and the order of the training data
# --------------------------------------------------------------------------------------------
def initial_classifier(ctx: StageContext, config: dict) -> nn.Module:
    """The classifier with initial weights from this stage's stream ``model_init`` (its own per dataset)."""
    seed = int(ctx.rng("model_init").integers(2**31 - 1))
    return build_seeded_classifier(config, seed).to(ctx.device)


def data_order_generator(ctx: StageContext) -> torch.Generator:
    """The stream that shuffles the training data; on the CPU, so a CPU and a GPU run see the same order."""
    return ctx.generator("data_order", device="cpu")


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, ...]:
    """One epoch's index batches: a permutation drawn by ``generator``, moved to the data's ``device`` once."""
    order = torch.randperm(n, generator=generator, device=generator.device)
    return order.to(device).split(batch_size)


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------
def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: ClassifierParams,
          generator: torch.Generator, on_epoch: EpochCallback | None = None) -> list[dict]:
    """Train ``model`` on uint8 ``images`` (on the model's device); the data order comes from ``generator``.

    After each epoch ``on_epoch(record, model)`` sees the epoch's record (``epoch``, ``train_loss``,
    ``train_accuracy``) and may return more entries for it (a test accuracy, say).
    """
    device = images.device
    steps_per_epoch = math.ceil(len(images) / cfg.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.learning_rate,
                                                   total_steps=cfg.epochs * steps_per_epoch, pct_start=0.2)
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        batches = epoch_batches(len(images), cfg.batch_size, generator, device)
        for index in tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, file=sys.stderr, mininterval=2):
            x, y = to_float(images[index]), labels[index]
            with autocast(device, cfg.mixed_precision):
                logits = model(x)
            loss = nn.functional.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
        mean_loss = loss_sum.item() / len(images)
        if not math.isfinite(mean_loss):
            raise NonFiniteLoss(f"classifier loss became {mean_loss} in epoch {epoch + 1}; lower classifier.learning_rate")
        record = {"epoch": epoch + 1, "train_loss": mean_loss, "train_accuracy": correct.item() / len(images)}
        if on_epoch is not None:
            record.update(on_epoch(dict(record), model) or {})
        history.append(record)
    model.eval()
    return history


@dataclass
class Evaluation:
    """What the test split says about a trained classifier."""

    metrics: dict            # headline figures (metrics/<D>/classifier.json)
    details: dict            # per class and per shortcut (plots/<D>/train_classifier/details.json)
    confusion: torch.Tensor  # n_classes x n_classes counts, rows actual
    predicted: torch.Tensor  # predicted class of every test image


def predicted_classes(model: nn.Module, images: torch.Tensor, cfg: ClassifierParams) -> torch.Tensor:
    return predict_probabilities(model, images, cfg.eval_batch_size, cfg.mixed_precision).argmax(1)


def evaluate(model: nn.Module, test: dict, meta: dict, cfg: ClassifierParams) -> Evaluation:
    """Accuracy on the test split; for Clever Hans also on clean images, and what each shortcut does.

    Per shortcut: ``shortcut_reliance`` is the share of test images *not* of the shortcut's class
    that the classifier assigns to that class once the shortcut is stamped on them;
    ``shortcut_base_rate`` is the same share on the clean images, without any stamp. The headline
    figures are means over the shortcuts.
    """
    predicted = predicted_classes(model, test["images"], cfg)
    confusion = confusion_matrix(test["labels"], predicted, meta["n_classes"])
    metrics = {"test_accuracy": accuracy(predicted, test["labels"])}
    details = {"per_class_accuracy": per_class_accuracy(confusion)}
    if "shortcut_images" in test:
        clean = predicted_classes(model, test["clean_images"], cfg)
        metrics["clean_accuracy"] = accuracy(clean, test["labels"])
        reliance, base_rate = {}, {}
        for k, label in enumerate(test["shortcut_labels"].tolist()):
            key = f"{label}_{meta['shortcuts'][k]['kind']}"
            stamped = predicted_classes(model, test["shortcut_images"][k], cfg)
            reliance[key] = share_of_others_assigned(stamped, test["labels"], label)
            base_rate[key] = share_of_others_assigned(clean, test["labels"], label)
        metrics["shortcut_reliance"] = float(np.mean(list(reliance.values())))
        metrics["shortcut_base_rate"] = float(np.mean(list(base_rate.values())))
        details["shortcut_reliance_per_class"] = reliance
        details["shortcut_base_rate_per_class"] = base_rate
    return Evaluation(metrics, details, confusion, predicted)


# --------------------------------------------------------------------------------------------
# Logging and pictures
# --------------------------------------------------------------------------------------------
def live_epoch_logger(live, test: dict, cfg: ClassifierParams, dataset: str) -> EpochCallback:
    """An ``on_epoch`` callback that measures test accuracy and logs the epoch to DVCLive as one step."""

    def log_epoch(record: dict, model: nn.Module) -> dict:
        model.eval()
        measured = {"test_accuracy": accuracy(predicted_classes(model, test["images"], cfg), test["labels"])}
        logged = record | measured
        for key in ("train_loss", "train_accuracy", "test_accuracy"):
            live.log_metric(key, logged[key])
        live.next_step()
        log(dataset, f"epoch {logged['epoch']}: loss {logged['train_loss']:.4f}, "
                     f"train acc {logged['train_accuracy']:.4f}, test acc {logged['test_accuracy']:.4f}")
        return measured

    return log_epoch


def examples_figure(test: dict, predicted: torch.Tensor, names: list[str], n_examples: int, dataset: str):
    """Test images with their true and predicted class: a quarter of them mistakes, when there are any."""
    labels, predicted = test["labels"].cpu().numpy(), predicted.cpu().numpy()
    wrong = np.flatnonzero(labels != predicted)[: n_examples // 4]
    right = np.flatnonzero(labels == predicted)[: n_examples - len(wrong)]
    index = np.concatenate([right, wrong])
    titles = [f"true {names[labels[i]]}\npred {names[predicted[i]]}" + (" ✗" if labels[i] != predicted[i] else "")
              for i in index]
    return image_grid(test["images"][torch.as_tensor(index, device=test["images"].device)].cpu().numpy(), titles,
                      ncols=8, suptitle=f"{dataset}: test inputs with true and predicted class (✗ = mistake)")


def log_evaluation(live, evaluation: Evaluation, test: dict, names: list[str], n_examples: int, dataset: str) -> None:
    """The test confusion matrix and the examples picture, through DVCLive."""
    actual = [names[i] for i in test["labels"].tolist()]
    predicted = [names[i] for i in evaluation.predicted.tolist()]
    live.log_sklearn_plot("confusion_matrix", actual, predicted, name="confusion_matrix.json",
                          title=f"{dataset}: test confusion", x_label="actual class", y_label="predicted class")
    live.log_image("examples.png", examples_figure(test, evaluation.predicted, names, n_examples, dataset))


def save_confusion_picture(dataset: str, confusion: torch.Tensor, names: list[str]) -> None:
    save_figure(confusion_heatmap(confusion.cpu().numpy(), names, f"{dataset}: test confusion (row-normalised colour, counts)"),
                paths.plots_dir(dataset, STAGE) / "confusion.png")


def main(argv: list[str] | None = None) -> None:
    with stage(STAGE, argv) as ctx:
        cfg = ctx.params.classifier
        meta = load_meta(ctx.dataset)
        train_split = load_prepared(ctx.dataset, "train", ctx.device)
        test = load_prepared(ctx.dataset, "test", ctx.device)
        model_config = {"architecture": cfg.architecture, "n_classes": meta["n_classes"], "width": cfg.width}
        model = initial_classifier(ctx, model_config)
        out = paths.plots_dir(ctx.dataset, STAGE)

        with open_live(out / "live") as live:
            train(model, train_split["images"], train_split["labels"], cfg, data_order_generator(ctx),
                  on_epoch=live_epoch_logger(live, test, cfg, ctx.dataset))
            evaluation = evaluate(model, test, meta, cfg)
            log_evaluation(live, evaluation, test, meta["class_names"], cfg.n_example_images, ctx.dataset)

        save_model(paths.classifier_path(ctx.dataset), model, model_config, class_names=meta["class_names"])
        write_json(paths.metrics_path(ctx.dataset, "classifier"), evaluation.metrics)
        write_json(out / "details.json", evaluation.details)
        save_confusion_picture(ctx.dataset, evaluation.confusion, meta["class_names"])
        ctx.timer.images = cfg.epochs * len(train_split["images"])
        log(ctx.dataset, summary(evaluation.metrics))


def summary(metrics: dict) -> str:
    text = f"test accuracy {metrics['test_accuracy']:.4f}"
    if "shortcut_reliance" in metrics:
        text += (f", clean {metrics['clean_accuracy']:.4f}, shortcut reliance {metrics['shortcut_reliance']:.3f}"
                 f" (base rate without the stamp {metrics['shortcut_base_rate']:.3f})")
    return text


if __name__ == "__main__":
    main()
